"""Traces across the queue with the opentelemetry package: a task keeps the span it was
enqueued in, and its function runs in a child span of it."""

import os
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from simplepyq import DelayException, SimplePyQ

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)


def _spans(name):
    return [s for s in _exporter.get_finished_spans() if s.name == name]


def test_a_functions_span_is_the_child_of_the_enqueuers(tmp_path):
    q = SimplePyQ(str(tmp_path / "tasks.db"))
    tracer = trace.get_tracer("shop")
    with tracer.start_as_current_span("checkout") as checkout:
        ok = q.enqueue("mail", "a@example.com")
        bad = q.enqueue("mail", "fail")
        later = q.enqueue("mail", "later")
    untraced = q.enqueue("mail", "b@example.com")
    producer = checkout.get_span_context()
    flags = int(producer.trace_flags)
    expected = f"00-{producer.trace_id:032x}-{producer.span_id:016x}-{flags:02x}"
    assert q.task(ok).traceparent == expected
    assert q.task(untraced).traceparent is None

    inside = {}
    delayed = set()

    def send(to):
        inside[to] = trace.get_current_span().get_span_context().trace_id
        if to == "fail":
            raise RuntimeError("the mail server said no")
        if to == "later" and to not in delayed:
            delayed.add(to)
            raise DelayException(0.01)

    q.add_channel("mail", send)
    q.run_until_complete()
    q.stop()
    spans = {s.attributes["messaging.message.id"]: s for s in _spans("process mail")}
    for task, outcome in [(ok, "succeeded"), (bad, "failed")]:
        s = spans[str(task)]
        assert s.context.trace_id == producer.trace_id
        assert s.parent.span_id == producer.span_id
        assert s.attributes["messaging.destination.name"] == "mail"
        assert s.attributes["simplepyq.task.attempt"] == 1
        assert s.attributes["simplepyq.outcome"] == outcome
    assert spans[str(bad)].status.status_code == StatusCode.ERROR
    assert "the mail server said no" in spans[str(bad)].status.description
    assert spans[str(ok)].status.status_code == StatusCode.UNSET
    runs_of_later = [s for s in _spans("process mail") if s.attributes["messaging.message.id"] == str(later)]
    assert sorted(s.attributes["simplepyq.outcome"] for s in runs_of_later) == ["delayed", "succeeded"]
    root = spans[str(untraced)]
    assert root.parent is None and root.context.trace_id != producer.trace_id
    # The function's own code sees its span as current.
    assert inside["a@example.com"] == producer.trace_id
    assert inside["b@example.com"] == root.context.trace_id


def test_the_trace_crosses_to_another_process(tmp_path):
    path = str(tmp_path / "tasks.db")
    q = SimplePyQ(path)
    with trace.get_tracer("shop").start_as_current_span("checkout") as checkout:
        q.enqueue("mail", "a@example.com")
    q.stop()
    producer = checkout.get_span_context()
    worker = f"""
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from simplepyq import SimplePyQ
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
q = SimplePyQ({path!r})
q.add_channel("mail", lambda to: None)
q.run_until_complete()
q.stop()
for s in exporter.get_finished_spans():
    print(s.name, format(s.context.trace_id, "032x"), format(s.parent.span_id, "016x"))
"""
    out = subprocess.run(
        [sys.executable, "-c", worker], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "process",
        "mail",
        f"{producer.trace_id:032x}",
        f"{producer.span_id:016x}",
    ]


def test_a_given_traceparent_is_kept_and_a_malformed_one_refused(tmp_path):
    q = SimplePyQ(str(tmp_path / "tasks.db"))
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with trace.get_tracer("shop").start_as_current_span("ignored"):
        id = q.enqueue("mail", 1, traceparent=given)
    assert q.task(id).traceparent == given
    with pytest.raises(ValueError, match="traceparent"):
        q.enqueue("mail", 2, traceparent="00-nope")
    assert q.counts("mail")["pending"] == 1
    q.stop()


def test_an_exception_whose_str_fails_is_the_tasks_error_alone(tmp_path):
    """The span's description of the error does not add a traceback of its own."""

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    def handler(args):
        raise Unprintable()

    q = SimplePyQ(str(tmp_path / "tasks.db"))
    q.add_channel("odd", handler)
    tid = q.enqueue("odd", 1)
    q.run_until_complete()
    error = q.task(tid).last_error
    assert error.rstrip().endswith("Unprintable: <exception str() failed>"), error
    assert "During handling" not in error, error
    (span,) = [s for s in _spans("process odd") if s.attributes["messaging.message.id"] == str(tid)]
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description.endswith("<exception str() failed>")
