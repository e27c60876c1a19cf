//! Flow control: whether, and how fast, a channel's tasks start, for every process and
//! machine sharing the store.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use crate::Result;

/// A channel's flow settings, as the store keeps them (durably, for every process).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Flow {
    /// Paused: no claim takes the channel's tasks until it is resumed.
    pub paused: bool,
    /// At most this many of the channel's tasks run at once, across every process and
    /// machine sharing the store (tasks claimed and not yet started count); `None` for no
    /// limit. Never 0: pause a channel instead.
    pub max_running: Option<u32>,
    /// At most this many tasks with the same concurrency key
    /// ([`crate::NewTask::concurrency_key`]) run at once, across every process; tasks
    /// without a key are not counted. Default 1: one at a time per key. Never 0.
    pub max_running_per_key: u32,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            paused: false,
            max_running: None,
            max_running_per_key: 1,
        }
    }
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

    /// Sets how many of `channel`'s tasks may run at once across every process sharing the
    /// store (`None`: no limit); returns whether that changed its setting.
    ///
    /// # Contract
    /// A claim of a channel with a limit of N returns at most N minus the channel's running
    /// tasks (none if that is not positive): claims of all processes together never leave
    /// more than N running, the count and the claim being one atomic step. A task holds its
    /// slot from its claim until its outcome, release or recovery. While the channel has N
    /// or more running tasks, [`crate::ClaimStore::next_wakeup`] gives only their lease
    /// expiries. Lowering the limit stops no running task. A limit of 0 is
    /// [`crate::Error::InvalidConfig`] (pause the channel instead); the setting outlives the
    /// store and [`crate::AdminStore::remove_channel`], as a pause does.
    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool>;

    /// Sets how many of `channel`'s tasks with the same concurrency key may run at once
    /// across every process sharing the store (default 1); returns whether that changed
    /// its setting.
    ///
    /// # Contract
    /// A claim takes due tasks in claim order and skips a task whose key already has
    /// `max` running tasks (those it took itself count), as [`KeyedClaim`] decides: claims
    /// of all processes together never leave more than `max` tasks of one key running,
    /// and a busy key holds up no task of another key or without one. While every due
    /// task's key is busy, [`crate::ClaimStore::next_wakeup`] gives no time for them (only
    /// delayed tasks' and leases' times). Tasks without a key are not counted. A limit of 0
    /// is [`crate::Error::InvalidConfig`]; the setting outlives the store and
    /// [`crate::AdminStore::remove_channel`], as a pause does.
    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool>;

    /// Every channel whose flow settings are not the default, in name order.
    fn flows(&self) -> Result<BTreeMap<String, Flow>>;
}

/// The error for a limit of 0 running tasks, and `Ok` for the others: the rule of
/// [`FlowStore::set_max_running`], for every store.
pub fn check_max_running(max: Option<u32>) -> Result<()> {
    match max {
        Some(0) => Err(crate::Error::InvalidConfig(
            "a channel's limit of running tasks must be at least 1: pause the channel to run \
             none"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// The error for a per-key limit of 0 running tasks, and `Ok` for the others: the rule
/// of [`FlowStore::set_max_running_per_key`], for every store.
pub fn check_max_running_per_key(max: u32) -> Result<()> {
    if max == 0 {
        return Err(crate::Error::InvalidConfig(
            "a channel's limit of running tasks per concurrency key must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Changes the settings of `key` in `flows` with `change`, keeping no entry for the
/// defaults; returns whether they changed. For stores (and models) that keep settings in a
/// map.
pub fn change_flow<K: Ord>(
    flows: &mut BTreeMap<K, Flow>,
    key: K,
    change: impl FnOnce(&mut Flow),
) -> bool {
    let before = flows.get(&key).cloned().unwrap_or_default();
    let mut flow = before.clone();
    change(&mut flow);
    if flow == before {
        return false;
    }
    if flow.is_default() {
        flows.remove(&key);
    } else {
        flows.insert(key, flow);
    }
    true
}

/// How many tasks a claim of up to `limit` may take from a channel with `flow` and
/// `running` running tasks: the rule every store's claim follows.
pub fn claim_allowance(flow: &Flow, running: usize, limit: usize) -> usize {
    if flow.paused {
        return 0;
    }
    match flow.max_running {
        Some(max) => limit.min((max as usize).saturating_sub(running)),
        None => limit,
    }
}

/// The rule of a claim of tasks that may have concurrency keys, for every store: taking a
/// channel's due tasks in claim order, the claim skips a task whose key has
/// [`Flow::max_running_per_key`] tasks running, counting those it took itself, and stops
/// once it took its allowance ([`claim_allowance`]). A busy key holds up no other task.
///
/// ```
/// use simplepyq_core::{Flow, KeyedClaim};
///
/// let mut claim = KeyedClaim::new(&Flow::default(), 3);
/// let running = |key: &str| Ok::<_, ()>(usize::from(key == "busy"));
/// assert_eq!(claim.take(Some("busy"), running), Ok(false)); // one running: skipped
/// assert_eq!(claim.take(Some("a"), running), Ok(true));
/// assert_eq!(claim.take(Some("a"), running), Ok(false)); // the one taken counts
/// assert_eq!(claim.take(None, running), Ok(true)); // no key, no rule
/// assert!(!claim.is_full());
/// ```
#[derive(Debug)]
pub struct KeyedClaim {
    per_key: usize,
    room: usize,
    /// Each key seen: its running tasks, and those taken by this claim.
    busy: HashMap<String, usize>,
}

impl KeyedClaim {
    /// A claim that may take `allowance` tasks of a channel with `flow`.
    pub fn new(flow: &Flow, allowance: usize) -> Self {
        KeyedClaim {
            per_key: flow.max_running_per_key as usize,
            room: allowance,
            busy: HashMap::new(),
        }
    }

    /// Whether the claim takes the next due task, whose concurrency key is `key`;
    /// `running` tells how many tasks of a key run now (asked once per key). Never takes
    /// a task once [`KeyedClaim::is_full`].
    pub fn take<E>(
        &mut self,
        key: Option<&str>,
        running: impl FnOnce(&str) -> std::result::Result<usize, E>,
    ) -> std::result::Result<bool, E> {
        if self.room == 0 {
            return Ok(false);
        }
        if let Some(key) = key {
            let busy = match self.busy.get_mut(key) {
                Some(busy) => busy,
                None => {
                    let n = running(key)?;
                    self.busy.entry(key.to_owned()).or_insert(n)
                }
            };
            if *busy >= self.per_key {
                return Ok(false);
            }
            *busy += 1;
        }
        self.room -= 1;
        Ok(true)
    }

    /// Whether the claim took its allowance: no more task is taken.
    pub fn is_full(&self) -> bool {
        self.room == 0
    }
}

forward!(FlowStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool>;
    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool>;
    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool>;
    fn flows(&self) -> Result<BTreeMap<String, Flow>>;
});
