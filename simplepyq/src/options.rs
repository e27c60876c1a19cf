//! Options of enqueued tasks and of channels.

use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use simplepyq_core::{NewTask, TaskId, Timestamp};

use crate::retention::Retention;

/// Options of an enqueued task: retries, when it runs, its priority, a unique key, a
/// concurrency key, the tasks it waits for.
///
/// ```
/// use std::time::Duration;
/// use simplepyq::EnqueueOptions;
///
/// let opts = EnqueueOptions::new()
///     .retries(3)                           // up to 3 more attempts after a failure
///     .delay(Duration::from_secs(60))       // due in a minute
///     .priority(10)                         // before lower priorities of the channel
///     .unique("invoice-2041")               // no second unfinished task with this key
///     .concurrency_key("customer-7");       // one of this customer's tasks at a time
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// Attempts allowed after a failed first one (the original's `retries`); default 0.
    pub retries: u32,
    /// When the task becomes due; `None` for at once.
    pub when: Option<When>,
    /// Higher runs first among the due tasks of the channel; default 0.
    pub priority: i32,
    /// While a task of the channel with this key is pending, delayed or running, enqueueing
    /// the key again returns that task's id and adds nothing.
    pub unique: Option<String>,
    /// Tasks of the channel with the same concurrency key run at most the channel's
    /// [`SimplePyQ::set_max_running_per_key`](crate::SimplePyQ::set_max_running_per_key)
    /// (default 1) at a time, across every process.
    pub concurrency_key: Option<String>,
    /// How long one run of the task may last, before its channel's timeout.
    pub timeout: Option<Duration>,
    /// The tasks that must be done before this one is due.
    pub after: Vec<TaskId>,
    /// The trace context the task carries (a W3C `traceparent`); `None` for the current
    /// OpenTelemetry span's with the `opentelemetry` feature, else none.
    pub traceparent: Option<String>,
}

/// When an enqueued task becomes due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum When {
    /// This long after it is enqueued.
    After(Duration),
    /// At this time.
    At(SystemTime),
}

impl EnqueueOptions {
    /// The defaults: no retries, due at once, priority 0, no unique key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many more attempts may follow a failure.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Makes the task due `delay` after it is enqueued (a scheduled task).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.when = Some(When::After(delay));
        self
    }

    /// Makes the task due at `time` (a scheduled task; a past time means at once).
    pub fn at(mut self, time: SystemTime) -> Self {
        self.when = Some(When::At(time));
        self
    }

    /// Sets the priority: higher runs first, equal priorities in order of their due time.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the unique key.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique = Some(key.into());
        self
    }

    /// Sets the concurrency key: of the channel's tasks with the same key, at most
    /// [`SimplePyQ::set_max_running_per_key`](crate::SimplePyQ::set_max_running_per_key)
    /// (default 1) run at once across every process and machine ("one job per customer at
    /// a time"), while tasks of other keys, or without one, run beside them. Not empty, at
    /// most 255 bytes ([`Error::InvalidConfig`](crate::Error::InvalidConfig) at the
    /// enqueue).
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Sets how long one run of this task may last, kept with the task (so that any
    /// process that runs it keeps to it), before its channel's
    /// [`ChannelOptions::timeout`]; what happens at the deadline is said there. At least a
    /// millisecond ([`Error::InvalidConfig`](crate::Error::InvalidConfig) at the enqueue).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the task wait for `parents`: it is due once every one of them is done (then
    /// its [`TaskContext::parent_results`](crate::TaskContext::parent_results) reads what
    /// they gave), and fails if one of them fails for good, is cancelled or removed, naming
    /// it. Meanwhile it is waiting ([`Status::Waiting`](crate::Status::Waiting)). A parent
    /// must be in the store, not failed
    /// ([`Error::InvalidConfig`](crate::Error::InvalidConfig) at the enqueue otherwise):
    /// tasks wait only for tasks enqueued before them, so there are no cycles.
    pub fn after(mut self, parents: impl IntoIterator<Item = TaskId>) -> Self {
        self.after.extend(parents);
        self
    }

    /// Sets the trace context the task carries: a W3C `traceparent`
    /// (`00-{trace id}-{span id}-{flags}`, lower-case hex;
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) at the enqueue otherwise), which
    /// the handler's span continues with the `opentelemetry` feature. Without it, that
    /// feature takes the current OpenTelemetry span's context; this one is for a context
    /// that came from elsewhere (a message's header, another language).
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The task to store, enqueued at `now`.
    pub(crate) fn task(&self, channel: &str, args: Vec<u8>, now: Timestamp) -> NewTask {
        let mut task = NewTask::new(channel, args)
            .retries(self.retries)
            .priority(self.priority)
            .after(self.after.iter().copied());
        task.unique_key.clone_from(&self.unique);
        task.concurrency_key.clone_from(&self.concurrency_key);
        task.timeout = self.timeout;
        task.traceparent = self.traceparent.clone().or_else(crate::traces::current);
        match self.when {
            Some(When::After(d)) => task.run_at(now.after(d)),
            Some(When::At(t)) => task.run_at(system_time(t)),
            None => task,
        }
    }
}

fn system_time(t: SystemTime) -> Timestamp {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, simplepyq_core::millis_of);
    Timestamp::from_millis(ms)
}

/// How long a failed task waits before its retry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// Retry at once (the original's behaviour).
    #[default]
    Immediate,
    /// Wait `base` after the first failed attempt, doubling with each further one, at most
    /// `max`; with `jitter`, a random wait between half of that and all of it, so that tasks
    /// that failed together do not all retry together.
    Exponential {
        /// The wait after the first failure.
        base: Duration,
        /// The longest wait.
        max: Duration,
        /// Whether to randomize the wait.
        jitter: bool,
    },
}

impl Backoff {
    /// Exponential backoff from `base` up to `max`, with jitter.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff::Exponential {
            base,
            max,
            jitter: true,
        }
    }

    /// The wait before the retry that follows failed attempt number `attempt` (1 for the
    /// first) of task `seed`.
    pub fn wait(&self, attempt: u32, seed: i64) -> Duration {
        match *self {
            Backoff::Immediate => Duration::ZERO,
            Backoff::Exponential { base, max, jitter } => {
                let doublings = attempt.saturating_sub(1).min(31);
                let wait = base.saturating_mul(1u32 << doublings).min(max);
                if !jitter {
                    return wait;
                }
                // A random fraction from std's randomly keyed hasher: no rand crate needed.
                let random =
                    std::collections::hash_map::RandomState::new().hash_one((seed, attempt));
                let half = wait / 2;
                half + half.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
            }
        }
    }
}

/// Options of a channel: its workers and its retry backoff.
///
/// ```
/// use std::time::Duration;
/// use simplepyq::{Backoff, ChannelOptions};
///
/// let opts = ChannelOptions::new(4)
///     .backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300)));
/// # let _ = opts;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Worker threads of the channel (the original's `max_workers`), or for an async
    /// channel the futures in flight at most; at least 1.
    pub max_workers: usize,
    /// The wait before a retry. A delay the handler asks for wins over it.
    pub backoff: Backoff,
    /// How long one run of a task may last; `None` for no limit. See
    /// [`ChannelOptions::timeout`].
    pub timeout: Option<Duration>,
    /// How long the channel's finished tasks are kept; what it leaves `None`, the queue's
    /// ([`crate::Builder::keep_done`]). See [`ChannelOptions::keep_done`].
    pub retention: Retention,
    /// The runtime an async channel's futures run on; `None` for the caller's, else the
    /// queue's own.
    #[cfg(feature = "tokio")]
    pub runtime: Option<tokio::runtime::Handle>,
}

impl ChannelOptions {
    /// `max_workers` workers, retries at once.
    pub fn new(max_workers: usize) -> Self {
        ChannelOptions {
            max_workers,
            backoff: Backoff::Immediate,
            timeout: None,
            retention: Retention::default(),
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }

    /// Keeps the channel's done tasks this long after they finished, then deletes them
    /// (over the queue's [`crate::Builder::keep_done`]): the queue deletes them while it
    /// runs, on a thread of its own, a short transaction at a time.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use simplepyq::{ChannelOptions, SimplePyQ};
    ///
    /// let q = SimplePyQ::open(dir.path().join("q.db"))?;
    /// let hour = Duration::from_secs(3_600);
    /// let options = ChannelOptions::new(2).keep_done(hour).keep_failed(24 * hour);
    /// q.add_channel_with("thumbnails", |_: String| Ok(()), options)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keep_done(mut self, keep: Duration) -> Self {
        self.retention.done = Some(keep);
        self
    }

    /// Keeps the channel's failed tasks this long after they failed for good, then deletes
    /// them (over the queue's [`crate::Builder::keep_failed`]).
    pub fn keep_failed(mut self, keep: Duration) -> Self {
        self.retention.failed = Some(keep);
        self
    }

    /// Runs an async channel's futures on this runtime.
    #[cfg(feature = "tokio")]
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Sets the retry backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Limits how long one run of a task may last ("a hung handler must not hold its slot
    /// forever"). At the deadline the run's cancellation signal is set
    /// ([`crate::CancelReason::Timeout`]) and the attempt fails with "timed out after …",
    /// following the retry policy. An async handler's future is dropped at once. A thread
    /// cannot be stopped: a thread handler that does not look at
    /// [`crate::TaskContext::is_cancelled`] runs on, keeping its task's lease (so no second
    /// run starts while it may still write), counted in [`crate::QueueStats::stuck`] with
    /// a `tracing` warning, and its attempt is recorded as timed out whenever it returns,
    /// whatever it returns. Zero is [`crate::Error::InvalidConfig`] at `add_channel_with`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use simplepyq::{ChannelOptions, SimplePyQ, TaskContext};
    /// # let q = SimplePyQ::memory();
    /// q.add_channel_with(
    ///     "report",
    ///     |_: u32, ctx: &TaskContext| {
    ///         while !ctx.is_cancelled() { /* one step of the work */ break }
    ///         Ok(())
    ///     },
    ///     ChannelOptions::new(2).timeout(Duration::from_secs(30)),
    /// )?;
    /// # Ok::<(), simplepyq::Error>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap() {
        let b = Backoff::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: false,
        };
        let waits: Vec<u128> = (1..=6).map(|a| b.wait(a, 1).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.wait(u32::MAX, 1), Duration::from_secs(1));
        assert_eq!(Backoff::Immediate.wait(3, 1), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_wait() {
        let b = Backoff::exponential(Duration::from_millis(400), Duration::from_secs(10));
        let waits: Vec<Duration> = (0..200).map(|seed| b.wait(2, seed)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_millis(400) && *w <= Duration::from_millis(800))
        );
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 100,
            "jitter is not random: {} distinct",
            distinct.len()
        );
    }

    #[test]
    fn options_become_the_stored_task() {
        let now = Timestamp::from_millis(1_000);
        let t = EnqueueOptions::new()
            .retries(2)
            .delay(Duration::from_secs(5))
            .priority(-3)
            .unique("k")
            .task("c", vec![1], now);
        assert_eq!((t.retries, t.priority), (2, -3));
        assert_eq!(t.run_at, Some(Timestamp::from_millis(6_000)));
        assert_eq!(t.unique_key.as_deref(), Some("k"));
        let at = UNIX_EPOCH + Duration::from_secs(42);
        let t = EnqueueOptions::new().at(at).task("c", vec![], now);
        assert_eq!(t.run_at, Some(Timestamp::from_millis(42_000)));
    }
}
