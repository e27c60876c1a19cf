//! Tasks, their statuses and their counts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Timestamp;

/// A task's id, unique in its store and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(i64);

impl TaskId {
    /// Wraps a raw id as stored.
    pub const fn new(raw: i64) -> Self {
        TaskId(raw)
    }

    /// The raw id.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a task stands.
///
/// `Pending` and `Delayed` tasks are *queued*: a worker claims them once their run-at time
/// has come. `Running` tasks are held by a worker under a lease. `Waiting` tasks wait for
/// their parents ([`NewTask::after`]) to be done. `Done` and `Failed` are final; only
/// `requeue_failed` moves a `Failed` task again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Waiting to run.
    Pending,
    /// Claimed by a worker, whose lease has not expired.
    Running,
    /// Deferred by its handler (or a retry backoff) until its run-at time.
    Delayed,
    /// Its handler succeeded.
    Done,
    /// Its handler failed and no retry is left (or a parent it waited for failed or was
    /// removed).
    Failed,
    /// Waiting for its parents ([`NewTask::after`]) to be done; then it is due.
    Waiting,
}

impl Status {
    /// Every status, in a fixed order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Running,
        Status::Delayed,
        Status::Done,
        Status::Failed,
        Status::Waiting,
    ];

    /// The lower-case name, as stored in SQLite and printed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Delayed => "delayed",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Waiting => "waiting",
        }
    }

    /// Pending or delayed: waiting for a worker.
    pub const fn is_queued(self) -> bool {
        matches!(self, Status::Pending | Status::Delayed)
    }

    /// Done or failed.
    pub const fn is_final(self) -> bool {
        matches!(self, Status::Done | Status::Failed)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Status`] from a string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown task status {0:?} (expected pending, running, delayed, done, failed or waiting)")]
pub struct ParseStatusError(pub String);

impl FromStr for Status {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseStatusError(s.to_owned()))
    }
}

/// The part of a task that transitions change. See [`crate::transition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// Where the task stands.
    pub status: Status,
    /// How many more attempts may follow a failure.
    pub retries_left: u32,
    /// The retry count the task was enqueued with; `requeue_failed` without a count restores it.
    pub max_retries: u32,
    /// How many times a worker claimed the task. Each claim is one attempt; a claim given
    /// back before its handler started ([`crate::transition::Event::Release`]) is not.
    pub attempts: u32,
    /// How many runs were lost: their lease expired before an outcome was recorded (the
    /// worker's process died, or hung). Lost runs use no retry; past a bound, the task fails
    /// with [`crate::transition::WORKER_LOST`]. A requeue starts the count again.
    pub lost_runs: u32,
    /// When a queued task becomes due.
    pub run_at: Timestamp,
    /// When the lease of a running task expires; `None` unless running.
    pub lease_until: Option<Timestamp>,
    /// The message of the last failure, kept after later attempts.
    pub last_error: Option<String>,
    /// When the state last changed.
    pub updated_at: Timestamp,
}

impl TaskState {
    /// The state of a task just enqueued: pending if due at once, else delayed.
    pub fn new(retries: u32, run_at: Timestamp, now: Timestamp) -> Self {
        TaskState {
            status: if run_at > now {
                Status::Delayed
            } else {
                Status::Pending
            },
            retries_left: retries,
            max_retries: retries,
            attempts: 0,
            lost_runs: 0,
            run_at,
            lease_until: None,
            last_error: None,
            updated_at: now,
        }
    }
}

/// A stored task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// The channel whose handler runs it.
    pub channel: String,
    /// The handler's arguments, as MessagePack.
    pub args: Vec<u8>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// Higher runs first among the due tasks of a channel; equal priorities run in run-at,
    /// then id order.
    pub priority: i32,
    /// While the task is pending, delayed or running, enqueueing the same key to the same
    /// channel returns this task's id instead of adding a task.
    pub unique_key: Option<String>,
    /// Tasks of the channel with the same key run at most
    /// [`crate::Flow::max_running_per_key`] at a time, across every process.
    pub concurrency_key: Option<String>,
    /// How long one run may last, if the task sets it (before the channel's timeout).
    pub timeout: Option<Duration>,
    /// The trace context of the code that enqueued it, a W3C `traceparent`
    /// ([`crate::trace`]); `None` if it had none.
    pub traceparent: Option<String>,
    /// Status, retries, attempts, times.
    pub state: TaskState,
}

impl Task {
    /// The worker's handle on this task's current attempt, valid while it is running.
    pub fn claim(&self) -> Claim {
        Claim {
            id: self.id,
            attempt: self.state.attempts,
        }
    }
}

/// A worker's handle on one attempt of a running task.
///
/// The attempt number fences stale workers: once a lease expired and the task was recovered
/// or claimed again, finishing with an old `Claim` fails with [`crate::Error::LeaseLost`]
/// and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    /// The task.
    pub id: TaskId,
    /// The attempt this claim started (the task's `attempts` after the claim).
    pub attempt: u32,
}

impl Claim {
    /// Whether this claim still holds a task in `state`: the task runs, in this attempt.
    /// Stores call it before every change made on a claim's behalf.
    pub fn holds(&self, state: &TaskState) -> bool {
        state.status == Status::Running && state.attempts == self.attempt
    }
}

/// A running attempt whose handler ran past its timeout and cannot be stopped (a thread):
/// its worker keeps its lease until it returns. See [`crate::OutcomeStore::mark_stuck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    /// The task.
    pub id: TaskId,
    /// Its channel.
    pub channel: String,
    /// The attempt that is stuck.
    pub attempt: u32,
    /// When it was marked: its deadline, as its worker saw it pass.
    pub since: Timestamp,
}

/// A task to enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewTask {
    /// The channel whose handler runs it.
    pub channel: String,
    /// The handler's arguments, as MessagePack.
    pub args: Vec<u8>,
    /// Attempts allowed after the first failure.
    pub retries: u32,
    /// When it becomes due; `None` for at once.
    pub run_at: Option<Timestamp>,
    /// Higher runs first among due tasks of the channel; default 0.
    pub priority: i32,
    /// A key that at most one pending, delayed or running task of the channel may have.
    pub unique_key: Option<String>,
    /// Tasks of the channel with the same concurrency key run at most
    /// [`crate::Flow::max_running_per_key`] at a time; `None` for no such rule.
    pub concurrency_key: Option<String>,
    /// How long one run may last (before the channel's timeout); `None` for the channel's.
    /// Kept in whole milliseconds, at least one.
    pub timeout: Option<Duration>,
    /// The tasks that must be done before this one is due (see [`crate::dependency`]);
    /// empty for none.
    pub after: Vec<Parent>,
    /// The trace context of the code that enqueues it, a W3C `traceparent` checked by
    /// [`crate::trace::validate_traceparent`]; `None` for none.
    pub traceparent: Option<String>,
}

/// A task that another waits for ([`NewTask::after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Parent {
    /// A task already enqueued.
    Task(TaskId),
    /// The task at this position of the same enqueue call, which must come before the
    /// task that waits for it: a group and its final task go in one call.
    Earlier(usize),
}

impl NewTask {
    /// A task due at once with no retries.
    pub fn new(channel: impl Into<String>, args: Vec<u8>) -> Self {
        NewTask {
            channel: channel.into(),
            args,
            retries: 0,
            run_at: None,
            priority: 0,
            unique_key: None,
            concurrency_key: None,
            timeout: None,
            after: Vec::new(),
            traceparent: None,
        }
    }

    /// Adds parents: this task is due only once every one of them is done.
    pub fn after(mut self, parents: impl IntoIterator<Item = TaskId>) -> Self {
        self.after.extend(parents.into_iter().map(Parent::Task));
        self
    }

    /// Adds as a parent the task at `position` of the same enqueue call (an earlier one).
    pub fn after_earlier(mut self, position: usize) -> Self {
        self.after.push(Parent::Earlier(position));
        self
    }

    /// Sets the priority: higher runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the unique key.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Sets the concurrency key: tasks of the channel with the same key run at most
    /// [`crate::Flow::max_running_per_key`] at a time.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Sets how long one run may last (kept in whole milliseconds).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the trace context it carries: a W3C `traceparent`.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Checks that the task can be stored: its channel name ([`validate_channel`]), its
    /// concurrency key ([`validate_concurrency_key`]), its trace context
    /// ([`crate::trace::validate_traceparent`]) and its timeout (at least a millisecond, at
    /// most `i64::MAX` of them).
    pub fn validate(&self) -> crate::Result<()> {
        validate_channel(&self.channel)?;
        if let Some(key) = &self.concurrency_key {
            validate_concurrency_key(key)?;
        }
        if let Some(traceparent) = &self.traceparent {
            crate::trace::validate_traceparent(traceparent)?;
        }
        match self.timeout.map(|t| (t, t.as_millis())) {
            Some((t, ms)) if ms == 0 || ms > i64::MAX as u128 => {
                Err(crate::Error::InvalidConfig(format!(
                    "a task's timeout must be from 1 ms to {} ms, not {t:?}",
                    i64::MAX
                )))
            }
            _ => Ok(()),
        }
    }

    /// The timeout in whole milliseconds, as stores keep it.
    pub fn timeout_ms(&self) -> Option<i64> {
        self.timeout.map(crate::time::millis_of)
    }

    /// Sets the number of retries.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets when the task becomes due.
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// The state the task starts in when enqueued at `now`.
    pub fn initial_state(&self, now: Timestamp) -> TaskState {
        TaskState::new(self.retries, self.run_at.unwrap_or(now), now)
    }

    /// The stored task, given its id, as enqueued at `now`.
    pub fn to_task(&self, id: TaskId, now: Timestamp) -> Task {
        Task {
            id,
            channel: self.channel.clone(),
            args: self.args.clone(),
            created_at: now,
            priority: self.priority,
            unique_key: self.unique_key.clone(),
            concurrency_key: self.concurrency_key.clone(),
            timeout: self.timeout_ms().map(crate::time::duration_of),
            traceparent: self.traceparent.clone(),
            state: self.initial_state(now),
        }
    }
}

/// Which tasks [`crate::InspectStore::list`] returns: a page in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only this channel; `None` for all.
    pub channel: Option<String>,
    /// Only this status; `None` for all.
    pub status: Option<Status>,
    /// Only ids greater than this: pass the last id of the previous page.
    pub after: Option<TaskId>,
    /// At most this many tasks.
    pub limit: usize,
}

impl ListFilter {
    /// The first `limit` tasks, of every channel and status.
    pub fn new(limit: usize) -> Self {
        ListFilter {
            channel: None,
            status: None,
            after: None,
            limit,
        }
    }

    /// Only tasks of `channel`.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Only tasks with `status`.
    pub fn status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }

    /// Only tasks after `id` (the next page).
    pub fn after(mut self, id: TaskId) -> Self {
        self.after = Some(id);
        self
    }

    /// Whether `task` passes the channel, status and `after` conditions.
    pub fn matches(&self, task: &Task) -> bool {
        self.channel.as_ref().is_none_or(|c| *c == task.channel)
            && self.status.is_none_or(|s| s == task.state.status)
            && self.after.is_none_or(|a| task.id > a)
    }
}

/// How a handler's run ended, as recorded by [`crate::OutcomeStore::finish_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded.
    Succeeded,
    /// The handler succeeded and gave a result (MessagePack, at most [`MAX_RESULT_BYTES`]),
    /// stored with the task in the same write as `done`.
    Returned(Vec<u8>),
    /// The handler failed.
    Failed {
        /// The message kept as the task's last error.
        error: String,
        /// When a retry may run, if one is left (now for an immediate retry).
        retry_at: Timestamp,
        /// No retry, whatever is left: the failure cannot pass (e.g. undecodable arguments).
        permanent: bool,
    },
    /// The handler deferred the task; no retry is used.
    Delayed {
        /// When it runs again.
        until: Timestamp,
    },
}

impl Outcome {
    /// The result the handler gave, if it gave one.
    pub fn result(&self) -> Option<&[u8]> {
        match self {
            Outcome::Returned(result) => Some(result),
            _ => None,
        }
    }
}

/// The largest result a task keeps ([`Outcome::Returned`]), in bytes of MessagePack: 1 MiB.
/// A larger one fails the attempt with a clear error (the queue checks it); stores refuse
/// one as [`crate::Error::InvalidConfig`].
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// Number of tasks in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pending tasks.
    pub pending: usize,
    /// Running tasks.
    pub running: usize,
    /// Delayed tasks.
    pub delayed: usize,
    /// Done tasks.
    pub done: usize,
    /// Failed tasks.
    pub failed: usize,
    /// Tasks waiting for their parents.
    pub waiting: usize,
}

impl Counts {
    /// The count of one status.
    pub fn get(&self, status: Status) -> usize {
        match status {
            Status::Pending => self.pending,
            Status::Running => self.running,
            Status::Delayed => self.delayed,
            Status::Done => self.done,
            Status::Failed => self.failed,
            Status::Waiting => self.waiting,
        }
    }

    /// A mutable reference to the count of one status.
    pub fn get_mut(&mut self, status: Status) -> &mut usize {
        match status {
            Status::Pending => &mut self.pending,
            Status::Running => &mut self.running,
            Status::Delayed => &mut self.delayed,
            Status::Done => &mut self.done,
            Status::Failed => &mut self.failed,
            Status::Waiting => &mut self.waiting,
        }
    }

    /// Pending, running, delayed and waiting: tasks not finished yet.
    pub fn active(&self) -> usize {
        self.pending + self.running + self.delayed + self.waiting
    }

    /// All tasks.
    pub fn total(&self) -> usize {
        self.active() + self.done + self.failed
    }
}

/// How many tasks ended done and failed in one bucket of time: see [`crate::InspectStore::finished`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The bucket's start: a multiple of the bucket's width since the Unix epoch.
    pub bucket: Timestamp,
    /// Tasks done in it.
    pub done: usize,
    /// Tasks failed in it.
    pub failed: usize,
}

impl Finished {
    /// A bucket in which no task finished.
    pub const fn none(bucket: Timestamp) -> Finished {
        Finished {
            bucket,
            done: 0,
            failed: 0,
        }
    }

    /// The start of the bucket of `width` that holds `at`: `at` rounded down to a multiple
    /// of `width` since the epoch (a width under a millisecond counts as one).
    pub fn bucket_of(at: Timestamp, width: Duration) -> Timestamp {
        let width = Finished::width_ms(width);
        let ms = at.as_millis();
        Timestamp::from_millis(ms - ms.rem_euclid(width))
    }

    /// A bucket's width in milliseconds, as stores group by it: at least one.
    pub fn width_ms(width: Duration) -> i64 {
        crate::time::millis_of(width).max(1)
    }

    /// Sums `(time, status, count)` rows into buckets of `width`, in time order; statuses
    /// other than done and failed, and empty buckets, are left out.
    pub fn tally(
        rows: impl IntoIterator<Item = (Timestamp, Status, usize)>,
        width: Duration,
    ) -> Vec<Finished> {
        let mut buckets = std::collections::BTreeMap::<Timestamp, Finished>::new();
        for (at, status, n) in rows {
            if !status.is_final() || n == 0 {
                continue;
            }
            let bucket = Finished::bucket_of(at, width);
            let b = buckets.entry(bucket).or_insert(Finished::none(bucket));
            if status == Status::Done {
                b.done += n;
            } else {
                b.failed += n;
            }
        }
        buckets.into_values().collect()
    }
}

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Checks that a channel name can be stored: not empty, at most [`MAX_CHANNEL_LEN`] bytes,
/// no control characters.
pub fn validate_channel(name: &str) -> crate::Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_CHANNEL_LEN {
        "it is longer than 255 bytes"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(crate::Error::InvalidChannel {
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// The longest concurrency key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Checks that a concurrency key can be stored: not empty (a task without a key has
/// `None`), at most [`MAX_KEY_LEN`] bytes.
pub fn validate_concurrency_key(key: &str) -> crate::Result<()> {
    let problem = if key.is_empty() {
        "it is empty (a task without a key has none)"
    } else if key.len() > MAX_KEY_LEN {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(crate::Error::InvalidConfig(format!(
        "invalid concurrency key {:?}: {problem}",
        key.chars().take(64).collect::<String>()
    )))
}
