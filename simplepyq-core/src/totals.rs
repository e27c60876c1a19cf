//! Counters of what became of runs, per channel, that a store keeps with the changes
//! themselves: the figures of `simplepyq_tasks_done_total` and its kin.

use std::collections::BTreeMap;

use crate::transition::Event;
use crate::{Outcome, Status};

/// How many runs of a channel ended each way since the store was made. Each is counted in
/// the transaction that records it, so the totals move only forward and count every
/// process's and machine's runs once. [`crate::AdminStore::remove_channel`],
/// [`crate::AdminStore::clear_failed`] and [`crate::AdminStore::purge_done`] leave them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Runs that succeeded.
    pub done: u64,
    /// Tasks that became failed: a run failed with no retry left, a lost run past the
    /// lost-run limit, or a waiting task whose parent failed or was removed.
    pub failed: u64,
    /// Runs that failed and left the task queued for a retry.
    pub retried: u64,
    /// Runs whose lease expired before they ended (their worker died or hung), recovered by
    /// [`crate::OutcomeStore::recover_expired`].
    pub lease_lost: u64,
}

impl Totals {
    /// What one transition to a task whose new status is `next` counts. Only outcomes and
    /// expired leases count; deferring a task (a `Delayed` outcome) counts nothing.
    pub fn of(event: &Event, next: Status) -> Totals {
        let failed = u64::from(next == Status::Failed);
        match event {
            Event::Finish {
                outcome: Outcome::Succeeded | Outcome::Returned(_),
                ..
            } => Totals {
                done: 1,
                ..Totals::default()
            },
            Event::Finish {
                outcome: Outcome::Failed { .. },
                ..
            } => Totals {
                failed,
                retried: 1 - failed,
                ..Totals::default()
            },
            Event::Expire { .. } => Totals {
                failed,
                lease_lost: 1,
                ..Totals::default()
            },
            Event::ParentLost { .. } => Totals {
                failed,
                ..Totals::default()
            },
            _ => Totals::default(),
        }
    }

    /// Whether nothing is counted.
    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }

    /// Adds `other` to these.
    pub fn add(&mut self, other: Totals) {
        self.done += other.done;
        self.failed += other.failed;
        self.retried += other.retried;
        self.lease_lost += other.lease_lost;
    }

    /// The four figures in field order: done, failed, retried, lease lost.
    pub fn figures(&self) -> [u64; 4] {
        [self.done, self.failed, self.retried, self.lease_lost]
    }

    /// Totals from the four figures of [`Totals::figures`].
    pub fn from_figures([done, failed, retried, lease_lost]: [u64; 4]) -> Totals {
        Totals {
            done,
            failed,
            retried,
            lease_lost,
        }
    }

    /// The four figures of [`Totals::figures`] as SQL stores integers; a figure past
    /// `i64::MAX` (never reached) is stored as `i64::MAX`.
    pub fn to_i64s(&self) -> [i64; 4] {
        self.figures().map(|v| i64::try_from(v).unwrap_or(i64::MAX))
    }

    /// Totals from the four figures of [`Totals::to_i64s`]; a negative one (a damaged
    /// store) is the error.
    pub fn from_i64s(figures: [i64; 4]) -> Result<Totals, i64> {
        let mut unsigned = [0; 4];
        for (u, v) in unsigned.iter_mut().zip(figures) {
            *u = u64::try_from(v).map_err(|_| v)?;
        }
        Ok(Totals::from_figures(unsigned))
    }

    /// The sums per channel of `counted`, leaving out channels with nothing counted.
    pub fn by_channel<'a>(
        counted: impl IntoIterator<Item = (&'a str, Totals)>,
    ) -> BTreeMap<String, Totals> {
        let mut sums: BTreeMap<String, Totals> = BTreeMap::new();
        for (channel, t) in counted {
            if !t.is_zero() {
                sums.entry(channel.to_owned()).or_default().add(t);
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    const NOW: Timestamp = Timestamp::from_millis(1);

    fn failed(permanent: bool) -> Event {
        Event::Finish {
            now: NOW,
            outcome: Outcome::Failed {
                error: "e".into(),
                retry_at: NOW,
                permanent,
            },
        }
    }

    #[test]
    fn each_outcome_counts_once() {
        let done = Event::Finish {
            now: NOW,
            outcome: Outcome::Succeeded,
        };
        let delayed = Event::Finish {
            now: NOW,
            outcome: Outcome::Delayed { until: NOW },
        };
        let expire = Event::Expire {
            now: NOW,
            max_lost_runs: 1,
        };
        let t = |done, failed, retried, lease_lost| Totals {
            done,
            failed,
            retried,
            lease_lost,
        };
        assert_eq!(Totals::of(&done, Status::Done), t(1, 0, 0, 0));
        assert_eq!(Totals::of(&failed(true), Status::Failed), t(0, 1, 0, 0));
        assert_eq!(Totals::of(&failed(false), Status::Delayed), t(0, 0, 1, 0));
        assert_eq!(Totals::of(&failed(false), Status::Pending), t(0, 0, 1, 0));
        assert_eq!(Totals::of(&delayed, Status::Delayed), t(0, 0, 0, 0));
        assert_eq!(Totals::of(&expire, Status::Pending), t(0, 0, 0, 1));
        assert_eq!(Totals::of(&expire, Status::Failed), t(0, 1, 0, 1));
        let release = Event::Release { now: NOW };
        assert!(Totals::of(&release, Status::Pending).is_zero());
    }

    #[test]
    fn figures_round_trip_and_refuse_negatives() {
        let t = Totals {
            done: 1,
            failed: 2,
            retried: 3,
            lease_lost: u64::MAX,
        };
        assert_eq!(t.to_i64s(), [1, 2, 3, i64::MAX]);
        let back = Totals::from_i64s([1, 2, 3, 4]).expect("valid");
        assert_eq!((back.done, back.lease_lost), (1, 4));
        assert_eq!(Totals::from_i64s([1, -2, 3, 4]), Err(-2));
    }

    #[test]
    fn by_channel_sums_and_leaves_out_zeros() {
        let one = Totals {
            done: 1,
            ..Totals::default()
        };
        let sums = Totals::by_channel([("b", one), ("a", Totals::default()), ("b", one)]);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums["b"].done, 2);
    }
}
