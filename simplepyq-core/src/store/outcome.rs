//! What becomes of claimed tasks: what the recorder and the lease keeper call.

use std::fmt::Debug;

use crate::{Claim, Outcome, Result, Status, Task, Timestamp};

/// What [`OutcomeStore::finish_and_claim`] returns: each outcome's status, as
/// [`OutcomeStore::finish_many`] returns them, and the claim's own result.
pub type FinishedAndClaimed = (Vec<Result<Status>>, Result<Vec<Task>>);

/// What becomes of claimed tasks: leases renewed, outcomes recorded, claims given back
/// unused, and the tasks of dead workers recovered. Every call is fenced by the claims'
/// `(id, attempt)`. See [`super::Store`] for what every method of a store promises.
pub trait OutcomeStore: super::ClaimStore + Send + Sync + Debug + 'static {
    /// Extends the leases of running attempts to `lease_until` and returns how many are
    /// still held.
    ///
    /// # Contract
    /// Claims that are no longer held (finished, recovered, claimed again, removed) are
    /// skipped, not an error. A lease never shrinks.
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize>;

    /// Records how attempts ended, all in one transaction, and returns each task's new
    /// status in order.
    ///
    /// # Contract
    /// An attempt whose `claim` is not the task's current running attempt (its lease
    /// expired and it was recovered, or the task was removed) gets
    /// [`crate::Error::LeaseLost`] in its place and changes nothing; the others are
    /// recorded. The outer error is a storage failure, and then nothing is recorded.
    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>>;

    /// Records how attempts ended, as [`OutcomeStore::finish_many`] does, then claims up
    /// to `limit` of `channel`'s due tasks, as [`crate::ClaimStore::claim`] does at `now`
    /// with leases until `lease_until`: the call of a worker of a limited channel, whose
    /// outcome frees the slot it claims next. Stores that can make both one commit do (the
    /// default makes two calls), so that a slot passes from one task to the next in one.
    ///
    /// # Contract
    /// The outer result is that of [`OutcomeStore::finish_many`]: an error records nothing
    /// (and claims nothing). With the outcomes recorded, the claim's own result follows:
    /// it sees them (their slots, concurrency keys and parents freed), and its error
    /// leaves them recorded.
    fn finish_and_claim(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
        channel: &str,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<FinishedAndClaimed> {
        let statuses = self.finish_many(results, now)?;
        Ok((statuses, self.claim(channel, limit, now, lease_until)))
    }

    /// Gives back claimed tasks whose handlers never started; returns how many were still
    /// held.
    ///
    /// # Contract
    /// Each held claim's task is `Pending` again with its lease cleared and the attempt of
    /// the claim not counted (see [`crate::transition::Event::Release`]). Claims that are no
    /// longer held are skipped, not an error.
    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize>;

    /// Recovers running tasks whose lease expired by `now` as lost runs (see
    /// [`crate::transition::Event::Expire`]); returns how many.
    ///
    /// # Contract
    /// Such a task becomes due at once with [`crate::transition::WORKER_LOST`] as its last
    /// error and its retries unchanged; the lost run past `max_lost_runs` makes it `Failed`.
    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize>;

    /// Marks the attempt `claim` as stuck since `since`: its handler runs past its timeout
    /// and cannot be stopped (a thread), so its worker keeps its lease until it returns.
    /// Returns whether the claim still held its task. Read by
    /// [`crate::InspectStore::stuck`], for dashboards of every process.
    ///
    /// # Contract
    /// A mark counts only while its attempt is the task's running attempt
    /// ([`Claim::holds`]): once the task's outcome is recorded, it is recovered, released or
    /// deleted, the mark is ignored (and may be forgotten). A claim no longer held marks
    /// nothing, and is not an error.
    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool>;
}

forward!(OutcomeStore {
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize>;
    fn finish_many(&self, results: &[(Claim, Outcome)], now: Timestamp) -> Result<Vec<Result<Status>>>;
    fn finish_and_claim(&self, results: &[(Claim, Outcome)], now: Timestamp, channel: &str, limit: usize, lease_until: Timestamp) -> Result<FinishedAndClaimed>;
    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize>;
    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize>;
    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool>;
});
