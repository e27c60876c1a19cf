//! Leases of the claims a queue holds: renewing them (the keeper thread), recovering other
//! workers' expired ones, and giving back claims whose handlers never started.

use std::time::{Duration, Instant};

use simplepyq_core::{Claim, Result, Store, Task, Timestamp};

use crate::engine::{Engine, Pause, Stats, guarded};
use crate::metered;
use crate::signal::StopSignal;
use crate::sync::{self, GIVE_UP};

/// The lease keeper of run `run`: every third of a lease, renews the leases of the claims
/// held and recovers tasks whose lease expired elsewhere. Once the run stops it only renews,
/// while claims are held (handlers that outlived a `stop_timeout`, outcomes not yet
/// recorded); it ends when none is, or when a newer run's keeper takes over. So it stops
/// last.
pub(crate) fn keep<S: Store>(engine: &Engine<S>, signal: &StopSignal, run: u64) {
    let period = (engine.lease / 3).max(Duration::from_millis(1));
    note_flows(engine);
    loop {
        if !signal.is_stopped() {
            if signal.wait(period) {
                continue;
            }
            if let Err(e) = guarded(|| renew_and_recover(engine)) {
                engine.errors.record(&e);
            }
            mark_stuck(engine);
            note_flows(engine);
            continue;
        }
        let next = Instant::now() + period;
        loop {
            let (seen, holding) = engine.held.snapshot();
            if !holding || engine.current_run() != run {
                return;
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            engine.held.wait(seen, next - now);
        }
        if let Err(e) = guarded(|| renew(engine, engine.now())) {
            engine.errors.record(&e);
        }
        mark_stuck(engine);
    }
}

/// The gauges of run `run`'s channels (the `metrics` feature), every third of a lease until
/// the run stops: on a thread of their own, so that a slow read of the store (counts over
/// millions of rows) never delays the keeper's renewals past the leases.
pub(crate) fn gauge<S: Store>(engine: &Engine<S>, signal: &StopSignal) {
    let period = (engine.lease / 3).max(Duration::from_millis(1));
    while !signal.wait(period) {
        let channels = engine.served();
        if let Err(e) = guarded(|| metered::gauge_channels(&engine.store, channels, engine.now())) {
            engine.errors.record(&e);
        }
    }
}

/// Reads which channels have limits of running tasks (other processes may have set them).
/// A failed read keeps what was known: only wake-ups depend on it, not the limits, which
/// the store keeps.
fn note_flows<S: Store>(engine: &Engine<S>) {
    if let Ok(flows) = guarded(|| engine.store.flows()) {
        engine.note_flows(&flows);
    }
}

/// Renews the leases of every claim held, as of `now`.
fn renew<S: Store>(engine: &Engine<S>, now: Timestamp) -> Result<()> {
    let claims = engine.held.all();
    if !claims.is_empty() {
        engine
            .store
            .extend_leases(&claims, now.after(engine.lease))?;
    }
    Ok(())
}

/// Marks in the store the runs of thread handlers that became stuck (past their timeout),
/// each since its deadline, for the dashboards of every process. Apart from the renewal and
/// recovery, so that a failed mark delays neither. Those the store could not take are tried
/// again next time; with none, no store call is made.
fn mark_stuck<S: Store>(engine: &Engine<S>) {
    let mut runs = engine.deadlines.take_unmarked().into_iter();
    let (now, at) = (engine.now(), Instant::now());
    while let Some((claim, deadline)) = runs.next() {
        let since = now.before(at.saturating_duration_since(deadline));
        if let Err(e) = guarded(|| engine.store.mark_stuck(claim, since)) {
            engine.errors.record(&e);
            engine
                .deadlines
                .put_back(std::iter::once((claim, deadline)).chain(runs).collect());
            return;
        }
    }
}

/// Renews the leases of the claims held, then recovers the tasks whose lease expired as
/// lost runs; returns how many were recovered. The one way any part of the queue recovers.
///
/// Renewing first means a lease of this queue's own that lapsed (its keeper starved, a
/// commit slow on a loaded disk) is not taken for a dead worker's: its task does not run
/// again while it still runs here. Both calls use one reading of the clock, so that a
/// thread descheduled between them cannot find its own fresh lease expired. If the renewal
/// fails, nothing is recovered this time.
pub(crate) fn renew_and_recover<S: Store>(engine: &Engine<S>) -> Result<usize> {
    let now = engine.now();
    renew(engine, now)?;
    let n = engine.store.recover_expired(now, engine.max_lost_runs)?;
    if n > 0 {
        Stats::add(&engine.stats.recovered, n);
        metered::count_recovered(n);
        engine.wake_all();
    }
    Ok(n)
}

/// Gives back tasks claimed but never started: pending again, no attempt used. Returns how
/// many the store still held. If the store keeps failing (for [`GIVE_UP`]), the claims are
/// let go all the same: their tasks are recovered once their lease expires, as lost runs.
pub(crate) fn give_back<S: Store>(engine: &Engine<S>, tasks: &[Task]) -> usize {
    give_back_while(engine, tasks, |_| false)
}

/// [`give_back`] for tasks a running queue holds (their leases renewed by the keeper
/// meanwhile): while the queue runs it keeps trying as long as the store fails, so that a
/// task that never started loses no run to an outage; once the queue stops, for
/// [`GIVE_UP`] at most, as a stop must end.
pub(crate) fn give_back_held<S: Store>(engine: &Engine<S>, tasks: &[Task]) -> usize {
    give_back_while(engine, tasks, |engine| !engine.outcomes.is_stopping())
}

/// Gives back `tasks`, trying past [`GIVE_UP`] while `patient` says so.
fn give_back_while<S: Store>(
    engine: &Engine<S>,
    tasks: &[Task],
    patient: impl Fn(&Engine<S>) -> bool,
) -> usize {
    if tasks.is_empty() {
        return 0;
    }
    let claims: Vec<Claim> = tasks.iter().map(Task::claim).collect();
    let mut pause = Pause::errors();
    let since = Instant::now();
    let released = loop {
        match guarded(|| engine.store.release(&claims, engine.now())) {
            Ok(n) => break n,
            Err(e) => {
                engine.errors.record(&e);
                if since.elapsed() >= GIVE_UP && !patient(engine) {
                    break 0;
                }
                sync::pause(pause.next());
            }
        }
    };
    Stats::add(&engine.stats.released, released);
    engine.let_go(&claims);
    released
}
