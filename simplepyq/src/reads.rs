//! What a handler's [`crate::TaskContext`] reads of its queue's store, whatever the store's
//! type: its task's parents and their results; and how a stored result is decoded.

use serde::de::DeserializeOwned;
use simplepyq_core::{Error, Result, TaskId};

/// A queue's store, as a handler's context reads it.
pub(crate) trait Reads: Send + Sync {
    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>>;
    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>>;
}

/// Task `id`'s stored result, decoded as `T`.
pub(crate) fn decode_result<T: DeserializeOwned>(
    id: TaskId,
    result: Option<Vec<u8>>,
) -> Result<Option<T>> {
    let Some(bytes) = result else {
        return Ok(None);
    };
    rmp_serde::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Codec {
            action: "decoded",
            message: format!("the result of task {id}: {e}"),
        })
}
