//! Outcomes waiting to be recorded: workers hand them over here and go on to their next
//! task; the recorder thread takes them in batches.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use simplepyq_core::{Claim, Outcome, TaskId};

/// Past this many waiting outcomes, a worker records its own (backpressure).
const MAX_WAITING: usize = 2048;

/// One attempt's outcome, waiting to be recorded.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) channel: Arc<str>,
    pub(crate) claim: Claim,
    pub(crate) outcome: Outcome,
    pub(crate) elapsed: Duration,
}

#[derive(Debug, Default)]
struct State {
    waiting: Vec<Finished>,
    /// Recorder threads taking outcomes; with none, workers record their own.
    recorders: usize,
    /// The queue is stopping: a recorder gives up on a store that keeps failing.
    stopping: bool,
    /// Tasks whose outcome was given up on, for the stop's report.
    unrecorded: Vec<TaskId>,
}

/// The outcomes of one queue.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    state: Mutex<State>,
    cv: Condvar,
}

impl Outcomes {
    /// A recorder thread starts taking outcomes.
    pub(crate) fn open(&self) {
        self.state.lock().recorders += 1;
    }

    /// A recorder thread ends; it records what it took before.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        st.recorders = st.recorders.saturating_sub(1);
    }

    /// Queues `finished` for a recorder thread; gives it back to be recorded by the caller
    /// if none runs or too many wait.
    pub(crate) fn push(&self, finished: Finished) -> Option<Finished> {
        let mut st = self.state.lock();
        if st.recorders == 0 || st.waiting.len() >= MAX_WAITING {
            return Some(finished);
        }
        st.waiting.push(finished);
        self.cv.notify_one();
        None
    }

    /// Takes up to `max` outcomes, waiting up to `wait` for the first.
    pub(crate) fn take(&self, max: usize, wait: Duration) -> Vec<Finished> {
        let mut st = self.state.lock();
        if st.waiting.is_empty() {
            self.cv.wait_for(&mut st, wait);
        }
        let n = st.waiting.len().min(max);
        st.waiting.drain(..n).collect()
    }

    /// Sets whether the queue is stopping, and wakes the recorders to look.
    pub(crate) fn stopping(&self, stopping: bool) {
        self.state.lock().stopping = stopping;
        self.cv.notify_all();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.state.lock().stopping
    }

    /// Notes tasks whose outcome was given up on.
    pub(crate) fn unrecorded(&self, ids: impl IntoIterator<Item = TaskId>) {
        self.state.lock().unrecorded.extend(ids);
    }

    /// The tasks whose outcome was given up on since the last call.
    pub(crate) fn take_unrecorded(&self) -> Vec<TaskId> {
        std::mem::take(&mut self.state.lock().unrecorded)
    }
}
