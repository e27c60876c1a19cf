//! The store's read connections: a read takes an idle one, or opens another, so that reads
//! (idle workers' looks before a claim, `counts`, `tasks`, an inspecting tool beside running
//! workers) do not wait for one another. Up to [`KEEP`] idle connections are kept.

use parking_lot::Mutex;
use rusqlite::Connection;
use simplepyq_core::Result;

/// Idle read connections kept for the next reads.
const KEEP: usize = 4;

type Open = dyn Fn() -> Result<Connection> + Send + Sync;

pub(crate) struct Readers {
    idle: Mutex<Vec<Connection>>,
    /// Opens one more, set up as the first was.
    open: Box<Open>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("idle", &self.idle.lock().len())
            .finish_non_exhaustive()
    }
}

impl Readers {
    pub(crate) fn new(
        first: Connection,
        open: impl Fn() -> Result<Connection> + Send + Sync + 'static,
    ) -> Self {
        Readers {
            idle: Mutex::new(vec![first]),
            open: Box::new(open),
        }
    }

    /// Runs `op` on a read connection of its own.
    pub(crate) fn with<T>(&self, op: impl FnOnce(&Connection) -> T) -> Result<T> {
        crate::fork::within(|| {
            let idle = self.idle.lock().pop();
            let conn = match idle {
                Some(conn) => conn,
                None => (self.open)()?,
            };
            let value = op(&conn);
            let mut idle = self.idle.lock();
            if idle.len() < KEEP {
                idle.push(conn);
            }
            Ok(value)
        })
    }
}
