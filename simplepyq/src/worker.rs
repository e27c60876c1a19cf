//! The worker threads: claim, run, record; and the lease keeper.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use simplepyq_core::{Outcome, Store, Task, Timestamp};

use crate::handler::{ErasedHandler, TaskError};
use crate::options::Backoff;
use crate::queue::Shared;
use crate::recorder::{self, Finished};
use crate::report;
use crate::signal::Signal;

/// What the workers of one channel share.
pub(crate) struct ChannelWork {
    pub(crate) name: String,
    /// How many workers the channel has.
    pub(crate) workers: usize,
    pub(crate) handler: Box<ErasedHandler>,
    pub(crate) backoff: Backoff,
    /// A running average of the handler's run time, in nanoseconds.
    pub(crate) average_run: AtomicU64,
}

/// How much work a claim may take beyond one task per idle worker: the claimed tasks wait
/// in this process (their leases held) until a worker is free, so the reserve is kept to
/// about this long of handler time...
const RESERVE_TIME: Duration = Duration::from_millis(5);
/// ...and to at most this many tasks.
const MAX_RESERVE: usize = 256;

impl ChannelWork {
    /// Tasks to claim beyond one per idle worker: one per worker, more for quick handlers.
    fn reserve(&self) -> usize {
        let average = self.average_run.load(Ordering::Relaxed).max(1);
        let quick =
            usize::try_from(RESERVE_TIME.as_nanos() / u128::from(average)).unwrap_or(MAX_RESERVE);
        quick.clamp(self.workers, MAX_RESERVE.max(self.workers))
    }

    /// Adds one run time to the average (weight 1/16).
    fn observe(&self, run: Duration) {
        let ns = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX);
        let old = self.average_run.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns
        } else {
            old - old / 16 + ns / 16
        };
        self.average_run.store(new, Ordering::Relaxed);
    }
}

/// Exponential pauses: from `start`, doubling up to `max`.
#[derive(Debug)]
pub(crate) struct Pause {
    next: Duration,
    start: Duration,
    max: Duration,
}

impl Pause {
    fn new(start: Duration, max: Duration) -> Self {
        Pause {
            next: start,
            start,
            max,
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.start;
    }
}

/// Pauses after storage errors: 10 ms doubling to 1 s.
pub(crate) fn error_pause() -> Pause {
    Pause::new(Duration::from_millis(10), Duration::from_secs(1))
}

/// The meeting point of one channel's workers while the queue runs: wake-ups, the stop
/// flag, and the tasks one worker claimed for the others.
///
/// One idle worker at a time claims, for itself and for every other idle worker, in one
/// store call; it hands the extra tasks over here. Idle workers that are not claiming wait
/// without polling the store.
#[derive(Debug, Default)]
pub(crate) struct Dispatch {
    state: Mutex<DispatchState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct DispatchState {
    /// Moves on every wake-up, so that a waiter never misses one.
    generation: u64,
    stopped: bool,
    /// A worker is in a claim call for the idle ones.
    claiming: bool,
    /// Workers waiting for the claimer.
    idle: usize,
    /// Claimed tasks (their leases kept by the keeper) waiting for a worker.
    handed: VecDeque<Task>,
}

impl Dispatch {
    /// New work: wake one idle worker, or all.
    pub(crate) fn notify(&self, all: bool) {
        self.state.lock().generation += 1;
        if all {
            self.cv.notify_all();
        } else {
            self.cv.notify_one();
        }
    }

    /// Tells the workers to stop once the tasks handed to them are done.
    pub(crate) fn stop(&self) {
        self.state.lock().stopped = true;
        self.cv.notify_all();
    }
}

/// One worker of a channel: runs tasks until stopped, claiming them in batches.
///
/// The claiming worker sleeps, when nothing is due, until the channel's next run-at or lease
/// expiry, or until this process enqueues work; to notice other processes' work it looks at
/// the store again after a pause that starts at an eighth of the poll interval and doubles,
/// while nothing comes, up to the poll interval.
pub(crate) fn work<S: Store>(shared: &Shared<S>, channel: &Arc<ChannelWork>, dispatch: &Dispatch) {
    let mut errors = error_pause();
    let first_poll = (shared.poll_interval / 8).max(Duration::from_millis(1));
    let mut poll = Pause::new(first_poll, shared.poll_interval);
    let mut st = dispatch.state.lock();
    loop {
        if let Some(task) = st.handed.pop_front() {
            drop(st);
            run(shared, channel, task);
            st = dispatch.state.lock();
            continue;
        }
        if st.stopped {
            return;
        }
        if st.claiming {
            st.idle += 1;
            dispatch.cv.wait(&mut st);
            st.idle -= 1;
            continue;
        }
        st.claiming = true;
        // A task for itself and each idle worker, and a reserve, so that busy workers find
        // their next task here instead of waiting for a claim.
        let (want, seen) = (st.idle + 1 + channel.reserve(), st.generation);
        drop(st);
        let now = shared.now();
        let claimed = shared
            .store
            .claim(&channel.name, want, now, now.after(shared.lease));
        if let Ok(tasks) = &claimed {
            let mut inflight = shared.inflight.lock();
            for t in tasks {
                inflight.claims.insert(t.id, t.claim());
            }
        }
        st = dispatch.state.lock();
        st.claiming = false;
        match claimed {
            Ok(tasks) if !tasks.is_empty() => {
                errors.reset();
                poll.reset();
                let mut tasks = tasks.into_iter();
                let mine = tasks.next();
                st.handed.extend(tasks);
                for _ in 0..st.handed.len().min(st.idle) {
                    dispatch.cv.notify_one();
                }
                drop(st);
                if let Some(task) = mine {
                    run(shared, channel, task);
                }
                st = dispatch.state.lock();
            }
            Ok(_) => {
                drop(st);
                let timeout = idle_timeout(shared, &channel.name, now, poll.next());
                shared.notify_idle();
                st = dispatch.state.lock();
                if st.generation == seen && !st.stopped && st.handed.is_empty() {
                    dispatch.cv.wait_for(&mut st, timeout);
                }
            }
            Err(e) => {
                shared.record_error(&e);
                if st.generation == seen && !st.stopped {
                    dispatch.cv.wait_for(&mut st, errors.next());
                }
            }
        }
    }
}

/// How long an idle worker may sleep: until the channel's next run-at or lease expiry, at
/// most `poll`. If that time has passed, a lease has expired: recover it now.
fn idle_timeout<S: Store>(
    shared: &Shared<S>,
    channel: &str,
    now: Timestamp,
    poll: Duration,
) -> Duration {
    match shared.store.next_wakeup(channel) {
        Ok(Some(at)) if at > now => now.until(at).min(poll),
        Ok(Some(_)) => match renew_and_recover(shared) {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => poll,
            Err(e) => {
                shared.record_error(&e);
                poll
            }
        },
        Ok(None) => poll,
        Err(e) => {
            shared.record_error(&e);
            poll
        }
    }
}

/// Runs one claimed task and records its outcome.
fn run<S: Store>(shared: &Shared<S>, channel: &Arc<ChannelWork>, task: Task) {
    let claim = task.claim();
    report::trace_claim(task.id, &channel.name, claim.attempt);
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| (channel.handler)(&task.args)));
    let elapsed = started.elapsed();
    channel.observe(elapsed);
    let now = shared.now();
    let failed = |error: String, permanent| Outcome::Failed {
        error,
        retry_at: now.after(channel.backoff.wait(claim.attempt, task.id.get())),
        permanent,
    };
    let outcome = match result {
        Ok(Ok(())) => Outcome::Succeeded,
        Ok(Err(TaskError::Delay(d))) => Outcome::Delayed {
            until: now.after(d),
        },
        Ok(Err(TaskError::Failed(e))) => failed(e.to_string(), false),
        Ok(Err(TaskError::Fatal(e))) => failed(e.to_string(), true),
        Err(panic) => failed(
            format!("handler panicked: {}", panic_message(&*panic)),
            false,
        ),
    };
    recorder::hand_over(
        shared,
        Finished {
            channel: Arc::clone(channel),
            claim,
            outcome,
            elapsed,
        },
    );
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}

/// The lease keeper: every third of a lease, renews the leases of the tasks this queue runs
/// and recovers tasks whose lease expired elsewhere.
pub(crate) fn keep_leases<S: Store>(shared: &Shared<S>, signal: &Signal) {
    let period = (shared.lease / 3).max(Duration::from_millis(1));
    while !signal.wait(period) {
        match renew_and_recover(shared) {
            Ok(0) => {}
            Ok(_) => shared.wake_all(),
            Err(e) => shared.record_error(&e),
        }
    }
}

/// Renews the leases of the tasks this queue runs, then recovers the tasks whose lease
/// expired; returns how many were recovered.
///
/// Renewing first means a lease of this queue's own that lapsed (its keeper thread starved,
/// a commit slow on a loaded disk) is not taken for a dead worker's: its task is not run
/// again while it still runs here. If the renewal fails, nothing is recovered this time.
pub(crate) fn renew_and_recover<S: Store>(shared: &Shared<S>) -> simplepyq_core::Result<usize> {
    let claims: Vec<_> = shared.inflight.lock().claims.values().copied().collect();
    let now = shared.now();
    if !claims.is_empty() {
        shared
            .store
            .extend_leases(&claims, now.after(shared.lease))?;
    }
    shared
        .store
        .recover_expired(now, simplepyq_core::transition::DEFAULT_MAX_LOST_RUNS)
}
