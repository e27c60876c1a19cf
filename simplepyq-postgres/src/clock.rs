//! Time on the database server's clock, read locally.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::Client;
use simplepyq_core::{Clock, SystemClock, Timestamp};

use crate::error::R;

/// How many round trips a measurement takes; the quickest one gives the offset.
const SAMPLES: usize = 5;

/// How old a measurement may get before the store measures again: the local monotonic
/// clock and the server's drift apart by parts per million.
const REMEASURE: Duration = Duration::from_secs(60);

/// How far the local wall clock may move apart from the monotonic clock since the last
/// measurement before the store measures again at once: a step of the wall clock (NTP, an
/// admin) or a suspended and resumed machine, whose monotonic clock stood still meanwhile.
const JUMP_MS: i64 = 1_000;

/// The server's clock, read as a local monotonic clock since a measurement.
///
/// Leases and run-at times are compared across machines, whose clocks may differ by
/// seconds or more: a machine 30 s ahead would take another's tasks 30 s before their
/// leases expire. Every process that times tasks by the server's clock agrees, whatever its
/// own clock says. The server's time is measured when the store connects, from the quickest
/// of a few round trips (its error is at most half that round trip), and read since then
/// from the monotonic clock, which no step of the wall clock moves. The store measures again
/// every minute, and at once when the wall clock and the monotonic clock disagree by more
/// than a second (a clock step, or a machine resumed from suspension).
#[derive(Clone, Debug)]
pub struct ServerClock {
    local: Arc<dyn Clock>,
    anchor: Arc<Mutex<Anchor>>,
    /// A measurement is under way: one caller measures, the others go on.
    measuring: Arc<AtomicBool>,
}

/// One measurement: the server's time and the local clock's at a monotonic instant.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    at: Instant,
    server_ms: i64,
    local_ms: i64,
}

impl Anchor {
    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.at.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

impl ServerClock {
    /// Measures the server's clock against `local` over `client`.
    pub(crate) fn measure(client: &mut Client, local: Arc<dyn Clock>) -> R<Self> {
        let anchor = sample(client, &*local)?;
        Ok(ServerClock {
            local,
            anchor: Arc::new(Mutex::new(anchor)),
            measuring: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Measures the server's clock against the system clock.
    pub(crate) fn measure_system(client: &mut Client) -> R<Self> {
        Self::measure(client, Arc::new(SystemClock))
    }

    /// Whether a new measurement is due (the last one is a minute old, or the wall clock
    /// jumped since); if so, the caller is the one to make it, with [`Self::remeasure`].
    pub(crate) fn claim_remeasure(&self) -> bool {
        let a = *self.anchor.lock();
        let mono = a.elapsed_ms();
        let wall = self.local.now().as_millis().saturating_sub(a.local_ms);
        let due = mono >= i64::try_from(REMEASURE.as_millis()).unwrap_or(i64::MAX)
            || (wall.saturating_sub(mono)).abs() > JUMP_MS;
        due && !self.measuring.swap(true, Ordering::AcqRel)
    }

    /// Measures again over `client` (after [`Self::claim_remeasure`] said so); every clone
    /// of this clock reads by the new measurement.
    pub(crate) fn remeasure(&self, client: &mut Client) -> R<()> {
        let result = sample(client, &*self.local).map(|a| *self.anchor.lock() = a);
        self.measuring.store(false, Ordering::Release);
        result
    }

    /// How far the server's clock is ahead of the local one, in milliseconds (negative when
    /// it is behind), as last measured.
    pub fn offset_millis(&self) -> i64 {
        let a = self.anchor.lock();
        a.server_ms - a.local_ms
    }
}

/// The quickest of [`SAMPLES`] round trips: the server's time, and the local clock's, at
/// its middle.
fn sample(client: &mut Client, local: &dyn Clock) -> R<Anchor> {
    let mut best: Option<(Duration, Anchor)> = None;
    for _ in 0..SAMPLES {
        let (before, before_ms) = (Instant::now(), local.now().as_millis());
        let server: i64 = client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )?
            .try_get(0)?;
        let round_trip = before.elapsed();
        if best.as_ref().is_none_or(|(rt, _)| round_trip < *rt) {
            let half = round_trip / 2;
            let half_ms = i64::try_from(half.as_millis()).unwrap_or(i64::MAX);
            let anchor = Anchor {
                at: before + half,
                server_ms: server,
                local_ms: before_ms.saturating_add(half_ms),
            };
            best = Some((round_trip, anchor));
        }
    }
    let (_, anchor) = best.expect("at least one sample");
    Ok(anchor)
}

impl Clock for ServerClock {
    fn now(&self) -> Timestamp {
        let a = *self.anchor.lock();
        Timestamp::from_millis(a.server_ms.saturating_add(a.elapsed_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    /// A wall clock the test steps.
    #[derive(Debug, Default)]
    struct Stepped(AtomicI64);

    impl Clock for Stepped {
        fn now(&self) -> Timestamp {
            Timestamp::from_millis(SystemClock.now().as_millis() + self.0.load(Ordering::SeqCst))
        }
    }

    fn clock_at(local: Arc<Stepped>, server_ms: i64) -> ServerClock {
        ServerClock {
            anchor: Arc::new(Mutex::new(Anchor {
                at: Instant::now(),
                server_ms,
                local_ms: local.now().as_millis(),
            })),
            local,
            measuring: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A step of the wall clock moves neither the server's time as read here nor the
    /// leases written by it; it makes a measurement due at once, taken by one caller.
    #[test]
    fn a_wall_clock_step_moves_nothing_and_asks_for_a_measurement() {
        let local = Arc::new(Stepped::default());
        let server_ms = SystemClock.now().as_millis() + 5_000;
        let clock = clock_at(Arc::clone(&local), server_ms);
        assert!(!clock.claim_remeasure(), "a fresh measurement");
        for step in [-60_000, 3_600_000] {
            local.0.store(step, Ordering::SeqCst);
            let read = clock.now().as_millis();
            assert!((read - server_ms).abs() < 1_000, "step {step}: read {read}");
            assert!(clock.claim_remeasure(), "step {step}: a measurement is due");
            assert!(!clock.claim_remeasure(), "one caller measures");
            clock.measuring.store(false, Ordering::Release);
        }
    }
}
