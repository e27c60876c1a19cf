//! Periodic tasks: when a [`Schedule`] fires, and which firings a queue makes up for.
//!
//! The rules, written once here for every store:
//! - **Fire times** are those of the schedule on the store's clock, in UTC: an interval's
//!   are its multiples since the Unix epoch (every 5 minutes fires at :00, :05, …, whoever
//!   starts when); a cron expression's are read in UTC.
//! - **Exactly once**: the store records each schedule's last firing, and a firing is
//!   recorded and its task enqueued in one transaction only if it is later than the one
//!   recorded ([`crate::ScheduleStore::fire_schedule`]). Every queue and process sharing the store
//!   may run the same schedule: each fire time is enqueued once.
//! - **A new schedule** (no firing recorded) first fires at its first fire time after its
//!   queue started (or after it was added to a running queue): none in the past.
//! - **Missed firings** (more than [`LATE`] late, as when nothing ran) are made up for by
//!   one run, at the latest of them; the schedule then goes on as usual. Firings less late
//!   than that (a busy machine) are each made, in order.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::{Error, Result, Timestamp};

/// A firing later than this was missed: of all such firings, one is made up for.
pub const LATE: Duration = Duration::from_secs(1);

/// The shortest interval a schedule may have.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// When a periodic task fires: every interval, or by a cron expression (in UTC).
#[derive(Clone, Debug)]
pub struct Schedule(Kind);

#[derive(Clone, Debug)]
enum Kind {
    /// Every this many milliseconds, counted from the Unix epoch.
    Every(i64),
    /// By this expression.
    Cron(Box<Cron>),
}

impl Schedule {
    /// Fires at every multiple of `interval` since the Unix epoch (UTC), at least
    /// [`MIN_INTERVAL`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use simplepyq_core::{Schedule, Timestamp};
    /// let s = Schedule::every(Duration::from_secs(60))?;
    /// assert_eq!(s.next_after(Timestamp::from_millis(61_000)), Some(Timestamp::from_millis(120_000)));
    /// # Ok::<(), simplepyq_core::Error>(())
    /// ```
    pub fn every(interval: Duration) -> Result<Self> {
        if interval < MIN_INTERVAL {
            return Err(Error::InvalidConfig(format!(
                "a schedule's interval must be at least {MIN_INTERVAL:?}, got {interval:?}"
            )));
        }
        let ms = i64::try_from(interval.as_millis()).map_err(|_| {
            Error::InvalidConfig(format!("a schedule's interval is too long: {interval:?}"))
        })?;
        Ok(Schedule(Kind::Every(ms)))
    }

    /// Fires by a cron expression read in UTC: five fields (minute, hour, day of month,
    /// month, day of week), or six with seconds first; `@hourly`, `@daily` and the like.
    ///
    /// ```
    /// # use simplepyq_core::{Schedule, Timestamp};
    /// let s = Schedule::cron("30 2 * * *")?; // 02:30 UTC every day
    /// assert_eq!(s.next_after(Timestamp::EPOCH), Some(Timestamp::from_millis(9_000_000)));
    /// assert!(Schedule::cron("61 * * * *").is_err());
    /// # Ok::<(), simplepyq_core::Error>(())
    /// ```
    pub fn cron(expression: &str) -> Result<Self> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| {
                Error::InvalidConfig(format!(
                    "the cron expression {expression:?} is invalid: {e}"
                ))
            })?;
        Ok(Schedule(Kind::Cron(Box::new(cron))))
    }

    /// The first fire time strictly after `t`; `None` if there is none (a cron expression
    /// that never matches again).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.0 {
            Kind::Every(ms) => {
                let next = t.as_millis().div_euclid(*ms).checked_add(1)?;
                next.checked_mul(*ms).map(Timestamp::from_millis)
            }
            Kind::Cron(cron) => cron
                .find_next_occurrence(&whole_second(t)?, false)
                .ok()
                .map(|d| Timestamp::from_millis(d.timestamp_millis())),
        }
    }

    /// The last fire time at or before `t`, if any.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.0 {
            Kind::Every(ms) => t
                .as_millis()
                .div_euclid(*ms)
                .checked_mul(*ms)
                .map(Timestamp::from_millis),
            Kind::Cron(cron) => cron
                .find_previous_occurrence(&whole_second(t)?, true)
                .ok()
                .map(|d| Timestamp::from_millis(d.timestamp_millis())),
        }
    }

    /// The firings to make at `now` for a schedule whose last firing was at `after` (or
    /// that started then), in order: one for all those more than [`LATE`] late, at the
    /// latest of them, then each of the others.
    pub fn due(&self, after: Timestamp, now: Timestamp) -> Vec<Timestamp> {
        let late =
            Timestamp::from_millis(now.as_millis().saturating_sub(crate::time::millis_of(LATE)));
        let mut fires = Vec::new();
        if let Some(t) = self.last_at_or_before(late).filter(|&t| t > after) {
            fires.push(t);
        }
        let mut next = self.next_after(after.max(late));
        while let Some(t) = next.filter(|&t| t <= now) {
            fires.push(t);
            next = self.next_after(t);
        }
        fires
    }
}

impl FromStr for Schedule {
    type Err = Error;

    /// A cron expression ([`Schedule::cron`]).
    fn from_str(s: &str) -> Result<Self> {
        Schedule::cron(s)
    }
}

/// `t` rounded down to its second, as a UTC date: cron fire times are whole seconds.
fn whole_second(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_millis().div_euclid(1000), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: i64) -> Timestamp {
        Timestamp::from_millis(n)
    }

    #[test]
    fn an_interval_fires_at_its_multiples_since_the_epoch() {
        let s = Schedule::every(Duration::from_millis(100)).expect("valid");
        assert_eq!(s.next_after(ms(0)), Some(ms(100)));
        assert_eq!(s.next_after(ms(150)), Some(ms(200)));
        assert_eq!(s.next_after(ms(200)), Some(ms(300)));
        assert_eq!(s.last_at_or_before(ms(299)), Some(ms(200)));
        assert_eq!(s.last_at_or_before(ms(300)), Some(ms(300)));
        assert!(Schedule::every(Duration::from_millis(9)).is_err());
    }

    #[test]
    fn a_cron_expression_fires_on_whole_seconds_in_utc() {
        let s = Schedule::cron("*/15 * * * * *").expect("with seconds");
        assert_eq!(s.next_after(ms(1_500)), Some(ms(15_000)));
        assert_eq!(s.next_after(ms(15_000)), Some(ms(30_000)));
        assert_eq!(s.last_at_or_before(ms(29_999)), Some(ms(15_000)));
        assert_eq!(s.last_at_or_before(ms(30_000)), Some(ms(30_000)));
        let hourly = Schedule::cron("@hourly").expect("a nickname");
        assert_eq!(hourly.next_after(ms(1)), Some(ms(3_600_000)));
        let never = Schedule::cron("0 0 30 2 *").expect("valid, but February has no 30th");
        assert_eq!(never.next_after(ms(0)), None);
        assert!(never.due(ms(0), ms(86_400_000)).is_empty());
        let err = Schedule::cron("* * *").expect_err("three fields");
        assert!(err.to_string().contains("* * *"), "{err}");
    }

    #[test]
    fn due_makes_each_recent_firing_and_one_for_those_missed() {
        let s = Schedule::every(Duration::from_millis(100)).expect("valid");
        // On time: the one firing since the last.
        assert_eq!(s.due(ms(10_000), ms(10_100)), vec![ms(10_100)]);
        assert_eq!(s.due(ms(10_000), ms(10_099)), Vec::<Timestamp>::new());
        // A little late (under a second): each firing, in order.
        assert_eq!(
            s.due(ms(10_000), ms(10_350)),
            vec![ms(10_100), ms(10_200), ms(10_300)]
        );
        // An hour missed: one run for the firings more than a second late, at the latest
        // of them, then the recent ones.
        let due = s.due(ms(10_000), ms(3_610_050));
        assert_eq!(due[0], ms(3_609_000));
        assert_eq!(
            due[1..],
            (1..=10)
                .map(|k| ms(3_609_000 + 100 * k))
                .collect::<Vec<_>>()
        );
        // Nothing is fired twice, nothing before the start.
        assert!(s.due(ms(3_610_000), ms(3_610_050)).is_empty());
    }
}
