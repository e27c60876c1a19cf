//! Flow control: whether, and how fast, a channel's tasks start, for every process and
//! machine sharing the store.

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::Result;

/// A channel's flow settings, as the store keeps them (durably, for every process).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Flow {
    /// Paused: no claim takes the channel's tasks until it is resumed.
    pub paused: bool,
}

impl Flow {
    /// Whether every setting is the default (a channel without a row of settings).
    pub fn is_default(&self) -> bool {
        *self == Flow::default()
    }
}

/// Flow control: settings of a channel that every process claiming from the store obeys;
/// see [`super::Store`] for what every method of a store promises.
pub trait FlowStore: Send + Sync + Debug + 'static {
    /// Pauses (`paused`) or resumes `channel`; returns whether that changed its setting.
    ///
    /// # Contract
    /// While a channel is paused, [`crate::ClaimStore::claim`] of it returns nothing (a
    /// claim under way when the pause commits may still return tasks), and
    /// [`crate::ClaimStore::next_wakeup`] gives only the lease expiries of its running
    /// tasks, so that idle workers sleep instead of claiming in vain. Enqueues, outcomes,
    /// lease renewals, recovery of expired leases and administration go on as before. A
    /// resume wakes the channel's watchers ([`crate::ClaimStore::watch`]) in other
    /// processes. The setting outlives the store (it is read back after reopening) and
    /// [`crate::AdminStore::remove_channel`]. An invalid channel name is
    /// [`crate::Error::InvalidChannel`].
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool>;

    /// Every channel whose flow settings are not the default, in name order.
    fn flows(&self) -> Result<BTreeMap<String, Flow>>;
}

forward!(FlowStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool>;
    fn flows(&self) -> Result<BTreeMap<String, Flow>>;
});
