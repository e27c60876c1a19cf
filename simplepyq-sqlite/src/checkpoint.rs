//! Checkpoints off the hot path: a thread folds the WAL back into the database file, so that
//! no caller's commit pays for it.
//!
//! The writer connection has automatic checkpoints off. This thread checkpoints every
//! [`EVERY_WRITES`] writes, and at least every second while there are writes: a `PASSIVE`
//! checkpoint, which waits for no one, and once the WAL has grown past [`RESTART_PAGES`] a
//! `RESTART` one. Under continuous writes a `PASSIVE` checkpoint never catches up with the
//! end of the WAL, which then grows without bound (measured: 1 GB in 8 s of draining);
//! `RESTART` holds new writes back while it copies the pages written since the last one,
//! and waits for readers of older snapshots, so that the next write starts the WAL over
//! from its beginning. It takes the store's writer connection first, between two commits:
//! it needs the write lock, which a producer committing back to back would otherwise hold
//! at nearly every try. That wait is [`WAIT`], doubling after each restart that could not
//! complete up to [`MAX_WAIT`]: a reader that holds a snapshot for long (a `sqlite3`
//! shell, a backup) stalls writers milliseconds per round, not the busy timeout, while a
//! loaded machine's writers cannot starve the restart for ever. The WAL grows while a
//! restart cannot complete, and is cut back once one does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use simplepyq_core::{Error, Result};

use crate::writer::Holder;

/// Writes between checkpoints.
const EVERY_WRITES: u64 = 1_000;
/// The longest time between checkpoints while there are writes.
const EVERY: Duration = Duration::from_secs(1);
/// The WAL size, in pages, past which a checkpoint restarts the WAL (4 MiB of 4 KiB pages).
const RESTART_PAGES: i64 = 1_024;
/// How long a checkpoint waits for readers and writers (its busy timeout) at first...
pub(crate) const WAIT: Duration = Duration::from_millis(5);
/// ...and at most, after restarts that could not complete.
const MAX_WAIT: Duration = Duration::from_millis(40);

#[derive(Default)]
struct Shared {
    writes: AtomicU64,
    closed: Mutex<bool>,
    cv: Condvar,
}

/// The handle on a store's checkpointer thread; dropping it stops and joins the thread.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Starts the thread on its own connection to the file; `writer` holds the store's
    /// writes back while the WAL restarts.
    pub(crate) fn start(conn: Connection, writer: Holder) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("simplepyq-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &theirs, &writer))
            .map_err(Error::Spawn)?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// Counts a committed write; wakes the thread when a checkpoint is due.
    pub(crate) fn wrote(&self) {
        if self.shared.writes.fetch_add(1, Ordering::Relaxed) + 1 == EVERY_WRITES {
            let _closed = self.shared.closed.lock();
            self.shared.cv.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.shared.closed.lock() = true;
        self.shared.cv.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread only checkpoints; if it panicked there is nothing to recover.
            let _ = thread.join();
        }
    }
}

fn checkpoint_loop(conn: &Connection, shared: &Shared, writer: &Holder) {
    let mut wait = WAIT;
    loop {
        {
            let mut closed = shared.closed.lock();
            if *closed {
                return;
            }
            if shared.writes.load(Ordering::Relaxed) < EVERY_WRITES {
                shared.cv.wait_for(&mut closed, EVERY);
            }
            if *closed {
                return;
            }
        }
        if shared.writes.swap(0, Ordering::Relaxed) > 0 {
            // A busy or failed checkpoint is simply tried again next time; the WAL keeps
            // every commit meanwhile.
            let wal_pages = crate::fork::within(|| {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                    .unwrap_or(0)
            });
            if wal_pages > RESTART_PAGES {
                let _ = crate::fork::within(|| crate::wait_for_locks(conn, wait));
                // Between two of this store's commits: the restart needs the write lock,
                // which a producer committing back to back held most of the time (each
                // commit waits for its fsync at FULL), so that restarts failed and the WAL
                // grew, every commit appending to the file.
                let done = writer.hold(|| {
                    conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
                        .is_ok_and(|busy| busy == 0)
                });
                // A restart that found others busy (a loaded machine, a long reader) waits
                // twice as long next time, so that writers cannot starve it for ever.
                wait = if done { WAIT } else { (wait * 2).min(MAX_WAIT) };
            }
        }
    }
}
