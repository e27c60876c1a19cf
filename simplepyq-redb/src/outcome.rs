//! What becomes of claimed tasks: leases, outcomes, claims given back and the tasks of
//! dead workers, each fenced by the claim's `(id, attempt)`.

use std::collections::HashMap;

use redb::ReadableTable;
use simplepyq_core::dependency::Ended;
use simplepyq_core::transition::Event;
use simplepyq_core::{Claim, Outcome, OutcomeStore, Result, Status, Timestamp, Totals, batch};

use crate::error::db_err;
use crate::tables::{LEASES, STUCK, add_totals};
use crate::{RedbStore, to_id, to_key};

impl OutcomeStore for RedbStore {
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        self.write(|t| t.on_held(claims, &Event::Extend { lease_until }))
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        self.write(|t| t.on_held(claims, &Event::Release { now }))
    }

    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool> {
        self.write_tx(|tx, t| {
            let mut stuck = tx.open_table(STUCK).map_err(db_err)?;
            // Marks whose attempt no longer runs count no more.
            let mut gone = Vec::new();
            for entry in stuck.iter().map_err(db_err)? {
                let (key, mark) = entry.map_err(db_err)?;
                let mark = Claim {
                    id: to_id(key.value())?,
                    attempt: mark.value().0,
                };
                if !t.load(mark.id)?.is_some_and(|task| mark.holds(&task.state)) {
                    gone.push(key.value());
                }
            }
            for key in gone {
                stuck.remove(key).map_err(db_err)?;
            }
            let held = t
                .load(claim.id)?
                .is_some_and(|task| claim.holds(&task.state));
            if held {
                stuck
                    .insert(to_key(claim.id), (claim.attempt, since.as_millis()))
                    .map_err(db_err)?;
            }
            Ok(held)
        })
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        self.write_tx(|tx, t| {
            let mut read = HashMap::new();
            let done = batch::finish(results, now, |id| t.read_state(id, &mut read))?;
            let counted = done.totals_by_channel(|id| read.get(&id).map(|t| t.channel.as_str()));
            add_totals(tx, &counted)?;
            for ((id, _), result) in done.changes.iter().zip(&done.results) {
                if let Some(result) = result {
                    t.results
                        .insert(to_key(*id), result.as_slice())
                        .map_err(db_err)?;
                }
            }
            let ended = ended_by(&done.changes);
            t.write_changes(done.changes, read)?;
            let due = t.settle(tx, ended, now)?;
            Ok((done.statuses, due))
        })
        .map(|(statuses, due)| {
            self.wakes.wake(due.iter().map(String::as_str));
            statuses
        })
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        let expired = (i64::MIN, 0)..=(now.as_millis(), u64::MAX);
        let none_expired = self.read(|read| {
            let leases = read.open_table(LEASES).map_err(db_err)?;
            Ok(leases
                .range(expired.clone())
                .map_err(db_err)?
                .next()
                .is_none())
        })?;
        if none_expired {
            return Ok(0);
        }
        self.write_tx(|tx, t| {
            let mut ids = Vec::new();
            for entry in t.leases.range(expired.clone()).map_err(db_err)? {
                let (key, _) = entry.map_err(db_err)?;
                ids.push(to_id(key.value().1)?);
            }
            let event = Event::Expire { now, max_lost_runs };
            let mut counted = Vec::with_capacity(ids.len());
            let mut failed = Vec::new();
            for id in &ids {
                let task = t.transition_id(*id, &event)?;
                failed.extend(Ended::of(task.state.status).map(|e| (*id, e)));
                counted.push((task.channel, Totals::of(&event, task.state.status)));
            }
            t.settle(tx, failed, now)?;
            add_totals(
                tx,
                &Totals::by_channel(counted.iter().map(|(c, t)| (c.as_str(), *t))),
            )?;
            Ok(ids.len())
        })
    }
}

/// The tasks that `changes` end.
fn ended_by(changes: &[batch::Change]) -> Vec<(simplepyq_core::TaskId, Ended)> {
    changes
        .iter()
        .filter_map(|(id, s)| Some((*id, Ended::of(s.status)?)))
        .collect()
}
