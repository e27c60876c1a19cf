//! Waiting for a task to end: its outcome as soon as it is recorded, here or in another
//! process on the store.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use simplepyq_core::{Result, Status, Store, TaskId};

use crate::engine::{Engine, Pause};
use crate::reads::decode_result;

/// How a task ended, as [`crate::SimplePyQ::wait`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEnd<T> {
    /// Done; with the result its handler gave ([`crate::TaskContext::set_result`]), if any.
    Done(Option<T>),
    /// Failed for good; its last error.
    Failed(String),
    /// Not in the store: cancelled before it ran, its channel removed, deleted after it
    /// ended (purged, or past its retention), or never enqueued.
    Gone,
}

/// The first look at the store for another process's outcome comes this soon...
const FIRST_LOOK: Duration = Duration::from_millis(1);
/// ...and the looks then come at most this far apart.
const LOOK_EVERY: Duration = Duration::from_millis(4);

/// Waits up to `timeout` for task `id` to end; `None` if it has not by then. An outcome
/// this queue records wakes the wait at once; one another process records is seen at the
/// next look at the store, within [`LOOK_EVERY`].
pub(crate) fn wait<S: Store, T: DeserializeOwned>(
    engine: &Engine<S>,
    id: TaskId,
    timeout: Duration,
) -> Result<Option<TaskEnd<T>>> {
    let deadline = Instant::now().checked_add(timeout);
    let mut looks = Pause::new(FIRST_LOOK, LOOK_EVERY);
    loop {
        let (seen, _) = engine.held.snapshot();
        if let Some(end) = ended(&engine.store, id)? {
            return Ok(Some(end));
        }
        let left = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        };
        if left.is_zero() {
            return Ok(None);
        }
        engine.held.wait(seen, left.min(looks.next()));
    }
}

/// How task `id` ended, or `None` while it has not.
fn ended<S: Store, T: DeserializeOwned>(store: &S, id: TaskId) -> Result<Option<TaskEnd<T>>> {
    let Some(task) = store.get(id)? else {
        return Ok(Some(TaskEnd::Gone));
    };
    Ok(match task.state.status {
        // A done task stays done: its result, unless it was deleted meanwhile.
        Status::Done => Some(TaskEnd::Done(decode_result(id, store.result(id)?)?)),
        Status::Failed => Some(TaskEnd::Failed(task.state.last_error.unwrap_or_default())),
        Status::Pending | Status::Running | Status::Delayed | Status::Waiting => None,
    })
}
