//! Flow control: channels paused and resumed, and their limits of running tasks, kept in
//! the file.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use simplepyq_core::{
    Flow, FlowStore, Rate, RateWindow, Result, Status, check_max_running,
    check_max_running_per_key, check_rate, claim_allowance, validate_channel,
};

use crate::RedbStore;
use crate::error::db_err;
use crate::record::status_code;

/// The paused channels.
pub(crate) const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused_channels");

/// The channels' limits of running tasks.
pub(crate) const MAX_RUNNING: TableDefinition<&str, u32> =
    TableDefinition::new("channel_max_running");

/// The channels' rates of starts: (starts, window in milliseconds).
pub(crate) const RATES: TableDefinition<&str, (u32, u64)> = TableDefinition::new("channel_rates");

/// The rate-limited channels' last windows of starts: (start in milliseconds, starts).
pub(crate) const WINDOWS: TableDefinition<&str, (i64, u32)> =
    TableDefinition::new("channel_windows");

/// The channels' rates of starts per concurrency key: (starts, window in milliseconds).
pub(crate) const KEY_RATES: TableDefinition<&str, (u32, u64)> =
    TableDefinition::new("channel_key_rates");

/// The last windows of starts of the keys of channels with a rate per key, by (channel,
/// key): (start in milliseconds, starts).
pub(crate) const KEY_WINDOWS: TableDefinition<(&str, &str), (i64, u32)> =
    TableDefinition::new("key_windows");

/// The start of the window to which each channel's [`KEY_WINDOWS`] were last pruned.
pub(crate) const KEY_WINDOWS_PRUNED: TableDefinition<&str, i64> =
    TableDefinition::new("key_windows_pruned");

/// The channels' limits of running tasks per concurrency key, where not the default.
pub(crate) const MAX_PER_KEY: TableDefinition<&str, u32> =
    TableDefinition::new("channel_max_per_key");

impl FlowStore for RedbStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        validate_channel(channel)?;
        self.write_tx(|tx, _| {
            let mut table = tx.open_table(PAUSED).map_err(db_err)?;
            let was = if paused {
                table.insert(channel, ()).map_err(db_err)?.is_some()
            } else {
                table.remove(channel).map_err(db_err)?.is_some()
            };
            Ok(was != paused)
        })
    }

    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool> {
        validate_channel(channel)?;
        check_max_running(max)?;
        self.write_tx(|tx, _| {
            let mut table = tx.open_table(MAX_RUNNING).map_err(db_err)?;
            let was = match max {
                Some(n) => table.insert(channel, n).map_err(db_err)?,
                None => table.remove(channel).map_err(db_err)?,
            }
            .map(|v| v.value());
            Ok(was != max)
        })
    }

    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool> {
        validate_channel(channel)?;
        check_max_running_per_key(max)?;
        let default = Flow::default().max_running_per_key;
        self.write_tx(|tx, _| {
            let mut table = tx.open_table(MAX_PER_KEY).map_err(db_err)?;
            let was = if max == default {
                table.remove(channel).map_err(db_err)?
            } else {
                table.insert(channel, max).map_err(db_err)?
            }
            .map_or(default, |v| v.value());
            Ok(was != max)
        })
    }

    fn set_rate(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        validate_channel(channel)?;
        check_rate(rate)?;
        self.write_tx(|tx, _| {
            let changed = save_rate(tx, RATES, channel, rate)?;
            // A new rate counts its starts afresh.
            if changed {
                tx.open_table(WINDOWS)
                    .map_err(db_err)?
                    .remove(channel)
                    .map_err(db_err)?;
            }
            Ok(changed)
        })
    }

    fn set_rate_per_key(&self, channel: &str, rate: Option<Rate>) -> Result<bool> {
        validate_channel(channel)?;
        check_rate(rate)?;
        self.write_tx(|tx, _| {
            let changed = save_rate(tx, KEY_RATES, channel, rate)?;
            // A new rate counts every key's starts afresh.
            if changed {
                let mut windows = tx.open_table(KEY_WINDOWS).map_err(db_err)?;
                for key in keys_where(&windows, channel, |_| true)? {
                    windows.remove((channel, key.as_str())).map_err(db_err)?;
                }
            }
            Ok(changed)
        })
    }

    fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        self.read(|read| {
            let mut flows: BTreeMap<String, Flow> = BTreeMap::new();
            if let Some(table) = existing(read.open_table(PAUSED))? {
                for entry in table.iter().map_err(db_err)? {
                    let name = entry.map_err(db_err)?.0.value().to_owned();
                    flows.entry(name).or_default().paused = true;
                }
            }
            if let Some(table) = existing(read.open_table(MAX_RUNNING))? {
                for entry in table.iter().map_err(db_err)? {
                    let (name, max) = entry.map_err(db_err)?;
                    flows
                        .entry(name.value().to_owned())
                        .or_default()
                        .max_running = Some(max.value());
                }
            }
            if let Some(table) = existing(read.open_table(MAX_PER_KEY))? {
                for entry in table.iter().map_err(db_err)? {
                    let (name, max) = entry.map_err(db_err)?;
                    flows
                        .entry(name.value().to_owned())
                        .or_default()
                        .max_running_per_key = max.value();
                }
            }
            if let Some(table) = existing(read.open_table(RATES))? {
                for entry in table.iter().map_err(db_err)? {
                    let (name, rate) = entry.map_err(db_err)?;
                    flows.entry(name.value().to_owned()).or_default().rate =
                        Some(rate_from(rate.value()));
                }
            }
            if let Some(table) = existing(read.open_table(KEY_RATES))? {
                for entry in table.iter().map_err(db_err)? {
                    let (name, rate) = entry.map_err(db_err)?;
                    flows
                        .entry(name.value().to_owned())
                        .or_default()
                        .rate_per_key = Some(rate_from(rate.value()));
                }
            }
            Ok(flows)
        })
    }
}

/// A table, or `None` if the file has none yet.
pub(crate) fn existing<T>(table: std::result::Result<T, redb::TableError>) -> Result<Option<T>> {
    match table {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// `channel`'s flow settings, as a read transaction sees them.
pub(crate) fn flow_in_read(read: &ReadTransaction, channel: &str) -> Result<Flow> {
    flow_from(
        existing(read.open_table(PAUSED))?,
        existing(read.open_table(MAX_RUNNING))?,
        existing(read.open_table(MAX_PER_KEY))?,
        existing(read.open_table(RATES))?,
        existing(read.open_table(KEY_RATES))?,
        channel,
    )
}

/// `channel`'s flow settings, as a write transaction sees them.
pub(crate) fn flow_in_write(tx: &WriteTransaction, channel: &str) -> Result<Flow> {
    flow_from(
        Some(tx.open_table(PAUSED).map_err(db_err)?),
        Some(tx.open_table(MAX_RUNNING).map_err(db_err)?),
        Some(tx.open_table(MAX_PER_KEY).map_err(db_err)?),
        Some(tx.open_table(RATES).map_err(db_err)?),
        Some(tx.open_table(KEY_RATES).map_err(db_err)?),
        channel,
    )
}

/// `channel`'s flow settings from the flow tables (a table the file does not have yet
/// reads as empty).
fn flow_from(
    paused: Option<impl ReadableTable<&'static str, ()>>,
    max_running: Option<impl ReadableTable<&'static str, u32>>,
    max_per_key: Option<impl ReadableTable<&'static str, u32>>,
    rates: Option<impl ReadableTable<&'static str, (u32, u64)>>,
    key_rates: Option<impl ReadableTable<&'static str, (u32, u64)>>,
    channel: &str,
) -> Result<Flow> {
    let mut flow = flow_settings(paused, max_running, max_per_key, channel)?;
    if let Some(table) = rates
        && let Some(rate) = table.get(channel).map_err(db_err)?
    {
        flow.rate = Some(rate_from(rate.value()));
    }
    if let Some(table) = key_rates
        && let Some(rate) = table.get(channel).map_err(db_err)?
    {
        flow.rate_per_key = Some(rate_from(rate.value()));
    }
    Ok(flow)
}

/// Saves `channel`'s `rate` in `table` (of rates of channels, or per key); returns whether
/// it changed.
fn save_rate(
    tx: &WriteTransaction,
    table: TableDefinition<&str, (u32, u64)>,
    channel: &str,
    rate: Option<Rate>,
) -> Result<bool> {
    let mut table = tx.open_table(table).map_err(db_err)?;
    let stored = rate.map(|r| (r.starts, u64::try_from(r.per_ms()).unwrap_or(1)));
    let was = match stored {
        Some(value) => table.insert(channel, value).map_err(db_err)?,
        None => table.remove(channel).map_err(db_err)?,
    }
    .map(|v| v.value());
    Ok(was != stored)
}

/// Key `key`'s last window of starts in `channel`, as `windows` (of a read or write
/// transaction) holds it.
pub(crate) fn key_window_of(
    windows: Option<&impl ReadableTable<(&'static str, &'static str), (i64, u32)>>,
    channel: &str,
    key: &str,
) -> Result<Option<RateWindow>> {
    let Some(table) = windows else {
        return Ok(None);
    };
    Ok(table
        .get((channel, key))
        .map_err(db_err)?
        .map(|w| window_from(w.value())))
}

/// A stored window: (start in milliseconds, starts).
fn window_from((start, used): (i64, u32)) -> RateWindow {
    RateWindow {
        start: simplepyq_core::Timestamp::from_millis(start),
        used,
    }
}

/// Saves the windows of starts per key a claim at `now` counted in `channel`
/// (`KeyedClaim::windows`), first deleting the channel's windows before the current one
/// of `rate` once per window.
pub(crate) fn save_key_windows(
    tx: &WriteTransaction,
    channel: &str,
    rate: Rate,
    now: simplepyq_core::Timestamp,
    windows: &[(String, RateWindow)],
) -> Result<()> {
    let current = rate.window_of(now).as_millis();
    let mut table = tx.open_table(KEY_WINDOWS).map_err(db_err)?;
    let mut pruned = tx.open_table(KEY_WINDOWS_PRUNED).map_err(db_err)?;
    let last = pruned.get(channel).map_err(db_err)?.map(|v| v.value());
    if last.is_none_or(|last| last < current) {
        for key in keys_where(&table, channel, |(start, _)| start < current)? {
            table.remove((channel, key.as_str())).map_err(db_err)?;
        }
        pruned.insert(channel, current).map_err(db_err)?;
    }
    for (key, window) in windows {
        let value = (window.start.as_millis(), window.used);
        table
            .insert((channel, key.as_str()), value)
            .map_err(db_err)?;
    }
    Ok(())
}

/// A stored rate: (starts, window in milliseconds).
fn rate_from((starts, per_ms): (u32, u64)) -> Rate {
    Rate::new(starts, std::time::Duration::from_millis(per_ms))
}

/// `channel`'s window of starts, as `windows` (of a read or write transaction) holds it.
pub(crate) fn window_of(
    windows: Option<&impl ReadableTable<&'static str, (i64, u32)>>,
    channel: &str,
) -> Result<Option<RateWindow>> {
    let Some(table) = windows else {
        return Ok(None);
    };
    Ok(table
        .get(channel)
        .map_err(db_err)?
        .map(|w| window_from(w.value())))
}

/// The settings but the rate.
fn flow_settings(
    paused: Option<impl ReadableTable<&'static str, ()>>,
    max_running: Option<impl ReadableTable<&'static str, u32>>,
    max_per_key: Option<impl ReadableTable<&'static str, u32>>,
    channel: &str,
) -> Result<Flow> {
    let mut flow = Flow::default();
    if let Some(table) = paused {
        flow.paused = table.get(channel).map_err(db_err)?.is_some();
    }
    if let Some(table) = max_running {
        flow.max_running = table.get(channel).map_err(db_err)?.map(|v| v.value());
    }
    if let Some(table) = max_per_key
        && let Some(max) = table.get(channel).map_err(db_err)?
    {
        flow.max_running_per_key = max.value();
    }
    Ok(flow)
}

/// Core's `claim_allowance` for `channel` with `flow`, its running tasks counted in
/// `counts` (none if the file has no counts yet).
pub(crate) fn allowance(
    flow: &Flow,
    counts: Option<&impl ReadableTable<(&'static str, u8), u64>>,
    channel: &str,
    limit: usize,
) -> Result<usize> {
    if !flow.paused && flow.max_running.is_none() {
        return Ok(limit);
    }
    let running = match counts {
        Some(table) => running(
            table
                .get((channel, status_code(Status::Running)))
                .map_err(db_err)?,
        ),
        None => 0,
    };
    Ok(claim_allowance(flow, running, limit))
}

fn running(count: Option<redb::AccessGuard<'_, u64>>) -> usize {
    count.map_or(0, |c| usize::try_from(c.value()).unwrap_or(usize::MAX))
}

/// The keys of `channel` in `windows` whose stored window `which` picks.
fn keys_where(
    windows: &impl ReadableTable<(&'static str, &'static str), (i64, u32)>,
    channel: &str,
    which: impl Fn((i64, u32)) -> bool,
) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for entry in windows.range((channel, "")..).map_err(db_err)? {
        let (at, window) = entry.map_err(db_err)?;
        let (of, key) = at.value();
        if of != channel {
            break;
        }
        if which(window.value()) {
            keys.push(key.to_owned());
        }
    }
    Ok(keys)
}
