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
    /// At most so many of the channel's tasks start per window of time, across every
    /// process; `None` for no limit.
    pub rate: Option<Rate>,
}

/// A channel's limit of task starts: at most `starts` claims of its tasks in each window of
/// `per`, the windows laid end to end from the Unix epoch (a window starts at each multiple
/// of `per`). A claim counts as a start (a task claimed and given back unstarted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rate {
    /// Starts per window; at least 1.
    pub starts: u32,
    /// The window's length; at least a millisecond, kept in whole milliseconds.
    pub per: std::time::Duration,
}

/// The starts counted in a channel's current window of its [`Rate`], as a store keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// The window's start.
    pub start: crate::Timestamp,
    /// The starts counted in it.
    pub used: u32,
}

impl Rate {
    /// `starts` per `per`.
    pub fn new(starts: u32, per: std::time::Duration) -> Self {
        Rate { starts, per }
    }

    /// The window's length in milliseconds (at least one).
    pub fn per_ms(&self) -> i64 {
        crate::time::millis_of(self.per).max(1)
    }

    /// The start of the window that holds `now`.
    pub fn window_of(&self, now: crate::Timestamp) -> crate::Timestamp {
        let ms = now.as_millis();
        crate::Timestamp::from_millis(ms - ms.rem_euclid(self.per_ms()))
    }

    /// How many more starts the window that holds `now` allows, given the store's last
    /// window (`None`: no start counted yet). A claim whose `now` lies before the last
    /// window (it waited for the store while others claimed) is counted in that window:
    /// windows never go back.
    pub fn room(&self, window: Option<RateWindow>, now: crate::Timestamp) -> usize {
        self.starts.saturating_sub(self.current(window, now).used) as usize
    }

    /// The window after `taken` more starts at `now`.
    pub fn take(
        &self,
        window: Option<RateWindow>,
        now: crate::Timestamp,
        taken: usize,
    ) -> RateWindow {
        let current = self.current(window, now);
        RateWindow {
            start: current.start,
            used: current
                .used
                .saturating_add(u32::try_from(taken).unwrap_or(u32::MAX)),
        }
    }

    /// The window a claim at `now` counts in: the one that holds `now`, or the last one if
    /// that is later.
    fn current(&self, window: Option<RateWindow>, now: crate::Timestamp) -> RateWindow {
        let start = self.window_of(now);
        match window {
            Some(w) if w.start >= start => w,
            _ => RateWindow { start, used: 0 },
        }
    }

    /// When the next start is allowed, if the last window is used up: its end.
    pub fn free_at(&self, window: Option<RateWindow>) -> Option<crate::Timestamp> {
        let w = window?;
        let end = w.start.as_millis().saturating_add(self.per_ms());
        (w.used >= self.starts).then(|| crate::Timestamp::from_millis(end))
    }
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            paused: false,
            max_running: None,
            max_running_per_key: 1,
            rate: None,
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

    /// Sets how many of `channel`'s tasks may start per window of time across every process
    /// sharing the store (`None`: no limit); returns whether that changed its setting.
    ///
    /// # Contract
    /// Claims of all processes together start at most [`Rate::starts`] of the channel's tasks
    /// in each window of [`Rate::per`] (windows from the Unix epoch, by the claims' `now`),
    /// the count and the claim being one atomic step. While the window is used up,
    /// [`crate::ClaimStore::next_wakeup`] gives no time for the channel's queued tasks
    /// before the window's end, so idle workers sleep until then. A changed rate counts its
    /// starts afresh (the current window's count is dropped). 0 starts, or a window
    /// under a millisecond, is [`crate::Error::InvalidConfig`]; the setting outlives the
    /// store and [`crate::AdminStore::remove_channel`].
    fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool>;

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

/// The error for a rate of 0 starts or a window under a millisecond, and `Ok` for the
/// others: the rule of [`FlowStore::set_rate`], for every store.
pub fn check_rate(rate: Option<Rate>) -> Result<()> {
    match rate {
        Some(r) if r.starts == 0 => Err(crate::Error::InvalidConfig(
            "a channel's rate must allow at least 1 start: pause the channel to start none".into(),
        )),
        Some(r) if r.per.as_millis() == 0 || r.per.as_millis() > i64::MAX as u128 => {
            Err(crate::Error::InvalidConfig(format!(
                "a rate's window must be from 1 ms to {} ms, not {:?}",
                i64::MAX,
                r.per
            )))
        }
        _ => Ok(()),
    }
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
    fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool>;
    fn flows(&self) -> Result<BTreeMap<String, Flow>>;
});

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Timestamp;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn windows_of_a_rate_fill_up_and_never_go_back() {
        let rate = Rate::new(2, Duration::from_secs(1));
        assert_eq!(rate.room(None, at(1_500)), 2);
        let used = rate.take(None, at(1_500), 2);
        assert_eq!(
            used,
            RateWindow {
                start: at(1_000),
                used: 2
            }
        );
        assert_eq!(rate.room(Some(used), at(1_999)), 0);
        assert_eq!(rate.free_at(Some(used)), Some(at(2_000)));
        // A claim whose time lies before the last window (it waited while others claimed)
        // counts in that window, not in a fresh one of its own (seen failing across
        // PostgreSQL processes: 62 starts in a second of a rate of 50).
        assert_eq!(rate.room(Some(used), at(900)), 0);
        assert_eq!(rate.take(Some(used), at(900), 0).start, at(1_000));
        assert_eq!(rate.room(Some(used), at(2_000)), 2);
        assert_eq!(rate.free_at(Some(rate.take(None, at(2_000), 1))), None);
    }
}
