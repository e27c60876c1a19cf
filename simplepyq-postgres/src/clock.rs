//! Time on the database server's clock, read locally.

use std::sync::Arc;

use postgres::Client;
use simplepyq_core::{Clock, SystemClock, Timestamp};

use crate::error::R;

/// How many round trips a measurement takes; the quickest one gives the offset.
const SAMPLES: usize = 5;

/// The database server's clock, read as a local clock plus an offset measured once.
///
/// Leases and run-at times are compared across machines, whose clocks may differ by
/// seconds or more: a machine 30 s ahead would take another's tasks 30 s before their
/// leases expire. Every process that times tasks by the server's clock agrees, whatever its
/// own clock says. The offset is measured when the store connects, from the quickest of a
/// few round trips (its error is at most half that round trip).
#[derive(Clone, Debug)]
pub struct ServerClock {
    local: Arc<dyn Clock>,
    offset_ms: i64,
}

impl ServerClock {
    /// Measures the offset of the server's clock from `local`'s over `client`.
    pub(crate) fn measure(client: &mut Client, local: Arc<dyn Clock>) -> R<Self> {
        let mut best: Option<(i64, i64)> = None;
        for _ in 0..SAMPLES {
            let before = local.now().as_millis();
            let server: i64 = client
                .query_one(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                    &[],
                )?
                .try_get(0)?;
            let after = local.now().as_millis();
            let round_trip = after - before;
            if best.is_none_or(|(rt, _)| round_trip < rt) {
                best = Some((round_trip, server - (before + round_trip / 2)));
            }
        }
        let offset_ms = best.map_or(0, |(_, offset)| offset);
        Ok(ServerClock { local, offset_ms })
    }

    /// Measures the offset from the system clock.
    pub(crate) fn measure_system(client: &mut Client) -> R<Self> {
        Self::measure(client, Arc::new(SystemClock))
    }

    /// How far the server's clock is ahead of the local one, in milliseconds (negative when
    /// it is behind).
    pub fn offset_millis(&self) -> i64 {
        self.offset_ms
    }
}

impl Clock for ServerClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.local.now().as_millis().saturating_add(self.offset_ms))
    }
}
