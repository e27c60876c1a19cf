"""Every call of the API: the original's, and the Rust engine's extras."""

import datetime as dt
import os
import threading
import time
import uuid

import pytest
from conftest import wait_for

import simplepyq
from simplepyq import Cancelled, DelayException, QueueError, SimplePyQ

STATUSES = ["pending", "running", "delayed", "done", "failed", "waiting"]


def counts(**given):
    return {s: given.get(s, 0) for s in STATUSES}


def test_the_defaults_are_the_originals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    q = SimplePyQ()
    assert q.store_path == "simplepyq_tasks.db"
    assert (tmp_path / "simplepyq_tasks.db").exists()
    e = DelayException(5)
    assert e.delay_seconds == 5 and isinstance(e, Exception)
    assert simplepyq.__all__[:2] == ["SimplePyQ", "DelayException"]


def test_a_duplicate_channel_is_a_value_error(db):
    q = SimplePyQ(db)
    q.add_channel("c", print)
    with pytest.raises(ValueError, match="Channel 'c' already exists"):
        q.add_channel("c", print)
    with pytest.raises(ValueError, match="max_workers"):
        q.add_channel("d", print, max_workers=0)
    with pytest.raises(ValueError, match="empty"):
        q.add_channel("", print)


def test_handlers_get_the_arguments_as_msgpack_gives_them(db):
    got = []
    q = SimplePyQ(db)
    q.add_channel("c", got.append)
    args = {
        "s": "héllo",
        "b": b"\x00\xff",
        "ba": bytearray(b"ab"),
        "i": -(2**63),
        "u": 2**64 - 1,
        "f": 1.5,
        "t": True,
        "n": None,
        "l": [1, (2, 3)],
        "d": {1: "int key", "nested": {"x": [{}]}},
    }
    q.enqueue("c", args)
    q.enqueue("c", [1, 2])
    q.enqueue("c", "plain")
    q.run_until_complete()
    assert got[0] == {
        "s": "héllo",
        "b": b"\x00\xff",
        "ba": b"ab",
        "i": -(2**63),
        "u": 2**64 - 1,
        "f": 1.5,
        "t": True,
        "n": None,
        "l": [1, [2, 3]],
        "d": {1: "int key", "nested": {"x": [{}]}},
    }
    assert got[1:] == [[1, 2], "plain"]


def test_arguments_msgpack_cannot_carry_are_refused_storing_nothing(db):
    q = SimplePyQ(db)
    with pytest.raises(TypeError, match="'set'"):
        q.enqueue("c", {"x": {1, 2}})
    with pytest.raises(TypeError, match="'object'"):
        q.enqueue("c", [object()])
    with pytest.raises(OverflowError):
        q.enqueue("c", {"big": 2**64})
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="deeper"):
        q.enqueue("c", loop)
    with pytest.raises(TypeError):
        q.enqueue_many("c", [{"ok": 1}, {"bad": {1}}])
    assert q.counts() == counts()


def test_bad_counts_and_ids_are_refused_naming_the_argument_storing_nothing(db):
    q = SimplePyQ(db)
    with pytest.raises(ValueError, match="retries must be an int from 0"):
        q.enqueue("c", 1, retries=-1)
    with pytest.raises(ValueError, match="priority must be an int from"):
        q.enqueue("c", 1, priority=2**40)
    with pytest.raises(TypeError, match="retries must be an int, not str"):
        q.enqueue_many("c", [1, 2], retries="3")
    with pytest.raises(ValueError, match="retries"):
        q.add_schedule("s", "c", 1, every=60, retries=2**32)
    with pytest.raises(ValueError, match="retries"):
        q.requeue_failed("c", retries=-2)
    with pytest.raises(ValueError, match="max_running"):
        q.set_max_running("c", -1)
    with pytest.raises(ValueError, match="starts"):
        q.set_rate("c", -5, per=1)
    parent = q.enqueue("c", 1)
    # A str's characters would be ids 1 and 2, not task 12.
    with pytest.raises(TypeError, match="after must be an iterable of task ids"):
        q.enqueue("c", 2, after=str(parent) + "2")
    with pytest.raises(TypeError, match="an id of after must be an int"):
        q.enqueue("c", 2, after=[float(parent)])
    with pytest.raises(ValueError, match="limit"):
        q.tasks(limit=-1)
    # A str's characters, a dict's keys, would each be a task.
    for many in ("abc", b"abc", {"to": "a@example.com"}):
        with pytest.raises(TypeError, match="many must be an iterable of task arguments"):
            q.enqueue_many("c", many)
        with pytest.raises(TypeError, match="many must be an iterable of task arguments"):
            q.enqueue_group("c", many, "then")
    with pytest.raises(ValueError, match="after must be an int from 0"):
        q.tasks(after=2**64)
    # Not pyo3's "Python int too large to convert to C long", naming nothing.
    for call in (q.task, q.result, q.cancel, q.parents, lambda i: q.wait(i, timeout=0)):
        with pytest.raises(ValueError, match="id must be an int from 1"):
            call(2**64)
    assert q.counts() == counts(pending=1)


def test_retries_then_failed_with_the_traceback_as_last_error(db):
    q = SimplePyQ(db)

    def broken(args):
        raise KeyError("no such user")

    q.add_channel("c", broken)
    tid = q.enqueue("c", {}, retries=2)
    q.run_until_complete()
    task = q.task(tid)
    assert (task.status, task.attempts, task.retries_left) == ("failed", 3, 0)
    assert task.last_error.startswith("Traceback (most recent call last):")
    assert "in broken" in task.last_error
    assert task.last_error.endswith("KeyError: 'no such user'")


def test_clear_failed_and_requeue_failed_by_channel_or_all(db):
    q = SimplePyQ(db)
    q.add_channel("a", lambda args: 1 / 0)
    q.add_channel("b", lambda args: 1 / 0)
    q.enqueue("a", {}, retries=2)
    q.enqueue("b", {}, retries=0)
    q.enqueue("b", {}, retries=0)
    q.run_until_complete()
    assert q.counts() == counts(failed=3)
    # The original retry count (None), or a new one.
    assert q.requeue_failed("a") == 1
    assert [t.retries_left for t in q.tasks("a")] == [2]
    assert q.requeue_failed(retries=5) == 2
    assert [t.retries_left for t in q.tasks("b")] == [5, 5]
    q.run_until_complete()
    assert q.clear_failed("a") == 1
    assert q.counts() == counts(failed=2)
    assert q.clear_failed() == 2
    assert q.counts() == counts()


def test_remove_channel_deletes_its_tasks_and_handler(db):
    q = SimplePyQ(db)
    q.add_channel("gone", print)
    q.enqueue("gone", {})
    q.enqueue("kept", {})
    assert q.remove_channel("gone") == 1
    assert q.counts() == counts(pending=1)
    assert q.remove_channel("never added") == 0
    q.add_channel("gone", print)


def test_a_delay_exception_defers_without_using_a_retry(db):
    q = SimplePyQ(db)
    runs = []

    def later(args):
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise DelayException(0.1)

    q.add_channel("c", later)
    tid = q.enqueue("c", {})
    q.run_until_complete()
    assert len(runs) == 3
    assert runs[2] - runs[0] >= 0.19
    task = q.task(tid)
    assert (task.status, task.retries_left) == ("done", 0)


def test_enqueue_options_delay_at_priority_unique(db):
    q = SimplePyQ(db)
    order = []
    q.add_channel("c", lambda args: order.append(args), max_workers=1)
    now = time.time()
    q.enqueue("c", "low", priority=-1)
    q.enqueue("c", "high", priority=5)
    d = q.enqueue("c", "delayed", delay=dt.timedelta(seconds=0.3))
    a = q.enqueue("c", "at", at=dt.datetime.now() + dt.timedelta(seconds=0.2))
    first = q.enqueue("c", "unique", unique="k")
    assert q.enqueue("c", "unique again", unique="k") == first
    assert q.task(d).status == "delayed" and q.task(d).run_at >= now + 0.29
    assert q.task(a).status == "delayed"
    with pytest.raises(ValueError, match="not both"):
        q.enqueue("c", "x", delay=1, at=now)
    with pytest.raises(ValueError, match="delay"):
        q.enqueue("c", "x", delay=-1)
    # Past what a system time holds: an error, not a panic of the engine.
    with pytest.raises(ValueError, match="too far"):
        q.enqueue("c", "x", at=1e19)
    q.run_until_complete()
    assert order == ["high", "unique", "low", "at", "delayed"]


def test_enqueue_many_is_one_transaction(db):
    q = SimplePyQ(db)
    ids = q.enqueue_many("c", ({"n": n} for n in range(100)), retries=1)
    assert len(ids) == 100 and ids == sorted(ids)
    assert q.counts("c") == counts(pending=100)
    assert {t.max_retries for t in q.tasks("c", limit=1000)} == {1}


def test_tasks_pages_and_filters(db):
    q = SimplePyQ(db)
    ids = [q.enqueue("c", {"n": n}) for n in range(5)]
    q.enqueue("other", {})
    page = q.tasks("c", limit=2)
    assert [t.id for t in page] == ids[:2]
    page = q.tasks("c", limit=10, after=page[-1].id)
    assert [t.id for t in page] == ids[2:]
    assert [t.args for t in q.tasks(status="pending", limit=3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert q.tasks(status="done") == []
    with pytest.raises(ValueError):
        q.tasks(status="nonsense")
    assert q.task(10_000) is None
    assert "status=\"pending\"" in repr(q.task(ids[0]))


def test_cancel_removes_a_queued_task_and_asks_a_running_one(db):
    q = SimplePyQ(db)
    removed = q.cancel(q.enqueue("c", {}))
    assert removed is Cancelled.REMOVED and removed == "removed" and str(removed) == "removed"
    with pytest.raises(KeyError):
        q.cancel(12345)
    started = []
    release = []

    def slow(args):
        started.append(1)
        wait_for(lambda: release, what="the test to release the handler")

    q.add_channel("slow", slow)
    tid = q.enqueue("slow", {})
    q.start()
    wait_for(lambda: started, what="the handler to start")
    assert q.cancel(tid) is Cancelled.REQUESTED
    release.append(1)
    q.stop()
    with pytest.raises(ValueError):
        q.cancel(tid)  # done now


def test_purge_done(db):
    q = SimplePyQ(db)
    q.add_channel("c", print)
    q.enqueue_many("c", [1, 2, 3])
    q.run_until_complete()
    assert q.purge_done("c", older_than=3600) == 0
    time.sleep(0.01)  # finished more than 0 s ago
    assert q.purge_done() == 3
    assert q.counts() == counts()


def test_stop_with_a_timeout_reports_the_handlers_still_running(db):
    q = SimplePyQ(db)
    release = []
    q.add_channel("c", lambda args: wait_for(lambda: release, what="release"))
    tid = q.enqueue("c", {})
    q.enqueue("c", {})
    q.start()
    wait_for(lambda: q.counts()["running"] == 1, what="the handler to start")
    t = time.monotonic()
    assert q.stop(timeout=0.1) == [tid]
    assert time.monotonic() - t < 2
    release.append(1)
    wait_for(lambda: q.counts()["done"] == 1, what="the outcome to be recorded")
    # The task not started stays pending.
    assert q.counts() == counts(done=1, pending=1)


def test_backoff_waits_before_a_retry(db):
    q = SimplePyQ(db)
    runs = []

    def fail_once(args):
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("once")

    q.add_channel("c", fail_once, backoff=(0.2, 1))
    q.enqueue("c", {}, retries=1)
    q.run_until_complete()
    # Jitter: between half the wait and all of it.
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.09


def test_a_producer_needs_no_handler_and_the_context_manager_stops(db):
    with SimplePyQ(db) as producer:
        producer.enqueue("elsewhere", {"n": 1})
    got = []
    worker = SimplePyQ(db)
    worker.add_channel("elsewhere", got.append)
    worker.run_until_complete()
    assert got == [{"n": 1}]


def test_the_redb_backend(tmp_path):
    q = SimplePyQ(str(tmp_path / "tasks.redb"))
    got = []
    q.add_channel("c", got.append, max_workers=2)
    q.enqueue_many("c", range(10))
    q.run_until_complete()
    assert sorted(got) == list(range(10))


def test_a_file_that_is_not_a_queue_is_a_queue_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database" * 100)
    with pytest.raises(QueueError):
        SimplePyQ(str(path))
    assert path.read_text() == "not a database" * 100


def test_handlers_run_beside_python_threads_with_the_gil_released(db):
    """Enqueueing and stopping let go of the GIL: handlers that need it progress."""
    q = SimplePyQ(db)
    done = []
    q.add_channel("c", lambda args: done.append(args), max_workers=4)
    q.start()
    for n in range(500):
        q.enqueue("c", n)
    wait_for(lambda: len(done) == 500, what="every task")
    q.stop()
    assert sorted(done) == list(range(500))


def test_the_postgresql_backend():
    url = os.environ.get("SIMPLEPYQ_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "SIMPLEPYQ_TEST_POSTGRES_URL is not set: `cargo test -p simplepyq-tests --test python` "
            "starts a PostgreSQL server and sets it"
        )
    channel = f"py-{uuid.uuid4()}"
    q = SimplePyQ(url)
    got = []
    q.add_channel(channel, got.append, max_workers=2)
    q.enqueue_many(channel, [{"n": n} for n in range(20)])
    q.run_until_complete()
    assert sorted(a["n"] for a in got) == list(range(20))
    assert q.counts(channel) == counts(done=20)
    assert q.remove_channel(channel) == 20


def test_pause_and_resume_a_channel(db):
    """A paused channel starts nothing, though its tasks are queued; another queue on the
    file (as another process) resumes it, and the workers here are woken."""
    q = SimplePyQ(db)
    got = []
    q.add_channel("c", got.append, max_workers=2)
    assert q.pause("c") is True
    assert q.pause("c") is False
    assert q.paused() == ["c"]
    for n in range(5):
        q.enqueue("c", n)
    q.start()
    time.sleep(0.3)
    assert got == []
    other = SimplePyQ(db)
    assert other.paused() == ["c"]
    assert other.resume("c") is True
    wait_for(lambda: len(got) == 5, what="every task after the resume")
    q.stop()
    assert sorted(got) == list(range(5))
    assert q.paused() == []
    with pytest.raises(KeyError):
        q.pause("no-such-channel")


def test_a_limit_of_running_tasks_holds(db):
    """With a limit of 2, no more than 2 handlers of 4 workers run at once."""
    q = SimplePyQ(db)
    lock = threading.Lock()
    running, most = [0], [0]

    def handler(args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    q.add_channel("c", handler, max_workers=4)
    assert q.set_max_running("c", 2) is True
    with pytest.raises(ValueError):
        q.set_max_running("c", 0)
    q.enqueue_many("c", range(20))
    q.run_until_complete()
    assert most[0] == 2
    assert q.counts("c")["done"] == 20
    assert q.set_max_running("c", None) is True


def test_a_concurrency_key_runs_one_at_a_time(db):
    """Tasks of one concurrency key run one at a time (the default), beside other keys'; a
    per-key limit of 2 lets two run; the key is read back; bad keys are ValueErrors."""
    q = SimplePyQ(db)
    lock = threading.Lock()
    running, most = {}, {}

    def handler(args):
        key = args["key"]
        with lock:
            running[key] = running.get(key, 0) + 1
            most[key] = max(most.get(key, 0), running[key])
        time.sleep(0.02)
        with lock:
            running[key] -= 1

    q.add_channel("c", handler, max_workers=4)
    ids = [q.enqueue("c", {"key": k}, concurrency_key=k) for k in ["a", "b"] * 6]
    assert q.task(ids[0]).concurrency_key == "a"
    q.run_until_complete()
    assert most == {"a": 1, "b": 1}
    assert q.set_max_running_per_key("c", 2) is True
    most.clear()
    for _ in range(8):
        q.enqueue("c", {"key": "a"}, concurrency_key="a")
    q.run_until_complete()
    assert most == {"a": 2}
    for bad in ["", "k" * 256]:
        with pytest.raises(ValueError):
            q.enqueue("c", {"key": bad}, concurrency_key=bad)
    with pytest.raises(ValueError):
        q.set_max_running_per_key("c", 0)
    assert q.counts("c")["done"] == 20


def test_a_timeout_fails_an_attempt_that_runs_too_long(db):
    """A function that runs past its channel's timeout is not interrupted; its attempt is
    recorded as timed out when it returns (retries=0: failed), and quick ones are done."""
    q = SimplePyQ(db)
    ran = []

    def handler(seconds):
        time.sleep(seconds)
        ran.append(seconds)

    q.add_channel("c", handler, max_workers=2, timeout=0.2)
    slow = q.enqueue("c", 0.6)
    quick = q.enqueue("c", 0.0)
    q.run_until_complete()
    assert sorted(ran) == [0.0, 0.6]
    assert q.task(slow).status == "failed"
    assert q.task(slow).last_error.startswith("timed out after 200ms")
    assert q.task(quick).status == "done"
    with pytest.raises(ValueError):
        q.add_channel("d", handler, timeout=0)


def test_a_function_past_its_timeout_is_listed_as_stuck_while_it_runs(db):
    """A function that runs past its timeout is marked stuck in the store while it runs:
    another queue on the file lists it; once its attempt is recorded, it is listed no more."""
    q = SimplePyQ(db, lease=0.6)
    q.add_channel("c", lambda seconds: time.sleep(seconds), timeout=0.1)
    slow = q.enqueue("c", 1.5)
    q.start()
    other = SimplePyQ(db)
    deadline = time.time() + 10
    while not other.stuck():
        assert time.time() < deadline, "never listed as stuck"
        time.sleep(0.02)
    [mark] = other.stuck("c")
    assert (mark["id"], mark["channel"], mark["attempt"]) == (slow, "c", 1)
    assert mark["since"] <= time.time()
    assert other.stuck("elsewhere") == []
    q.run_until_complete()
    assert other.stuck() == []
    q.stop()


def test_a_functions_return_value_is_the_tasks_result(db):
    """What a function returns is kept with its done task and read back by id, from this
    queue or another on the file; None and a failed run keep nothing; a value too large
    or unencodable fails the attempt with a clear error."""
    q = SimplePyQ(db)

    def handler(x):
        if x == "none":
            return None
        if x == "fail":
            raise ValueError("no")
        if x == "big":
            return b"x" * (2 << 20)
        if x == "object":
            return object()
        return {"square": x * x, "of": [x]}

    q.add_channel("c", handler)
    ids = {x: q.enqueue("c", x) for x in [3, "none", "fail", "big", "object"]}
    q.run_until_complete()
    assert q.result(ids[3]) == {"square": 9, "of": [3]}
    assert SimplePyQ(db).result(ids[3]) == {"square": 9, "of": [3]}
    assert q.result(ids["none"]) is None and q.task(ids["none"]).status == "done"
    assert q.result(ids["fail"]) is None and q.task(ids["fail"]).status == "failed"
    assert q.task(ids["big"]).status == "failed"
    assert "over the limit" in q.task(ids["big"]).last_error
    assert q.task(ids["object"]).status == "failed"
    error = q.task(ids["object"]).last_error
    assert error.startswith("the function's return value cannot be kept: TypeError: can not")
    assert "task arguments" not in error
    assert q.result(10_000) is None


def test_wait_returns_the_result_or_raises(db):
    """wait: the function's return value once done (from this queue or another on the
    file); TaskFailed with the traceback; KeyError once cancelled; TimeoutError."""
    from simplepyq import TaskFailed

    q = SimplePyQ(db)

    def handler(n):
        if n == 0:
            raise ValueError("zero")
        time.sleep(0.02)
        return n * 10

    q.add_channel("c", handler, max_workers=2)
    q.start()
    try:
        assert q.wait(q.enqueue("c", 4), timeout=10) == 40
        assert SimplePyQ(db).wait(q.enqueue("c", 5), timeout=10) == 50
        with pytest.raises(TaskFailed) as failed:
            q.wait(q.enqueue("c", 0), timeout=10)
        assert "ValueError: zero" in failed.value.error
        later = q.enqueue("c", 1, delay=3600)
        with pytest.raises(TimeoutError):
            q.wait(later, timeout=0.05)
        q.cancel(later)
        with pytest.raises(KeyError):
            q.wait(later, timeout=10)
    finally:
        q.stop()


def test_tasks_wait_for_their_parents(db):
    """after=: a task waits (status "waiting") until its parents are done, then its
    function reads what they returned; a group's final task sums its group; a parent that
    fails fails what waits for it; a parent that does not exist is a ValueError."""
    from simplepyq import TaskFailed, parent_results

    q = SimplePyQ(db)
    q.add_channel("square", lambda n: n * n, max_workers=2)

    def total(_):
        return sum(result for _, result in parent_results())

    q.add_channel("total", total)

    def broken(_):
        raise ValueError("broken")

    q.add_channel("broken", broken)
    first = q.enqueue("square", 3)
    second = q.enqueue("total", None, after=[first])
    assert q.task(second).status == "waiting"
    assert q.counts()["waiting"] == 1
    assert q.parents(second) == [first]
    group, last = q.enqueue_group("square", [1, 2, 3, 4], "total")
    assert len(group) == 4 and q.parents(last) == group
    bad = q.enqueue("broken", None)
    orphan = q.enqueue("total", None, after=[bad])
    with pytest.raises(ValueError, match="does not exist"):
        q.enqueue("total", None, after=[10_000])
    with pytest.raises(RuntimeError):
        parent_results()
    q.start()
    try:
        assert q.wait(second, timeout=10) == 9
        assert q.wait(last, timeout=10) == 1 + 4 + 9 + 16
        with pytest.raises(TaskFailed, match=f"parent task {bad} failed"):
            q.wait(orphan, timeout=10)
    finally:
        q.stop()


def test_finished_tasks_are_kept_as_long_as_asked(db):
    """keep_done / keep_failed: the running queue deletes older finished tasks, a channel's
    own time over the queue's; a channel that keeps them for ever keeps them."""
    q = SimplePyQ(db, keep_done=0.3)

    def handler(n):
        if n % 2:
            raise ValueError("odd")

    q.add_channel("short", handler, keep_failed=0.3)
    q.add_channel("long", handler, keep_done=3600)
    q.enqueue_many("short", range(4))
    q.enqueue_many("long", range(4))
    q.run_until_complete()
    assert q.counts("short")["done"] == 2 and q.counts("short")["failed"] == 2
    q.start()
    deadline = time.time() + 10
    while q.counts("short")["done"] + q.counts("short")["failed"] > 0 and time.time() < deadline:
        time.sleep(0.05)
    q.stop()
    assert q.counts("short")["done"] == 0 and q.counts("short")["failed"] == 0
    assert q.counts("long")["done"] == 2 and q.counts("long")["failed"] == 2
    with pytest.raises(ValueError):
        SimplePyQ(db, keep_done=-1)
    with pytest.raises(ValueError):
        q.add_channel("bad", handler, keep_failed=-1)


def test_a_rate_spaces_the_starts(db):
    """A rate of 5 starts per 0.5 s: 12 tasks take three windows, never more than 5 in
    one; bad rates are ValueErrors. A start is a claim: each is timed by its task's claim
    (its last change while it runs), not by when the function got the interpreter, which
    on a loaded machine can be in the next window."""
    q = SimplePyQ(db)
    starts = []
    ids = []
    q.add_channel("c", lambda i: starts.append(q.task(ids[i]).updated_at), max_workers=4)
    assert q.set_rate("c", 5, per=0.5) is True
    for bad in [(0, 1.0), (1, 0.0)]:
        with pytest.raises(ValueError):
            q.set_rate("c", *bad)
    ids.extend(q.enqueue_many("c", range(12)))
    q.run_until_complete()
    windows = {}
    for t in starts:
        window = round(t * 1000) // 500  # the store keeps whole milliseconds
        windows[window] = windows.get(window, 0) + 1
    assert len(starts) == 12
    assert max(windows.values()) <= 5
    assert len(windows) >= 3
    assert q.set_rate("c", None) is True


def test_a_rate_per_key_caps_each_key_apart(db):
    """A rate of 2 starts per 0.5 s per key, with up to 4 of a key at once: 6 tasks of key
    "a" take three windows and never start more than 2 in one, while the tasks of key "b"
    and those without a key are not held up behind them (they start before key "a"'s last
    window); bad rates are ValueErrors."""
    q = SimplePyQ(db)
    starts = []
    ids = []
    q.add_channel("c", lambda i: starts.append((i, q.task(ids[i]).updated_at)), max_workers=4)
    q.set_max_running_per_key("c", 4)
    assert q.set_rate_per_key("c", 2, per=0.5) is True
    assert q.set_rate_per_key("c", 2, per=0.5) is False
    for bad in [(0, 1.0), (1, 0.0)]:
        with pytest.raises(ValueError):
            q.set_rate_per_key("c", *bad)
    keys = ["a"] * 6 + ["b"] * 2 + [None] * 2
    for key in keys:
        ids.append(q.enqueue("c", len(ids), concurrency_key=key))
    q.run_until_complete()
    assert len(starts) == 10
    windows = {}
    for i, t in starts:
        at = (keys[i], round(t * 1000) // 500)  # the store keeps whole milliseconds
        windows[at] = windows.get(at, 0) + 1
    a = [n for (key, _), n in windows.items() if key == "a"]
    assert max(a) <= 2 and len(a) >= 3, windows
    last_a = max(w for (key, w) in windows if key == "a")
    assert all(w < last_a for (key, w) in windows if key != "a"), windows
    assert q.set_rate_per_key("c", None) is True


def test_psycopg_enqueues_in_its_own_transaction():
    """A psycopg transaction enqueues with the queue's SQL function: the task commits with
    the transaction's own rows (invisible before the commit), or rolls back with them; the
    handler gets the JSON arguments as Python values."""
    import psycopg
    from psycopg.types.json import Jsonb

    url = os.environ.get("SIMPLEPYQ_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("SIMPLEPYQ_TEST_POSTGRES_URL is not set (see test_the_postgresql_backend)")
    channel = f"py-{uuid.uuid4()}"
    q = SimplePyQ(url)  # creates the queue's schema and its functions
    got = []
    q.add_channel(channel, got.append)
    enqueue = "SELECT simplepyq.enqueue(%s, %s)"
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TEMP TABLE orders (id serial PRIMARY KEY, item text)")
        with conn.transaction():
            order = conn.execute(
                "INSERT INTO orders (item) VALUES ('tea') RETURNING id"
            ).fetchone()[0]
            tid = conn.execute(enqueue, [channel, Jsonb({"order": order, "n": 1.5})]).fetchone()[0]
            assert q.task(tid) is None  # not before the commit
        with conn.transaction():
            conn.execute("INSERT INTO orders (item) VALUES ('cake')")
            gone = conn.execute(enqueue, [channel, Jsonb({"order": -1})]).fetchone()[0]
            raise psycopg.Rollback()
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    assert q.task(tid).status == "pending"
    assert q.task(gone) is None
    q.run_until_complete()
    assert got == [{"order": order, "n": 1.5}]
    assert q.counts(channel) == counts(done=1)
    assert q.remove_channel(channel) == 1


def test_any_exception_out_of_a_handler_is_a_failed_attempt(db):
    q = SimplePyQ(db)

    def leaves(args):
        raise SystemExit(3)

    q.add_channel("c", leaves)
    tid = q.enqueue("c", {})
    after = q.enqueue("c", {"ok": True})
    q.run_until_complete()
    assert q.task(tid).status == "failed"
    assert q.task(tid).last_error.endswith("SystemExit: 3")
    assert q.task(after).status == "failed"  # the worker went on to the next task


def test_a_schedule_enqueues_each_fire_time_once_across_two_queues(db):
    queues = [SimplePyQ(db), SimplePyQ(db)]
    for q in queues:
        q.add_schedule("tick", "ticks", {"what": "tick"}, every=0.1)
        q.start()
    time.sleep(1.05)
    for q in queues:
        q.stop()
    tasks = queues[0].tasks("ticks", limit=1000)
    run_ats = sorted(round(t.run_at * 1000) for t in tasks)
    assert len(run_ats) >= 5
    assert all(b - a == 100 for a, b in zip(run_ats, run_ats[1:])), run_ats
    assert tasks[0].args == {"what": "tick"}
    with pytest.raises(ValueError, match="every= or cron="):
        queues[0].add_schedule("x", "ticks", {})
    with pytest.raises(ValueError, match="cron expression"):
        queues[0].add_schedule("y", "ticks", {}, cron="61 * * * *")
    queues[0].add_schedule("daily", "reports", {}, cron="0 6 * * *")
    assert queues[0].remove_schedule("daily")


def test_an_async_def_function_runs_to_its_end(db):
    import asyncio

    q = SimplePyQ(db)
    delayed = []

    async def handler(args):
        await asyncio.sleep(0.01)
        if args == "delay" and not delayed:
            delayed.append(1)
            raise DelayException(0)
        if args == "fail":
            raise KeyError("no such user")
        return {"awaited": args}

    q.add_channel("c", handler, max_workers=2)
    ids = {a: q.enqueue("c", a) for a in ["one", "delay", "fail"]}
    q.run_until_complete()
    assert q.result(ids["one"]) == {"awaited": "one"}
    assert q.result(ids["delay"]) == {"awaited": "delay"} and delayed == [1]
    failed = q.task(ids["fail"])
    assert failed.status == "failed" and "KeyError: 'no such user'" in failed.last_error


def test_memory_is_a_queue_in_this_processs_memory():
    q = SimplePyQ(":memory:")
    ran = []
    q.add_channel("c", ran.append, max_workers=2)
    q.enqueue_many("c", list(range(20)))
    q.run_until_complete()
    assert sorted(ran) == list(range(20))
    assert q.counts("c")["done"] == 20
    # Another is a queue of its own, as with sqlite3.connect(":memory:").
    assert SimplePyQ(":memory:").counts()["done"] == 0


def test_an_empty_path_is_a_value_error_naming_it():
    # SQLite's name for a private temporary file: each connection would have its own.
    with pytest.raises(ValueError, match="path is empty"):
        SimplePyQ("")


def test_a_delay_of_nan_fails_the_attempt():
    """NaN is no length of time: not read as 0, which ran the task again at once, for ever."""
    q = SimplePyQ(":memory:")
    runs = []

    def handler(args):
        runs.append(args)
        raise DelayException(float("nan"))

    q.add_channel("c", handler)
    tid = q.enqueue("c", 1)
    q.start()
    wait_for(lambda: q.task(tid).status == "failed", timeout=5)
    q.stop()
    assert runs == [1]
    assert q.task(tid).last_error == "DelayException without a number of seconds: nan"


def test_delay_exception_takes_a_timedelta():
    q = SimplePyQ(":memory:")
    runs = []

    def handler(args):
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise DelayException(dt.timedelta(milliseconds=200))

    q.add_channel("c", handler)
    q.enqueue("c", 1)
    q.run_until_complete()
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.19
    assert q.counts("c")["done"] == 1
