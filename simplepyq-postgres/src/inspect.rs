//! Inspection: channels, counts, tasks, what finished when, and the totals.

use std::collections::BTreeMap;
use std::time::Duration;

use simplepyq_core::{
    Counts, Finished, InspectStore, ListFilter, Result, Status, Stuck, Task, TaskId, Timestamp,
    Totals,
};

use crate::error::bad_value;
use crate::row::{COLUMNS, millis, stuck_from_row, task_from_row, tasks_from_rows};
use crate::{PostgresStore, sql};

impl InspectStore for PostgresStore {
    fn channels(&self) -> Result<Vec<String>> {
        self.run(|c| {
            let rows = c.query("SELECT DISTINCT channel FROM tasks ORDER BY channel", &[])?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        let sql = format!(
            "SELECT status, count(*) FROM tasks WHERE true{} GROUP BY status",
            channel_filter(channel, 1)
        );
        self.run(|c| {
            let rows = match channel {
                Some(ch) => c.query(&sql, &[&ch])?,
                None => c.query(&sql, &[])?,
            };
            let mut counts = Counts::default();
            for r in &rows {
                let status: &str = r.try_get(0)?;
                let status: Status = status.parse().map_err(|_| bad_value("status", status))?;
                let n: i64 = r.try_get(1)?;
                *counts.get_mut(status) = usize::try_from(n).map_err(|_| bad_value("count", n))?;
            }
            Ok(counts)
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.run(|c| {
            let row = c.query_opt(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                &[&id.get()],
            )?;
            row.as_ref().map(task_from_row).transpose()
        })
    }

    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>> {
        self.run(|c| {
            let row = c.query_opt(
                "SELECT result FROM tasks WHERE id = $1 AND status = 'done'",
                &[&id.get()],
            )?;
            Ok(row.map(|r| r.try_get(0)).transpose()?.flatten())
        })
    }

    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.run(|c| {
            let rows = c.query(crate::dependency::PARENTS, &[&id.get()])?;
            rows.iter()
                .map(|r| Ok(TaskId::new(r.try_get(0)?)))
                .collect()
        })
    }

    fn has_tasks(&self, channel: &str, statuses: &[Status]) -> Result<bool> {
        if statuses.is_empty() {
            return Ok(false);
        }
        // Done tasks have no index by channel: looking for them reads the done index.
        let sql = simplepyq_core::row::has_tasks_sql("tasks", "$1", statuses);
        self.run(|c| Ok(c.query_one(&sql, &[&channel])?.try_get(0)?))
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        let after = filter.after.map_or(0, TaskId::get);
        let status = filter.status.map(Status::as_str);
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        self.run(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM tasks WHERE id > $1 \
                     AND ($2::text IS NULL OR channel = $2) \
                     AND ($3::text IS NULL OR status = $3) ORDER BY id LIMIT $4"
                ),
                &[&after, &filter.channel, &status, &limit],
            )?;
            tasks_from_rows(&rows)
        })
    }

    fn finished(
        &self,
        channel: Option<&str>,
        since: Timestamp,
        width: Duration,
    ) -> Result<Vec<Finished>> {
        // Over the done index on updated_at, and the failed one.
        let sql = format!(
            "SELECT updated_at - updated_at % $2, status, count(*) FROM tasks \
             WHERE status IN ('done', 'failed') AND updated_at >= $1{} GROUP BY 1, 2",
            channel_filter(channel, 3)
        );
        let width_ms = Finished::width_ms(width);
        let since = millis(since);
        self.run(|c| {
            let rows = match channel {
                Some(ch) => c.query(&sql, &[&since, &width_ms, &ch])?,
                None => c.query(&sql, &[&since, &width_ms])?,
            };
            let mut counted = Vec::with_capacity(rows.len());
            for r in &rows {
                let status: &str = r.try_get(1)?;
                let status: Status = status.parse().map_err(|_| bad_value("status", status))?;
                let n: i64 = r.try_get(2)?;
                let n = usize::try_from(n).map_err(|_| bad_value("count", n))?;
                counted.push((Timestamp::from_millis(r.try_get(0)?), status, n));
            }
            Ok(Finished::tally(counted, width))
        })
    }

    fn totals(&self) -> Result<BTreeMap<String, Totals>> {
        self.run(|c| {
            let mut totals = BTreeMap::new();
            for r in c.query(sql::TOTALS, &[])? {
                let figures = [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?];
                let t = Totals::from_i64s(figures).map_err(|v| bad_value("totals", v))?;
                totals.insert(r.try_get(0)?, t);
            }
            Ok(totals)
        })
    }

    fn stuck(&self, channel: Option<&str>) -> Result<Vec<Stuck>> {
        self.run(|c| {
            c.query(sql::STUCK, &[&channel])?
                .iter()
                .map(stuck_from_row)
                .collect()
        })
    }
}

/// `AND channel = $n` when a channel is given.
pub(crate) fn channel_filter(channel: Option<&str>, n: usize) -> String {
    channel.map_or_else(String::new, |_| format!(" AND channel = ${n}"))
}
