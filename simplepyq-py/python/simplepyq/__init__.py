"""simplepyq on a Rust engine: the original simplepyq's API, crash-safe and fast.

Code written for the original (``from simplepyq import SimplePyQ, DelayException``) runs
unchanged. Tasks live in a SQLite file (or a redb file, or PostgreSQL); a killed process
loses none, and several processes may share one file.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as _dt
import enum
import inspect
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

try:
    # Before the compiled module: it links SQLite by its library name (libsqlite3.so.0),
    # which then resolves to the library the interpreter's sqlite3 module already loaded.
    # One SQLite in the process: two copies drop each other's locks on the queue file
    # whenever one closes it (and a user's sqlite3.connect(...).close() does), which fails
    # the queue with "disk I/O error" and can corrupt the file.
    import sqlite3 as _stdlib_sqlite3
except ImportError:  # an interpreter built without sqlite3: no second SQLite either
    _stdlib_sqlite3 = None  # type: ignore[assignment]
import warnings

from . import _simplepyq, _traces
from ._simplepyq import Engine as _Engine
from ._simplepyq import QueueError, Task

if _stdlib_sqlite3 is not None and _stdlib_sqlite3.sqlite_version != _simplepyq.sqlite_version:
    warnings.warn(
        f"simplepyq runs on SQLite {_simplepyq.sqlite_version}, the sqlite3 module on "
        f"{_stdlib_sqlite3.sqlite_version}: two SQLite libraries in one process. Opening the "
        "queue file with the sqlite3 module while a queue has it open can break the queue's "
        "locks and corrupt the file.",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = [
    "SimplePyQ",
    "DelayException",
    "QueueError",
    "Task",
    "Cancelled",
    "TaskFailed",
    "parent_results",
]


def parent_results() -> List[Tuple[int, Any]]:
    """In a task's function: what each task it waited for (``after=``, or a group of
    ``enqueue_group``) returned, as ``[(id, result), ...]`` in id order (None for one that
    returned nothing). RuntimeError outside a task's function."""
    return _simplepyq.parent_results()


class Cancelled(str, enum.Enum):
    """What ``SimplePyQ.cancel`` did, as the Rust API's ``Cancelled``. A ``str`` too, so
    ``q.cancel(id) == "removed"`` holds as it did when it returned a plain string."""

    REMOVED = "removed"
    """The task was pending or delayed: it is deleted and will not run."""
    REQUESTED = "requested"
    """The task runs in this process: its handler was asked to stop."""

    def __str__(self) -> str:
        return self.value


class TaskFailed(Exception):
    """Raised by ``SimplePyQ.wait`` for a task that failed for good: ``error`` is its last
    error (the function's traceback), ``task_id`` its id."""

    def __init__(self, task_id: int, error: str):
        super().__init__(f"task {task_id} failed: {error}")
        self.task_id = task_id
        self.error = error


Seconds = Union[int, float, _dt.timedelta]
When = Union[int, float, _dt.datetime]


class DelayException(Exception):
    def __init__(self, delay_seconds: Seconds):
        """Exception to defer a task for a specified time: seconds (an int, as the original
        has it, or a float), or a timedelta."""
        if isinstance(delay_seconds, _dt.timedelta):
            delay_seconds = delay_seconds.total_seconds()
        self.delay_seconds = delay_seconds


def _seconds(name: str, value: Optional[Seconds]) -> Optional[float]:
    return None if value is None else _secs(name, value)


def _secs(name: str, value: Seconds) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be seconds (int, float) or a timedelta, not {type(value).__name__}")
    return float(value)


def _awaited(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``func``, whose coroutine (an ``async def`` function's call) runs to its end on an
    event loop of its own in the worker's thread (``asyncio.run``): what it returns or
    raises is the run's outcome."""

    def call(args: Any) -> Any:
        result = func(args)
        if inspect.iscoroutine(result):
            return asyncio.run(result)
        return result

    return call


def _whole(name: str, value: Any, lowest: int, highest: int) -> int:
    """An int in [lowest, highest], or a TypeError or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lowest <= value <= highest:
        raise ValueError(f"{name} must be an int from {lowest} to {highest}, got {value}")
    return value


# The largest int the engine keeps in 64 bits (ids, limits).
_I64_MAX = 2**63 - 1


def _id(name: str, value: Any) -> int:
    """A task id: an int the engine keeps in 64 bits, from 1."""
    return _whole(name, value, 1, _I64_MAX)


def _ids(name: str, value: Any) -> List[int]:
    """Task ids from an iterable of ints (not a str, whose characters would be read as ids)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        kind = type(value).__name__
        raise TypeError(f"{name} must be an iterable of task ids (ints), not {kind}")
    return [_id(f"an id of {name}", i) for i in value]


def _many(value: Any) -> Any:
    """The arguments of many tasks: an iterable, but not a str, bytes or dict, whose
    characters, bytes or keys would each become a task."""
    if isinstance(value, (str, bytes, bytearray, Mapping)):
        kind = type(value).__name__
        raise TypeError(
            f"many must be an iterable of task arguments (a list, say), not {kind}: each of its "
            "items would be a task of its own; enqueue one task with enqueue"
        )
    return value


def _count(name: str, value: Any) -> int:
    """A count the engine keeps in 32 bits (retries, running tasks, starts)."""
    return _whole(name, value, 0, 2**32 - 1)


def _priority(value: Any) -> int:
    return _whole("priority", value, -(2**31), 2**31 - 1)


def _channel(
    name: str, func: Callable[[Any], Any], max_workers: Any, settings: Dict[str, Any]
) -> Tuple[Any, ...]:
    """The engine's arguments for a channel added with ``func``, ``max_workers`` and
    ``settings`` (``add_channel``'s keywords), checked."""
    backoff = settings["backoff"]
    waits = None
    if backoff is not None:
        waits = (_secs("backoff", backoff[0]), _secs("backoff", backoff[1]))
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
    return (
        name,
        _traces.traced(name, _awaited(func), DelayException),
        max_workers,
        waits,
        _seconds("timeout", settings["timeout"]),
        _seconds("keep_done", settings["keep_done"]),
        _seconds("keep_failed", settings["keep_failed"]),
    )


def _unpickled(
    store_path: Union[str, "os.PathLike[str]"],
    options: Dict[str, Any],
    channels: Dict[str, Tuple[Callable[[Any], Any], int, Dict[str, Any]]],
) -> "SimplePyQ":
    """A pickled queue in the process that unpickles it: opened anew, its channels added."""
    q = SimplePyQ(store_path, **options)
    for name, (func, max_workers, settings) in channels.items():
        q.add_channel(name, func, max_workers, **settings)
    return q


def _epoch(value: Optional[When]) -> Optional[float]:
    """A time as seconds since the epoch; a naive datetime is local time, as in datetime.timestamp()."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"at must be a datetime or seconds since the epoch, not {type(value).__name__}")
    return float(value)


# Queues to stop when the interpreter exits: their handlers need the interpreter. A started
# queue is also held here until it stops, as the original's threads hold theirs: collected
# while running, it would run its handlers on into the interpreter's finalization.
_live: "weakref.WeakSet[SimplePyQ]" = weakref.WeakSet()
_started: "set[SimplePyQ]" = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        queues = list(_live) + [q for q in _started if q not in _live]
    for q in queues:
        # After a Ctrl-C ended a stop's wait for its handlers, that stop goes on (no handler
        # starts) and exit does not wait again. A queue inherited through a fork and not
        # used since is not opened only to be stopped.
        if not q._interrupted and q._core is not None:
            q.stop()


def _after_fork_in_child() -> None:
    # A child forked from a process with queues (multiprocessing's "fork", gunicorn's
    # --preload, Celery's prefork) has their memory but none of their threads, and a lock
    # another thread held at the fork stays held in the child. Each queue opens anew on its
    # store at its first use in the child, with the same channels, not started. The fork
    # waited for the queues' calls into SQLite (whose own locks a child would otherwise
    # inherit held).
    _simplepyq.after_fork_in_child()
    global _live_lock
    _live_lock = threading.Lock()
    queues = set(_live) | _started
    _started.clear()
    for q in queues:
        q._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_simplepyq.before_fork,
        after_in_parent=_simplepyq.after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class SimplePyQ:
    """A task queue: channels of handlers run by worker threads, over a store.

    ``store_path`` is a SQLite file (created if needed; a file of the original simplepyq
    0.1.3 is imported, after a backup copy beside it), a path ending in ``.redb`` for a redb
    file, a ``postgresql://`` URL, or ``":memory:"`` for a queue in this process's memory
    (as with ``sqlite3``: each is a queue of its own, gone when the process ends).
    ``lease``: how long a worker's claim on a task lasts unless renewed (30 s by default); a
    task whose process died runs again once it expired.

    A child process forked from the one that made the queue (multiprocessing's ``fork``
    start method, gunicorn's ``--preload``) may use it: at its first use in the child, the
    queue opens anew on the same store, with the same channels, not started (the parent's
    workers stay the parent's). A redb file serves one process: there the child's first use
    fails with ``QueueError`` (in use). On SQLite the child's locks on the file rest on its
    parent's (SQLite keeps one table of locks per process, which a fork copies): keep the
    parent's queue open while children use the file, as gunicorn's master, a multiprocessing
    pool's parent and Celery's main process do; a process that forks and exits (to run as
    a daemon) should make its queue after the fork.

    A queue given to a process started by ``spawn`` or ``forkserver`` (multiprocessing's
    start methods, a ``ProcessPoolExecutor``) is pickled: it opens anew there on the same
    store, with the same channels, not started (see ``__reduce__``).
    """

    def __init__(
        self,
        store_path: Union[str, "os.PathLike[str]"] = "simplepyq_tasks.db",
        *,
        lease: Optional[Seconds] = None,
        keep_done: Optional[Seconds] = None,
        keep_failed: Optional[Seconds] = None,
    ):
        """Initialize the task scheduler with a SQLite store.

        ``keep_done`` and ``keep_failed`` (seconds or a timedelta): while the queue runs, it
        deletes its channels' done tasks that finished, and failed tasks that failed, longer
        ago than that (a channel's own ``add_channel(keep_done=...)`` comes first). By
        default they are kept until purged or cleared, as in the original."""
        self.store_path = store_path
        self._interrupted = False
        self._opening = (
            os.fspath(store_path),
            DelayException,
            _seconds("lease", lease),
            _seconds("keep_done", keep_done),
            _seconds("keep_failed", keep_failed),
        )
        # Each channel added, as given (function, max_workers, settings): to add it again in
        # a forked child, or in a process the queue is pickled for.
        self._channels: Dict[str, Tuple[Callable[[Any], Any], int, Dict[str, Any]]] = {}
        self._options = {"lease": lease, "keep_done": keep_done, "keep_failed": keep_failed}
        self._reopening = threading.Lock()
        self._core: Optional[_Engine] = _Engine(*self._opening)
        with _live_lock:
            _live.add(self)

    @property
    def _engine(self) -> _Engine:
        core = self._core
        if core is None:
            core = self._reopen()
        return core

    def _forked(self) -> None:
        """In a forked child: lets go of the parent's queue (never closed here, see
        ``_Engine``'s drop) and opens anew at the next use."""
        self._core = None
        self._interrupted = False
        self._reopening = threading.Lock()

    def _reopen(self) -> _Engine:
        with self._reopening:
            if self._core is None:
                core = _Engine(*self._opening)
                for name, (func, max_workers, settings) in self._channels.items():
                    core.add_channel(*_channel(name, func, max_workers, settings))
                self._core = core
            return self._core

    def add_channel(
        self,
        name: str,
        func: Callable[[Any], Any],
        max_workers: int = 1,
        *,
        backoff: Optional[Tuple[Seconds, Seconds]] = None,
        timeout: Optional[Seconds] = None,
        keep_done: Optional[Seconds] = None,
        keep_failed: Optional[Seconds] = None,
    ) -> None:
        """Add a channel with a function to execute tasks.

        ``func`` gets the task's arguments; an ``async def`` function runs on an event loop of
        its own for each task (``asyncio.run``, in the worker's thread). It may raise
        ``DelayException(seconds)`` to run the task again later; any other exception fails
        the attempt (retried while retries are left). ``backoff=(first, most)`` waits
        ``first`` seconds before the first retry, doubling up to ``most`` (each wait drawn
        between half of that and all of it, so that tasks that failed together do not retry
        together); without it retries run at once, as in the original. With ``timeout``
        (seconds or a timedelta), an attempt that runs longer fails with "timed out after
        ..." (retried while retries are left): the function is not interrupted (a thread
        cannot be stopped), its task keeps its lease until it returns, and its attempt is
        then recorded as timed out, whatever it returned.
        ``keep_done`` and ``keep_failed``: how long the channel's finished tasks are kept
        while the queue runs (over the queue's own, see ``SimplePyQ``).
        With the ``opentelemetry`` package installed, ``func`` runs inside a span
        ``process {name}``, a child of the span its task was enqueued in.
        """
        settings = {
            "backoff": backoff,
            "timeout": timeout,
            "keep_done": keep_done,
            "keep_failed": keep_failed,
        }
        args = _channel(name, func, max_workers, settings)
        self._engine.add_channel(*args)
        self._channels[name] = (func, max_workers, settings)

    def pause(self, channel: str) -> bool:
        """Pause a channel for every process and machine on the queue, durably: no worker
        starts another of its tasks (but for claims already under way) until ``resume``;
        running handlers finish, tasks stay queued, ``enqueue`` goes on, and
        ``run_until_complete`` waits for the resume. Return whether it was running.
        KeyError for a channel with no handler here and no task or setting in the queue."""
        return self._engine.pause(channel)

    def resume(self, channel: str) -> bool:
        """Resume a paused channel; return whether it was paused."""
        return self._engine.resume(channel)

    def paused(self) -> List[str]:
        """The paused channels, in name order."""
        return self._engine.paused()

    def stuck(self, channel: Optional[str] = None) -> List[Dict[str, Any]]:
        """The running tasks whose function ran past its channel's ``timeout`` and still
        runs, in any process on the queue (marked within a third of a lease of the deadline,
        until the attempt ends), of ``channel`` or of every channel: dicts of ``id``,
        ``channel``, ``attempt`` and ``since`` (seconds since the epoch)."""
        return [
            {"id": id, "channel": name, "attempt": attempt, "since": since}
            for id, name, attempt, since in self._engine.stuck(channel)
        ]

    def set_max_running(self, channel: str, max_running: Optional[int]) -> bool:
        """At most ``max_running`` of the channel's tasks run at once, across every process and
        machine on the queue (``None``: no limit); durable, changeable while workers run.
        Return whether it changed. ``ValueError`` for 0 (pause the channel instead)."""
        if max_running is not None:
            _count("max_running", max_running)
        return self._engine.set_max_running(channel, max_running)

    def set_rate(self, channel: str, starts: Optional[int], per: Seconds = 1.0) -> bool:
        """At most ``starts`` of the channel's tasks start in each window of ``per`` seconds
        (or a timedelta; windows laid end to end from the Unix epoch), across every process
        and machine on the queue (``None``: no rate); durable, changeable while workers run.
        Return whether it changed. ``ValueError`` for 0 starts or a window under a
        millisecond."""
        if starts is not None:
            _count("starts", starts)
        return self._engine.set_rate(channel, starts, _secs("per", per), False)

    def set_rate_per_key(self, channel: str, starts: Optional[int], per: Seconds = 1.0) -> bool:
        """At most ``starts`` of the channel's tasks with the same ``concurrency_key`` start in
        each window of ``per`` seconds (or a timedelta), each key counted apart, across every
        process and machine on the queue (``None``: no rate); a key whose window is used up
        holds up no other key. Tasks without a key are not counted. Durable, changeable while
        workers run; errors as ``set_rate``. Return whether it changed."""
        if starts is not None:
            _count("starts", starts)
        return self._engine.set_rate(channel, starts, _secs("per", per), True)

    def set_max_running_per_key(self, channel: str, max_running: int) -> bool:
        """At most ``max_running`` of the channel's tasks with the same ``concurrency_key``
        run at once, across every process and machine on the queue (default 1: one at a
        time per key); a busy key holds up no other key's tasks. Return whether it changed.
        ``ValueError`` for 0."""
        _count("max_running", max_running)
        return self._engine.set_max_running_per_key(channel, max_running)

    def remove_channel(self, name: str) -> int:
        """Remove a channel, its handler, and all its tasks; return how many tasks."""
        removed = self._engine.remove_channel(name)
        self._channels.pop(name, None)
        return removed

    def enqueue(
        self,
        channel: str,
        args: Any,
        retries: int = 0,
        *,
        delay: Optional[Seconds] = None,
        at: Optional[When] = None,
        priority: int = 0,
        unique: Optional[str] = None,
        concurrency_key: Optional[str] = None,
        timeout: Optional[Seconds] = None,
        after: Optional[Iterable[int]] = None,
        traceparent: Optional[str] = None,
    ) -> int:
        """Enqueue a task for a channel; return its id.

        ``args`` is anything MessagePack carries (dicts, lists, str, bytes, numbers, None).
        ``retries`` more attempts follow a failed one. ``delay`` (seconds or a timedelta) or
        ``at`` (a datetime, or seconds since the epoch) run it later; higher ``priority``
        runs first; while a task with the same ``unique`` key is unfinished in the channel,
        its id is returned and nothing is added. Of the channel's tasks with the same
        ``concurrency_key``, at most ``set_max_running_per_key`` (default 1) run at once.
        ``timeout`` (seconds or a timedelta) limits each run of this task, before the
        channel's ``timeout``. With ``after`` (task ids), the task waits (status
        ``"waiting"``) until every one of those tasks is done, and fails if one of them
        fails for good or is cancelled; its function reads what they returned with
        ``simplepyq.parent_results()``. ValueError for a parent that does not exist or
        failed. The task keeps ``traceparent`` (a W3C trace context), or else, with the
        ``opentelemetry`` package installed, the current span's: its function's span, in
        whichever process runs it, continues that trace.
        """
        return self._engine.enqueue(
            channel,
            args,
            _count("retries", retries),
            _seconds("delay", delay),
            _epoch(at),
            _priority(priority),
            unique,
            concurrency_key,
            _seconds("timeout", timeout),
            None if after is None else _ids("after", after),
            traceparent if traceparent is not None else _traces.current(),
        )

    def enqueue_many(
        self,
        channel: str,
        many: Iterable[Any],
        retries: int = 0,
        *,
        delay: Optional[Seconds] = None,
        at: Optional[When] = None,
        priority: int = 0,
    ) -> List[int]:
        """Enqueue many tasks in one transaction, all or none; return their ids. Each keeps
        the current span's trace context, as with ``enqueue``."""
        return self._engine.enqueue_many(
            channel,
            _many(many),
            _count("retries", retries),
            _seconds("delay", delay),
            _epoch(at),
            _priority(priority),
            _traces.current(),
        )

    def enqueue_group(
        self,
        channel: str,
        many: Iterable[Any],
        then: str,
        then_args: Any = None,
        retries: int = 0,
        *,
        priority: int = 0,
    ) -> Tuple[List[int], int]:
        """Enqueue tasks of ``channel`` and a final task of ``then`` that runs once every
        one of them is done (its function reads what they returned with
        ``simplepyq.parent_results()``), all in one transaction; return the group's ids and
        the final task's id."""
        return self._engine.enqueue_group(
            channel,
            _many(many),
            then,
            then_args,
            _count("retries", retries),
            _priority(priority),
            _traces.current(),
        )

    def parents(self, id: int) -> List[int]:
        """The ids of the tasks task ``id`` waits (or waited) for."""
        return self._engine.parents(_id("id", id))

    def add_schedule(
        self,
        name: str,
        channel: str,
        args: Any,
        *,
        every: Optional[Seconds] = None,
        cron: Optional[str] = None,
        retries: int = 0,
        priority: int = 0,
        unique: Optional[str] = None,
    ) -> None:
        """Enqueue a task for ``channel`` with ``args`` periodically: ``every`` so many
        seconds (fire times are its multiples since the epoch) or by a ``cron`` expression
        (5 fields, or 6 with seconds first), read in UTC.

        Each fire time is enqueued once, however many processes sharing the store run the
        same schedule (by ``name``), and restarts neither repeat nor lose one; firings
        missed while nothing ran are made up for by one run. Fires while the queue runs.
        With ``unique``, a firing while the last one's task is unfinished adds nothing.
        """
        self._engine.add_schedule(
            name,
            channel,
            args,
            _seconds("every", every),
            cron,
            _count("retries", retries),
            _priority(priority),
            unique,
        )

    def remove_schedule(self, name: str) -> bool:
        """Stop firing a schedule in this queue; return whether there was one."""
        return self._engine.remove_schedule(name)

    def start(self) -> None:
        """Start the scheduler to process tasks in the background."""
        with _live_lock:
            _started.add(self)
        self._engine.start()

    def stop(self, timeout: Optional[Seconds] = None) -> List[int]:
        """Stop the workers and wait for running handlers to finish (at most ``timeout``
        seconds if given). Tasks not started stay queued. Returns the ids of tasks whose
        handlers still ran at the timeout (their outcomes are recorded when they end).
        Ctrl-C ends the wait with KeyboardInterrupt (the stop goes on)."""
        try:
            running = self._engine.stop(_seconds("timeout", timeout))
        except KeyboardInterrupt:
            self._interrupted = True
            raise
        finally:
            with _live_lock:
                _started.discard(self)
        return running

    def run_until_complete(self) -> None:
        """Run until no task of this queue's channels is pending, running or delayed, then
        stop. Ctrl-C stops the queue (running handlers finish) and raises KeyboardInterrupt."""
        with _live_lock:
            _started.add(self)
        try:
            self._engine.run_until_complete()
        finally:
            with _live_lock:
                _started.discard(self)

    def clear_failed(self, channel: Optional[str] = None) -> int:
        """Remove the failed tasks (of one channel, or all); return how many."""
        return self._engine.clear_failed(channel)

    def requeue_failed(self, channel: Optional[str] = None, retries: Optional[int] = None) -> int:
        """Requeue the failed tasks with their original or a new retry count; return how many."""
        count = None if retries is None else _count("retries", retries)
        return self._engine.requeue_failed(channel, count)

    def purge_done(self, channel: Optional[str] = None, older_than: Seconds = 0) -> int:
        """Delete the done tasks (of one channel, or all) finished more than ``older_than``
        seconds ago; return how many."""
        return self._engine.purge_done(channel, _secs("older_than", older_than))

    def counts(self, channel: Optional[str] = None) -> Dict[str, int]:
        """Tasks per status: pending, running, delayed, done, failed, waiting."""
        return self._engine.counts(channel)

    def tasks(
        self,
        channel: Optional[str] = None,
        status: Optional[str] = None,
        limit: int = 100,
        after: Optional[int] = None,
    ) -> List[Task]:
        """A page of tasks in id order; pass the last id as ``after`` for the next page."""
        after = None if after is None else _whole("after", after, 0, _I64_MAX)
        return self._engine.tasks(channel, status, _whole("limit", limit, 0, _I64_MAX), after)

    def task(self, id: int) -> Optional[Task]:
        """The task with this id, or None."""
        return self._engine.task(_id("id", id))

    def wait(self, id: int, timeout: Optional[Seconds] = None) -> Any:
        """Wait for a task to end, and return what its function returned (None if it
        returned nothing), in this process or any other on the queue: an outcome recorded
        here ends the wait at once, another process's within 4 ms. Raise ``TaskFailed`` if
        it failed for good, ``KeyError`` if it is gone (cancelled, its channel removed,
        deleted), ``TimeoutError`` if it has not ended within ``timeout`` seconds (``None``:
        wait as long as it takes; Ctrl-C interrupts)."""
        limit = _seconds("timeout", timeout)
        ended = self._engine.wait(_id("id", id), limit)
        if ended is None:
            raise TimeoutError(f"task {id} has not ended within {limit} s")
        kind, value = ended
        if kind == "failed":
            raise TaskFailed(id, value)
        if kind == "gone":
            raise KeyError(f"task {id} is not in the queue (cancelled, removed or deleted)")
        return value

    def result(self, id: int) -> Any:
        """What the task's function returned when it succeeded (anything MessagePack can
        hold, at most 1 MiB of it; a larger or unencodable value fails the attempt): stored
        with the task as it became done, in any process on the queue. None while the task is
        not done, if the function returned None, or if the task does not exist."""
        return self._engine.result(_id("id", id))

    def cancel(self, id: int) -> Cancelled:
        """Cancel a task: a queued one is deleted (``Cancelled.REMOVED``); a running one is
        asked to stop (``Cancelled.REQUESTED``: its handler ends as it will). KeyError if
        there is none; ValueError if it is finished or running in another process."""
        return Cancelled(self._engine.cancel(_id("id", id)))

    def __reduce__(self) -> Tuple[Any, ...]:
        """Pickled, for a process started by multiprocessing's ``spawn`` or ``forkserver``
        (a ``Process``'s arguments, a ``ProcessPoolExecutor``'s calls): the queue travels as
        its store, its options and its channels, and opens anew in that process, not
        started. Its functions are pickled as pickle pickles any function, by module and
        name. A queue in memory is this process's own and is not pickled."""
        if os.fspath(self.store_path) == ":memory:":
            raise TypeError(
                'a queue in memory (":memory:") is this process\'s own: it cannot be pickled '
                "for another process; give the queue a file"
            )
        return (_unpickled, (self.store_path, self._options, self._channels))

    def __enter__(self) -> "SimplePyQ":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
