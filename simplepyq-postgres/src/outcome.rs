//! What becomes of claimed tasks: leases, outcomes, claims given back and the tasks of
//! dead workers, each fenced by the claim's `(id, attempt)`.

use std::collections::{HashMap, HashSet};

use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use simplepyq_core::dependency::Ended;
use simplepyq_core::transition::{Event, apply};
use simplepyq_core::{
    Claim, Error, Outcome, OutcomeStore, Result, Status, TaskId, TaskState, Timestamp, Totals,
    batch,
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

    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool> {
        let (id, attempt, since) = (claim.id.get(), i64::from(claim.attempt), millis(since));
        self.transaction(|tx| {
            tx.execute(sql::FORGET_STUCK, &[])?;
            Ok(tx.execute(sql::MARK_STUCK, &[&id, &attempt, &since])? > 0)
        })
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
        // The waiting tasks this makes due are announced by the transaction that unblocks
        // them (`crate::dependency::settle`).
        self.run(|db| finish_in(db, results, now))
    }

    fn finish_and_claim(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
        channel: &str,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<simplepyq_core::FinishedAndClaimed> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (at, until) = (millis(now), millis(lease_until));
        // One transaction, one commit: a claim that fails undoes the outcomes too, and the
        // caller records them again without it (the contract's outer error).
        let (statuses, mut tasks) = self.transaction(|tx| {
            let statuses = finish_in(tx, results, now)?;
            if limit == 0 {
                return Ok((statuses, Vec::new()));
            }
            let tasks = crate::claim::claim_with(tx, None, channel, at, limit, until)?;
            Ok((statuses, tasks))
        })?;
        tasks.sort_unstable_by_key(simplepyq_core::batch::claim_order);
        Ok((statuses, Ok(tasks)))
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
            let mut failed = Vec::new();
            for r in &rows {
                let id = TaskId::new(r.try_get(0)?);
                channels.push(r.try_get::<_, String>(1)?);
                let state = state_from_row(r, 2)?;
                let after = apply(&state, &event).map_err(|r| r.into_error(id))?;
                counted.push(Totals::of(&event, after.status));
                failed.extend(Ended::of(after.status).map(|e| (id, e)));
                next.push(id, &after);
            }
            next.save(tx)?;
            crate::dependency::settle(tx, failed, now)?;
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
/// states without a lock, then writes each guarded by its claim. The outcomes of tasks
/// others wait for are recorded in a transaction (a savepoint of the caller's) that settles
/// those ([`crate::dependency`]).
pub(crate) fn finish_in<C: GenericClient>(
    db: &mut Db<'_, C>,
    results: &[(Claim, Outcome)],
    now: Timestamp,
) -> R<Vec<Result<Status>>> {
    // Read without a lock, then write guarded by each claim: while a claim is held its task
    // changes only in its lease, which an outcome clears, so what `apply` made of the state
    // read is right if the claim still holds at the write. Two round trips, no
    // transaction: the write counts the totals of the rows it wrote.
    let rows = db.query(sql::READ_STATES, &[&FinishPlan::ids(results)])?;
    let with_dependents = FinishPlan::with_dependents(&rows)?;
    let (alone, settling): (Vec<usize>, Vec<usize>) =
        (0..results.len()).partition(|&i| !with_dependents.contains(&results[i].0.id.get()));
    let mut statuses: Vec<Option<Result<Status>>> = (0..results.len()).map(|_| None).collect();
    let mut again = settling;
    if !alone.is_empty() {
        // Most batches have no task others wait for: no copy of their outcomes then.
        let fast: std::borrow::Cow<'_, [(Claim, Outcome)]> = if alone.len() == results.len() {
            results.into()
        } else {
            alone.iter().map(|&i| results[i].clone()).collect()
        };
        let plan = FinishPlan::of(&fast, now, &rows)?;
        let written = if plan.writes_nothing() {
            Vec::new()
        } else {
            db.query(sql::FINISH, &plan.params(true))?
        };
        let written_ids = FinishPlan::written(&written)?;
        let held = plan.held();
        for ((&i, status), held) in alone.iter().zip(plan.settle(&fast, &written)?).zip(held) {
            // Not written though held at the read: a child was enqueued meanwhile (or the
            // lease was lost): recorded again under the lock, which tells which.
            if held && !written_ids.contains(&results[i].0.id.get()) {
                again.push(i);
            } else {
                statuses[i] = Some(status);
            }
        }
    }
    if !again.is_empty() {
        again.sort_unstable();
        let slow: Vec<(Claim, Outcome)> = again.iter().map(|&i| results[i].clone()).collect();
        let mut transaction = db.client.transaction()?;
        let mut tx = Db {
            client: &mut transaction,
            statements: db.statements,
        };
        let rows = tx.query(sql::LOCK_STATES, &[&FinishPlan::ids(&slow)])?;
        let plan = FinishPlan::of(&slow, now, &rows)?;
        let settled = if plan.writes_nothing() {
            plan.into_statuses()
        } else {
            let written = tx.query(sql::FINISH, &plan.params(false))?;
            let ended = plan.ended();
            let settled = plan.settle(&slow, &written)?;
            crate::dependency::settle(&mut tx, ended, now)?;
            settled
        };
        transaction.commit()?;
        for (&i, status) in again.iter().zip(settled) {
            statuses[i] = Some(status);
        }
    }
    let statuses = statuses
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(Error::config("no status recorded"))))
        .collect();
    Ok(statuses)
}

/// What recording outcomes writes ([`sql::FINISH`]), made from the states read
/// ([`sql::READ_STATES`] of [`FinishPlan::ids`]); the same for a pooled connection and a
/// caller's transaction, sync or async.
pub(crate) struct FinishPlan {
    statuses: Vec<Result<Status>>,
    next: StateArrays,
    /// The attempt each write is guarded by.
    attempts: Vec<i64>,
    counted: TotalsArrays,
    /// The result stored with each change's task (NULL for none).
    results: Vec<Option<Vec<u8>>>,
    /// The tasks the changes end.
    ended: Vec<(TaskId, Ended)>,
}

/// The column of [`sql::READ_STATES`] that says whether others wait for a task.
const DEPENDENTS_COLUMN: usize = 10;

impl FinishPlan {
    /// The ids whose states to read.
    pub(crate) fn ids(results: &[(Claim, Outcome)]) -> Vec<i64> {
        results.iter().map(|(c, _)| c.id.get()).collect()
    }

    /// The ids of the tasks others wait for, of the rows of [`sql::READ_STATES`].
    pub(crate) fn with_dependents(rows: &[Row]) -> R<HashSet<i64>> {
        let mut ids = HashSet::new();
        for r in rows {
            if r.try_get::<_, bool>(DEPENDENTS_COLUMN)? {
                ids.insert(r.try_get(0)?);
            }
        }
        Ok(ids)
    }

    /// The ids [`sql::FINISH`] wrote.
    pub(crate) fn written(rows: &[Row]) -> R<HashSet<i64>> {
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// The tasks the plan's changes end, for [`crate::dependency::settle`]; a change not
    /// written (its claim lost) is a task that did not end, and settles nothing.
    pub(crate) fn ended(&self) -> Vec<(TaskId, Ended)> {
        self.ended.clone()
    }

    /// The plan for `results` at `now`, from the rows of [`sql::READ_STATES`].
    pub(crate) fn of(results: &[(Claim, Outcome)], now: Timestamp, rows: &[Row]) -> R<Self> {
        let mut states = HashMap::with_capacity(rows.len());
        for r in rows {
            states.insert(TaskId::new(r.try_get(0)?), state_from_row(r, 1)?);
        }
        let batch::Finish {
            statuses,
            changes,
            totals,
            results,
        } = batch::finish(results, now, |id| Ok(states.get(&id).cloned()))?;
        // Each change is of a claim that held at the read: its attempt is the one read.
        let attempts = changes
            .iter()
            .map(|(id, _)| states.get(id).map_or(0, |s| i64::from(s.attempts)))
            .collect();
        let ended = changes
            .iter()
            .filter_map(|(id, s)| Some((*id, Ended::of(s.status)?)))
            .collect();
        Ok(FinishPlan {
            ended,
            statuses,
            next: StateArrays::of(&changes),
            attempts,
            counted: TotalsArrays::of(totals.into_iter()),
            results,
        })
    }

    /// Whether each attempt's claim held at the read (its outcome is to be written).
    pub(crate) fn held(&self) -> Vec<bool> {
        self.statuses.iter().map(Result::is_ok).collect()
    }

    /// The statuses, when nothing is written.
    pub(crate) fn into_statuses(self) -> Vec<Result<Status>> {
        self.statuses
    }

    /// Whether no claim held at the read: nothing to write.
    pub(crate) fn writes_nothing(&self) -> bool {
        self.next.is_empty()
    }

    /// The parameters of [`sql::FINISH`]; `alone`: leave out the tasks others wait for.
    pub(crate) fn params(&self, alone: bool) -> Vec<&(dyn ToSql + Sync)> {
        let mut params = self.next.params().to_vec();
        params.push(&self.attempts);
        params.extend(self.counted.params());
        params.push(&self.results);
        params.push(if alone { &true } else { &false });
        params
    }

    /// The statuses, given the rows [`sql::FINISH`] wrote: a claim that lost its lease
    /// between the read and the write gets [`batch::lease_lost`].
    pub(crate) fn settle(
        self,
        results: &[(Claim, Outcome)],
        written: &[Row],
    ) -> R<Vec<Result<Status>>> {
        let written = FinishPlan::written(written)?;
        let mut statuses = self.statuses;
        for ((claim, _), status) in results.iter().zip(&mut statuses) {
            if status.is_ok() && !written.contains(&claim.id.get()) {
                *status = Err(batch::lease_lost(claim));
            }
        }
        Ok(statuses)
    }
}
