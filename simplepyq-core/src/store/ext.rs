//! Helpers over any [`Store`].

use std::time::Duration;

use crate::{Claim, Counts, ListFilter, NewTask, Outcome, Result, Status, TaskId, Timestamp};

use super::Store;

/// Helpers over any [`Store`].
pub trait StoreExt: Store {
    /// Enqueues one task and returns its id.
    fn enqueue_one(&self, task: NewTask, now: Timestamp) -> Result<TaskId> {
        let ids = self.enqueue(std::slice::from_ref(&task), now)?;
        ids.into_iter().next().ok_or_else(|| crate::Error::Backend {
            backend: "store",
            source: "enqueue returned no id for one task".into(),
        })
    }

    /// Records how one attempt ended and returns the task's new status; see
    /// [`crate::OutcomeStore::finish_many`].
    fn finish(&self, claim: Claim, outcome: &Outcome, now: Timestamp) -> Result<Status> {
        let mut results = self.finish_many(&[(claim, outcome.clone())], now)?;
        results.pop().unwrap_or_else(|| {
            Err(crate::Error::Backend {
                backend: "store",
                source: "finish_many returned no result for one attempt".into(),
            })
        })
    }

    /// Records a success.
    fn complete(&self, claim: Claim, now: Timestamp) -> Result<Status> {
        self.finish(claim, &Outcome::Succeeded, now)
    }

    /// When the oldest pending task of `channel` (the first by id) was enqueued.
    fn oldest_pending(&self, channel: &str) -> Result<Option<Timestamp>> {
        let first = ListFilter::new(1).channel(channel).status(Status::Pending);
        Ok(self.list(&first)?.first().map(|t| t.created_at))
    }

    /// What every channel with tasks holds now, in name order.
    fn channel_summaries(&self) -> Result<Vec<ChannelSummary>> {
        self.channels()?
            .into_iter()
            .map(|name| self.summary_of(name))
            .collect()
    }

    /// What channel `name` holds now.
    fn summary_of(&self, name: String) -> Result<ChannelSummary> {
        Ok(ChannelSummary {
            counts: self.counts(Some(&name))?,
            oldest_pending: self.oldest_pending(&name)?,
            next_wakeup: self.next_wakeup(&name)?,
            name,
        })
    }

    /// The old name of [`StoreExt::channel_summaries`].
    #[deprecated(since = "0.1.0", note = "renamed to `channel_summaries`")]
    fn channel_stats(&self) -> Result<Vec<ChannelSummary>> {
        self.channel_summaries()
    }

    /// The old name of [`StoreExt::summary_of`].
    #[deprecated(since = "0.1.0", note = "renamed to `summary_of`")]
    fn stats_of(&self, name: String) -> Result<ChannelSummary> {
        self.summary_of(name)
    }
}

/// The old name of [`ChannelSummary`].
#[deprecated(since = "0.1.0", note = "renamed to `ChannelSummary`")]
pub type ChannelStats = ChannelSummary;

/// What a channel holds now: its counts, its oldest pending task, its next wake-up. See
/// [`StoreExt::channel_summaries`]; the command line's `simplepyq summary FILE` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSummary {
    /// The channel.
    pub name: String,
    /// Its tasks per status.
    pub counts: Counts,
    /// When its oldest pending task (by id) was enqueued, if it has one.
    pub oldest_pending: Option<Timestamp>,
    /// Its [`crate::ClaimStore::next_wakeup`].
    pub next_wakeup: Option<Timestamp>,
}

impl ChannelSummary {
    /// How long its oldest pending task has waited at `now`; zero with none pending (the
    /// figure of the `simplepyq_store_oldest_pending_age_seconds` gauge).
    pub fn oldest_pending_age(&self, now: Timestamp) -> Duration {
        self.oldest_pending
            .map_or(Duration::ZERO, |oldest| oldest.until(now))
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
