"""Type stubs of the compiled module `simplepyq._simplepyq` (the Rust engine)."""

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

sqlite_version: str

class QueueError(RuntimeError):
    """The store failed: a file that is damaged, not a queue, or unwritable; a database
    server that cannot be reached."""

class Task:
    """A stored task. Times are seconds since the Unix epoch, as time.time() gives them."""

    @property
    def id(self) -> int: ...
    @property
    def channel(self) -> str: ...
    @property
    def args(self) -> Any: ...
    @property
    def status(self) -> str: ...
    @property
    def retries_left(self) -> int: ...
    @property
    def max_retries(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def run_at(self) -> float: ...
    @property
    def last_error(self) -> Optional[str]: ...
    @property
    def created_at(self) -> float: ...
    @property
    def updated_at(self) -> float: ...
    @property
    def priority(self) -> int: ...
    @property
    def unique_key(self) -> Optional[str]: ...

class Engine:
    def __new__(
        cls, store: str, delay_exception: type, lease: Optional[float] = None
    ) -> "Engine": ...
    def add_channel(
        self,
        name: str,
        func: Callable[[Any], Any],
        max_workers: int,
        backoff: Optional[Tuple[float, float]] = None,
    ) -> None: ...
    def enqueue(
        self,
        channel: str,
        args: Any,
        retries: int,
        delay: Optional[float],
        at: Optional[float],
        priority: int,
        unique: Optional[str],
    ) -> int: ...
    def enqueue_many(
        self,
        channel: str,
        many: Iterable[Any],
        retries: int,
        delay: Optional[float],
        at: Optional[float],
        priority: int,
    ) -> List[int]: ...
    def add_schedule(
        self,
        name: str,
        channel: str,
        args: Any,
        every: Optional[float],
        cron: Optional[str],
        retries: int,
        priority: int,
        unique: Optional[str],
    ) -> None: ...
    def remove_schedule(self, name: str) -> bool: ...
    def start(self) -> None: ...
    def stop(self, timeout: Optional[float] = None) -> List[int]: ...
    def run_until_complete(self) -> None: ...
    def clear_failed(self, channel: Optional[str] = None) -> int: ...
    def requeue_failed(
        self, channel: Optional[str] = None, retries: Optional[int] = None
    ) -> int: ...
    def remove_channel(self, name: str) -> int: ...
    def purge_done(self, channel: Optional[str], older_than: float) -> int: ...
    def counts(self, channel: Optional[str] = None) -> Dict[str, int]: ...
    def tasks(
        self,
        channel: Optional[str],
        status: Optional[str],
        limit: int,
        after: Optional[int],
    ) -> List[Task]: ...
    def task(self, id: int) -> Optional[Task]: ...
    def cancel(self, id: int) -> str: ...
