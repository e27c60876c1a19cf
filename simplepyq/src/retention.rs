//! Retention: how long a queue keeps its channels' finished tasks (the pruner thread,
//! `pruner.rs`, deletes older ones while the queue runs).

use std::collections::HashMap;
use std::time::Duration;

use crate::sync::Mutex;

/// How long finished tasks are kept once they finished: done ones and failed ones, each
/// for ever (`None`, the default: the original's behaviour) or for a time. A queue deletes
/// the older ones of the channels it serves while it runs (see
/// [`Builder::keep_done`](crate::Builder::keep_done)); cancelled tasks are deleted at the
/// cancel already. Deleting a task leaves the totals (the counters of `/metrics`) as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// How long a done task is kept after it finished.
    pub done: Option<Duration>,
    /// How long a failed task is kept after it failed for good.
    pub failed: Option<Duration>,
}

impl Retention {
    /// What this sets, and else what `default` sets.
    pub(crate) fn or(self, default: Retention) -> Retention {
        Retention {
            done: self.done.or(default.done),
            failed: self.failed.or(default.failed),
        }
    }

    fn times(self) -> impl Iterator<Item = Duration> {
        self.done.into_iter().chain(self.failed)
    }
}

/// The retention of each channel added to a queue: its own, over the queue's.
#[derive(Debug)]
pub(crate) struct Kept {
    default: Retention,
    channels: Mutex<HashMap<String, Retention>>,
}

impl Kept {
    pub(crate) fn new(default: Retention) -> Self {
        Kept {
            default,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Notes channel `name`'s own retention (over the queue's).
    pub(crate) fn add(&self, name: &str, own: Retention) {
        let kept = own.or(self.default);
        let mut channels = self.channels.lock();
        if kept == Retention::default() {
            channels.remove(name);
        } else {
            channels.insert(name.to_owned(), kept);
        }
    }

    pub(crate) fn remove(&self, name: &str) {
        self.channels.lock().remove(name);
    }

    /// Every channel that keeps its finished tasks for a time, with its retention.
    pub(crate) fn all(&self) -> Vec<(String, Retention)> {
        let channels = self.channels.lock();
        channels.iter().map(|(c, r)| (c.clone(), *r)).collect()
    }
}

/// The most often a pruner looks...
const FIRST: Duration = Duration::from_secs(1);
/// ...and the least often.
const LAST: Duration = Duration::from_secs(60);

/// How long the pruner waits between passes: an eighth of the shortest time kept, from a
/// second to a minute (a second while nothing is kept, to notice a channel added).
pub(crate) fn period(kept: &[(String, Retention)]) -> Duration {
    kept.iter()
        .flat_map(|(_, r)| r.times())
        .min()
        .map_or(FIRST, |t| (t / 8).clamp(FIRST, LAST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_keeps_its_own_and_else_the_queues() {
        let day = Duration::from_secs(86_400);
        let kept = Kept::new(Retention {
            done: Some(day),
            failed: None,
        });
        kept.add("a", Retention::default());
        kept.add(
            "b",
            Retention {
                done: Some(day / 2),
                failed: Some(day * 7),
            },
        );
        let mut all = kept.all();
        all.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(all[0].1.done, Some(day));
        assert_eq!(
            all[1].1,
            Retention {
                done: Some(day / 2),
                failed: Some(day * 7)
            }
        );
        assert_eq!(period(&all), LAST);
        kept.add(
            "c",
            Retention {
                done: None,
                failed: Some(Duration::from_secs(16)),
            },
        );
        assert_eq!(period(&kept.all()), Duration::from_secs(2));
        kept.remove("c");
        kept.remove("b");
        assert_eq!(kept.all().len(), 1);
        let none = Kept::new(Retention::default());
        none.add("c", Retention::default());
        assert!(none.all().is_empty());
        assert_eq!(period(&none.all()), FIRST);
    }
}
