//! Flow control: channels paused and resumed, for every process on the file.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};
use simplepyq_core::{Flow, FlowStore, Result, validate_channel};

use crate::SqliteStore;
use crate::error::R;

/// Channel ?1 is not paused: a condition of every claim of it.
pub(crate) const NOT_PAUSED: &str =
    "NOT EXISTS (SELECT 1 FROM simplepyq_channels WHERE channel = ?1 AND paused)";

impl FlowStore for SqliteStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        validate_channel(channel)?;
        let name = channel.to_owned();
        let changed = self.write(move |tx| {
            let mut flow = flow_of(tx, &name)?.unwrap_or_default();
            if flow.paused == paused {
                return Ok(false);
            }
            flow.paused = paused;
            save(tx, &name, &flow)?;
            Ok(true)
        })?;
        if changed && !paused {
            // Idle workers of other processes sleep until told.
            self.announcer.announce([channel]);
        }
        Ok(changed)
    }

    fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT channel, paused FROM simplepyq_channels ORDER BY channel",
            )?;
            let rows = stmt.query_map([], |r| {
                let mut flow = Flow::default();
                flow.paused = r.get(1)?;
                Ok((r.get(0)?, flow))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}

/// The flow settings of `channel`, if it has a row.
fn flow_of(tx: &Transaction<'_>, channel: &str) -> R<Option<Flow>> {
    Ok(tx
        .query_row(
            "SELECT paused FROM simplepyq_channels WHERE channel = ?1",
            [channel],
            |r| {
                let mut flow = Flow::default();
                flow.paused = r.get(0)?;
                Ok(flow)
            },
        )
        .optional()?)
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
            "INSERT INTO simplepyq_channels (channel, paused) VALUES (?1, ?2) \
             ON CONFLICT (channel) DO UPDATE SET paused = excluded.paused",
            params![channel, flow.paused],
        )?;
    }
    Ok(())
}
