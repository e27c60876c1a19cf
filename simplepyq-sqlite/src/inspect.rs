//! Inspection: channels, counts, tasks, what finished when, and the totals.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::params_from_iter;
use simplepyq_core::{
    Counts, Finished, InspectStore, ListFilter, Result, Status, Stuck, Task, TaskId, Timestamp,
    Totals,
};

use crate::SqliteStore;
use crate::error::bad_value;
use crate::row::{COLUMNS, select_tasks, stuck_from_row, task_from_row};

impl InspectStore for SqliteStore {
    fn channels(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&channels_sql())?;
            let names = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(names)
        })
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        let sql = counts_sql(channel);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params_from_iter(channel))?;
            let mut counts = Counts::default();
            if let Some(r) = rows.next()? {
                for (i, status) in Status::ALL.into_iter().enumerate() {
                    let n: i64 = r.get(i)?;
                    *counts.get_mut(status) =
                        usize::try_from(n).map_err(|_| bad_value("count", n))?;
                }
            }
            Ok(counts)
        })
    }

    fn has_tasks(&self, channel: &str, statuses: &[Status]) -> Result<bool> {
        if statuses.is_empty() {
            return Ok(false);
        }
        let sql = simplepyq_core::row::has_tasks_sql("simplepyq_tasks", "?1", statuses);
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_row([channel], |r| r.get(0))?)
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM simplepyq_tasks WHERE id = ?1"
            ))?;
            let mut rows = stmt.query([id.get()])?;
            match rows.next()? {
                Some(r) => Ok(Some(task_from_row(r)?)),
                None => Ok(None),
            }
        })
    }

    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT result FROM simplepyq_tasks WHERE id = ?1 AND status = 'done'",
            )?;
            let mut rows = stmt.query([id.get()])?;
            match rows.next()? {
                Some(r) => Ok(r.get(0)?),
                None => Ok(None),
            }
        })
    }

    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.read(|conn| crate::dependency::parents(conn, id))
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        let mut sql = format!("SELECT {COLUMNS} FROM simplepyq_tasks WHERE id > ?1");
        let mut values: Vec<rusqlite::types::Value> =
            vec![filter.after.map_or(0, TaskId::get).into()];
        if let Some(channel) = &filter.channel {
            values.push(channel.clone().into());
            sql.push_str(&format!(" AND channel = ?{}", values.len()));
        }
        if let Some(status) = filter.status {
            // Written in, not bound: SQLite uses a status's partial index only then.
            sql.push_str(&format!(" AND status = '{}'", status.as_str()));
        }
        values.push(i64::try_from(filter.limit).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" ORDER BY id LIMIT ?{}", values.len()));
        self.read(|conn| select_tasks(conn, &sql, params_from_iter(&values)))
    }

    fn finished(
        &self,
        channel: Option<&str>,
        since: Timestamp,
        width: Duration,
    ) -> Result<Vec<Finished>> {
        let sql = finished_sql(channel);
        let width_ms = Finished::width_ms(width);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut values: Vec<rusqlite::types::Value> =
                vec![since.as_millis().into(), width_ms.into()];
            values.extend(channel.map(|c| c.to_owned().into()));
            let rows = stmt
                .query_map(params_from_iter(&values), |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut counted = Vec::with_capacity(rows.len());
            for (bucket, status, n) in rows {
                let status: Status = status.parse().map_err(|_| bad_value("status", &status))?;
                let n = usize::try_from(n).map_err(|_| bad_value("count", n))?;
                counted.push((Timestamp::from_millis(bucket), status, n));
            }
            Ok(Finished::tally(counted, width))
        })
    }

    fn totals(&self) -> Result<BTreeMap<String, Totals>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT channel, done, failed, retried, lease_lost FROM simplepyq_totals ORDER BY channel",
            )?;
            let mut rows = stmt.query([])?;
            let mut totals = BTreeMap::new();
            while let Some(r) = rows.next()? {
                let figures = [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?];
                let t = Totals::from_i64s(figures).map_err(|v| bad_value("totals", v))?;
                totals.insert(r.get(0)?, t);
            }
            Ok(totals)
        })
    }

    fn stuck(&self, channel: Option<&str>) -> Result<Vec<Stuck>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT simplepyq_stuck.id, t.channel, simplepyq_stuck.attempt, \
                   simplepyq_stuck.since \
                 FROM simplepyq_stuck JOIN simplepyq_tasks t ON t.id = simplepyq_stuck.id \
                 WHERE {STUCK_COUNTS}{} ORDER BY simplepyq_stuck.id",
                channel.map_or("", |_| " AND t.channel = ?1")
            ))?;
            let mut rows = match channel {
                Some(c) => stmt.query([c])?,
                None => stmt.query([])?,
            };
            let mut stuck = Vec::new();
            while let Some(r) = rows.next()? {
                stuck.push(stuck_from_row(r)?);
            }
            Ok(stuck)
        })
    }
}

/// Whether the mark `s` of table `simplepyq_stuck` counts: its attempt is its task's running
/// attempt ([`simplepyq_core::Claim::holds`]).
pub(crate) const STUCK_COUNTS: &str = "EXISTS (SELECT 1 FROM simplepyq_tasks t \
     WHERE t.id = simplepyq_stuck.id AND t.status = 'running' \
     AND t.attempts = simplepyq_stuck.attempt)";

/// `AND channel = ?n` when a channel is given.
pub(crate) fn channel_filter(channel: Option<&str>, n: usize) -> String {
    channel.map_or_else(String::new, |_| format!(" AND channel = ?{n}"))
}

/// The count of each status (of channel ?1 if given), in [`Status::ALL`]'s order, each
/// over its status's index.
pub(crate) fn counts_sql(channel: Option<&str>) -> String {
    let counts = Status::ALL.map(|s| {
        format!(
            "(SELECT count(*) FROM simplepyq_tasks WHERE status = '{}'{})",
            s.as_str(),
            channel_filter(channel, 1)
        )
    });
    format!("SELECT {}", counts.join(", "))
}

/// Done and failed tasks changed at or after ?1, counted per bucket of ?2 milliseconds (of
/// channel ?3 if given), each over its status's index.
pub(crate) fn finished_sql(channel: Option<&str>) -> String {
    let of_status = [Status::Done, Status::Failed].map(|s| {
        format!(
            "SELECT updated_at - updated_at % ?2, '{0}', count(*) FROM simplepyq_tasks \
             WHERE status = '{0}' AND updated_at >= ?1{1} GROUP BY 1",
            s.as_str(),
            channel_filter(channel, 3)
        )
    });
    of_status.join(" UNION ALL ")
}

/// The channels with tasks, from each status's index (each leads with the channel): a skip
/// scan, one seek per channel and status (`min(channel)` above the last one found), where a
/// plain `SELECT DISTINCT` would read every entry.
pub(crate) fn channels_sql() -> String {
    let walks = Status::ALL.map(|s| {
        format!(
            "in_{0}(ch) AS (SELECT min(channel) FROM simplepyq_tasks WHERE status = '{0}' \
             UNION ALL SELECT (SELECT min(channel) FROM simplepyq_tasks \
             WHERE status = '{0}' AND channel > in_{0}.ch) FROM in_{0} WHERE ch IS NOT NULL)",
            s.as_str()
        )
    });
    let found =
        Status::ALL.map(|s| format!("SELECT ch FROM in_{} WHERE ch IS NOT NULL", s.as_str()));
    format!(
        "WITH RECURSIVE {} {} ORDER BY 1",
        walks.join(", "),
        found.join(" UNION ")
    )
}
