//! What a handler's [`crate::TaskContext`] reads of its queue's store, whatever the store's
//! type: its task's parents and their results.

use simplepyq_core::{Result, TaskId};

/// A queue's store, as a handler's context reads it.
pub(crate) trait Reads: Send + Sync {
    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>>;
    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>>;
}
