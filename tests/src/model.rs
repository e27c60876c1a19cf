//! Model-based testing: random sequences of store operations, run on a backend and on a
//! small reference model side by side; after every step both must agree on every task
//! (status, attempts, retries, times, errors) and on the answers of every call.
//!
//! The model keeps tasks in a plain ordered map and finds due tasks by scanning; it uses the
//! core transition function, so what is tested here is each backend's indexing, ordering,
//! fencing and bookkeeping, not the state machine itself (proptested in `simplepyq-core`).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use simplepyq_core::transition::{self, Event, apply};
use simplepyq_core::{
    Claim, CountedWindows, Counts, Error, Flow, KeyLoad, KeyWindows, KeyedClaim, KeyedWake,
    NewTask, Outcome, Rate, RateWindow, Status, Store, StoreExt, Task, TaskId, Timestamp, Totals,
    change_flow, claim_allowance,
};

const CHANNELS: [&str; 3] = ["a", "b", "c"];
const LEASE: Duration = Duration::from_millis(500);
/// The bound on lost runs: low, so that sequences reach it.
const MAX_LOST_RUNS: u32 = 1;

/// One call on the store.
#[derive(Clone, Debug)]
pub enum Op {
    /// Enqueue one task.
    Enqueue {
        /// Index into the channels.
        channel: usize,
        /// Retries.
        retries: u32,
        /// Due this long after now, if set.
        delay_ms: Option<u64>,
        /// Priority.
        priority: i32,
        /// A unique key, if set.
        unique: Option<u8>,
        /// A concurrency key, if set.
        key: Option<u8>,
        /// A timeout in milliseconds, if set.
        timeout_ms: Option<u16>,
        /// Parents: known tasks (each modulo their number; deleted and failed ones too).
        after: Vec<usize>,
    },
    /// Claim up to `limit` tasks.
    Claim {
        /// Index into the channels.
        channel: usize,
        /// The most to claim.
        limit: usize,
    },
    /// Record how the attempt of an earlier claim ended.
    Finish {
        /// Which earlier claim (modulo their number).
        pick: usize,
        /// 0: success, 1: failure, 2: permanent failure, 3: delay, 4: success with a
        /// result.
        kind: u8,
        /// The delay or retry wait.
        wait_ms: u64,
    },
    /// Give back the task of an earlier claim, unstarted.
    Release {
        /// Which earlier claim (modulo their number).
        pick: usize,
    },
    /// Move the clock.
    Advance {
        /// By this much.
        ms: u64,
    },
    /// Recover expired leases.
    RecoverExpired,
    /// Requeue failed tasks.
    RequeueFailed {
        /// Index into the channels, or all.
        channel: Option<usize>,
        /// New retry count, or the original.
        retries: Option<u32>,
    },
    /// Delete failed tasks.
    ClearFailed {
        /// Index into the channels, or all.
        channel: Option<usize>,
    },
    /// Delete a channel's tasks.
    RemoveChannel {
        /// Index into the channels.
        channel: usize,
    },
    /// Cancel a task.
    Cancel {
        /// Which known task (modulo their number).
        pick: usize,
    },
    /// Delete done (or failed) tasks of a channel (or all) finished before now, as the
    /// queue's retention does.
    Purge {
        /// Failed tasks, else done ones.
        failed: bool,
        /// Index into the channels, or every channel.
        channel: Option<usize>,
    },
    /// Pause or resume a channel.
    SetPaused {
        /// Index into the channels.
        channel: usize,
        /// Pause (or resume).
        paused: bool,
    },
    /// Set or remove a channel's limit of running tasks.
    SetMaxRunning {
        /// Index into the channels.
        channel: usize,
        /// The limit, or none.
        max: Option<u32>,
    },
    /// Set a channel's limit of running tasks per concurrency key.
    SetMaxPerKey {
        /// Index into the channels.
        channel: usize,
        /// The limit.
        max: u32,
    },
    /// Set or remove a channel's rate of starts (per window of 300 ms).
    SetRate {
        /// Index into the channels.
        channel: usize,
        /// Starts per window, or no rate.
        starts: Option<u32>,
    },
    /// Set or remove a channel's rate of starts per concurrency key (per window of 300 ms).
    SetRatePerKey {
        /// Index into the channels.
        channel: usize,
        /// Starts per window for each key, or no rate.
        starts: Option<u32>,
    },
    /// Close the store and open its file again (durable stores only).
    Reopen,
}

/// The window of the rates the model-based tests set.
const RATE_WINDOW: Duration = Duration::from_millis(300);

/// A random operation, weighted towards the common ones.
pub fn op() -> impl Strategy<Value = Op> {
    let channel = 0..CHANNELS.len();
    prop_oneof![
        6 => (channel.clone(), 0u32..3, proptest::option::of(0u64..800), -1i32..2, proptest::option::of(0u8..3), proptest::option::of(0u8..3), proptest::option::of(1u16..), parents())
            .prop_map(|(channel, retries, delay_ms, priority, unique, key, timeout_ms, after)| Op::Enqueue {
                channel, retries, delay_ms, priority, unique, key, timeout_ms, after
            }),
        5 => (channel.clone(), 0usize..4).prop_map(|(channel, limit)| Op::Claim { channel, limit }),
        5 => (any::<usize>(), 0u8..5, 0u64..600).prop_map(|(pick, kind, wait_ms)| Op::Finish { pick, kind, wait_ms }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        3 => (1u64..400).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::RecoverExpired),
        1 => (proptest::option::of(channel.clone()), proptest::option::of(0u32..3))
            .prop_map(|(channel, retries)| Op::RequeueFailed { channel, retries }),
        1 => proptest::option::of(channel.clone()).prop_map(|channel| Op::ClearFailed { channel }),
        1 => channel.clone().prop_map(|channel| Op::RemoveChannel { channel }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (any::<bool>(), proptest::option::of(channel.clone()))
            .prop_map(|(failed, channel)| Op::Purge { failed, channel }),
        1 => Just(Op::Reopen),
        1 => (channel.clone(), any::<bool>()).prop_map(|(channel, paused)| Op::SetPaused { channel, paused }),
        1 => (channel.clone(), proptest::option::of(1u32..3)).prop_map(|(channel, max)| Op::SetMaxRunning { channel, max }),
        1 => (channel.clone(), 1u32..3).prop_map(|(channel, max)| Op::SetMaxPerKey { channel, max }),
        1 => (channel.clone(), proptest::option::of(1u32..4)).prop_map(|(channel, starts)| Op::SetRate { channel, starts }),
        1 => (channel, proptest::option::of(1u32..3)).prop_map(|(channel, starts)| Op::SetRatePerKey { channel, starts }),
    ]
}

/// The parents of an enqueued task: mostly none.
fn parents() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => proptest::collection::vec(any::<usize>(), 1..3),
    ]
}

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    tasks: BTreeMap<TaskId, Task>,
    last_id: Option<TaskId>,
    totals: BTreeMap<String, Totals>,
    flows: BTreeMap<&'static str, Flow>,
    /// Each rate-limited channel's last window of starts.
    windows: BTreeMap<&'static str, RateWindow>,
    /// The windows of starts per key of channels with a rate per key.
    key_windows: BTreeMap<&'static str, KeyWindows>,
    /// The result each task that gave one succeeded with.
    results: BTreeMap<TaskId, Vec<u8>>,
    /// Each task's parents, and whether each is done (kept when the parent is deleted).
    parents: BTreeMap<TaskId, BTreeMap<TaskId, bool>>,
    /// The errors a task failed by the last step's settling may name instead: when several
    /// of its parents were lost in one step, a store that deletes in batches names the
    /// first it deleted.
    may_name: BTreeMap<TaskId, Vec<String>>,
}

impl Model {
    /// What [`simplepyq_core::ClaimStore::next_wakeup`] gives: whether the channel has a
    /// task to do (a queued one only while it runs and, if pending, its concurrency key is
    /// free), and the first lease expiry.
    fn next_wakeup(&self, channel: &str) -> (bool, Option<Timestamp>) {
        let paused = self.allowance(channel, 1) == 0;
        let startable = !paused && self.startable(channel);
        let mut any = false;
        let mut lease = None;
        for t in self.tasks.values().filter(|t| t.channel == channel) {
            match t.state.status {
                Status::Pending => any |= startable,
                Status::Delayed => any |= !paused,
                Status::Running => {
                    any = true;
                    lease = lease.min(t.state.lease_until).or(t.state.lease_until);
                }
                Status::Done | Status::Failed | Status::Waiting => {}
            }
        }
        (any, lease)
    }

    fn unfinished_with_key(&self, channel: &str, key: &str) -> Option<TaskId> {
        self.tasks
            .values()
            .find(|t| {
                t.channel == channel
                    && t.unique_key.as_deref() == Some(key)
                    && !t.state.status.is_final()
            })
            .map(|t| t.id)
    }

    fn counts(&self, channel: Option<&str>) -> Counts {
        let mut c = Counts::default();
        for t in self.tasks.values() {
            if channel.is_none_or(|ch| ch == t.channel) {
                *c.get_mut(t.state.status) += 1;
            }
        }
        c
    }

    fn held(&self, claim: Claim) -> bool {
        self.tasks
            .get(&claim.id)
            .is_some_and(|t| claim.holds(&t.state))
    }

    /// Deletes the tasks `doomed` picks, with their edges; fails the waiting children of
    /// those deleted before they were done.
    fn delete(&mut self, doomed: impl Fn(&Task) -> bool, now: Timestamp) -> usize {
        let ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| doomed(t))
            .map(|t| t.id)
            .collect();
        for id in &ids {
            self.tasks.remove(id);
            self.parents.remove(id);
        }
        self.settle(now);
        ids.len()
    }

    /// The dependency rules, written plainly: every edge to a done parent is satisfied; a
    /// waiting task with none unsatisfied is due; a waiting task with an unsatisfied parent
    /// that failed or is gone fails naming the lowest such parent, in rounds (a task failed
    /// in one round fails its own children in the next).
    fn settle(&mut self, now: Timestamp) {
        for (_, edges) in self.parents.iter_mut() {
            for (parent, done) in edges.iter_mut() {
                let status = self.tasks.get(parent).map(|t| t.state.status);
                if status == Some(Status::Done) {
                    *done = true;
                }
            }
        }
        loop {
            let mut round = Vec::new();
            for (child, edges) in &self.parents {
                if self.tasks.get(child).map(|t| t.state.status) != Some(Status::Waiting) {
                    continue;
                }
                let lost: Vec<(TaskId, bool)> = edges
                    .iter()
                    .filter(|(_, done)| !**done)
                    .filter_map(|(p, _)| match self.tasks.get(p).map(|t| t.state.status) {
                        None => Some((*p, true)),
                        Some(Status::Failed) => Some((*p, false)),
                        _ => None,
                    })
                    .collect();
                if lost.len() > 1 {
                    let names = lost
                        .iter()
                        .map(|(p, removed)| transition::parent_lost(*p, *removed));
                    self.may_name.insert(*child, names.collect());
                }
                let event = match lost.first().copied() {
                    Some((parent, removed)) => Event::ParentLost {
                        now,
                        parent,
                        removed,
                    },
                    None if edges.values().all(|done| *done) => Event::Unblock { now },
                    None => continue,
                };
                round.push((*child, event));
            }
            if round.is_empty() {
                return;
            }
            for (child, event) in round {
                self.event(child, &event);
            }
        }
    }

    /// Whether a failed task may be requeued, given the tasks requeued before it in the same
    /// call, and whether it then waits (core's rule, written plainly).
    fn requeue_waits(&self, id: TaskId, requeued: &[TaskId]) -> Option<bool> {
        let mut waits = false;
        for (parent, done) in self.parents.get(&id).into_iter().flatten() {
            if *done {
                continue;
            }
            match self.tasks.get(parent).map(|t| t.state.status) {
                _ if requeued.contains(parent) => waits = true,
                None | Some(Status::Failed) => return None,
                _ => waits = true,
            }
        }
        Some(waits)
    }

    /// Takes the store's choice of the parent to name, where the last step lost several
    /// of a task's parents at once and the store named one of them.
    fn reconcile(&mut self, store: &dyn Store) -> simplepyq_core::Result<()> {
        for (id, names) in std::mem::take(&mut self.may_name) {
            let error = store.get(id)?.and_then(|t| t.state.last_error);
            if let (Some(task), Some(error)) = (self.tasks.get_mut(&id), error)
                && names.contains(&error)
            {
                task.state.last_error = Some(error);
            }
        }
        Ok(())
    }

    fn event(&mut self, id: TaskId, event: &Event) {
        let task = self.tasks.get_mut(&id).expect("the model has the task");
        task.state = apply(&task.state, event).expect("the model applies only legal events");
        let counted = Totals::of(event, task.state.status);
        if !counted.is_zero() {
            self.totals
                .entry(task.channel.clone())
                .or_default()
                .add(counted);
        }
    }

    /// The tasks a claim at `now` takes, in order, after promoting due delayed tasks.
    /// How many tasks a claim of up to `limit` may take from `channel`: core's rule.
    fn allowance(&self, channel: &str, limit: usize) -> usize {
        let flow = self.flows.get(channel).cloned().unwrap_or_default();
        claim_allowance(&flow, self.counts(Some(channel)).running, limit)
    }

    /// Whether `channel`'s queued tasks are due: neither paused nor full.
    fn open(&self, channel: &str) -> bool {
        self.allowance(channel, 1) > 0
    }

    /// Whether `channel`'s queued tasks wait for a lease alone: paused, full, or every
    /// pending task's key busy and nothing delayed.
    fn waits_for_leases(&self, channel: &str) -> bool {
        !self.open(channel)
            || (!self.startable(channel)
                && !self
                    .tasks
                    .values()
                    .any(|t| t.channel == channel && t.state.status == Status::Delayed))
    }

    /// The pending tasks due by `now` a claim of up to `allowance` takes, in claim order
    /// (core's rule of concurrency keys), and the keys' windows of starts it counted.
    fn choose(
        &self,
        channel: &str,
        allowance: usize,
        now: Timestamp,
    ) -> (Vec<TaskId>, CountedWindows) {
        let flow = self.flows.get(channel).cloned().unwrap_or_default();
        let mut claim = KeyedClaim::new(&flow, allowance, now);
        let ids = self
            .pending(channel)
            .into_iter()
            .filter(|t| t.state.run_at <= now)
            .filter(|t| {
                claim.take(t.concurrency_key.as_deref(), |k| self.load(channel, k)) == Ok(true)
            })
            .map(|t| t.id)
            .collect();
        let windows = claim.windows();
        (ids, windows)
    }

    /// Whether a claim could ever take one of the channel's pending tasks as far as their
    /// concurrency keys go (core's [`KeyedWake`]: none while every key is busy).
    fn startable(&self, channel: &str) -> bool {
        let flow = self.flows.get(channel).cloned().unwrap_or_default();
        let mut wake = KeyedWake::new(&flow);
        for t in self.pending(channel) {
            let load = |k: &str| self.load(channel, k);
            if wake.look(t.concurrency_key.as_deref(), t.state.run_at, load) == Ok(true) {
                break;
            }
        }
        wake.earliest().is_some()
    }

    /// The channel's pending tasks in claim order.
    fn pending(&self, channel: &str) -> Vec<&Task> {
        let mut ready: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| t.channel == channel && t.state.status == Status::Pending)
            .collect();
        ready.sort_by_key(|t| (-i64::from(t.priority), t.state.run_at, t.id));
        ready
    }

    /// A concurrency key's running tasks and last window of starts.
    fn load(&self, channel: &str, key: &str) -> Result<KeyLoad, ()> {
        let running = self
            .tasks
            .values()
            .filter(|t| {
                t.channel == channel
                    && t.state.status == Status::Running
                    && t.concurrency_key.as_deref() == Some(key)
            })
            .count();
        let window = self.key_windows.get(channel).and_then(|w| w.get(key));
        Ok(KeyLoad { running, window })
    }

    fn claim(&mut self, channel: &str, limit: usize, now: Timestamp) -> Vec<TaskId> {
        if limit == 0 || self.flows.get(channel).is_some_and(|f| f.paused) {
            return Vec::new();
        }
        let due: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| {
                t.channel == channel && t.state.status == Status::Delayed && t.state.run_at <= now
            })
            .map(|t| t.id)
            .collect();
        for id in due {
            self.event(id, &Event::Promote { now });
        }
        let mut limit = self.allowance(channel, limit);
        let rate = self.flows.get(channel).and_then(|f| f.rate);
        let window = self.windows.get(channel).copied();
        if let Some(rate) = rate {
            limit = limit.min(rate.room(window, now));
        }
        let (ids, key_windows) = self.choose(channel, limit, now);
        let name = CHANNELS.iter().find(|c| **c == channel);
        if let (Some(rate), Some(name)) = (rate.filter(|_| !ids.is_empty()), name) {
            self.windows.insert(name, rate.take(window, now, ids.len()));
        }
        let key_rate = self.flows.get(channel).and_then(|f| f.rate_per_key);
        if let (Some(rate), Some(name)) = (key_rate, name) {
            let saved = self.key_windows.entry(name).or_default();
            saved.save(rate, now, &key_windows);
        }
        let event = Event::Claim {
            now,
            lease_until: now.after(LEASE),
        };
        for id in &ids {
            self.event(*id, &event);
        }
        ids
    }
}

/// Runs `ops` on the fixture's store and on the model, checking that they agree after every
/// step.
pub fn check(fixture: &mut crate::Fixture, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut now = Timestamp::from_millis(1_000_000);
    let mut claims: Vec<Claim> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let at = |what: &str| format!("step {step} ({op:?}): {what}");
        if let Op::Reopen = op {
            fixture.reopen();
        }
        let store = &*fixture.store;
        match op {
            Op::Reopen => {}
            Op::Enqueue {
                channel,
                retries,
                delay_ms,
                priority,
                unique,
                key,
                timeout_ms,
                after,
            } => {
                let ch = CHANNELS[*channel];
                let mut new = NewTask::new(ch, vec![*channel as u8])
                    .retries(*retries)
                    .priority(*priority);
                if let Some(d) = delay_ms {
                    new = new.run_at(now.after(Duration::from_millis(*d)));
                }
                if let Some(k) = unique {
                    new = new.unique_key(format!("k{k}"));
                }
                if let Some(k) = key {
                    new = new.concurrency_key(format!("c{k}"));
                }
                if let Some(ms) = timeout_ms {
                    new = new.timeout(Duration::from_millis(u64::from(*ms)));
                }
                let parents: BTreeMap<TaskId, Option<Status>> = match model.last_id {
                    Some(last) => after
                        .iter()
                        .map(|p| TaskId::new(1 + (*p as i64).rem_euclid(last.get())))
                        .map(|p| (p, model.tasks.get(&p).map(|t| t.state.status)))
                        .collect(),
                    None => BTreeMap::new(),
                };
                new = new.after(parents.keys().copied());
                let got = store.enqueue_one(new.clone(), now);
                let held = new
                    .unique_key
                    .as_deref()
                    .and_then(|k| model.unfinished_with_key(ch, k));
                let lost = parents
                    .values()
                    .any(|s| matches!(s, None | Some(Status::Failed)));
                match held {
                    Some(existing) => {
                        prop_assert_eq!(got.ok(), Some(existing), "{}", at("unique key"));
                    }
                    None if lost => prop_assert!(
                        matches!(got, Err(Error::InvalidConfig(_))),
                        "{} a parent failed or gone: {:?}",
                        at("enqueue refused"),
                        got
                    ),
                    None => {
                        let id = got.map_err(|e| fail(&at(&e.to_string())))?;
                        prop_assert!(
                            model.last_id.is_none_or(|last| id > last),
                            "{}",
                            at("id not fresh")
                        );
                        model.last_id = Some(id);
                        let mut task = new.to_task(id, now);
                        let edges: BTreeMap<TaskId, bool> = parents
                            .iter()
                            .map(|(p, s)| (*p, *s == Some(Status::Done)))
                            .collect();
                        if edges.values().any(|done| !done) {
                            task.state.status = Status::Waiting;
                        }
                        if !edges.is_empty() {
                            model.parents.insert(id, edges);
                        }
                        model.tasks.insert(id, task);
                    }
                }
            }
            Op::Claim { channel, limit } => {
                let ch = CHANNELS[*channel];
                let got = store
                    .claim(ch, *limit, now, now.after(LEASE))
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let expected = model.claim(ch, *limit, now);
                let got_ids: Vec<TaskId> = got.iter().map(|t| t.id).collect();
                prop_assert_eq!(&got_ids, &expected, "{}", at("claimed tasks"));
                claims.extend(got.iter().map(Task::claim));
            }
            Op::Finish {
                pick,
                kind,
                wait_ms,
            } => {
                if claims.is_empty() {
                    continue;
                }
                let claim = claims[pick % claims.len()];
                let wait = now.after(Duration::from_millis(*wait_ms));
                let outcome = match kind {
                    0 => Outcome::Succeeded,
                    3 => Outcome::Delayed { until: wait },
                    // MessagePack of the step's number.
                    4 => Outcome::Returned(rmp_serde::to_vec(&step).expect("encode")),
                    k => Outcome::Failed {
                        error: format!("e{step}"),
                        retry_at: wait,
                        permanent: *k == 2,
                    },
                };
                let got = store.finish(claim, &outcome, now);
                let held = model.held(claim);
                if held {
                    if let Some(result) = outcome.result() {
                        model.results.insert(claim.id, result.to_vec());
                    }
                    model.event(claim.id, &Event::Finish { now, outcome });
                    let expected = model.tasks[&claim.id].state.status;
                    model.settle(now);
                    prop_assert_eq!(got.ok(), Some(expected), "{}", at("finish"));
                } else {
                    prop_assert!(
                        matches!(got, Err(Error::LeaseLost { .. })),
                        "{}",
                        at("stale claim")
                    );
                }
            }
            Op::Release { pick } => {
                if claims.is_empty() {
                    continue;
                }
                let claim = claims[pick % claims.len()];
                let n = store
                    .release(&[claim], now)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let held = model.held(claim);
                if held {
                    model.event(claim.id, &Event::Release { now });
                }
                prop_assert_eq!(n, usize::from(held), "{}", at("released"));
            }
            Op::Advance { ms } => now = now.after(Duration::from_millis(*ms)),
            Op::RecoverExpired => {
                let n = store
                    .recover_expired(now, MAX_LOST_RUNS)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let expired: Vec<TaskId> = model
                    .tasks
                    .values()
                    .filter(|t| {
                        t.state.status == Status::Running
                            && t.state.lease_until.is_some_and(|l| l <= now)
                    })
                    .map(|t| t.id)
                    .collect();
                for id in &expired {
                    let max_lost_runs = MAX_LOST_RUNS;
                    model.event(*id, &Event::Expire { now, max_lost_runs });
                }
                prop_assert_eq!(n, expired.len(), "{}", at("recovered"));
            }
            Op::RequeueFailed { channel, retries } => {
                let ch = channel.map(|c| CHANNELS[c]);
                let n = store
                    .requeue_failed(ch, *retries, now)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let failed: Vec<TaskId> = model
                    .tasks
                    .values()
                    .filter(|t| {
                        t.state.status == Status::Failed && ch.is_none_or(|c| c == t.channel)
                    })
                    .map(|t| t.id)
                    .collect();
                let mut requeued = Vec::new();
                for id in failed {
                    let t = &model.tasks[&id];
                    let taken = t
                        .unique_key
                        .as_deref()
                        .and_then(|k| model.unfinished_with_key(&t.channel, k))
                        .is_some();
                    let waiting = model.requeue_waits(id, &requeued);
                    if let (false, Some(waiting)) = (taken, waiting) {
                        let retries = *retries;
                        let event = Event::Requeue {
                            now,
                            retries,
                            waiting,
                        };
                        model.event(id, &event);
                        requeued.push(id);
                    }
                }
                prop_assert_eq!(n, requeued.len(), "{}", at("requeued"));
            }
            Op::ClearFailed { channel } => {
                let ch = channel.map(|c| CHANNELS[c]);
                let n = store
                    .clear_failed(ch)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let cleared = model.delete(
                    |t| t.state.status == Status::Failed && ch.is_none_or(|c| c == t.channel),
                    now,
                );
                prop_assert_eq!(n, cleared, "{}", at("cleared"));
            }
            Op::RemoveChannel { channel } => {
                let ch = CHANNELS[*channel];
                let n = store
                    .remove_channel(ch, now)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let removed = model.delete(|t| t.channel == ch, now);
                prop_assert_eq!(n, removed, "{}", at("removed"));
            }
            Op::Cancel { pick } => {
                let Some(last) = model.last_id else { continue };
                // Any id up to the last, so that deleted and unknown ones are tried too.
                let id = TaskId::new(1 + (*pick as i64).rem_euclid(last.get()));
                let got = store.cancel(id, now);
                match model.tasks.get(&id).map(|t| transition::cancel(&t.state)) {
                    None => prop_assert!(
                        matches!(got, Err(Error::NotFound(_))),
                        "{}",
                        at("cancel unknown")
                    ),
                    Some(Ok(())) => {
                        prop_assert!(got.is_ok(), "{}", at("cancel queued"));
                        model.delete(|t| t.id == id, now);
                    }
                    Some(Err(_)) => prop_assert!(
                        matches!(got, Err(Error::InvalidTransition { .. })),
                        "{}",
                        at("cancel refused")
                    ),
                }
            }
            Op::SetPaused { channel, paused } => {
                let ch = CHANNELS[*channel];
                let changed = store
                    .set_paused(ch, *paused)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let expected = change_flow(&mut model.flows, ch, |f| f.paused = *paused);
                prop_assert_eq!(changed, expected, "{}", at("pause changed"));
            }
            Op::SetMaxRunning { channel, max } => {
                let ch = CHANNELS[*channel];
                let changed = store
                    .set_max_running(ch, *max)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let expected = change_flow(&mut model.flows, ch, |f| f.max_running = *max);
                prop_assert_eq!(changed, expected, "{}", at("limit changed"));
            }
            Op::SetMaxPerKey { channel, max } => {
                let ch = CHANNELS[*channel];
                let changed = store
                    .set_max_running_per_key(ch, *max)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let expected = change_flow(&mut model.flows, ch, |f| f.max_running_per_key = *max);
                prop_assert_eq!(changed, expected, "{}", at("per-key limit changed"));
            }
            Op::SetRate { channel, starts } => {
                let ch = CHANNELS[*channel];
                let rate = starts.map(|n| Rate::new(n, RATE_WINDOW));
                let changed = store
                    .set_rate(ch, rate)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let expected = change_flow(&mut model.flows, ch, |f| f.rate = rate);
                if expected {
                    model.windows.remove(ch);
                }
                prop_assert_eq!(changed, expected, "{}", at("rate changed"));
            }
            Op::SetRatePerKey { channel, starts } => {
                let ch = CHANNELS[*channel];
                let rate = starts.map(|n| Rate::new(n, RATE_WINDOW));
                let changed = store
                    .set_rate_per_key(ch, rate)
                    .map_err(|e| fail(&at(&e.to_string())))?;
                let expected = change_flow(&mut model.flows, ch, |f| f.rate_per_key = rate);
                if expected {
                    model.key_windows.remove(ch);
                }
                prop_assert_eq!(changed, expected, "{}", at("rate per key changed"));
            }
            Op::Purge { failed, channel } => {
                let ch = channel.map(|c| CHANNELS[c]);
                let (status, n) = if *failed {
                    (Status::Failed, store.purge_failed(ch, now))
                } else {
                    (Status::Done, store.purge_done(ch, now))
                };
                let n = n.map_err(|e| fail(&at(&e.to_string())))?;
                let purged = model.delete(
                    |t| {
                        t.state.status == status
                            && t.state.updated_at < now
                            && ch.is_none_or(|c| t.channel == c)
                    },
                    now,
                );
                prop_assert_eq!(n, purged, "{}", at("purged"));
            }
        }
        model
            .reconcile(store)
            .map_err(|e| fail(&at(&e.to_string())))?;
        agree(store, &model, &at("state"))?;
    }
    Ok(())
}

fn fail(message: &str) -> TestCaseError {
    TestCaseError::fail(message.to_owned())
}

/// Every task and every count of the store equal the model's.
fn agree(store: &dyn Store, model: &Model, at: &str) -> Result<(), TestCaseError> {
    for ch in CHANNELS {
        let counts = store.counts(Some(ch)).map_err(|e| fail(&e.to_string()))?;
        prop_assert_eq!(counts, model.counts(Some(ch)), "{} counts of {}", at, ch);
    }
    let all = store
        .list(&simplepyq_core::ListFilter::new(usize::MAX))
        .map_err(|e| fail(&e.to_string()))?;
    prop_assert_eq!(all.len(), model.tasks.len(), "{} number of tasks", at);
    let totals = store.totals().map_err(|e| fail(&e.to_string()))?;
    prop_assert_eq!(&totals, &model.totals, "{} totals", at);
    let flows = store.flows().map_err(|e| fail(&e.to_string()))?;
    let flows: BTreeMap<&str, Flow> = flows.iter().map(|(c, f)| (c.as_str(), f.clone())).collect();
    prop_assert_eq!(&flows, &model.flows, "{} flow settings", at);
    for ch in CHANNELS {
        let got = store.next_wakeup(ch).map_err(|e| fail(&e.to_string()))?;
        let (any, lease) = model.next_wakeup(ch);
        prop_assert_eq!(got.is_some(), any, "{} next wake-up of {}", at, ch);
        if model.waits_for_leases(ch) {
            prop_assert_eq!(
                got,
                lease,
                "{} next wake-up of paused, full or busy {}",
                at,
                ch
            );
        }
    }
    for (task, expected) in all.iter().zip(model.tasks.values()) {
        prop_assert_eq!(task, expected, "{}", at);
        let result = store.result(task.id).map_err(|e| fail(&e.to_string()))?;
        let kept = model
            .results
            .get(&task.id)
            .filter(|_| task.state.status == Status::Done);
        prop_assert_eq!(result.as_ref(), kept, "{} result of {}", at, task.id);
        let parents = store.parents(task.id).map_err(|e| fail(&e.to_string()))?;
        let expected: Vec<TaskId> = model
            .parents
            .get(&task.id)
            .map(|edges| edges.keys().copied().collect())
            .unwrap_or_default();
        prop_assert_eq!(parents, expected, "{} parents of {}", at, task.id);
    }
    Ok(())
}

/// A proptest configuration of `cases` cases that keeps failing inputs in `file` (relative
/// to the package's folder, where cargo runs tests) and replays them first.
pub fn persisted(cases: u32, file: &'static str) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(file),
        )),
        ..ProptestConfig::default()
    }
}

/// Expands into a proptest of random operation sequences on fresh stores from
/// `$factory: fn() -> Fixture`, with `$cases` cases.
#[macro_export]
macro_rules! model_tests {
    ($factory:path, $cases:expr) => {
        proptest::proptest! {
            // Failing sequences are kept in tests/proptest-regressions/model.txt (cargo
            // runs tests from the package's folder) and replayed first on every backend.
            #![proptest_config($crate::model::persisted($cases, "proptest-regressions/model.txt"))]
            #[test]
            fn random_operations_agree_with_the_model(
                ops in proptest::collection::vec($crate::model::op(), 1..60)
            ) {
                let mut fixture: $crate::Fixture = $factory();
                $crate::model::check(&mut fixture, &ops)?;
            }
        }
    };
}
