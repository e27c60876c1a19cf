//! The bare PostgreSQL limits: what the plain `postgres` client does against the same
//! server, with no queue around it. simplepyq's PostgreSQL figures are reported as ratios to
//! these, measured in the same run.

use std::time::Instant;

use postgres::{Client, NoTls};

/// Connects to `conninfo` and creates an empty jobs table in `schema`.
pub fn open(conninfo: &str, schema: &str) -> Result<Client, postgres::Error> {
    let mut c = Client::connect(conninfo, NoTls)?;
    c.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path = {schema};
         DROP TABLE IF EXISTS jobs;
         CREATE TABLE jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             status smallint NOT NULL, payload bytea NOT NULL);
         CREATE INDEX jobs_pending ON jobs (id) WHERE status = 0;"
    ))?;
    Ok(c)
}

/// Inserts `n` rows from `clients` connections, one transaction per row; returns rows per
/// second.
pub fn insert_rate(conninfo: &str, schema: &str, clients: u64, n: u64) -> Result<f64, String> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || -> Result<(), postgres::Error> {
                    let mut c = Client::connect(conninfo, NoTls)?;
                    c.batch_execute(&format!("SET search_path = {schema}"))?;
                    let insert = c.prepare("INSERT INTO jobs (status, payload) VALUES (0, $1)")?;
                    let payload = vec![0u8; 48];
                    for _ in 0..n / clients {
                        c.execute(&insert, &[&payload])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| "a bare inserter panicked".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    Ok((n / clients * clients) as f64 / started.elapsed().as_secs_f64())
}

/// Claims `batch` pending rows with `FOR UPDATE SKIP LOCKED` and deletes them, one
/// statement each, on `clients` connections until none is left; returns rows per second.
/// Fill the table with [`insert_rate`] first.
pub fn claim_delete_rate(
    conninfo: &str,
    schema: &str,
    clients: u64,
    batch: i64,
) -> Result<f64, String> {
    let started = Instant::now();
    let done: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || -> Result<u64, postgres::Error> {
                    let mut c = Client::connect(conninfo, NoTls)?;
                    c.batch_execute(&format!("SET search_path = {schema}"))?;
                    let claim = c.prepare(
                        "UPDATE jobs SET status = 1 WHERE id = ANY (ARRAY (SELECT id FROM jobs \
                         WHERE status = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
                         RETURNING id",
                    )?;
                    let delete = c.prepare("DELETE FROM jobs WHERE id = ANY ($1)")?;
                    let mut done = 0;
                    loop {
                        let ids: Vec<i64> = c
                            .query(&claim, &[&batch])?
                            .iter()
                            .map(|r| r.get(0))
                            .collect();
                        if ids.is_empty() {
                            return Ok(done);
                        }
                        c.execute(&delete, &[&ids])?;
                        done += ids.len() as u64;
                    }
                })
            })
            .collect();
        let mut done = 0;
        for t in threads {
            done += t
                .join()
                .map_err(|_| "a bare claimer panicked".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok::<u64, String>(done)
    })?;
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
