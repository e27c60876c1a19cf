//! Periodic tasks: the schedules a queue fires ([`crate::SimplePyQ::add_schedule`]), and
//! the scheduler thread of each run that fires them. When a schedule fires, and which
//! missed firings are made up for, is [`simplepyq_core::schedule`]'s rule; that each fire
//! time is enqueued once, across every queue sharing the store, is the store's
//! ([`crate::ScheduleStore::fire_schedule`]).

use std::sync::Arc;
use std::time::Duration;

use simplepyq_core::{Error, NewTask, Result, Schedule, Store, Timestamp};

use crate::engine::{Engine, guarded};
use crate::signal::Signal;
use crate::sync::{Condvar, Mutex};

/// How soon a scheduler tries again after the store failed.
const RETRY: Duration = Duration::from_millis(250);

/// One schedule of a queue.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    /// The task each firing enqueues; its run-at is set to the fire time.
    pub(crate) task: NewTask,
    /// When the schedule was added.
    added: Timestamp,
    /// The latest firing this queue knows was made (by it or another), once read.
    last: Mutex<Option<Timestamp>>,
}

impl Entry {
    pub(crate) fn new(name: &str, schedule: Schedule, task: NewTask, added: Timestamp) -> Self {
        Entry {
            name: name.to_owned(),
            schedule,
            task,
            added,
            last: Mutex::new(None),
        }
    }
}

/// The schedules of a queue, and a wake-up for its scheduler thread (a schedule added, the
/// run stopping).
#[derive(Debug, Default)]
pub(crate) struct Schedules {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Arc<Entry>>,
    /// Counts changes, so that a waiter sees one that came before it waited.
    generation: u64,
}

impl Schedules {
    /// Adds a schedule; an error if the queue has one of that name.
    pub(crate) fn add(&self, entry: Entry) -> Result<()> {
        let mut state = self.state.lock();
        if state.entries.iter().any(|e| e.name == entry.name) {
            return Err(Error::InvalidConfig(format!(
                "the queue has a schedule named {:?} already",
                entry.name
            )));
        }
        state.entries.push(Arc::new(entry));
        state.generation += 1;
        self.changed.notify_all();
        Ok(())
    }

    /// Removes a schedule; returns whether there was one of that name.
    pub(crate) fn remove(&self, name: &str) -> bool {
        let mut state = self.state.lock();
        let before = state.entries.len();
        state.entries.retain(|e| e.name != name);
        before != state.entries.len()
    }

    /// Wakes the scheduler thread.
    pub(crate) fn poke(&self) {
        self.state.lock().generation += 1;
        self.changed.notify_all();
    }

    fn snapshot(&self) -> (Vec<Arc<Entry>>, u64) {
        let state = self.state.lock();
        (state.entries.clone(), state.generation)
    }

    /// Waits until a change after `seen`, or `timeout` (forever with `None`).
    fn wait(&self, seen: u64, timeout: Option<Duration>) {
        let mut state = self.state.lock();
        if state.generation == seen {
            match timeout {
                Some(t) => {
                    self.changed.wait_for(&mut state, t);
                }
                None => self.changed.wait(&mut state),
            }
        }
    }
}

/// The scheduler thread of a run that started at `started`: fires the schedules as they
/// come due, until the run stops. It sleeps until the next fire time, at most the poll
/// interval (a clock set forward, another queue's firing), and without schedules until one
/// is added.
pub(crate) fn run<S: Store>(engine: &Engine<S>, signal: &Signal, started: Timestamp) {
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
