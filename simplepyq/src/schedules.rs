//! The schedules of a queue ([`crate::SimplePyQ::add_schedule`]): what the scheduler
//! thread ([`crate::periodic`]) fires, and its wake-up when they change.

use std::sync::Arc;
use std::time::Duration;

use simplepyq_core::{Error, NewTask, Result, Schedule, Timestamp};

use crate::sync::{Condvar, Mutex};

/// One schedule of a queue.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    /// The task each firing enqueues; its run-at is set to the fire time.
    pub(crate) task: NewTask,
    /// When the schedule was added.
    pub(crate) added: Timestamp,
    /// The latest firing this queue knows was made (by it or another), once read.
    pub(crate) last: Mutex<Option<Timestamp>>,
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

    pub(crate) fn snapshot(&self) -> (Vec<Arc<Entry>>, u64) {
        let state = self.state.lock();
        (state.entries.clone(), state.generation)
    }

    /// Waits until a change after `seen`, or `timeout` (forever with `None`).
    pub(crate) fn wait(&self, seen: u64, timeout: Option<Duration>) {
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
