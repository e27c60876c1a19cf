//! Periodic tasks: the scheduler thread of each run, which fires a queue's
//! [`crate::schedules`] as they come due. When a schedule fires, and which
//! missed firings are made up for, is [`simplepyq_core::schedule`]'s rule; that each fire
//! time is enqueued once, across every queue sharing the store, is the store's
//! ([`crate::ScheduleStore::fire_schedule`]).

use std::time::Duration;

use simplepyq_core::{Result, Store, Timestamp};

use crate::engine::{Engine, guarded};
use crate::schedules::Entry;
use crate::signal::StopSignal;

/// How soon a scheduler tries again after the store failed.
const RETRY: Duration = Duration::from_millis(250);

/// The scheduler thread of a run that started at `started`: fires the schedules as they
/// come due, until the run stops. It sleeps until the next fire time, at most the poll
/// interval (a clock set forward, another queue's firing), and without schedules until one
/// is added.
pub(crate) fn run<S: Store>(engine: &Engine<S>, signal: &StopSignal, started: Timestamp) {
    loop {
        let (entries, seen) = engine.schedules.snapshot();
        if signal.is_stopped() {
            return;
        }
        let now = engine.now();
        let mut next: Option<Timestamp> = None;
        for entry in &entries {
            let due = match guarded(|| fire_due(engine, entry, started, now)) {
                Ok(due) => due,
                Err(e) => {
                    engine.errors.record(&e);
                    Some(now.after(RETRY))
                }
            };
            next = match (next, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        // No next fire time (no schedule, or none that fires again): until a change.
        match next.map(|t| now.until(t).min(engine.poll_interval)) {
            Some(wait) if wait.is_zero() => {}
            wait => engine.schedules.wait(seen, wait),
        }
    }
}

/// Makes the firings of `entry` due at `now`; returns its next fire time. A schedule with
/// no firing recorded counts from when the run `started`, or from when it was added while
/// the run went on: none before.
fn fire_due<S: Store>(
    engine: &Engine<S>,
    entry: &Entry,
    started: Timestamp,
    now: Timestamp,
) -> Result<Option<Timestamp>> {
    let known = *entry.last.lock();
    let after = match known {
        Some(t) => t,
        None => {
            let recorded = engine.store.last_fired(&entry.name)?;
            let after = recorded.unwrap_or(started.max(entry.added));
            *entry.last.lock() = Some(after);
            after
        }
    };
    for at in entry.schedule.due(after, now) {
        let task = entry.task.clone().run_at(at);
        if engine
            .store
            .fire_schedule(&entry.name, at, &task, now)?
            .is_some()
        {
            engine.wake(&task.channel, false);
        }
        // Made here or elsewhere: either way it is not to be made again.
        *entry.last.lock() = Some(at);
    }
    Ok(entry.schedule.next_after(after.max(now)))
}
