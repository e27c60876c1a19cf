//! The worker threads of a channel: claim, run, hand the outcome to the recorder.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use simplepyq_core::{Claim, Outcome, Store, Task, Timestamp};

use crate::context::TaskContext;
use crate::dispatch::{Claimed, Dispatch, Started, Turn};
use crate::engine::{Engine, Pause, guarded};
use crate::handler::{ErasedHandler, TaskError, chain};
use crate::leases;
use crate::options::Backoff;
use crate::outcomes::Finished;
use crate::recorder;
use crate::report;

/// How a channel runs its handler.
pub(crate) enum Runner {
    /// On worker threads, one task per thread at a time.
    Threads(Box<ErasedHandler>),
    /// As futures on a tokio runtime.
    #[cfg(feature = "tokio")]
    Async(crate::spawner::AsyncRunner),
}

/// What the workers of one channel share.
pub(crate) struct ChannelWork {
    pub(crate) name: Arc<str>,
    /// Worker threads, or for an async channel, futures in flight at most.
    pub(crate) workers: usize,
    pub(crate) runner: Runner,
    pub(crate) backoff: Backoff,
    /// A running average of the handler's run time, in nanoseconds; 0 until measured.
    pub(crate) average_run: AtomicU64,
}

/// How much work a claim may take beyond one task per idle worker: the claimed tasks wait
/// in this process (their leases held) until a worker is free, so the reserve is kept to
/// about this long of handler time...
const RESERVE_TIME: Duration = Duration::from_millis(5);
/// ...and to at most this many tasks.
const MAX_RESERVE: usize = 256;

impl ChannelWork {
    /// Tasks to claim beyond one per idle worker: none until the handler's run time is
    /// known, then about [`RESERVE_TIME`] of work for quick handlers (none for slow ones).
    fn reserve(&self) -> usize {
        let average = self.average_run.load(Ordering::Relaxed);
        if average == 0 {
            return 0;
        }
        let quick = RESERVE_TIME.as_nanos() / u128::from(average);
        usize::try_from(quick).map_or(MAX_RESERVE, |n| n.min(MAX_RESERVE))
    }

    /// Adds one run time to the average (weight 1/16).
    fn observe(&self, run: Duration) {
        let ns = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.average_run.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns
        } else {
            old - old / 16 + ns / 16
        };
        self.average_run.store(new.max(1), Ordering::Relaxed);
    }

    /// The outcome of a run of `task` that ended at `now` with `result` (`Err` for a
    /// panic), ready for the recorder.
    pub(crate) fn finished(
        &self,
        task: &Task,
        result: std::thread::Result<Result<(), TaskError>>,
        elapsed: Duration,
        now: Timestamp,
    ) -> Finished {
        self.observe(elapsed);
        let claim = task.claim();
        let failed = |error: String, permanent| Outcome::Failed {
            error,
            retry_at: now.after(self.backoff.wait(claim.attempt, task.id.get())),
            permanent,
        };
        let outcome = match result {
            Ok(Ok(())) => Outcome::Succeeded,
            Ok(Err(TaskError::Delay(d))) => Outcome::Delayed {
                until: now.after(d),
            },
            Ok(Err(TaskError::Failed(e))) => failed(chain(&*e), false),
            Ok(Err(TaskError::Fatal(e))) => failed(chain(&*e), true),
            Err(panic) => failed(
                format!("handler panicked: {}", report::panic_message(&*panic)),
                false,
            ),
        };
        Finished {
            channel: Arc::clone(&self.name),
            claim,
            outcome,
            elapsed,
        }
    }
}

/// Claims up to `want` due tasks of `channel` for a worker whose turn it is to claim
/// (`seen`, from [`Dispatch::turn`]); they are reserved in the held claims. After a store
/// error (then resting for the next of `errors`' pauses) the turn ends here and `None` is
/// returned; so too after an answer that came after the lease it asked for ran out (a slow
/// or cut network): another worker may hold those tasks by now, so not one of them runs
/// here, and what is still this queue's is given back.
pub(crate) fn claim_turn<S: Store>(
    engine: &Engine<S>,
    channel: &str,
    want: usize,
    dispatch: &Dispatch,
    seen: u64,
    errors: &mut Pause,
) -> Option<Vec<Task>> {
    let mut lease_until = None;
    let claimed = guarded(|| {
        let now = engine.now();
        let until = now.after(engine.lease);
        lease_until = Some(until);
        engine.store.claim(channel, want, now, until)
    });
    let tasks = match claimed {
        Ok(tasks) => tasks,
        Err(e) => {
            engine.errors.record(&e);
            dispatch.claimed(Vec::new(), &engine.held);
            dispatch.rest(seen, errors.next());
            return None;
        }
    };
    errors.reset();
    engine.held.reserve(tasks.iter().map(Task::claim));
    if !tasks.is_empty() && lease_until.is_some_and(|u| engine.now() >= u) {
        dispatch.claimed(Vec::new(), &engine.held);
        // Held until given back, so that the keeper renews those still this queue's and
        // no one recovers them as lost runs while the store fails.
        leases::give_back_held(engine, &tasks);
        return None;
    }
    Some(tasks)
}

/// One worker of a channel: runs tasks until the channel stops, claiming them in batches.
///
/// The claiming worker sleeps, when nothing is due, until the channel's next run-at or lease
/// expiry, or until this process enqueues work; to notice other processes' work it looks at
/// the store again after a pause that starts at an eighth of the poll interval and doubles,
/// while nothing comes, up to the poll interval. Workers waiting for the claimer look again
/// within the poll interval too.
pub(crate) fn work<S: Store>(
    engine: &Engine<S>,
    channel: &ChannelWork,
    handler: &ErasedHandler,
    dispatch: &Dispatch,
) {
    let mut errors = Pause::errors();
    let mut poll = idle_pause(engine);
    loop {
        let (idle, seen) = match dispatch.turn(&engine.held, engine.poll_interval) {
            Turn::Stop => return,
            Turn::Run(started) => {
                run(engine, channel, handler, started);
                continue;
            }
            Turn::Claim { idle, seen } => (idle, seen),
        };
        // A task for itself and each idle worker, and a reserve for quick handlers, so that
        // busy workers find their next task here instead of waiting for a claim.
        let want = idle + 1 + channel.reserve();
        let Some(tasks) = claim_turn(engine, &channel.name, want, dispatch, seen, &mut errors)
        else {
            continue;
        };
        match dispatch.claimed(tasks, &engine.held) {
            Claimed::Run(started) => {
                poll.reset();
                run(engine, channel, handler, started);
            }
            Claimed::Nothing => {
                let timeout = idle_timeout(engine, &channel.name, poll.next());
                engine.held.bump();
                dispatch.rest(seen, timeout);
            }
            Claimed::GiveBack(tasks) => {
                leases::give_back(engine, &tasks);
            }
            #[cfg(feature = "tokio")]
            Claimed::RunAll(_) => unreachable!("only an async channel's claimer starts all"),
        }
    }
}

/// The pauses of an idle worker: from an eighth of the poll interval, doubling up to it.
pub(crate) fn idle_pause<S>(engine: &Engine<S>) -> Pause {
    let first_poll = (engine.poll_interval / 8).max(Duration::from_millis(1));
    Pause::new(first_poll, engine.poll_interval)
}

/// How long an idle worker may sleep: until the channel's next run-at or lease expiry, at
/// most `poll`. If that time has passed, a lease has expired: recover it now.
pub(crate) fn idle_timeout<S: Store>(
    engine: &Engine<S>,
    channel: &str,
    poll: Duration,
) -> Duration {
    let now = engine.now();
    match guarded(|| engine.store.next_wakeup(channel)) {
        Ok(Some(at)) if at > now => now.until(at).min(poll),
        Ok(Some(_)) => match guarded(|| leases::renew_and_recover(engine)) {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => poll,
            Err(e) => {
                engine.errors.record(&e);
                poll
            }
        },
        Ok(None) => poll,
        Err(e) => {
            engine.errors.record(&e);
            poll
        }
    }
}

thread_local! {
    /// The claim whose handler runs on this thread, if any, with its queue's id.
    static CURRENT: Cell<Option<(u64, Claim)>> = const { Cell::new(None) };
}

/// The claim of `engine`'s queue whose handler runs on the calling thread: a stop called
/// from inside a handler does not wait for that handler, nor for another stop that waits
/// for it. A handler of another queue is not this queue's.
pub(crate) fn current_claim<S>(engine: &Engine<S>) -> Option<Claim> {
    CURRENT
        .with(Cell::get)
        .and_then(|(queue, claim)| (queue == engine.id).then_some(claim))
}

/// Runs `f` as the handler of `claim` of queue `queue` (an engine's id): a thread's handler,
/// or an async handler's poll on a runtime's thread.
pub(crate) fn as_current<T>(queue: u64, claim: Claim, f: impl FnOnce() -> T) -> T {
    let before = CURRENT.with(|c| c.replace(Some((queue, claim))));
    let result = f();
    CURRENT.with(|c| c.set(before));
    result
}

/// Lets a claim go if its worker unwinds before handing the outcome over (a panic outside
/// the handler): its lease is then no longer renewed, and the task is recovered.
struct Abandon<'a, S> {
    engine: &'a Engine<S>,
    claim: Option<Claim>,
}

impl<S> Drop for Abandon<'_, S> {
    fn drop(&mut self) {
        if let Some(c) = self.claim.take() {
            self.engine.let_go(&[c]);
        }
    }
}

/// Runs one claimed task and hands its outcome to the recorder.
fn run<S: Store>(
    engine: &Engine<S>,
    channel: &ChannelWork,
    handler: &ErasedHandler,
    started: Started,
) {
    let Started { task, cancel } = started;
    let claim = task.claim();
    let mut abandon = Abandon {
        engine,
        claim: Some(claim),
    };
    report::trace_claim(task.id, &channel.name, claim.attempt);
    let ctx = TaskContext::new(&task, Arc::clone(&channel.name), cancel);
    let began = Instant::now();
    let result = as_current(engine.id, claim, || {
        catch_unwind(AssertUnwindSafe(|| handler(&task.args, &ctx)))
    });
    let finished = channel.finished(&task, result, began.elapsed(), engine.now());
    abandon.claim = None;
    recorder::hand_over(engine, finished);
}
