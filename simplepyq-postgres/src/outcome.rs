//! What becomes of claimed tasks: leases, outcomes, claims given back and the tasks of
//! dead workers, each fenced by the claim's `(id, attempt)`.

use std::collections::{HashMap, HashSet};

use postgres::GenericClient;
use postgres::types::ToSql;
use simplepyq_core::transition::{Event, apply};
use simplepyq_core::{
    Claim, Outcome, OutcomeStore, Result, Status, TaskId, TaskState, Timestamp, Totals, batch,
};

use crate::error::R;
use crate::pool::Db;
use crate::row::{StateArrays, TotalsArrays, lock_states, millis, state_from_row};
use crate::{PostgresStore, Tx, sql};

impl OutcomeStore for PostgresStore {
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = claims.iter().map(|c| c.id.get()).collect();
        let attempts: Vec<i64> = claims.iter().map(|c| i64::from(c.attempt)).collect();
        let lease_until = millis(lease_until);
        self.run(|c| c.execute(sql::EXTEND, &[&ids, &attempts, &lease_until]))
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        if claims.is_empty() {
            return Ok(0);
        }
        let channels = self.transaction(|tx| on_held(tx, claims, &Event::Release { now }))?;
        // Other processes' workers may take them.
        self.announce(channels.iter().map(String::as_str));
        Ok(channels.len())
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        self.run(|db| finish_in(db, results, now))
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        let at = millis(now);
        let any = self.run(|c| {
            Ok(c.query_one(sql::ANY_EXPIRED, &[&at])?
                .try_get::<_, bool>(0)?)
        })?;
        if !any {
            return Ok(0);
        }
        let event = Event::Expire { now, max_lost_runs };
        let channels = self.transaction(|tx| {
            // A lease being renewed or a task being finished right now is skipped: its
            // holder is alive.
            let rows = tx.query(sql::LOCK_EXPIRED, &[&at])?;
            let mut next = StateArrays::default();
            let mut channels = Vec::with_capacity(rows.len());
            let mut counted = Vec::with_capacity(rows.len());
            for r in &rows {
                let id = TaskId::new(r.try_get(0)?);
                channels.push(r.try_get::<_, String>(1)?);
                let state = state_from_row(r, 2)?;
                let after = apply(&state, &event).map_err(|r| r.into_error(id))?;
                counted.push(Totals::of(&event, after.status));
                next.push(id, &after);
            }
            next.save(tx)?;
            let sums = Totals::by_channel(channels.iter().map(String::as_str).zip(counted));
            let names: Vec<&str> = sums.keys().map(String::as_str).collect();
            let figures = TotalsArrays::of(sums.values().copied());
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&names];
            params.extend(figures.params());
            tx.execute(sql::ADD_TOTALS, &params)?;
            Ok(channels)
        })?;
        self.announce(channels.iter().map(String::as_str));
        Ok(channels.len())
    }
}

/// Applies `event` to the task of each claim still held, in one transaction; returns the
/// channels of those tasks.
pub(crate) fn on_held(tx: &mut Tx<'_, '_>, claims: &[Claim], event: &Event) -> R<Vec<String>> {
    let ids: Vec<i64> = claims.iter().map(|c| c.id.get()).collect();
    let mut locked: HashMap<TaskId, (String, TaskState)> = lock_states(tx, &ids)?
        .into_iter()
        .map(|(id, channel, state)| (id, (channel, state)))
        .collect();
    let changes = batch::on_held(claims, event, |id| {
        Ok(locked.get(&id).map(|(_, s)| s.clone()))
    })?;
    StateArrays::of(&changes).save(tx)?;
    Ok(changes
        .iter()
        .filter_map(|(id, _)| locked.remove(id).map(|(channel, _)| channel))
        .collect())
}

/// Records `results` on `db` (a pooled connection, or a caller's transaction): reads the
/// states without a lock, then writes each guarded by its claim.
pub(crate) fn finish_in<C: GenericClient>(
    db: &mut Db<'_, C>,
    results: &[(Claim, Outcome)],
    now: Timestamp,
) -> R<Vec<Result<Status>>> {
    let ids: Vec<i64> = results.iter().map(|(c, _)| c.id.get()).collect();
    // Read without a lock, then write guarded by each claim: while a claim is held
    // its task changes only in its lease, which an outcome clears, so what `apply`
    // made of the state read is right if the claim still holds at the write. Two
    // round trips, no transaction: the write counts the totals of the rows it wrote.
    let rows = db.query(sql::READ_STATES, &[&ids])?;
    let mut states = HashMap::with_capacity(rows.len());
    for r in &rows {
        states.insert(TaskId::new(r.try_get(0)?), state_from_row(r, 1)?);
    }
    let batch::Finish {
        mut statuses,
        changes,
        totals,
    } = batch::finish(results, now, |id| Ok(states.get(&id).cloned()))?;
    let next = StateArrays::of(&changes);
    // Each change is of a claim that held at the read: its attempt is the one read.
    let attempts: Vec<i64> = changes
        .iter()
        .map(|(id, _)| states.get(id).map_or(0, |s| i64::from(s.attempts)))
        .collect();
    if next.is_empty() {
        return Ok(statuses);
    }
    let counted = TotalsArrays::of(totals.into_iter());
    let mut params = next.params().to_vec();
    params.push(&attempts);
    params.extend(counted.params());
    let written: HashSet<i64> = db
        .query(sql::FINISH, &params)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    // A claim that lost its lease between the read and the write.
    for ((claim, _), status) in results.iter().zip(&mut statuses) {
        if status.is_ok() && !written.contains(&claim.id.get()) {
            *status = Err(batch::lease_lost(claim));
        }
    }
    Ok(statuses)
}
