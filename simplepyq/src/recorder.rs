//! Recording outcomes in batches: the recorder thread writes everything handed over
//! meanwhile in one `finish_many` call (one transaction), then reports each outcome and lets
//! its claim go.
//!
//! A claim stays held (its lease renewed) until its outcome is recorded. While the queue
//! runs, an outcome waits as long as the store fails: storage errors never fail a task. Only
//! a stopping queue gives up, after [`GIVE_UP`] (2 s); such outcomes are reported by the stop, and
//! their tasks run again once their lease expires (a lost run, which uses no retry).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use simplepyq_core::{Claim, Error, Outcome, Status, Store, Task};

use crate::engine::{Engine, Pause, Stats, guarded};
use crate::leases;
use crate::metered;
use crate::outcomes::Ended;
use crate::report::{self, TaskReport};
use crate::signal::StopSignal;
use crate::sync::{self, GIVE_UP};

/// The most outcomes one `finish_many` call records.
const MAX_BATCH: usize = 512;

/// Hands an outcome over, or records it right away if no recorder thread runs or too many
/// outcomes wait. An outcome of a channel with a limit of running tasks is recorded right
/// away too, in one store call that also claims a task for the slot it frees
/// ([`simplepyq_core::OutcomeStore::finish_and_claim`]): returned, reserved in the held
/// claims, for this worker to run next (none otherwise). A hand-over would keep the slot
/// taken through two more thread wake-ups (the recorder's, then an idle worker's), and a
/// claim of its own through a second commit. Not for concurrency keys, whose claims skip
/// busy keys and find other work: they gain more from recording in batches.
pub(crate) fn hand_over<S: Store>(engine: &Engine<S>, finished: Ended) -> Vec<Task> {
    engine.held.recording(finished.claim);
    if engine.is_limited(&finished.channel) {
        return record_and_claim(engine, finished);
    }
    if let Some(own) = engine.outcomes.push(finished) {
        record(engine, vec![own]);
    }
    Vec::new()
}

/// Records `finished` and claims a task of its channel in one store call, as
/// [`hand_over`] says; if that call fails, records it as [`record`] does, claiming nothing
/// (the worker's next claim turn claims). A stopping queue claims nothing.
fn record_and_claim<S: Store>(engine: &Engine<S>, finished: Ended) -> Vec<Task> {
    if engine.outcomes.is_stopping() {
        record(engine, vec![finished]);
        return Vec::new();
    }
    let results = [(finished.claim, finished.outcome.clone())];
    let now = engine.now();
    let lease_until = now.after(engine.lease);
    let ticket = engine.held.claiming();
    let called = guarded(|| {
        engine
            .store
            .finish_and_claim(&results, now, &finished.channel, 1, lease_until)
    });
    let (statuses, claimed) = match called {
        Ok(both) => both,
        Err(e) => {
            engine.held.claimed(ticket, []);
            engine.errors.record(&e);
            record(engine, vec![finished]);
            return Vec::new();
        }
    };
    let (tasks, freed_here) = match claimed {
        Ok(tasks) => (tasks, true),
        Err(e) => {
            engine.errors.record(&e);
            (Vec::new(), false)
        }
    };
    // Held before the outcome's claim goes, so that a stop or run_until_complete never sees
    // this worker hold nothing between its two tasks.
    engine.held.claimed(ticket, tasks.iter().map(Task::claim));
    settle(engine, vec![finished], Some(statuses), !freed_here);
    if !tasks.is_empty() && engine.now() >= lease_until {
        // Answered after the lease it asked for: as a late claim turn, not one runs here.
        leases::give_back_held(engine, &tasks);
        return Vec::new();
    }
    tasks
}

/// Hands an outcome over from a future on an async runtime, whose thread must not wait for
/// the store: no backlog limit here (the channel's claimer keeps up instead, see
/// [`keep_up`]); without a recorder thread, a thread of its own records it.
#[cfg(feature = "tokio")]
pub(crate) fn hand_over_nowait<S: Store>(engine: &std::sync::Arc<Engine<S>>, finished: Ended) {
    engine.held.recording(finished.claim);
    if let Some(own) = engine.outcomes.push_nowait(finished) {
        let e = std::sync::Arc::clone(engine);
        let claim = own.claim;
        let spawned = std::thread::Builder::new()
            .name("simplepyq-record".into())
            .spawn(move || record(&e, vec![own]));
        if spawned.is_err() {
            // Its lease runs out, and the task is recovered: a lost run.
            engine.let_go(&[claim]);
        }
    }
}

/// Records a batch on the calling thread while too many outcomes wait: the backpressure of
/// async channels, applied by their claimers.
#[cfg(feature = "tokio")]
pub(crate) fn keep_up<S: Store>(engine: &Engine<S>) {
    while engine.outcomes.backlogged() {
        let batch = engine.outcomes.take(MAX_BATCH, Duration::ZERO, 0);
        if batch.is_empty() {
            return;
        }
        record(engine, batch);
    }
}

/// The recorder thread of run `run`: records what workers hand over. Once the run stops it
/// goes on while claims are held (handlers that outlived a `stop_timeout`), until none is,
/// or a newer run's recorder takes over.
pub(crate) fn run<S: Store>(engine: &Engine<S>, signal: &StopSignal, run: u64) {
    loop {
        let seen = engine.outcomes.wakes();
        let stopped = signal.is_stopped();
        if stopped && (!engine.held.snapshot().1 || engine.current_run() != run) {
            engine.outcomes.close();
            // Whatever was handed over before the close.
            loop {
                let rest = engine.outcomes.take(MAX_BATCH, Duration::ZERO, seen);
                if rest.is_empty() {
                    return;
                }
                record(engine, rest);
            }
        }
        // Once stopped, woken when the last claim goes (`Engine::let_go`) or a newer run
        // starts (`Outcomes::stopping`); it looks every 100 ms besides, not at 100 Hz while
        // a handler outlives a `stop_timeout` for minutes.
        let wait = if stopped {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let batch = engine.outcomes.take(MAX_BATCH, wait, seen);
        if !batch.is_empty() {
            record(engine, batch);
        }
    }
}

/// Records `batch` in one call, reports each outcome, and lets the claims go.
pub(crate) fn record<S: Store>(engine: &Engine<S>, batch: Vec<Ended>) {
    let results: Vec<(Claim, Outcome)> =
        batch.iter().map(|f| (f.claim, f.outcome.clone())).collect();
    let mut pause = Pause::errors();
    let since = Instant::now();
    let statuses = loop {
        match guarded(|| engine.store.finish_many(&results, engine.now())) {
            Ok(s) => break Some(s),
            Err(e) => {
                engine.errors.record(&e);
                if engine.outcomes.is_stopping() && since.elapsed() >= GIVE_UP {
                    break None;
                }
                sync::pause(pause.next());
            }
        }
    };
    settle(engine, batch, statuses, true);
}

/// Reports each outcome of `batch` by its status (`None`: given up on, unrecorded) and lets
/// the claims go. With `wake`, each outcome of a channel with a limit of running tasks, or
/// of a task with a concurrency key, wakes one idle worker for the slot it frees (one each,
/// not a herd).
fn settle<S: Store>(
    engine: &Engine<S>,
    batch: Vec<Ended>,
    statuses: Option<Vec<Result<Status, Error>>>,
    wake: bool,
) {
    let mut unrecorded = Vec::new();
    let mut completed_in = false;
    for (i, f) in batch.iter().enumerate() {
        match statuses.as_ref().and_then(|s| s.get(i)) {
            Some(Ok(status)) => reported(engine, f, &f.outcome, *status),
            // The handler completed its task in its own transaction, which committed: that
            // was the run's outcome, recorded; nothing more is.
            Some(Err(Error::LeaseLost { .. })) if f.completed_in && done_by(engine, f.claim) => {
                reported(engine, f, &Outcome::Succeeded, Status::Done);
                completed_in = true;
            }
            Some(Err(Error::LeaseLost { .. })) => {
                engine.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                report::trace_lease_lost(f.claim.id, &f.channel, f.claim.attempt);
                metered::count_lease_lost(&f.channel);
            }
            Some(Err(e)) => engine.errors.record(e),
            None => unrecorded.push(f.claim.id),
        }
    }
    if !unrecorded.is_empty() {
        Stats::add(&engine.stats.unrecorded, unrecorded.len());
        engine.outcomes.unrecorded(unrecorded);
    }
    let claims: Vec<Claim> = batch.iter().map(|f| f.claim).collect();
    engine.let_go(&claims);
    if completed_in {
        // Tasks waiting for it are due now, on channels the store could not say before the
        // handler's commit (no wake-up may come before it): every channel here looks.
        engine.wake_all();
    }
    if !wake {
        return;
    }
    for f in &batch {
        if f.keyed || engine.is_limited(&f.channel) {
            engine.wake(&f.channel, false);
        }
    }
}

/// Reports an attempt recorded as `outcome`, its task now `status`: a `tracing` event, the
/// metrics, the queue's hook.
fn reported<S: Store>(engine: &Engine<S>, f: &Ended, outcome: &Outcome, status: Status) {
    let report = TaskReport {
        id: f.claim.id,
        channel: &f.channel,
        attempt: f.claim.attempt,
        elapsed: f.elapsed,
        outcome,
        status,
    };
    report::trace(&report);
    metered::count(&report);
    if let Some(hook) = &engine.on_outcome {
        // A panicking hook must not take the recorder down with it.
        let _ = catch_unwind(AssertUnwindSafe(|| hook(&report)));
    }
}

/// Whether `claim`'s own run made its task done (in the handler's transaction): the task is
/// done, in that attempt (a later attempt would have another number).
fn done_by<S: Store>(engine: &Engine<S>, claim: Claim) -> bool {
    matches!(
        guarded(|| engine.store.get(claim.id)),
        Ok(Some(t)) if t.state.status == Status::Done && t.state.attempts == claim.attempt
    )
}
