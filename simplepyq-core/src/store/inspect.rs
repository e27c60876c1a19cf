//! Inspection: what the store holds, for people, dashboards and metrics.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use crate::{Counts, Finished, ListFilter, Result, Status, Stuck, Task, TaskId, Timestamp, Totals};

/// Inspection: channels, counts, tasks, what finished when, and the totals. Reads only;
/// see [`super::Store`] for what every method of a store promises.
pub trait InspectStore: Send + Sync + Debug + 'static {
    /// The channels that have tasks, in name order.
    fn channels(&self) -> Result<Vec<String>>;

    /// Counts tasks per status, of `channel` or of every channel.
    fn counts(&self, channel: Option<&str>) -> Result<Counts>;

    /// Whether `channel` has a task in any of `statuses`: a look at each status's index
    /// where the store has one, however many tasks the channel holds (a queue's check that
    /// its work is done asks this, not [`InspectStore::counts`], which reads every task).
    ///
    /// The default counts the channel's tasks.
    fn has_tasks(&self, channel: &str, statuses: &[Status]) -> Result<bool> {
        let counts = self.counts(Some(channel))?;
        Ok(statuses.iter().any(|&s| counts.get(s) > 0))
    }

    /// The task with this id, if any.
    fn get(&self, id: TaskId) -> Result<Option<Task>>;

    /// The result task `id`'s handler gave when it succeeded ([`crate::Outcome::Returned`]),
    /// if the task exists, is done and has one.
    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>>;

    /// The parents task `id` was enqueued to wait for ([`crate::NewTask::after`]), in id
    /// order; none for a task without parents or that does not exist. A parent deleted
    /// since (purged after it was done, say) is still named.
    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>>;

    /// A page of tasks in id order.
    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>>;

    /// How many tasks of `channel` (or of every channel) ended done or failed since
    /// `since`, per bucket of `width` (see [`Finished::bucket_of`]), in time order; buckets
    /// with none are left out. A task counts once, at its last change: a failed task
    /// requeued and then done counts as done; deleted tasks count no more.
    ///
    /// The default reads every done and failed task; backends with an index on the time
    /// of their last change count in a query.
    fn finished(
        &self,
        channel: Option<&str>,
        since: Timestamp,
        width: Duration,
    ) -> Result<Vec<Finished>> {
        const PAGE: usize = 1_000;
        let mut rows = Vec::new();
        for status in [Status::Done, Status::Failed] {
            let mut filter = ListFilter::new(PAGE).status(status);
            filter.channel = channel.map(str::to_owned);
            loop {
                let page = self.list(&filter)?;
                rows.extend(
                    page.iter()
                        .filter(|t| t.state.updated_at >= since)
                        .map(|t| (t.state.updated_at, status, 1)),
                );
                match page.last() {
                    Some(last) if page.len() == PAGE => filter.after = Some(last.id),
                    _ => break,
                }
            }
        }
        Ok(Finished::tally(rows, width))
    }

    /// The [`Totals`] of every channel that has counted something, in name order.
    ///
    /// # Contract
    /// Each attempt [`crate::OutcomeStore::finish_many`] records and each lost run
    /// [`crate::OutcomeStore::recover_expired`] recovers counts once, as [`Totals::of`] says, in the
    /// same transaction as the change; refused outcomes count nothing. Totals only grow:
    /// removing, clearing, purging or requeueing tasks leaves them.
    fn totals(&self) -> Result<BTreeMap<String, Totals>>;

    /// The running attempts marked stuck ([`crate::OutcomeStore::mark_stuck`]) whose mark
    /// still counts, of `channel` or of every channel, in id order.
    fn stuck(&self, channel: Option<&str>) -> Result<Vec<Stuck>>;
}

forward!(InspectStore {
    fn channels(&self) -> Result<Vec<String>>;
    fn counts(&self, channel: Option<&str>) -> Result<Counts>;
    fn has_tasks(&self, channel: &str, statuses: &[Status]) -> Result<bool>;
    fn get(&self, id: TaskId) -> Result<Option<Task>>;
    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>>;
    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>>;
    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>>;
    fn finished(&self, channel: Option<&str>, since: Timestamp, width: Duration) -> Result<Vec<Finished>>;
    fn totals(&self) -> Result<BTreeMap<String, Totals>>;
    fn stuck(&self, channel: Option<&str>) -> Result<Vec<Stuck>>;
});
