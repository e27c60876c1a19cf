//! The firings of periodic tasks.

use std::fmt::Debug;

use crate::{NewTask, Result, TaskId, Timestamp};

/// The firings of periodic tasks (see [`crate::schedule`]); see [`super::Store`] for what
/// every method of a store promises.
pub trait ScheduleStore: Send + Sync + Debug + 'static {
    /// Fires schedule `name` at fire time `at`: records `at` as its last firing and
    /// enqueues `task` (as [`crate::ClaimStore::enqueue`] does), in one transaction, unless a firing at
    /// or after `at` is recorded already. Returns the task's id, or `None` if it was not
    /// fired. See [`crate::schedule`].
    ///
    /// # Contract
    /// A schedule's recorded firing only moves forward: of all calls for one schedule and
    /// one `at`, across threads, queues and processes sharing the store, exactly one
    /// enqueues (if none fired a later `at` first); a call with an `at` at or before the
    /// recorded one changes nothing. Recorded firings outlive the tasks they enqueued, and
    /// [`crate::AdminStore::remove_channel`] leaves them.
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>>;

    /// The last recorded firing of schedule `name`, if any.
    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>>;
}

forward!(ScheduleStore {
    fn fire_schedule(&self, name: &str, at: Timestamp, task: &NewTask, now: Timestamp) -> Result<Option<TaskId>>;
    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>>;
});
