//! Outcomes waiting to be recorded: workers hand them over here and go on to their next
//! task; the recorder thread takes them in batches.

use std::sync::Arc;
use std::time::Duration;

use crate::sync::{Condvar, Mutex};
use simplepyq_core::{Claim, Outcome, TaskId};

/// Past this many waiting outcomes, a worker records its own (backpressure).
const MAX_WAITING: usize = 2048;

/// One attempt's outcome, waiting to be recorded.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) channel: Arc<str>,
    pub(crate) claim: Claim,
    pub(crate) outcome: Outcome,
    pub(crate) elapsed: Duration,
    /// The handler completed the task in its own transaction (which may have rolled back).
    pub(crate) completed_in: bool,
    /// The task has a concurrency key: its outcome frees a slot of that key.
    pub(crate) keyed: bool,
}

#[derive(Debug, Default)]
struct State {
    waiting: Vec<Ended>,
    /// Recorder threads taking outcomes; with none, workers record their own.
    recorders: usize,
    /// The queue is stopping: a recorder gives up on a store that keeps failing.
    stopping: bool,
    /// Tasks whose outcome was given up on, for the stop's report.
    unrecorded: Vec<TaskId>,
    /// Moves on every [`Outcomes::wake`], so that a recorder never misses one.
    wakes: u64,
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
    pub(crate) fn push(&self, finished: Ended) -> Option<Ended> {
        self.push_below(finished, MAX_WAITING)
    }

    /// Queues `finished` for a recorder thread however many wait; gives it back if none
    /// runs.
    #[cfg(feature = "tokio")]
    pub(crate) fn push_nowait(&self, finished: Ended) -> Option<Ended> {
        self.push_below(finished, usize::MAX)
    }

    /// Queues `finished` unless no recorder runs or `max` outcomes wait already.
    fn push_below(&self, finished: Ended, max: usize) -> Option<Ended> {
        let mut st = self.state.lock();
        if st.recorders == 0 || st.waiting.len() >= max {
            return Some(finished);
        }
        st.waiting.push(finished);
        self.cv.notify_one();
        None
    }

    /// Whether more outcomes wait than a worker would hand over.
    #[cfg(feature = "tokio")]
    pub(crate) fn backlogged(&self) -> bool {
        self.state.lock().waiting.len() >= MAX_WAITING
    }

    /// Takes up to `max` outcomes, waiting up to `wait` for the first unless woken since
    /// `seen` (from [`Outcomes::wakes`]).
    pub(crate) fn take(&self, max: usize, wait: Duration, seen: u64) -> Vec<Ended> {
        let mut st = self.state.lock();
        if st.waiting.is_empty() && st.wakes == seen && !wait.is_zero() {
            self.cv.wait_for(&mut st, wait);
        }
        let n = st.waiting.len().min(max);
        st.waiting.drain(..n).collect()
    }

    /// Sets whether the queue is stopping, and wakes the recorders to look.
    pub(crate) fn stopping(&self, stopping: bool) {
        let mut st = self.state.lock();
        st.stopping = stopping;
        st.wakes += 1;
        self.cv.notify_all();
    }

    /// Wakes the recorders to look whether they may end.
    pub(crate) fn wake(&self) {
        self.state.lock().wakes += 1;
        self.cv.notify_all();
    }

    /// The count of wake-ups, to pass to [`Outcomes::take`].
    pub(crate) fn wakes(&self) -> u64 {
        self.state.lock().wakes
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
