//! Flow control: channels paused and resumed, and their limits of running tasks, for every
//! process on the file.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};

use simplepyq_core::{
    Flow, FlowStore, Rate, RateWindow, Result, Timestamp, check_max_running,
    check_max_running_per_key, check_rate, duration_of, validate_channel,
};

use crate::SqliteStore;
use crate::error::R;

/// Channel ?1 is not paused: a condition of the promotion of its delayed tasks.
pub(crate) const NOT_PAUSED: &str =
    "NOT EXISTS (SELECT 1 FROM simplepyq_channels WHERE channel = ?1 AND paused)";

/// When channel ?1's next start is allowed if its window of starts is used up (its end), else
/// NULL (core's `Rate::free_at`).
pub(crate) const FREE_AT: &str = "(SELECT window_start + rate_per_ms FROM simplepyq_channels \
     WHERE channel = ?1 AND window_used >= rate_starts)";

/// Channel ?1 is neither paused nor at its limit of running tasks: its queued tasks are due.
pub(crate) const OPEN: &str = "NOT EXISTS (SELECT 1 FROM simplepyq_channels f \
     WHERE f.channel = ?1 AND (f.paused OR f.max_running <= (SELECT count(*) \
       FROM simplepyq_tasks r WHERE r.channel = ?1 AND r.status = 'running')))";

/// How many tasks a claim of up to ?3 may take from channel ?1 (core's `claim_allowance`,
/// in SQL): ?3, 0 while paused, and no more than the room left under its limit.
pub(crate) const ALLOWANCE: &str = "max(0, min(?3, coalesce((SELECT CASE WHEN f.paused \
     THEN 0 ELSE coalesce(f.max_running - (SELECT count(*) FROM simplepyq_tasks r \
       WHERE r.channel = ?1 AND r.status = 'running'), ?3) END \
     FROM simplepyq_channels f WHERE f.channel = ?1), ?3)))";

/// The pending task `p` of channel ?1 may start as far as its concurrency key goes: it has
/// none, or fewer of the key's tasks run than the channel's limit per key (core's
/// [`simplepyq_core::KeyedClaim`] for one task).
pub(crate) const KEY_FREE: &str = "(p.concurrency_key IS NULL OR (SELECT count(*) \
     FROM simplepyq_tasks r WHERE r.channel = ?1 AND r.status = 'running' \
       AND r.concurrency_key = p.concurrency_key) < coalesce((SELECT max_running_per_key \
     FROM simplepyq_channels WHERE channel = ?1), 1))";

/// The pending task `p` of channel ?1 may start at ?2 as far as its key's window of starts
/// goes: it has no key, or its key's window is not used up or ended by ?2 (core's
/// [`simplepyq_core::KeyedClaim`] for one task; `i64::MIN` for ?2: it is not used up at
/// all). Whether the channel has a rate per key is asked first, once per statement (a
/// subquery that names no column of `p`): without one, no task's window is looked for.
pub(crate) const KEY_RATE_FREE: &str = "(p.concurrency_key IS NULL \
     OR NOT EXISTS (SELECT 1 FROM simplepyq_channels k WHERE k.channel = ?1 \
       AND k.key_rate_starts IS NOT NULL) \
     OR NOT EXISTS (SELECT 1 \
     FROM simplepyq_key_windows w, simplepyq_channels c WHERE c.channel = ?1 \
       AND w.channel = ?1 AND w.key = p.concurrency_key \
       AND w.window_used >= c.key_rate_starts AND w.window_start + c.key_rate_per_ms > ?2))";

/// The earliest end of a used-up window of starts of a key of channel ?1 that holds up a
/// pending task that may otherwise start (core's [`simplepyq_core::KeyedWake`]), NULL for
/// none.
pub(crate) fn key_free_at() -> String {
    format!(
        "(SELECT min(w.window_start + c.key_rate_per_ms) \
         FROM simplepyq_key_windows w, simplepyq_channels c WHERE c.channel = ?1 \
           AND w.channel = ?1 AND w.window_used >= c.key_rate_starts \
           AND EXISTS (SELECT 1 FROM simplepyq_tasks p WHERE p.channel = ?1 \
             AND p.status = 'pending' AND p.concurrency_key = w.key AND {KEY_FREE}))"
    )
}

impl FlowStore for SqliteStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        self.change_flow(channel, move |f| f.paused = paused)
    }

    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool> {
        check_max_running(max)?;
        self.change_flow(channel, move |f| f.max_running = max)
    }

    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool> {
        check_max_running_per_key(max)?;
        self.change_flow(channel, move |f| f.max_running_per_key = max)
    }

    fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        check_rate(rate)?;
        self.change_flow(channel, move |f| f.rate = rate)
    }

    fn set_rate_per_key(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        check_rate(rate)?;
        self.change_flow(channel, move |f| f.rate_per_key = rate)
    }

    fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT channel, {FLOW_COLUMNS} FROM simplepyq_channels ORDER BY channel"
            ))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, flow_from(r, 1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}

impl SqliteStore {
    /// Changes `channel`'s flow settings with `change`, in one write; returns whether they
    /// changed. Idle workers of other processes sleep while a channel is paused or full:
    /// they are told of a change.
    fn change_flow(
        &self,
        channel: &str,
        change: impl Fn(&mut Flow) + Send + Sync + 'static,
    ) -> Result<bool> {
        validate_channel(channel)?;
        let name = channel.to_owned();
        let changed = self.write(move |tx| {
            let (before, _) = flow_of(tx, &name)?;
            let mut flow = before.clone();
            change(&mut flow);
            if flow == before {
                return Ok(false);
            }
            save(tx, &name, &flow)?;
            if flow.rate_per_key != before.rate_per_key {
                // A new rate counts every key's starts afresh.
                tx.prepare_cached("DELETE FROM simplepyq_key_windows WHERE channel = ?1")?
                    .execute([&name])?;
            }
            Ok(true)
        })?;
        if changed {
            self.announcer.announce([channel]);
        }
        Ok(changed)
    }
}

/// The flow settings in the columns of [`FLOW_COLUMNS`] from `at`.
fn flow_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Flow> {
    let mut flow = Flow::default();
    flow.paused = r.get(at)?;
    flow.max_running = r.get(at + 1)?;
    flow.max_running_per_key = r.get(at + 2)?;
    let (starts, per_ms): (Option<u32>, Option<i64>) = (r.get(at + 3)?, r.get(at + 4)?);
    if let (Some(starts), Some(per_ms)) = (starts, per_ms) {
        flow.rate = Some(Rate::new(starts, duration_of(per_ms)));
    }
    let (starts, per_ms): (Option<u32>, Option<i64>) = (r.get(at + 5)?, r.get(at + 6)?);
    if let (Some(starts), Some(per_ms)) = (starts, per_ms) {
        flow.rate_per_key = Some(Rate::new(starts, duration_of(per_ms)));
    }
    Ok(flow)
}

/// The settings' columns of `simplepyq_channels`, as [`flow_from`] reads them.
const FLOW_COLUMNS: &str = "paused, max_running, max_running_per_key, rate_starts, rate_per_ms, \
     key_rate_starts, key_rate_per_ms";

/// Saves channel `channel`'s window of starts.
pub(crate) fn save_window(tx: &Transaction<'_>, channel: &str, window: RateWindow) -> R<()> {
    tx.prepare_cached(
        "UPDATE simplepyq_channels SET window_start = ?2, window_used = ?3 WHERE channel = ?1",
    )?
    .execute(params![channel, window.start.as_millis(), window.used])?;
    Ok(())
}

/// The flow settings of `channel` (the defaults if it has no row), and its last window of
/// starts.
pub(crate) fn flow_of(tx: &Transaction<'_>, channel: &str) -> R<(Flow, Option<RateWindow>)> {
    let found = tx
        .prepare_cached(&format!(
            "SELECT {FLOW_COLUMNS}, window_start, window_used FROM simplepyq_channels \
             WHERE channel = ?1"
        ))?
        .query_row([channel], |r| {
            let start: Option<i64> = r.get(7)?;
            let used: u32 = r.get(8)?;
            let window = start.map(|s| RateWindow {
                start: Timestamp::from_millis(s),
                used,
            });
            Ok((flow_from(r, 0)?, window))
        })
        .optional()?;
    Ok(found.unwrap_or_default())
}

/// Writes `flow` as the settings of `channel`: no row for the defaults.
fn save(tx: &Transaction<'_>, channel: &str, flow: &Flow) -> R<()> {
    if flow.is_default() {
        tx.execute(
            "DELETE FROM simplepyq_channels WHERE channel = ?1",
            [channel],
        )?;
    } else {
        tx.execute(
            &format!(
                "INSERT INTO simplepyq_channels (channel, {FLOW_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (channel) DO UPDATE SET paused = excluded.paused, \
                   max_running = excluded.max_running, \
                   max_running_per_key = excluded.max_running_per_key, \
                   rate_starts = excluded.rate_starts, rate_per_ms = excluded.rate_per_ms, \
                   key_rate_starts = excluded.key_rate_starts, \
                   key_rate_per_ms = excluded.key_rate_per_ms, \
                   window_start = CASE WHEN rate_starts IS excluded.rate_starts \
                     AND rate_per_ms IS excluded.rate_per_ms THEN window_start END, \
                   window_used = CASE WHEN rate_starts IS excluded.rate_starts \
                     AND rate_per_ms IS excluded.rate_per_ms THEN window_used ELSE 0 END"
            ),
            params![
                channel,
                flow.paused,
                flow.max_running,
                flow.max_running_per_key,
                flow.rate.map(|r| r.starts),
                flow.rate.map(|r| r.per_ms()),
                flow.rate_per_key.map(|r| r.starts),
                flow.rate_per_key.map(|r| r.per_ms()),
            ],
        )?;
    }
    Ok(())
}

/// Concurrency key `key`'s last window of starts in channel `channel`.
pub(crate) fn key_window(tx: &Transaction<'_>, channel: &str, key: &str) -> R<Option<RateWindow>> {
    let found = tx
        .prepare_cached(
            "SELECT window_start, window_used FROM simplepyq_key_windows \
             WHERE channel = ?1 AND key = ?2",
        )?
        .query_row([channel, key], |r| {
            Ok(RateWindow {
                start: Timestamp::from_millis(r.get(0)?),
                used: r.get(1)?,
            })
        })
        .optional()?;
    Ok(found)
}

/// Saves the windows of starts per key a claim at `now` counted in channel `channel`
/// (`simplepyq_core::KeyedClaim::windows`), first deleting the channel's windows before the
/// current one of `rate`.
pub(crate) fn save_key_windows(
    tx: &Transaction<'_>,
    channel: &str,
    rate: Rate,
    now: Timestamp,
    windows: &[(String, RateWindow)],
) -> R<()> {
    tx.prepare_cached(
        "DELETE FROM simplepyq_key_windows WHERE channel = ?1 AND window_start < ?2",
    )?
    .execute(params![channel, rate.window_of(now).as_millis()])?;
    let mut save = tx.prepare_cached(
        "INSERT INTO simplepyq_key_windows (channel, key, window_start, window_used) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (channel, key) DO UPDATE \
         SET window_start = excluded.window_start, window_used = excluded.window_used",
    )?;
    for (key, window) in windows {
        save.execute(params![channel, key, window.start.as_millis(), window.used])?;
    }
    Ok(())
}
