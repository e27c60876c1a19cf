//! The bare SQLite limits: what plain rusqlite does on this machine, with no queue around
//! it. simplepyq's figures are reported as ratios to these, measured in the same run.

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior, params};

/// Opens a WAL database at `path` with `synchronous` (`NORMAL` or `FULL`) and a jobs table.
pub fn open(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS jobs (
             id INTEGER PRIMARY KEY, status INTEGER NOT NULL, payload BLOB NOT NULL,
             result BLOB);
         CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (status, id);",
    )?;
    Ok(conn)
}

/// Inserts `n` rows, one transaction each; returns rows per second.
pub fn insert_rate(conn: &Connection, n: u64) -> rusqlite::Result<f64> {
    let payload = [0u8; 48];
    let mut stmt = conn.prepare("INSERT INTO jobs (status, payload) VALUES (0, ?1)")?;
    let started = Instant::now();
    for _ in 0..n {
        stmt.execute(params![&payload[..]])?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Claims and deletes `batch` pending rows per transaction until `limit` rows are done or
/// none is left; returns rows per second. Fill the table with [`insert_batch`] first.
pub fn claim_delete_rate(conn: &mut Connection, batch: u32, limit: u64) -> rusqlite::Result<f64> {
    let started = Instant::now();
    let mut done = 0u64;
    while done < limit {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<i64> = {
            let mut claim = tx.prepare_cached(
                "UPDATE jobs SET status = 1 WHERE id IN \
                 (SELECT id FROM jobs WHERE status = 0 ORDER BY id LIMIT ?1) RETURNING id",
            )?;
            claim
                .query_map([batch], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        {
            let mut delete = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
            for id in &ids {
                delete.execute([id])?;
            }
        }
        tx.commit()?;
        if ids.is_empty() {
            break;
        }
        done += ids.len() as u64;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Claims `batch` pending rows per transaction and, in the next transaction, marks them
/// finished with a result of `result_bytes` bytes (none for 0), until `limit` rows are done
/// or none is left: a queue's claim and outcome that keeps finished rows; returns rows per
/// second. Fill the table with [`insert_batch`] first.
pub fn claim_finish_rate(
    conn: &mut Connection,
    batch: u32,
    limit: u64,
    result_bytes: usize,
) -> rusqlite::Result<f64> {
    let result = (result_bytes > 0).then(|| vec![0x78u8; result_bytes]);
    let started = Instant::now();
    let mut done = 0u64;
    while done < limit {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<i64> = tx
            .prepare_cached(
                "UPDATE jobs SET status = 1 WHERE id IN \
                 (SELECT id FROM jobs WHERE status = 0 ORDER BY id LIMIT ?1) RETURNING id",
            )?
            .query_map([batch], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        tx.commit()?;
        if ids.is_empty() {
            break;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut finish =
                tx.prepare_cached("UPDATE jobs SET status = 2, result = ?2 WHERE id = ?1")?;
            for id in &ids {
                finish.execute(params![id, result])?;
            }
        }
        tx.commit()?;
        done += ids.len() as u64;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Inserts `n` pending rows in one transaction.
pub fn insert_batch(conn: &mut Connection, n: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare("INSERT INTO jobs (status, payload) VALUES (0, ?1)")?;
        for _ in 0..n {
            stmt.execute(params![&[0u8; 48][..]])?;
        }
    }
    tx.commit()
}
