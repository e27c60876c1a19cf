//! News of work other connections add, for a running queue: a thread with a connection of
//! its own reads `PRAGMA data_version` every interval (it moves when another connection
//! commits; reading it touches no page), and when it moved, reads which channels got tasks
//! since its last look (new ids only: a range of the rowid) and wakes their idle workers.
//!
//! Only new tasks wake: outcomes, renewals and requeues of other processes do not, so that a
//! busy neighbour's commits do not make idle workers claim for nothing. Those are found by
//! the queue's polling, as before.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use simplepyq_core::{Wake, Watch};

/// Starts watching the file at `path` every `interval`; `None` if no connection or thread
/// could be had (the queue then only polls).
pub(crate) fn watch(path: &Path, interval: Duration, wake: Wake) -> Option<Watch> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).ok()?;
    conn.busy_timeout(interval).ok()?;
    let mut last_id = newest_id(&conn).ok()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("simplepyq-sqlite-watch".into())
        .spawn(move || {
            let mut seen = data_version(&conn).unwrap_or(0);
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                // A failed look (the file busy, say) is tried again at the next one.
                let Ok(version) = data_version(&conn) else {
                    continue;
                };
                if version == seen {
                    continue;
                }
                if let Ok(added) = added_since(&conn, last_id) {
                    seen = version;
                    for (channel, id) in added {
                        last_id = last_id.max(id);
                        wake(Some(&channel));
                    }
                }
            }
        })
        .ok()?;
    Some(Watch::new(move || stop.store(true, Ordering::Relaxed)))
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "data_version", |r| r.get(0))
}

fn newest_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM tasks", [], |r| r.get(0))
}

/// The channels with tasks of ids above `after`, and the newest id of each.
fn added_since(conn: &Connection, after: i64) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT channel, MAX(id) FROM tasks WHERE id > ?1 GROUP BY channel")?;
    let rows = stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}
