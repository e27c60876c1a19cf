//! Flow control: channels paused and resumed, and their limits of running tasks, for every
//! process and machine on the schema.

use std::collections::BTreeMap;

use postgres::Row;
use postgres::error::SqlState;

use simplepyq_core::{
    Flow, FlowStore, Rate, Result, check_max_running, check_max_running_per_key, check_rate,
    duration_of, validate_channel,
};

use crate::PostgresStore;
use crate::error::{E, R};

impl FlowStore for PostgresStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        self.change_flow(channel, |f| f.paused = paused)
    }

    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool> {
        check_max_running(max)?;
        self.change_flow(channel, |f| f.max_running = max)
    }

    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool> {
        check_max_running_per_key(max)?;
        self.change_flow(channel, |f| f.max_running_per_key = max)
    }

    fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        check_rate(rate)?;
        self.change_flow(channel, |f| f.rate = rate)
    }

    fn set_rate_per_key(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        check_rate(rate)?;
        self.change_flow(channel, |f| f.rate_per_key = rate)
    }

    fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        let rows = self.run(|c| {
            match c.query(
                &format!("SELECT channel, {FLOW_COLUMNS} FROM channels ORDER BY channel"),
                &[],
            ) {
                // A schema of an earlier version, read-only: no settings.
                Err(E::Pg(e)) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
                other => other,
            }
        })?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(E::from)?, flow_from(r, 1)?)))
            .collect()
    }
}

impl PostgresStore {
    /// Changes `channel`'s flow settings with `change` in one transaction (its row locked);
    /// returns whether they changed. Idle workers of every process sleep while a channel is
    /// paused or full: they are told of a change.
    fn change_flow(&self, channel: &str, change: impl Fn(&mut Flow) + Send + Sync) -> Result<bool> {
        validate_channel(channel)?;
        let changed = self.transaction(|tx| {
            let before = match tx.query_opt(
                &format!("SELECT {FLOW_COLUMNS} FROM channels WHERE channel = $1 FOR UPDATE"),
                &[&channel],
            )? {
                Some(row) => flow_from(&row, 0)?,
                None => Flow::default(),
            };
            let mut flow = before.clone();
            change(&mut flow);
            if flow == before {
                return Ok(false);
            }
            if flow.is_default() {
                tx.execute("DELETE FROM channels WHERE channel = $1", &[&channel])?;
            } else {
                let max = flow
                    .max_running
                    .map(|m| i32::try_from(m).unwrap_or(i32::MAX));
                let per_key = i32::try_from(flow.max_running_per_key).unwrap_or(i32::MAX);
                let starts = flow
                    .rate
                    .map(|r| i32::try_from(r.starts).unwrap_or(i32::MAX));
                let per_ms = flow.rate.map(|r| r.per_ms());
                let key_starts = flow
                    .rate_per_key
                    .map(|r| i32::try_from(r.starts).unwrap_or(i32::MAX));
                let key_per_ms = flow.rate_per_key.map(|r| r.per_ms());
                tx.execute(
                    "INSERT INTO channels AS c (channel, paused, max_running, max_running_per_key, \
                       rate_starts, rate_per_ms, key_rate_starts, key_rate_per_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (channel) DO UPDATE SET paused = excluded.paused, \
                       max_running = excluded.max_running, \
                       max_running_per_key = excluded.max_running_per_key, \
                       rate_starts = excluded.rate_starts, rate_per_ms = excluded.rate_per_ms, \
                       key_rate_starts = excluded.key_rate_starts, \
                       key_rate_per_ms = excluded.key_rate_per_ms, \
                       window_start = CASE WHEN (c.rate_starts, c.rate_per_ms) IS NOT DISTINCT \
                         FROM (excluded.rate_starts, excluded.rate_per_ms) \
                         THEN c.window_start END, \
                       window_used = CASE WHEN (c.rate_starts, c.rate_per_ms) IS NOT DISTINCT \
                         FROM (excluded.rate_starts, excluded.rate_per_ms) \
                         THEN c.window_used ELSE 0 END",
                    &[
                        &channel,
                        &flow.paused,
                        &max,
                        &per_key,
                        &starts,
                        &per_ms,
                        &key_starts,
                        &key_per_ms,
                    ],
                )?;
            }
            if flow.rate_per_key != before.rate_per_key {
                // A new rate counts every key's starts afresh.
                tx.execute("DELETE FROM key_windows WHERE channel = $1", &[&channel])?;
            }
            Ok(true)
        })?;
        if changed {
            self.announce([channel]);
        }
        Ok(changed)
    }
}

/// The settings' columns of `channels`, as [`flow_from`] reads them.
pub(crate) const FLOW_COLUMNS: &str = "paused, max_running, max_running_per_key, rate_starts, \
     rate_per_ms, key_rate_starts, key_rate_per_ms";

/// The flow settings in the columns of [`FLOW_COLUMNS`] from `at`.
pub(crate) fn flow_from(r: &Row, at: usize) -> R<Flow> {
    let mut flow = Flow::default();
    flow.paused = r.try_get(at)?;
    let max: Option<i32> = r.try_get(at + 1)?;
    flow.max_running = max.map(|m| u32::try_from(m).unwrap_or(1));
    let per_key: i32 = r.try_get(at + 2)?;
    flow.max_running_per_key = u32::try_from(per_key).unwrap_or(1);
    let (starts, per_ms): (Option<i32>, Option<i64>) = (r.try_get(at + 3)?, r.try_get(at + 4)?);
    if let (Some(starts), Some(per_ms)) = (starts, per_ms) {
        flow.rate = Some(Rate::new(
            u32::try_from(starts).unwrap_or(1),
            duration_of(per_ms),
        ));
    }
    let (starts, per_ms): (Option<i32>, Option<i64>) = (r.try_get(at + 5)?, r.try_get(at + 6)?);
    if let (Some(starts), Some(per_ms)) = (starts, per_ms) {
        flow.rate_per_key = Some(Rate::new(
            u32::try_from(starts).unwrap_or(1),
            duration_of(per_ms),
        ));
    }
    Ok(flow)
}
