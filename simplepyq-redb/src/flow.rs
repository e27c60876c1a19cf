//! Flow control: channels paused and resumed, and their limits of running tasks, kept in
//! the file.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use simplepyq_core::{
    Flow, FlowStore, Result, Status, check_max_running, claim_allowance, validate_channel,
};

use crate::RedbStore;
use crate::error::db_err;
use crate::record::status_code;
use crate::tables::COUNTS;

/// The paused channels.
pub(crate) const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused_channels");

/// The channels' limits of running tasks.
pub(crate) const MAX_RUNNING: TableDefinition<&str, u32> =
    TableDefinition::new("channel_max_running");

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
            Ok(flows)
        })
    }
}

/// A table, or `None` if the file has none yet.
fn existing<T>(table: std::result::Result<T, redb::TableError>) -> Result<Option<T>> {
    match table {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// How many tasks a claim of up to `limit` may take from `channel` (core's rule), as a read
/// transaction sees it.
pub(crate) fn allowance_in_read(
    read: &ReadTransaction,
    channel: &str,
    limit: usize,
) -> Result<usize> {
    let counts = existing(read.open_table(COUNTS))?;
    allowance(
        existing(read.open_table(PAUSED))?,
        existing(read.open_table(MAX_RUNNING))?,
        counts.as_ref(),
        channel,
        limit,
    )
}

/// How many tasks a claim of up to `limit` may take from `channel` (core's rule), as a
/// write transaction sees it (`counts`: the transaction's open counts table).
pub(crate) fn allowance_in_write(
    tx: &WriteTransaction,
    counts: &Table<'_, (&'static str, u8), u64>,
    channel: &str,
    limit: usize,
) -> Result<usize> {
    allowance(
        Some(tx.open_table(PAUSED).map_err(db_err)?),
        Some(tx.open_table(MAX_RUNNING).map_err(db_err)?),
        Some(counts),
        channel,
        limit,
    )
}

/// Core's `claim_allowance` for `channel`, from the flow tables and the counts (a table
/// the file does not have yet reads as empty).
fn allowance(
    paused: Option<impl ReadableTable<&'static str, ()>>,
    max_running: Option<impl ReadableTable<&'static str, u32>>,
    counts: Option<&impl ReadableTable<(&'static str, u8), u64>>,
    channel: &str,
    limit: usize,
) -> Result<usize> {
    let mut flow = Flow::default();
    if let Some(table) = paused {
        flow.paused = table.get(channel).map_err(db_err)?.is_some();
    }
    if let Some(table) = max_running {
        flow.max_running = table.get(channel).map_err(db_err)?.map(|v| v.value());
    }
    if flow.is_default() {
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
    Ok(claim_allowance(&flow, running, limit))
}

fn running(count: Option<redb::AccessGuard<'_, u64>>) -> usize {
    count.map_or(0, |c| usize::try_from(c.value()).unwrap_or(usize::MAX))
}
