//! The settings of a [`SqliteStore`](crate::SqliteStore)(crate::SqliteStore).

use std::time::Duration;

/// How much a commit survives. See the [crate docs](crate#what-it-survives).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: survives a process crash.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: survives a power loss too.
    Full,
}

/// Settings of a [`SqliteStore`](crate::SqliteStore).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// What a commit survives.
    pub durability: Durability,
    /// How long one call waits for another connection's lock before it reports
    /// [`Error::Busy`](simplepyq_core::Error::Busy) (30 s by default). Locks are held for one
    /// short transaction, so waiting this long means something else holds the file.
    pub busy_timeout: Duration,
    /// The most the database file may grow to, in bytes (rounded down to whole pages);
    /// `None` (the default) for SQLite's own limit. Writes that would pass it fail with
    /// [`Error::Full`](simplepyq_core::Error::Full) and change nothing; what was committed stays.
    /// Enqueues stop an eighth of it short (at least 8 pages), left for claims and outcomes.
    pub max_size: Option<u64>,
    /// Whether a running queue watches for work other processes add, waking the channel's
    /// idle workers at once: on Unix by a socket in a folder beside the file
    /// (`FILE-wake/`), which costs nothing while idle; where no socket can be had, by reading
    /// the file's change counter every this long (1 ms by default). `None` turns watching
    /// off; the queue then notices such work by polling.
    pub watch_interval: Option<Duration>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(30),
            max_size: None,
            watch_interval: Some(Duration::from_millis(1)),
        }
    }
}

impl SqliteOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets how long a call waits for a lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Caps the size of the database file.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Sets how often a running queue looks for other processes' work where it has no
    /// socket to be told by; `None` for no watching at all.
    pub fn watch_interval(mut self, interval: Option<Duration>) -> Self {
        self.watch_interval = interval;
        self
    }
}
