//! Async channels: one thread of the queue claims for the channel, as a worker does, and
//! spawns each task's future on a tokio runtime, up to the channel's concurrency. Claims,
//! leases and recording stay on the queue's own threads: a future only runs the handler and
//! hands its outcome over without blocking.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread;
use std::time::Instant;

use simplepyq_core::{Claim, Error, Result, Store, Task};

use crate::channel_work::ChannelWork;
use crate::context::CancelToken;
use crate::current::as_current;
use crate::deadlines::Deadline;
use crate::dispatch::{Claimed, Dispatch, Started, Turn};
use crate::engine::{Engine, Pause, Stats};
use crate::handler::TaskError;
use crate::leases;
use crate::metered;
use crate::recorder;
use crate::report;
use crate::runner::{AsyncRunner, BoxFuture};
use crate::traces::TaskSpan;
use crate::turn::{claim_turn, idle_pause, idle_timeout};

/// The claiming thread of an async channel: claims as many tasks as the channel has free
/// places for futures, and spawns them, until the channel stops. It rests like an idle
/// worker, and is woken by each future that ends.
pub(crate) fn work<S: Store>(
    engine: &Arc<Engine<S>>,
    channel: &Arc<ChannelWork>,
    runner: &AsyncRunner,
    dispatch: &Arc<Dispatch>,
) {
    let mut errors = Pause::errors();
    let mut poll = idle_pause(engine);
    loop {
        let seen = match dispatch.turn(&engine.held, engine.poll_interval, 0) {
            Turn::Stop => return,
            // Nothing is handed over in an async channel: its claimer starts all it claims.
            Turn::Run(started) => {
                spawn(engine, channel, runner, dispatch, started);
                continue;
            }
            Turn::Claim { seen, .. } => seen,
        };
        // A runtime that shut down would drop every future unpolled: claiming for it gives
        // each task back at once, for ever. The channel stops claiming, and says why.
        if runner.dead.load(Ordering::Acquire) {
            engine.errors.record(&Error::config(format!(
                "the tokio runtime of async channel '{}' shut down: the channel claims no more \
                 tasks (they stay queued); give it a runtime that outlives the queue",
                channel.name
            )));
            dispatch.claimed(Vec::new(), false, &engine.held);
            return;
        }
        // Futures hand outcomes over without waiting; past the backlog, this thread records.
        recorder::keep_up(engine);
        let free = channel
            .workers
            .saturating_sub(runner.in_flight.load(Ordering::Acquire));
        if free == 0 {
            dispatch.claimed(Vec::new(), false, &engine.held);
            dispatch.rest(seen, engine.poll_interval);
            continue;
        }
        let Some(tasks) = claim_turn(engine, &channel.name, free, dispatch, seen, &mut errors)
        else {
            continue;
        };
        match dispatch.claimed_all(tasks, &engine.held) {
            Claimed::RunAll(started) => {
                poll.reset();
                for s in started {
                    spawn(engine, channel, runner, dispatch, s);
                }
            }
            Claimed::Nothing => {
                let timeout = idle_timeout(engine, &channel.name, poll.next());
                engine.held.bump();
                dispatch.rest(seen, timeout);
            }
            Claimed::GiveBack(tasks) => {
                leases::give_back(engine, &tasks);
            }
            Claimed::Run(_) => unreachable!("an async channel's claimer starts all it claims"),
        }
    }
}

/// Starts one task's future on the runtime.
fn spawn<S: Store>(
    engine: &Arc<Engine<S>>,
    channel: &Arc<ChannelWork>,
    runner: &AsyncRunner,
    dispatch: &Arc<Dispatch>,
    started: Started,
) {
    let Started { task, cancel } = started;
    let claim = task.claim();
    report::trace_claim(task.id, &channel.name, task.state.attempts);
    let ctx = engine.context(&task, &channel.name, cancel.clone());
    runner.in_flight.fetch_add(1, Ordering::AcqRel);
    let deadline = task.timeout.or(channel.timeout).map(|t| {
        engine
            .deadlines
            .watch(&cancel, claim, &channel.name, t, false)
    });
    let span = TaskSpan::start(&task, &channel.name);
    let began = Instant::now();
    let made =
        span.in_scope(|| catch_unwind(AssertUnwindSafe(|| (runner.handler)(&task.args, ctx))));
    let made = made.map(|made| made.map(|future| span.instrument(future)));
    let flight = Flight {
        engine: Arc::clone(engine),
        channel: Arc::clone(channel),
        dispatch: Arc::clone(dispatch),
        in_flight: Arc::clone(&runner.in_flight),
        dead: Arc::clone(&runner.dead),
        task: Some(task),
        began,
        cancel,
        span: Some(span),
    };
    match made {
        Ok(Ok(future)) => {
            // A runtime that shut down drops the future unpolled: the flight gives its
            // task back.
            let queue = engine.id;
            drop(runner.runtime.handle().spawn(async move {
                let run = CatchUnwind {
                    future,
                    queue,
                    claim,
                };
                let result = match deadline {
                    None => run.await,
                    Some(deadline) => match (Timed {
                        run,
                        deadline: &deadline,
                    })
                    .await
                    {
                        Some(result) => result,
                        // The handler's future is dropped: the attempt timed out.
                        None => {
                            Stats::add(&flight.engine.stats.timed_out, 1);
                            metered::count_timed_out(&flight.channel.name);
                            Ok(Err(TaskError::msg(deadline.message())))
                        }
                    },
                };
                flight.land(result);
            }));
        }
        // Arguments that did not decode, or a handler that panicked making its future.
        Ok(Err(e)) => flight.land(Ok(Err(e))),
        Err(panic) => flight.land(Err(panic)),
    }
}

/// One task's future from its spawn to its outcome. Dropped before it lands (the runtime
/// dropped the future), it gives the task back: pending again, no attempt used.
struct Flight<S: Store> {
    engine: Arc<Engine<S>>,
    channel: Arc<ChannelWork>,
    dispatch: Arc<Dispatch>,
    in_flight: Arc<AtomicUsize>,
    dead: Arc<AtomicBool>,
    task: Option<Task>,
    began: Instant,
    /// The run's cancellation state, which also says whether the handler completed the
    /// task in its own transaction.
    cancel: CancelToken,
    /// The handler's span, ended with the outcome.
    span: Option<TaskSpan>,
}

impl<S: Store> Flight<S> {
    /// Hands the outcome over to the recorder, without waiting for it.
    fn land(mut self, result: std::thread::Result<Result<(), TaskError>>) {
        if let Some(task) = self.task.take() {
            let now = || self.engine.now();
            let completed_in = self.cancel.completed_in();
            let given = self.cancel.take_result();
            let elapsed = self.began.elapsed();
            let finished = self
                .channel
                .finished(&task, result, given, elapsed, now, completed_in);
            if let Some(span) = self.span.take() {
                span.end(&finished.outcome);
            }
            recorder::hand_over_nowait(&self.engine, finished);
        }
    }
}

impl<S: Store> Drop for Flight<S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Only a runtime that shuts down drops a future it was given before it ends.
            self.dead.store(true, Ordering::Release);
            // Not on the runtime's thread: the release is a store call.
            let engine = Arc::clone(&self.engine);
            let claim = task.claim();
            let spawned = thread::Builder::new()
                .name("simplepyq-give-back".into())
                .spawn(move || leases::give_back(&engine, &[task]));
            if spawned.is_err() {
                // Its lease runs out, and the task is recovered.
                self.engine.let_go(&[claim]);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.dispatch.notify(false);
    }
}

/// A run with a deadline: its output, or `None` once the deadline passed first.
struct Timed<'a> {
    run: CatchUnwind,
    deadline: &'a Deadline,
}

impl Future for Timed<'_> {
    type Output = Option<std::thread::Result<Result<(), TaskError>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(result) = Pin::new(&mut self.run).poll(cx) {
            return Poll::Ready(Some(result));
        }
        if self.deadline.passed_or_wake(cx.waker()) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// A handler's future, polled as the handler of `claim` (a stop called from it does not wait
/// for it), whose panic becomes its output.
struct CatchUnwind {
    future: BoxFuture,
    queue: u64,
    claim: Claim,
}

impl Future for CatchUnwind {
    type Output = std::thread::Result<Result<(), TaskError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let polled = as_current(this.queue, this.claim, || {
            catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx)))
        });
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
