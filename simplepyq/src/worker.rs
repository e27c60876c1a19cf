//! The worker threads of a channel: claim, run, hand the outcome to the recorder.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use simplepyq_core::{Claim, Store};

use crate::channel_work::ChannelWork;
use crate::current::as_current;
use crate::deadlines::Deadline;
use crate::dispatch::{Claimed, Dispatch, Started, Turn};
use crate::engine::{Engine, Pause, Stats};
use crate::handler::{ErasedHandler, TaskError};
use crate::leases;
use crate::metered;
use crate::recorder;
use crate::report;
use crate::traces::TaskSpan;
use crate::turn::{claim_turn, idle_pause, idle_timeout};

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
        // Claims again once half the reserve is left.
        let low = channel.reserve() / 2;
        let (idle, seen) = match dispatch.turn(&engine.held, engine.poll_interval, low) {
            Turn::Stop => return,
            Turn::Run(started) => {
                run_on(engine, channel, handler, dispatch, started);
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
        let full = tasks.len() >= want;
        match dispatch.claimed(tasks, full, &engine.held) {
            Claimed::Run(started) => {
                poll.reset();
                run_on(engine, channel, handler, dispatch, started);
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

/// Runs `started`, then each task its outcome's record claimed (a channel with a limit of
/// running tasks: [`recorder::hand_over`]) while the channel runs.
fn run_on<S: Store>(
    engine: &Engine<S>,
    channel: &ChannelWork,
    handler: &ErasedHandler,
    dispatch: &Dispatch,
    started: Started,
) {
    let mut next = Some(started);
    while let Some(started) = next.take() {
        let claimed = run(engine, channel, handler, started);
        if claimed.is_empty() {
            return;
        }
        match dispatch.claimed_after(claimed, &engine.held) {
            Claimed::Run(started) => next = Some(started),
            Claimed::GiveBack(tasks) => {
                leases::give_back(engine, &tasks);
            }
            Claimed::Nothing => {}
            #[cfg(feature = "tokio")]
            Claimed::RunAll(_) => unreachable!("only an async channel's claimer starts all"),
        }
    }
}

/// Runs one claimed task and hands its outcome to the recorder; returns the tasks claimed
/// with its outcome, reserved for this worker.
fn run<S: Store>(
    engine: &Engine<S>,
    channel: &ChannelWork,
    handler: &ErasedHandler,
    started: Started,
) -> Vec<simplepyq_core::Task> {
    let Started { task, cancel } = started;
    let claim = task.claim();
    let mut abandon = Abandon {
        engine,
        claim: Some(claim),
    };
    report::trace_claim(task.id, &channel.name, claim.attempt);
    let ctx = engine.context(&task, &channel.name, cancel.clone());
    let deadline = task.timeout.or(channel.timeout).map(|t| {
        engine
            .deadlines
            .watch(&cancel, claim, &channel.name, t, true)
    });
    let span = TaskSpan::start(&task, &channel.name);
    let began = Instant::now();
    let mut result = span.in_scope(|| {
        as_current(engine.id, claim, || {
            catch_unwind(AssertUnwindSafe(|| handler(&task.args, &ctx)))
        })
    });
    if let Some(deadline) = deadline.filter(Deadline::passed) {
        // Timed out, whatever the handler returned after its deadline.
        Stats::add(&engine.stats.timed_out, 1);
        metered::count_timed_out(&channel.name);
        result = Ok(Err(TaskError::msg(deadline.message())));
    }
    let completed_in = cancel.completed_in();
    let given = cancel.take_result();
    let elapsed = began.elapsed();
    let now = || engine.now();
    let finished = channel.finished(&task, result, given, elapsed, now, completed_in);
    span.end(&finished.outcome);
    abandon.claim = None;
    recorder::hand_over(engine, finished)
}
