//! [`MemoryStore`]: an in-memory [`Store`](simplepyq_core::Store) for simplepyq.
//!
//! It keeps every task in process memory, so nothing survives the process: use it for tests
//! and throwaway queues. It is a complete backend, passing the same conformance suite as the
//! durable ones, and safe to share between threads.
//!
//! ```
//! use simplepyq_core::prelude::*;
//! use simplepyq_core::{NewTask, Timestamp};
//! use simplepyq_memory::MemoryStore;
//!
//! let store = MemoryStore::new();
//! let now = Timestamp::from_millis(0);
//! let id = store.enqueue_one(NewTask::new("emails", vec![0x90]), now)?;
//! let claimed = store.claim("emails", 10, now, now.after(std::time::Duration::from_secs(30)))?;
//! assert_eq!(claimed[0].id, id);
//! # Ok::<(), simplepyq_core::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;

use foldhash::HashMap;
use parking_lot::Mutex;
use simplepyq_core::dependency::{self, Ended, Graph};
use simplepyq_core::transition::{self, Event, apply};
use simplepyq_core::{
    AdminStore, Claim, ClaimStore, CountedWindows, Counts, Error, Flow, FlowStore, IdMap,
    InspectStore, KeyLoad, KeyWindows, KeyedClaim, KeyedWake, ListFilter, LocalWakes, NewTask,
    Outcome, OutcomeStore, Rate, RateWindow, Result, ScheduleStore, Status, Stuck, Task, TaskId,
    TaskState, Timestamp, Totals, Wake, Watch, batch, change_flow, check_max_running,
    check_max_running_per_key, check_rate, claim_allowance, validate_channel,
};

/// An in-memory [`Store`](simplepyq_core::Store). Claiming the next due task is O(log n) (plus the promotion of
/// delayed tasks that became due).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// The watching queues, woken when a waiting task becomes due.
    wakes: LocalWakes,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Ordered sets of (time, id): run-at of delayed tasks, lease expiry of running ones.
type TimeIndex = BTreeSet<(Timestamp, TaskId)>;

#[derive(Debug, Default)]
struct ChannelIndex {
    /// Pending tasks in claim order: priority (negated: highest first), run-at, id.
    ready: BTreeSet<(i64, Timestamp, TaskId)>,
    delayed: TimeIndex,
    running: TimeIndex,
    failed: BTreeSet<TaskId>,
    /// Unique keys of pending, delayed and running tasks.
    unique: HashMap<String, TaskId>,
    /// Running tasks per concurrency key.
    keys_running: HashMap<String, usize>,
    /// Pending tasks with a concurrency key: while there are none, a claim takes the
    /// first due tasks without looking at keys.
    keyed_pending: usize,
    counts: Counts,
}

#[derive(Debug, Default)]
struct Inner {
    last_id: i64,
    tasks: BTreeMap<TaskId, Task>,
    idx: Indexes,
    /// Each schedule's last firing.
    fired: HashMap<String, Timestamp>,
    totals: BTreeMap<String, Totals>,
    /// The flow settings that are not the default, by channel.
    flows: BTreeMap<String, Flow>,
    /// Each rate-limited channel's last window of starts.
    windows: HashMap<String, RateWindow>,
    /// The windows of starts per concurrency key of channels with a rate per key.
    key_windows: HashMap<String, KeyWindows>,
    /// The results of done tasks that gave one.
    results: IdMap<TaskId, Vec<u8>>,
    /// The edges of tasks that wait for others, `(child, parent) -> satisfied` (see
    /// [`dependency`]).
    edges: BTreeMap<(TaskId, TaskId), bool>,
    /// The children of each parent that has edges.
    dependents: IdMap<TaskId, BTreeSet<TaskId>>,
    /// How many unsatisfied edges each waiting child has left (no entry for none).
    edges_left: IdMap<TaskId, usize>,
    /// Attempts marked stuck: task → (attempt, since); a mark counts while its attempt runs.
    stuck: BTreeMap<TaskId, (u32, Timestamp)>,
}

impl Inner {
    /// How many more of `channel`'s tasks a claim of up to `limit` may start.
    fn allowance(&self, channel: &str, limit: usize) -> usize {
        let Some(flow) = self.flows.get(channel) else {
            return limit;
        };
        let running = self
            .idx
            .channels
            .get(channel)
            .map_or(0, |ch| ch.counts.running);
        claim_allowance(flow, running, limit)
    }
}

impl Inner {
    /// The due pending tasks of `channel` a claim at `now` of up to `allowance` takes, in
    /// claim order: the first ones, skipping those whose concurrency key is busy or used up
    /// its window of starts ([`KeyedClaim`]); and the keys' windows to save.
    fn choose(
        &self,
        channel: &str,
        allowance: usize,
        now: Timestamp,
    ) -> (Vec<TaskId>, CountedWindows) {
        let Some(ch) = self.idx.channels.get(channel) else {
            return (Vec::new(), Vec::new());
        };
        let due = ch
            .ready
            .iter()
            .filter(|(_, run_at, _)| *run_at <= now)
            .map(|&(_, _, id)| id);
        if ch.keyed_pending == 0 {
            return (due.take(allowance).collect(), Vec::new());
        }
        let flow = self.flows.get(channel).cloned().unwrap_or_default();
        let mut claim = KeyedClaim::new(&flow, allowance, now);
        let mut chosen = Vec::new();
        for id in due {
            let key = self.key_of(id);
            if claim.take(key, |k| Ok::<_, ()>(self.load(channel, ch, k))) == Ok(true) {
                chosen.push(id);
            }
            if claim.is_full() {
                break;
            }
        }
        let windows = claim.windows();
        (chosen, windows)
    }

    /// When a claim of `channel` could next take one of its pending tasks (they are due),
    /// as far as their concurrency keys go ([`KeyedWake`]); `None` while every key is busy.
    fn first_start(&self, channel: &str, ch: &ChannelIndex) -> Option<Timestamp> {
        let flow = self.flows.get(channel).cloned().unwrap_or_default();
        let mut wake = KeyedWake::new(&flow);
        for &(_, run_at, id) in &ch.ready {
            let key = self.key_of(id).filter(|_| ch.keyed_pending > 0);
            if wake.look(key, run_at, |k| Ok::<_, ()>(self.load(channel, ch, k))) == Ok(true) {
                break;
            }
        }
        wake.earliest()
    }

    fn key_of(&self, id: TaskId) -> Option<&str> {
        self.tasks
            .get(&id)
            .and_then(|t| t.concurrency_key.as_deref())
    }

    /// The load of concurrency key `key` of `channel`.
    fn load(&self, channel: &str, ch: &ChannelIndex, key: &str) -> KeyLoad {
        KeyLoad {
            running: ch.keys_running.get(key).copied().unwrap_or(0),
            window: self.key_windows.get(channel).and_then(|w| w.get(key)),
        }
    }
}

/// The indexes over `Inner::tasks`, apart from them so that a task can be re-indexed while
/// it is borrowed.
#[derive(Debug, Default)]
struct Indexes {
    channels: HashMap<String, ChannelIndex>,
    /// Every running task by lease expiry, for recovery across channels.
    leases: TimeIndex,
}

impl Indexes {
    fn channel(&mut self, name: &str) -> &mut ChannelIndex {
        if !self.channels.contains_key(name) {
            self.channels
                .insert(name.to_owned(), ChannelIndex::default());
        }
        self.channels
            .get_mut(name)
            .expect("the channel index was just inserted")
    }

    /// Adds (`add == true`) or removes the index entries of `task` as it stands.
    fn index(&mut self, task: &Task, add: bool) {
        let ch = self.channel(&task.channel);
        ch.index(task, &task.state, add);
        index_lease(&mut self.leases, task.id, &task.state, add);
    }

    /// Gives `task` its `next` state and moves its index entries there.
    fn replace_state<'t>(&mut self, task: &'t mut Task, next: TaskState) -> &'t Task {
        let before = std::mem::replace(&mut task.state, next);
        // An indexed task's channel has its index: looked up once for both moves.
        let ch = self.channel(&task.channel);
        ch.index(task, &before, false);
        ch.index(task, &task.state, true);
        index_lease(&mut self.leases, task.id, &before, false);
        index_lease(&mut self.leases, task.id, &task.state, true);
        task
    }
}

/// Adds (`add == true`) or removes task `id`'s entry in `state` in the index of leases
/// across channels (only a running task has one).
fn index_lease(leases: &mut TimeIndex, id: TaskId, state: &TaskState, add: bool) {
    if state.status == Status::Running {
        let lease = state.lease_until.unwrap_or(Timestamp::EPOCH);
        toggle(leases, (lease, id), add);
    }
}

impl ChannelIndex {
    /// Adds (`add == true`) or removes the entries of `task` in `state` in its channel's
    /// index.
    fn index(&mut self, task: &Task, state: &TaskState, add: bool) {
        let id = task.id;
        let lease = state.lease_until.unwrap_or(Timestamp::EPOCH);
        let count = self.counts.get_mut(state.status);
        *count = if add { *count + 1 } else { *count - 1 };
        let changed = match state.status {
            Status::Pending => {
                let key = (-i64::from(task.priority), state.run_at, id);
                toggle(&mut self.ready, key, add)
            }
            Status::Delayed => toggle(&mut self.delayed, (state.run_at, id), add),
            Status::Running => toggle(&mut self.running, (lease, id), add),
            Status::Failed => toggle(&mut self.failed, id, add),
            Status::Done | Status::Waiting => true,
        };
        debug_assert!(changed, "index out of step with task {id}");
        if let Some(key) = task
            .unique_key
            .as_ref()
            .filter(|_| !state.status.is_final())
        {
            if add {
                self.unique.insert(key.clone(), id);
            } else {
                self.unique.remove(key);
            }
        }
        if let Some(key) = &task.concurrency_key {
            match state.status {
                Status::Pending if add => self.keyed_pending += 1,
                Status::Pending => self.keyed_pending -= 1,
                Status::Running if add => *self.keys_running.entry(key.clone()).or_default() += 1,
                Status::Running => {
                    if let Some(n) = self.keys_running.get_mut(key) {
                        *n -= 1;
                        if *n == 0 {
                            self.keys_running.remove(key);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

impl Inner {
    /// Adds the tasks of an enqueue call, all or none (only a task with parents can be
    /// refused here: the others were checked before).
    fn add_all(&mut self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        let mut ids = Vec::with_capacity(tasks.len());
        let undo = tasks.iter().any(|t| !t.after.is_empty());
        let mut added = Vec::new();
        for (position, t) in tasks.iter().enumerate() {
            match self.add(t, position, &ids, now) {
                Ok((id, new)) => {
                    ids.push(id);
                    if new && undo {
                        added.push(id);
                    }
                }
                Err(e) => {
                    for id in added.into_iter().rev() {
                        self.delete(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(ids)
    }

    /// Adds the task at `position` of an enqueue call (`earlier`: the ids of the call's
    /// tasks before it), or returns the id of the unfinished task of its channel that holds
    /// its unique key; says whether it added one.
    fn add(
        &mut self,
        t: &NewTask,
        position: usize,
        earlier: &[TaskId],
        now: Timestamp,
    ) -> Result<(TaskId, bool)> {
        let existing = t.unique_key.as_ref().and_then(|key| {
            self.idx
                .channels
                .get(&t.channel)
                .and_then(|ch| ch.unique.get(key).copied())
        });
        if let Some(id) = existing {
            return Ok((id, false));
        }
        let id = TaskId::new(self.last_id + 1);
        let mut task = t.to_task(id, now);
        let mut edges = Vec::new();
        if !t.after.is_empty() {
            (task.state, edges) =
                dependency::start_task(t, position, earlier, task.state, |parents| {
                    Ok(parents
                        .iter()
                        .map(|p| self.tasks.get(p).map(|t| t.state.status))
                        .collect())
                })?;
        }
        self.last_id += 1;
        for (parent, satisfied) in edges {
            self.edges.insert((id, parent), satisfied);
            self.dependents.entry(parent).or_default().insert(id);
            if !satisfied {
                *self.edges_left.entry(id).or_default() += 1;
            }
        }
        self.idx.index(&task, true);
        self.tasks.insert(id, task);
        Ok((id, true))
    }

    /// Settles the children of the tasks that `ended` ([`dependency::settle`]): writes and
    /// counts their changes; returns the channels of those now due, to wake.
    fn settle(&mut self, ended: Vec<(TaskId, Ended)>, now: Timestamp) -> Result<Due> {
        let mut due = Due::default();
        if ended.is_empty() || self.dependents.is_empty() {
            return Ok(due);
        }
        for change in dependency::settle(self, ended, now)? {
            if change.state.status.is_queued() {
                due.0.insert(change.channel);
            }
            self.set_state(change.id, change.state)?;
            self.count(change.id, change.counted);
        }
        Ok(due)
    }

    /// The parents task `id` still waits for, with their statuses.
    fn parents_left(&self, id: TaskId) -> Vec<(TaskId, Option<Status>)> {
        self.edges_of(id)
            .filter(|(_, satisfied)| !satisfied)
            .map(|(p, _)| (p, self.tasks.get(&p).map(|t| t.state.status)))
            .collect()
    }

    /// The edges of child `id`: each parent, and whether it is done.
    fn edges_of(&self, id: TaskId) -> impl Iterator<Item = (TaskId, bool)> + '_ {
        let first = (id, TaskId::new(i64::MIN));
        let last = (id, TaskId::new(i64::MAX));
        self.edges
            .range(first..=last)
            .map(|(&(_, parent), &satisfied)| (parent, satisfied))
    }
}

impl Graph for Inner {
    fn satisfy(&mut self, parents: &[TaskId]) -> Result<Vec<TaskId>> {
        let mut children = BTreeSet::new();
        for parent in parents {
            for child in self.dependents.get(parent).into_iter().flatten() {
                let edge = self.edges.get_mut(&(*child, *parent));
                if let Some(satisfied) = edge.filter(|s| !**s) {
                    *satisfied = true;
                    if let Some(left) = self.edges_left.get_mut(child) {
                        *left -= 1;
                        if *left == 0 {
                            self.edges_left.remove(child);
                        }
                    }
                }
                children.insert(*child);
            }
        }
        Ok(children.into_iter().collect())
    }

    fn children(&mut self, parents: &[TaskId]) -> Result<Vec<(TaskId, TaskId)>> {
        Ok(parents
            .iter()
            .flat_map(|p| {
                let children = self.dependents.get(p).into_iter().flatten();
                children.map(move |c| (*p, *c))
            })
            .collect())
    }

    fn still_waiting(&mut self, children: &[TaskId]) -> Result<HashSet<TaskId>> {
        Ok(children
            .iter()
            .filter(|c| self.edges_left.contains_key(c))
            .copied()
            .collect())
    }

    fn states(&mut self, ids: &[TaskId]) -> Result<BTreeMap<TaskId, (String, TaskState)>> {
        Ok(ids
            .iter()
            .filter_map(|id| {
                let t = self.tasks.get(id)?;
                Some((*id, (t.channel.clone(), t.state.clone())))
            })
            .collect())
    }
}

impl Inner {
    /// Applies `event` to task `id` and re-indexes it.
    fn transition(&mut self, id: TaskId, event: &Event) -> Result<&Task> {
        let task = self.tasks.get_mut(&id).ok_or(Error::NotFound(id))?;
        let next = apply(&task.state, event).map_err(|r| r.into_error(id))?;
        Ok(self.idx.replace_state(task, next))
    }

    /// Stores task `id`'s new state and re-indexes it.
    fn set_state(&mut self, id: TaskId, next: TaskState) -> Result<&Task> {
        let task = self.tasks.get_mut(&id).ok_or(Error::NotFound(id))?;
        Ok(self.idx.replace_state(task, next))
    }

    /// Adds what a change to task `id` counts to its channel's totals.
    fn count(&mut self, id: TaskId, counted: Totals) {
        let Some(task) = self.tasks.get(&id).filter(|_| !counted.is_zero()) else {
            return;
        };
        // The channel's name is copied only for its first totals.
        match self.totals.get_mut(&task.channel) {
            Some(totals) => totals.add(counted),
            None => {
                let channel = task.channel.clone();
                self.totals.entry(channel).or_default().add(counted);
            }
        }
    }

    fn state(&self, id: TaskId) -> Option<TaskState> {
        self.tasks.get(&id).map(|t| t.state.clone())
    }

    /// Writes the changes of a [`batch`] rule; returns how many.
    fn write(&mut self, changes: Vec<batch::Change>) -> Result<usize> {
        let n = changes.len();
        for (id, next) in changes {
            self.set_state(id, next)?;
        }
        Ok(n)
    }

    /// Applies `event` to the task of each claim still held; returns how many.
    fn on_held(&mut self, claims: &[Claim], event: &Event) -> Result<usize> {
        let changes = batch::on_held(claims, event, |id| Ok(self.state(id)))?;
        self.write(changes)
    }

    fn delete(&mut self, id: TaskId) {
        self.results.remove(&id);
        self.edges_left.remove(&id);
        let parents: Vec<TaskId> = self.edges_of(id).map(|(p, _)| p).collect();
        for parent in parents {
            self.edges.remove(&(id, parent));
            if let Some(children) = self.dependents.get_mut(&parent) {
                children.remove(&id);
                if children.is_empty() {
                    self.dependents.remove(&parent);
                }
            }
        }
        if let Some(task) = self.tasks.remove(&id) {
            self.idx.index(&task, false);
            if self
                .idx
                .channels
                .get(&task.channel)
                .is_some_and(|ch| ch.counts.total() == 0)
            {
                self.idx.channels.remove(&task.channel);
            }
        }
    }

    /// Deletes tasks of `channel` (or all channels) that `pick` selects, and fails the
    /// waiting children of those not finished; returns how many.
    fn delete_where(
        &mut self,
        channel: Option<&str>,
        pick: impl Fn(&Task) -> bool,
        now: Timestamp,
    ) -> Result<usize> {
        let doomed: Vec<(TaskId, bool)> = self
            .tasks
            .values()
            .filter(|t| channel.is_none_or(|c| t.channel == c) && pick(t))
            .map(|t| (t.id, t.state.status.is_final()))
            .collect();
        for (id, _) in &doomed {
            self.delete(*id);
        }
        let removed = doomed.iter().filter(|(_, finished)| !finished);
        self.settle(removed.map(|(id, _)| (*id, Ended::Removed)).collect(), now)?;
        Ok(doomed.len())
    }

    /// Promotes the delayed tasks of `channel` whose run-at has come (up to
    /// [`batch::PROMOTE_PER_CLAIM`], earliest first).
    fn promote_due(&mut self, channel: &str, now: Timestamp) -> Result<()> {
        let due: Vec<TaskId> = self.idx.channels.get(channel).map_or_else(Vec::new, |ch| {
            ch.delayed
                .iter()
                .take_while(|(run_at, _)| *run_at <= now)
                .take(batch::PROMOTE_PER_CLAIM)
                .map(|&(_, id)| id)
                .collect()
        });
        for id in due {
            self.transition(id, &Event::Promote { now })?;
        }
        Ok(())
    }
}

fn toggle<T: Ord>(set: &mut BTreeSet<T>, value: T, add: bool) -> bool {
    if add {
        set.insert(value)
    } else {
        set.remove(&value)
    }
}

/// The channels whose waiting tasks became due, to wake once the lock is let go.
#[derive(Default)]
struct Due(BTreeSet<String>);

impl Due {
    fn wake(self, wakes: &LocalWakes) {
        wakes.wake(self.0.iter().map(String::as_str));
    }
}

impl ClaimStore for MemoryStore {
    fn watch(&self, wake: Wake) -> Option<Watch> {
        Some(self.wakes.watch(wake))
    }

    /// No other process sees this store's tasks, so a reserve keeps none from them; a claim
    /// of more tasks takes the store's lock fewer times. 4 workers of no-op handlers drained
    /// 0.79-0.86M tasks/s with the shared stores' 256, 1.0M with 1,024 and 1.04-1.11M with
    /// 4,096 (BENCHMARKS.md). The queue's bound of 5 ms of handler time still holds.
    fn max_reserve(&self) -> usize {
        4096
    }

    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            t.validate()?;
        }
        self.inner.lock().add_all(tasks, now)
    }

    fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inner = self.inner.lock();
        if inner.flows.get(channel).is_some_and(|f| f.paused) {
            return Ok(Vec::new());
        }
        inner.promote_due(channel, now)?;
        let rate = inner.flows.get(channel).and_then(|f| f.rate);
        let window = inner.windows.get(channel).copied();
        let mut limit = inner.allowance(channel, limit);
        if let Some(rate) = rate {
            limit = limit.min(rate.room(window, now));
        }
        let (due, key_windows) = inner.choose(channel, limit, now);
        if let Some(rate) = rate.filter(|_| !due.is_empty()) {
            let next = rate.take(window, now, due.len());
            inner.windows.insert(channel.to_owned(), next);
        }
        if let Some(rate) = inner.flows.get(channel).and_then(|f| f.rate_per_key) {
            let saved = inner.key_windows.entry(channel.to_owned()).or_default();
            saved.save(rate, now, &key_windows);
        }
        let event = Event::Claim { now, lease_until };
        due.into_iter()
            .map(|id| inner.transition(id, &event).cloned())
            .collect()
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        let inner = self.inner.lock();
        // A paused or full channel's queued tasks are not due.
        let paused = inner.allowance(channel, 1) == 0;
        Ok(inner.idx.channels.get(channel).and_then(|ch| {
            let lease = ch.running.first().map(|(t, _)| *t);
            if paused {
                return lease;
            }
            // Pending tasks are due (any one's run-at is not later than now), unless their
            // concurrency keys are busy or used up their windows.
            let ready = inner.first_start(channel, ch);
            let delayed = ch.delayed.first().map(|(t, _)| *t);
            // Not before the end of a used-up window of the channel's rate.
            let free_at = inner
                .flows
                .get(channel)
                .and_then(|f| f.rate)
                .and_then(|rate| rate.free_at(inner.windows.get(channel).copied()));
            let later = |t: Option<Timestamp>| t.map(|t| free_at.map_or(t, |f| t.max(f)));
            [later(ready), later(delayed), lease]
                .into_iter()
                .flatten()
                .min()
        }))
    }
}

impl OutcomeStore for MemoryStore {
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        self.inner
            .lock()
            .on_held(claims, &Event::Extend { lease_until })
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        let mut inner = self.inner.lock();
        let done = batch::finish(results, now, |id| Ok(inner.state(id)))?;
        for (&(id, _), &counted) in done.changes.iter().zip(&done.totals) {
            inner.count(id, counted);
        }
        for ((id, _), result) in done.changes.iter().zip(&done.results) {
            if let Some(result) = result {
                inner.results.insert(*id, result.clone());
            }
        }
        let ended = ended_by(&done.changes);
        inner.write(done.changes)?;
        let due = inner.settle(ended, now)?;
        drop(inner);
        due.wake(&self.wakes);
        Ok(done.statuses)
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        self.inner.lock().on_held(claims, &Event::Release { now })
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        let mut inner = self.inner.lock();
        let expired: Vec<TaskId> = inner
            .idx
            .leases
            .iter()
            .take_while(|(lease, _)| *lease <= now)
            .map(|&(_, id)| id)
            .collect();
        let event = Event::Expire { now, max_lost_runs };
        let mut failed = Vec::new();
        for id in &expired {
            let status = inner.transition(*id, &event)?.state.status;
            inner.count(*id, Totals::of(&event, status));
            if status == Status::Failed {
                failed.push((*id, Ended::Failed));
            }
        }
        inner.settle(failed, now)?;
        Ok(expired.len())
    }

    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool> {
        let mut inner = self.inner.lock();
        let Inner { tasks, stuck, .. } = &mut *inner;
        // Marks whose attempt no longer runs count no more.
        stuck.retain(|id, (attempt, _)| {
            let c = Claim {
                id: *id,
                attempt: *attempt,
            };
            tasks.get(id).is_some_and(|t| c.holds(&t.state))
        });
        let held = tasks.get(&claim.id).is_some_and(|t| claim.holds(&t.state));
        if held {
            stuck.insert(claim.id, (claim.attempt, since));
        }
        Ok(held)
    }
}

impl AdminStore for MemoryStore {
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        // Failed tasks are final: no waiting task is failed by their deletion.
        let failed = |t: &Task| t.state.status == Status::Failed;
        self.inner
            .lock()
            .delete_where(channel, failed, Timestamp::EPOCH)
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        let mut inner = self.inner.lock();
        let mut ids: Vec<TaskId> = inner
            .idx
            .channels
            .iter()
            .filter(|(name, _)| channel.is_none_or(|c| c == name.as_str()))
            .flat_map(|(_, ch)| ch.failed.iter().copied())
            .collect();
        ids.sort_unstable();
        let changes = {
            let failed: Vec<Task> = ids
                .iter()
                .filter_map(|id| inner.tasks.get(id).cloned())
                .collect();
            batch::requeue(&failed, now, retries, &mut Lookup(&inner))?
        };
        inner.write(changes)
    }

    fn remove_channel(&self, channel: &str, now: Timestamp) -> Result<usize> {
        self.inner.lock().delete_where(Some(channel), |_| true, now)
    }

    fn purge_batch(
        &self,
        status: Status,
        channel: Option<&str>,
        before: Timestamp,
    ) -> Result<usize> {
        batch::purgeable(status)?;
        let mut inner = self.inner.lock();
        let doomed: Vec<TaskId> = inner
            .tasks
            .values()
            .filter(|t| channel.is_none_or(|c| t.channel == c))
            .filter(|t| t.state.status == status && t.state.updated_at < before)
            .take(batch::BULK_BATCH)
            .map(|t| t.id)
            .collect();
        for id in &doomed {
            inner.delete(*id);
        }
        Ok(doomed.len())
    }

    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()> {
        let mut inner = self.inner.lock();
        let task = inner.tasks.get(&id).ok_or(Error::NotFound(id))?;
        transition::cancel(&task.state).map_err(|r| r.into_error(id))?;
        inner.delete(id);
        inner.settle(vec![(id, Ended::Removed)], now)?;
        Ok(())
    }
}

/// What [`batch::requeue`] asks of the store.
struct Lookup<'a>(&'a Inner);

impl batch::RequeueLookup for Lookup<'_> {
    fn key_held(&mut self, channel: &str, key: &str) -> Result<bool> {
        let ch = self.0.idx.channels.get(channel);
        Ok(ch.is_some_and(|ch| ch.unique.contains_key(key)))
    }

    fn parents_left(&mut self, id: TaskId) -> Result<Vec<(TaskId, Option<Status>)>> {
        Ok(self.0.parents_left(id))
    }
}

impl InspectStore for MemoryStore {
    fn channels(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.inner.lock().idx.channels.keys().cloned().collect();
        names.sort_unstable();
        Ok(names)
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        let inner = self.inner.lock();
        let mut total = Counts::default();
        for (name, ch) in &inner.idx.channels {
            if channel.is_none_or(|c| c == name) {
                for s in Status::ALL {
                    *total.get_mut(s) += ch.counts.get(s);
                }
            }
        }
        Ok(total)
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self.inner.lock().tasks.get(&id).cloned())
    }

    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.lock().results.get(&id).cloned())
    }

    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        Ok(self.inner.lock().edges_of(id).map(|(p, _)| p).collect())
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        let inner = self.inner.lock();
        let start = filter.after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .tasks
            .range((start, Bound::Unbounded))
            .map(|(_, t)| t)
            .filter(|t| filter.matches(t))
            .take(filter.limit)
            .cloned()
            .collect())
    }

    fn totals(&self) -> Result<BTreeMap<String, Totals>> {
        Ok(self.inner.lock().totals.clone())
    }

    fn stuck(&self, channel: Option<&str>) -> Result<Vec<Stuck>> {
        let inner = self.inner.lock();
        Ok(inner
            .stuck
            .iter()
            .filter_map(|(&id, &(attempt, since))| {
                let task = inner.tasks.get(&id)?;
                let counts = Claim { id, attempt }.holds(&task.state)
                    && channel.is_none_or(|c| c == task.channel);
                counts.then(|| Stuck {
                    id,
                    channel: task.channel.clone(),
                    attempt,
                    since,
                })
            })
            .collect())
    }
}

impl ScheduleStore for MemoryStore {
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        task.validate()?;
        let mut inner = self.inner.lock();
        if inner.fired.get(name).is_some_and(|&last| last >= at) {
            return Ok(None);
        }
        inner.fired.insert(name.to_owned(), at);
        Ok(Some(inner.add_all(std::slice::from_ref(task), now)?[0]))
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        Ok(self.inner.lock().fired.get(name).copied())
    }
}

impl FlowStore for MemoryStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        validate_channel(channel)?;
        let flows = &mut self.inner.lock().flows;
        Ok(change_flow(flows, channel.to_owned(), |f| {
            f.paused = paused
        }))
    }

    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool> {
        validate_channel(channel)?;
        check_max_running(max)?;
        let flows = &mut self.inner.lock().flows;
        Ok(change_flow(flows, channel.to_owned(), |f| {
            f.max_running = max
        }))
    }

    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool> {
        validate_channel(channel)?;
        check_max_running_per_key(max)?;
        let flows = &mut self.inner.lock().flows;
        Ok(change_flow(flows, channel.to_owned(), |f| {
            f.max_running_per_key = max
        }))
    }

    fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        validate_channel(channel)?;
        check_rate(rate)?;
        let mut inner = self.inner.lock();
        let changed = change_flow(&mut inner.flows, channel.to_owned(), |f| f.rate = rate);
        if changed {
            // A new rate counts its starts afresh.
            inner.windows.remove(channel);
        }
        Ok(changed)
    }

    fn set_rate_per_key(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        validate_channel(channel)?;
        check_rate(rate)?;
        let mut inner = self.inner.lock();
        let changed = change_flow(&mut inner.flows, channel.to_owned(), |f| {
            f.rate_per_key = rate
        });
        if changed {
            // A new rate counts every key's starts afresh.
            inner.key_windows.remove(channel);
        }
        Ok(changed)
    }

    fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        Ok(self.inner.lock().flows.clone())
    }
}

/// The tasks that `changes` end, for [`dependency::settle`].
fn ended_by(changes: &[batch::Change]) -> Vec<(TaskId, Ended)> {
    changes
        .iter()
        .filter_map(|(id, s)| Some((*id, Ended::of(s.status)?)))
        .collect()
}
