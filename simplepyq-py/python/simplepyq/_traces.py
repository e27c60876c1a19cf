"""Traces that cross the queue, when the ``opentelemetry`` package is installed.

``enqueue`` keeps the current span's context with the task (a W3C ``traceparent``), and the
process that runs the task runs its function inside a span ``process {channel}`` (kind
consumer) that is a child of it, with the task's id, channel and attempt as attributes and
its outcome (``simplepyq.outcome``: succeeded, failed or delayed; a failure sets the span's
status to an error). Without the package, nothing is kept and the function runs as given.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Type

from . import _simplepyq


@functools.lru_cache(maxsize=None)
def _trace_api() -> Any:
    """The ``opentelemetry.trace`` module, or None without the package: looked for once, not
    at every enqueue (an import that fails searches the whole path each time)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def current() -> Optional[str]:
    """The ``traceparent`` of the current OpenTelemetry span, or None (no span, or no
    ``opentelemetry`` package)."""
    trace = _trace_api()
    if trace is None:
        return None
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return None
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}"


def traced(
    channel: str, func: Callable[..., Any], delay: Type[BaseException]
) -> Callable[..., Any]:
    """``func`` run inside its task's span; ``func`` itself without the ``opentelemetry``
    package. ``delay`` is ``DelayException``: a delay is not a failure."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
        )
    except ImportError:
        return func
    tracer = trace.get_tracer("simplepyq")
    name = f"process {channel}"

    def parent(traceparent: Optional[str]) -> Any:
        empty = context.Context()
        if traceparent is None:
            return empty
        remote = SpanContext(
            trace_id=int(traceparent[3:35], 16),
            span_id=int(traceparent[36:52], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(traceparent[53:55], 16)),
        )
        return trace.set_span_in_context(NonRecordingSpan(remote), empty)

    def run(*args: Any, **kwargs: Any) -> Any:
        task = _simplepyq.current_task()
        if task is None:  # called directly, not by the queue
            return func(*args, **kwargs)
        task_id, attempt, traceparent = task
        with tracer.start_as_current_span(
            name,
            context=parent(traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "simplepyq",
                "messaging.operation.type": "process",
                "messaging.destination.name": channel,
                "messaging.message.id": str(task_id),
                "simplepyq.task.attempt": attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = func(*args, **kwargs)
            except delay:
                span.set_attribute("simplepyq.outcome", "delayed")
                raise
            except BaseException as e:
                _record_failure(span, e)
                raise
            span.set_attribute("simplepyq.outcome", "succeeded")
            return result

    run.__wrapped__ = func  # type: ignore[attr-defined]
    return run


def _record_failure(span: Any, e: BaseException) -> None:
    """Marks ``span`` failed with ``e``. An exception whose ``str()`` raises is described as
    the traceback module describes it, and the span's own error is left out: the task's
    error must stay the function's, not a second traceback of the span's."""
    from opentelemetry.trace import Status, StatusCode

    try:
        message = f"{type(e).__name__}: {e}"
        span.record_exception(e)
    except Exception:
        message = f"{type(e).__name__}: <exception str() failed>"
    span.set_status(Status(StatusCode.ERROR, message))
    span.set_attribute("simplepyq.outcome", "failed")
