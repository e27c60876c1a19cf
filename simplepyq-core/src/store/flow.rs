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
    /// At most so many tasks with the same concurrency key start per window of time, across
    /// every process; `None` for no limit. Tasks without a key are not counted.
    pub rate_per_key: Option<Rate>,
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
            rate_per_key: None,
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

    /// Sets how many of `channel`'s tasks with the same concurrency key may start per
    /// window of time across every process sharing the store (`None`: no limit); returns
    /// whether that changed its setting.
    ///
    /// # Contract
    /// As [`FlowStore::set_rate`], for each key apart: claims of all processes together
    /// start at most [`Rate::starts`] tasks of one key in each window of [`Rate::per`], as
    /// [`KeyedClaim`] decides (the count and the claim being one atomic step), and a key
    /// whose window is used up holds up no task of another key or without one. While a
    /// key's window is used up, [`crate::ClaimStore::next_wakeup`] gives no time for its
    /// pending tasks before the window's end ([`KeyedWake`]). A changed rate counts every
    /// key's starts afresh. Tasks without a key are not counted. Bad rates are refused as
    /// [`FlowStore::set_rate`] refuses them; the setting outlives the store and
    /// [`crate::AdminStore::remove_channel`].
    fn set_rate_per_key(&self, channel: &str, rate: Option<Rate>) -> Result<bool>;

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

/// What a store knows of a concurrency key when a claim looks at it: how many of the
/// channel's tasks with it run, and its last window of starts (kept only for a channel with
/// a [`Flow::rate_per_key`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyLoad {
    /// The key's running tasks.
    pub running: usize,
    /// Its last window of starts, if one was counted.
    pub window: Option<RateWindow>,
}

impl KeyLoad {
    /// A key with `running` running tasks and no window of starts.
    pub fn running(running: usize) -> Self {
        KeyLoad {
            running,
            window: None,
        }
    }
}

/// The rule of a claim of tasks that may have concurrency keys, for every store: taking a
/// channel's due tasks in claim order, the claim skips a task whose key has
/// [`Flow::max_running_per_key`] tasks running, or whose key's window of
/// [`Flow::rate_per_key`] is used up, counting those it took itself, and stops once it took
/// its allowance ([`claim_allowance`]). A busy key holds up no other task.
///
/// ```
/// use simplepyq_core::{Flow, KeyLoad, KeyedClaim, Timestamp};
///
/// let mut claim = KeyedClaim::new(&Flow::default(), 3, Timestamp::from_millis(0));
/// let load = |key: &str| Ok::<_, ()>(KeyLoad::running(usize::from(key == "busy")));
/// assert_eq!(claim.take(Some("busy"), load), Ok(false)); // one running: skipped
/// assert_eq!(claim.take(Some("a"), load), Ok(true));
/// assert_eq!(claim.take(Some("a"), load), Ok(false)); // the one taken counts
/// assert_eq!(claim.take(None, load), Ok(true)); // no key, no rule
/// assert!(!claim.is_full());
/// ```
#[derive(Debug)]
pub struct KeyedClaim {
    per_key: usize,
    rate: Option<Rate>,
    now: crate::Timestamp,
    room: usize,
    /// Each key seen: its load, with the tasks this claim took counted in it.
    keys: HashMap<String, KeyUse>,
}

/// A key as a claim counts it.
#[derive(Debug)]
struct KeyUse {
    load: KeyLoad,
    /// Whether this claim took a task of the key.
    took: bool,
}

impl KeyedClaim {
    /// A claim at `now` that may take `allowance` tasks of a channel with `flow`.
    pub fn new(flow: &Flow, allowance: usize, now: crate::Timestamp) -> Self {
        KeyedClaim {
            per_key: flow.max_running_per_key as usize,
            rate: flow.rate_per_key,
            now,
            room: allowance,
            keys: HashMap::new(),
        }
    }

    /// Whether the claim takes the next due task, whose concurrency key is `key`; `load`
    /// tells how many tasks of a key run now and its last window of starts (asked once per
    /// key). Never takes a task once [`KeyedClaim::is_full`].
    pub fn take<E>(
        &mut self,
        key: Option<&str>,
        load: impl FnOnce(&str) -> std::result::Result<KeyLoad, E>,
    ) -> std::result::Result<bool, E> {
        if self.room == 0 {
            return Ok(false);
        }
        if let Some(key) = key {
            let used = match self.keys.get_mut(key) {
                Some(used) => used,
                None => {
                    let load = load(key)?;
                    let fresh = KeyUse { load, took: false };
                    self.keys.entry(key.to_owned()).or_insert(fresh)
                }
            };
            if used.load.running >= self.per_key {
                return Ok(false);
            }
            if let Some(rate) = self.rate {
                if rate.room(used.load.window, self.now) == 0 {
                    return Ok(false);
                }
                used.load.window = Some(rate.take(used.load.window, self.now, 1));
            }
            used.load.running += 1;
            used.took = true;
        }
        self.room -= 1;
        Ok(true)
    }

    /// Whether the claim took its allowance: no more task is taken.
    pub fn is_full(&self) -> bool {
        self.room == 0
    }

    /// The keys' windows of starts the store saves after the claim: those of the keys it
    /// took tasks of, with those starts counted (none without a rate per key).
    pub fn windows(&self) -> CountedWindows {
        let mut windows = Vec::new();
        for (key, used) in &self.keys {
            if let (true, Some(window)) = (used.took, used.load.window) {
                windows.push((key.clone(), window));
            }
        }
        windows
    }
}

/// The windows of starts per key a claim counted ([`KeyedClaim::windows`]): (key, window).
pub type CountedWindows = Vec<(String, RateWindow)>;

/// The rule of a channel's next wake-up for its pending tasks with concurrency keys
/// ([`crate::ClaimStore::next_wakeup`]), for stores that go through the tasks in Rust:
/// looking at the pending tasks in claim order, a task whose key is busy gives no time (an
/// outcome wakes the channel), one whose key's window of starts is used up gives its end
/// ([`Rate::free_at`]), and any other its run-at, after which no later task can give an
/// earlier time (pending tasks are due).
///
/// ```
/// use std::time::Duration;
/// use simplepyq_core::{Flow, KeyLoad, KeyedWake, Rate, RateWindow, Timestamp};
///
/// let mut flow = Flow::default();
/// flow.rate_per_key = Some(Rate::new(1, Duration::from_secs(1)));
/// let used = RateWindow { start: Timestamp::from_millis(0), used: 1 };
/// let load = |key: &str| Ok::<_, ()>(match key {
///     "busy" => KeyLoad::running(1),
///     _ => KeyLoad { running: 0, window: Some(used) },
/// });
/// let mut wake = KeyedWake::new(&flow);
/// assert_eq!(wake.look(Some("busy"), Timestamp::from_millis(5), load), Ok(false));
/// assert_eq!(wake.look(Some("used"), Timestamp::from_millis(5), load), Ok(false));
/// assert_eq!(wake.earliest(), Some(Timestamp::from_millis(1_000))); // the window's end
/// assert_eq!(wake.look(None, Timestamp::from_millis(7), load), Ok(true));
/// assert_eq!(wake.earliest(), Some(Timestamp::from_millis(7)));
/// ```
#[derive(Debug)]
pub struct KeyedWake {
    per_key: usize,
    rate: Option<Rate>,
    seen: HashMap<String, KeyWait>,
    earliest: Option<crate::Timestamp>,
}

/// How the tasks of a key wait, as [`KeyedWake`] sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyWait {
    /// Its running tasks are at the limit: until an outcome.
    Busy,
    /// Until its window of starts ends.
    Until(crate::Timestamp),
    /// Not at all.
    Free,
}

impl KeyedWake {
    /// The wake-up of a channel with `flow`, before any task is looked at.
    pub fn new(flow: &Flow) -> Self {
        KeyedWake {
            per_key: flow.max_running_per_key as usize,
            rate: flow.rate_per_key,
            seen: HashMap::new(),
            earliest: None,
        }
    }

    /// Looks at the next pending task in claim order, run at `run_at`, whose concurrency
    /// key is `key`; `load` tells a key's running tasks and last window (asked once per
    /// key). Returns whether the earliest time is known: no later task need be looked at.
    pub fn look<E>(
        &mut self,
        key: Option<&str>,
        run_at: crate::Timestamp,
        load: impl FnOnce(&str) -> std::result::Result<KeyLoad, E>,
    ) -> std::result::Result<bool, E> {
        let wait = match key {
            None => KeyWait::Free,
            Some(key) => match self.seen.get(key) {
                Some(&wait) => wait,
                None => {
                    let wait = self.wait_of(load(key)?);
                    self.seen.insert(key.to_owned(), wait);
                    wait
                }
            },
        };
        let at = match wait {
            KeyWait::Busy => return Ok(false),
            KeyWait::Free => run_at,
            KeyWait::Until(end) => run_at.max(end),
        };
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
        Ok(wait == KeyWait::Free)
    }

    /// How a task of a key with `load` waits.
    fn wait_of(&self, load: KeyLoad) -> KeyWait {
        if load.running >= self.per_key {
            return KeyWait::Busy;
        }
        match self.rate.and_then(|rate| rate.free_at(load.window)) {
            Some(end) => KeyWait::Until(end),
            None => KeyWait::Free,
        }
    }

    /// The earliest time a task looked at may start, if any may.
    pub fn earliest(&self) -> Option<crate::Timestamp> {
        self.earliest
    }
}

/// A channel's windows of starts per concurrency key ([`Flow::rate_per_key`]), for stores
/// (and models) that keep them in memory. Windows before the current one are forgotten as
/// claims go on, so that keys seen once keep no entry.
#[derive(Clone, Debug, Default)]
pub struct KeyWindows {
    windows: HashMap<String, RateWindow>,
    /// The start of the window the map was last pruned to.
    pruned: Option<crate::Timestamp>,
}

impl KeyWindows {
    /// `key`'s last window of starts.
    pub fn get(&self, key: &str) -> Option<RateWindow> {
        self.windows.get(key).copied()
    }

    /// Saves the windows a claim at `now` of a channel with `rate` per key counted
    /// ([`KeyedClaim::windows`]), first forgetting those of windows before the current one.
    pub fn save(&mut self, rate: Rate, now: crate::Timestamp, windows: &[(String, RateWindow)]) {
        let current = rate.window_of(now);
        if self.pruned.is_none_or(|p| p < current) {
            self.windows.retain(|_, w| w.start >= current);
            self.pruned = Some(current);
        }
        for (key, window) in windows {
            self.windows.insert(key.clone(), *window);
        }
    }
}

forward!(FlowStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool>;
    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool>;
    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool>;
    fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool>;
    fn set_rate_per_key(&self, channel: &str, rate: Option<Rate>) -> Result<bool>;
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
