//! Flow control: channels paused and resumed, kept in the file.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use simplepyq_core::{Flow, FlowStore, Result, validate_channel};

use crate::RedbStore;
use crate::error::db_err;

/// The paused channels.
pub(crate) const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused_channels");

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

    fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        self.read(|read| {
            let table = match read.open_table(PAUSED) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
                Err(e) => return Err(db_err(e)),
            };
            let mut flows = BTreeMap::new();
            for entry in table.iter().map_err(db_err)? {
                let mut flow = Flow::default();
                flow.paused = true;
                flows.insert(entry.map_err(db_err)?.0.value().to_owned(), flow);
            }
            Ok(flows)
        })
    }
}

/// Whether `channel` is paused, as a read transaction sees it.
pub(crate) fn paused_in_read(read: &ReadTransaction, channel: &str) -> Result<bool> {
    match read.open_table(PAUSED) {
        Ok(table) => Ok(table.get(channel).map_err(db_err)?.is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(db_err(e)),
    }
}

/// Whether `channel` is paused, as a write transaction sees it.
pub(crate) fn paused_in_write(tx: &WriteTransaction, channel: &str) -> Result<bool> {
    let table = tx.open_table(PAUSED).map_err(db_err)?;
    Ok(table.get(channel).map_err(db_err)?.is_some())
}
