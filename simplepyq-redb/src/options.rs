//! The settings of a [`RedbStore`](crate::RedbStore)(crate::RedbStore).

/// How much a commit survives. See the [crate docs](crate#what-it-survives).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedbDurability {
    /// Flushed at every commit: survives a process crash and a power loss.
    #[default]
    Immediate,
    /// Not flushed: a crash may lose the latest commits.
    None,
}

/// Settings of a [`RedbStore`](crate::RedbStore).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RedbOptions {
    /// What a commit survives.
    pub durability: RedbDurability,
    /// The largest the file may grow, in bytes; `None` (the default) for no limit but the
    /// disk's. A write that would grow the file past it fails with [`Error::Full`](simplepyq_core::Error::Full) and
    /// changes nothing, as on a full disk; what was committed stays, and the store goes on
    /// once there is room (a smaller queue, or a reopen with a larger limit).
    pub max_size: Option<u64>,
}

impl RedbOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the durability.
    pub fn durability(mut self, durability: RedbDurability) -> Self {
        self.durability = durability;
        self
    }

    /// Caps the file at `bytes`; see [`RedbOptions::max_size`].
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }
}
