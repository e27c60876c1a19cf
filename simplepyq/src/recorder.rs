//! Recording outcomes in batches: workers hand their results to the recorder thread and go
//! on to their next task; the recorder writes everything handed over meanwhile in one
//! `finish_many` call (one transaction), then reports each outcome and releases its task.
//!
//! A task stays in flight (its lease renewed) until its outcome is recorded, so a crash in
//! between means what any crash means: the task runs again once its lease expires.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use simplepyq_core::{Claim, Error, Outcome, Store};

use crate::queue::Shared;
use crate::report::{self, TaskReport};
use crate::worker::{ChannelWork, error_pause};

/// The most outcomes one `finish_many` call records.
const MAX_BATCH: usize = 512;
/// Past this many waiting outcomes, a worker records its own (backpressure).
const MAX_WAITING: usize = 4 * MAX_BATCH;
/// How often a batch is tried while the store fails (about 2 s in all); after that its
/// tasks are left to lease recovery, which runs them again.
const ATTEMPTS: u32 = 8;

/// One attempt's outcome, waiting to be recorded.
pub(crate) struct Finished {
    pub(crate) channel: Arc<ChannelWork>,
    pub(crate) claim: Claim,
    pub(crate) outcome: Outcome,
    pub(crate) elapsed: Duration,
}

#[derive(Default)]
struct State {
    waiting: Vec<Finished>,
    /// No thread records: workers record their own outcomes.
    closed: bool,
}

/// The outcomes waiting for the recorder thread.
pub(crate) struct Recorder {
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder with no thread yet: outcomes are recorded by whoever hands them over.
    pub(crate) fn closed() -> Self {
        Recorder {
            state: Mutex::new(State {
                waiting: Vec::new(),
                closed: true,
            }),
            cv: Condvar::new(),
        }
    }

    /// Lets a recorder thread take over (before it starts).
    pub(crate) fn open(&self) {
        self.state.lock().closed = false;
    }

    /// Tells the recorder thread to record what is waiting and stop.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.cv.notify_all();
    }
}

/// Hands an outcome over, or records it right away if no recorder thread runs or too many
/// outcomes wait.
pub(crate) fn hand_over<S: Store>(shared: &Shared<S>, finished: Finished) {
    let own = {
        let mut state = shared.recorder.state.lock();
        if state.closed || state.waiting.len() >= MAX_WAITING {
            Some(finished)
        } else {
            state.waiting.push(finished);
            None
        }
    };
    match own {
        Some(finished) => record(shared, vec![finished]),
        None => {
            shared.recorder.cv.notify_one();
        }
    }
}

/// The recorder thread: records what workers hand over until closed and drained.
pub(crate) fn run<S: Store>(shared: &Shared<S>) {
    loop {
        let batch = {
            let mut state = shared.recorder.state.lock();
            while state.waiting.is_empty() && !state.closed {
                shared.recorder.cv.wait(&mut state);
            }
            if state.waiting.is_empty() {
                return;
            }
            let n = state.waiting.len().min(MAX_BATCH);
            state.waiting.drain(..n).collect::<Vec<_>>()
        };
        record(shared, batch);
    }
}

/// Records `batch` in one call, reports each outcome, and releases the tasks.
fn record<S: Store>(shared: &Shared<S>, batch: Vec<Finished>) {
    let results: Vec<(Claim, Outcome)> =
        batch.iter().map(|f| (f.claim, f.outcome.clone())).collect();
    let mut pause = error_pause();
    let mut statuses = None;
    for _ in 0..ATTEMPTS {
        match shared.store.finish_many(&results, shared.now()) {
            Ok(s) => {
                statuses = Some(s);
                break;
            }
            // Busy, or a failure of the storage that may pass (a full disk): try again
            // while the lease keeper holds the tasks.
            Err(e) => {
                shared.record_error(&e);
                std::thread::sleep(pause.next());
            }
        }
    }
    for (i, f) in batch.iter().enumerate() {
        match statuses.as_mut().and_then(|s| s.get_mut(i)) {
            Some(Ok(status)) => {
                let report = TaskReport {
                    id: f.claim.id,
                    channel: &f.channel.name,
                    attempt: f.claim.attempt,
                    elapsed: f.elapsed,
                    outcome: &f.outcome,
                    status: *status,
                };
                report::trace(&report);
                if let Some(hook) = &shared.on_outcome {
                    // A panicking hook must not take the recorder down with it.
                    let _ = catch_unwind(AssertUnwindSafe(|| hook(&report)));
                }
            }
            // Another worker owns the task now (its lease expired): this result is dropped.
            Some(Err(Error::LeaseLost { .. })) | None => {}
            Some(Err(e)) => shared.record_error(e),
        }
        shared.finished(f.claim.id);
    }
}
