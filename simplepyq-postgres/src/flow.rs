//! Flow control: channels paused and resumed, for every process and machine on the schema.

use std::collections::BTreeMap;

use postgres::error::SqlState;
use simplepyq_core::{Flow, FlowStore, Result, validate_channel};

use crate::PostgresStore;
use crate::error::E;

impl FlowStore for PostgresStore {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        validate_channel(channel)?;
        // One statement each way, which changes one row or none. A channel's row holds no
        // setting but `paused` yet: resuming deletes it.
        let sql = if paused {
            "INSERT INTO channels (channel, paused) VALUES ($1, true) \
             ON CONFLICT (channel) DO UPDATE SET paused = true WHERE NOT channels.paused"
        } else {
            "DELETE FROM channels WHERE channel = $1 AND paused"
        };
        let changed = self.run(|c| c.execute(sql, &[&channel]))? > 0;
        if changed && !paused {
            // Idle workers of every process sleep until told.
            self.announce([channel]);
        }
        Ok(changed)
    }

    fn flows(&self) -> Result<BTreeMap<String, Flow>> {
        let rows = self.run(|c| {
            match c.query("SELECT channel, paused FROM channels ORDER BY channel", &[]) {
                // A schema of an earlier version, read-only: no settings.
                Err(E::Pg(e)) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
                other => other,
            }
        })?;
        rows.iter()
            .map(|r| {
                let mut flow = Flow::default();
                flow.paused = r.try_get(1).map_err(E::from)?;
                Ok((r.try_get(0).map_err(E::from)?, flow))
            })
            .collect()
    }
}
