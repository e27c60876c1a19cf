//! Helpers over any [`Store`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::{Claim, Counts, ListFilter, NewTask, Outcome, Result, Status, TaskId, Timestamp};

use super::{Flow, Store};

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

    /// What every channel with tasks or flow settings holds now, in name order.
    fn channel_summaries(&self) -> Result<Vec<ChannelSummary>> {
        let flows = self.flows()?;
        let mut names: BTreeSet<String> = self.channels()?.into_iter().collect();
        names.extend(flows.keys().cloned());
        names
            .into_iter()
            .map(|name| self.summary_with(name, &flows))
            .collect()
    }

    /// What channel `name` holds now.
    fn summary_of(&self, name: String) -> Result<ChannelSummary> {
        self.summary_with(name, &self.flows()?)
    }

    /// What channel `name` holds now, its flow settings among `flows`.
    #[doc(hidden)]
    fn summary_with(&self, name: String, flows: &BTreeMap<String, Flow>) -> Result<ChannelSummary> {
        Ok(ChannelSummary {
            counts: self.counts(Some(&name))?,
            oldest_pending: self.oldest_pending(&name)?,
            next_wakeup: self.next_wakeup(&name)?,
            paused: flows.get(&name).is_some_and(|f| f.paused),
            max_running: flows.get(&name).and_then(|f| f.max_running),
            max_running_per_key: flows
                .get(&name)
                .map_or(Flow::default().max_running_per_key, |f| {
                    f.max_running_per_key
                }),
            rate: flows.get(&name).and_then(|f| f.rate),
            rate_per_key: flows.get(&name).and_then(|f| f.rate_per_key),
            name,
        })
    }

    /// Whether the store knows `channel`: it has tasks, totals or flow settings.
    fn knows_channel(&self, channel: &str) -> Result<bool> {
        Ok(self.counts(Some(channel))?.total() > 0
            || self.flows()?.contains_key(channel)
            || self.totals()?.contains_key(channel))
    }

    /// Pauses (`paused`) or resumes `channel` ([`crate::FlowStore::set_paused`]), refusing a
    /// name neither the store knows ([`StoreExt::knows_channel`]) nor the caller
    /// (`known_here`: a channel with a handler in this process) with
    /// [`crate::Error::UnknownChannel`], most likely a misspelling. Returns whether it
    /// changed.
    fn pause_known(&self, channel: &str, paused: bool, known_here: bool) -> Result<bool> {
        self.check_known(channel, known_here)?;
        self.set_paused(channel, paused)
    }

    /// Sets `channel`'s limit of running tasks ([`crate::FlowStore::set_max_running`]),
    /// refusing an unknown name as [`StoreExt::pause_known`] does. Returns whether it
    /// changed.
    fn limit_known(&self, channel: &str, max: Option<u32>, known_here: bool) -> Result<bool> {
        crate::check_max_running(max)?;
        self.check_known(channel, known_here)?;
        self.set_max_running(channel, max)
    }

    /// Sets `channel`'s limit of running tasks per concurrency key
    /// ([`crate::FlowStore::set_max_running_per_key`]), refusing an unknown name as
    /// [`StoreExt::pause_known`] does. Returns whether it changed.
    fn limit_per_key_known(&self, channel: &str, max: u32, known_here: bool) -> Result<bool> {
        crate::check_max_running_per_key(max)?;
        self.check_known(channel, known_here)?;
        self.set_max_running_per_key(channel, max)
    }

    /// Sets `channel`'s rate of starts ([`crate::FlowStore::set_rate`]), refusing an unknown
    /// name as [`StoreExt::pause_known`] does. Returns whether it changed.
    fn rate_known(
        &self,
        channel: &str,
        rate: Option<crate::Rate>,
        known_here: bool,
    ) -> Result<bool> {
        crate::check_rate(rate)?;
        self.check_known(channel, known_here)?;
        self.set_rate(channel, rate)
    }

    /// Sets `channel`'s rate of starts per concurrency key
    /// ([`crate::FlowStore::set_rate_per_key`]), refusing an unknown name as
    /// [`StoreExt::pause_known`] does. Returns whether it changed.
    fn rate_per_key_known(
        &self,
        channel: &str,
        rate: Option<crate::Rate>,
        known_here: bool,
    ) -> Result<bool> {
        crate::check_rate(rate)?;
        self.check_known(channel, known_here)?;
        self.set_rate_per_key(channel, rate)
    }

    /// An error for a channel name that is invalid, or that neither the store nor the
    /// caller (`known_here`) knows: [`crate::Error::UnknownChannel`].
    fn check_known(&self, channel: &str, known_here: bool) -> Result<()> {
        crate::validate_channel(channel)?;
        if !known_here && !self.knows_channel(channel)? {
            return Err(crate::Error::UnknownChannel(channel.to_owned()));
        }
        Ok(())
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
    /// Whether it is paused ([`crate::FlowStore::set_paused`]).
    pub paused: bool,
    /// Its limit of running tasks ([`crate::FlowStore::set_max_running`]).
    pub max_running: Option<u32>,
    /// Its limit of running tasks per concurrency key
    /// ([`crate::FlowStore::set_max_running_per_key`]).
    pub max_running_per_key: u32,
    /// Its rate of starts ([`crate::FlowStore::set_rate`]).
    pub rate: Option<crate::Rate>,
    /// Its rate of starts per concurrency key ([`crate::FlowStore::set_rate_per_key`]).
    pub rate_per_key: Option<crate::Rate>,
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
