//! What becomes of claimed tasks: leases, outcomes, claims given back and the tasks of
//! dead workers, each fenced by the claim's `(id, attempt)`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::params;
use rusqlite::{OptionalExtension, Transaction};
use simplepyq_core::dependency::Ended;
use simplepyq_core::transition::Event;
use simplepyq_core::{
    Claim, Error, Outcome, OutcomeStore, Result, Status, TaskId, TaskState, Timestamp, Totals,
    batch,
};

use crate::error::{E, R};
use crate::inspect::STUCK_COUNTS;
use crate::row::{
    STATE_COLUMNS, ids, load_state, save_finished, save_state, state_from_row, transition,
};
use crate::{SqliteStore, dependency};

impl OutcomeStore for SqliteStore {
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        let claims = claims.to_vec();
        self.write(move |tx| on_held(tx, &claims, &Event::Extend { lease_until }))
    }

    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool> {
        self.write(move |tx| {
            // Marks whose attempt no longer runs count no more.
            tx.prepare_cached(&format!(
                "DELETE FROM simplepyq_stuck WHERE NOT {STUCK_COUNTS}"
            ))?
            .execute([])?;
            let n = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO simplepyq_stuck (id, attempt, since) \
                     SELECT id, attempts, ?3 FROM simplepyq_tasks \
                     WHERE id = ?1 AND status = 'running' AND attempts = ?2",
                )?
                .execute(params![claim.id.get(), claim.attempt, since.as_millis()])?;
            Ok(n > 0)
        })
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        let claims = claims.to_vec();
        let (n, channels) = self.write(move |tx| {
            let mut channel =
                tx.prepare_cached("SELECT channel FROM simplepyq_tasks WHERE id = ?1")?;
            let mut channels = BTreeSet::new();
            for c in &claims {
                if let Some(name) = channel
                    .query_row([c.id.get()], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    channels.insert(name);
                }
            }
            Ok((on_held(tx, &claims, &Event::Release { now })?, channels))
        })?;
        // Tasks given back are other processes' to take.
        self.announce(n, &channels);
        Ok(n)
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        let results = results.to_vec();
        let (statuses, due) = self.write(move |tx| finish_in(tx, &results, now))?;
        self.announce_due(&due);
        Ok(statuses)
    }

    fn finish_and_claim(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
        channel: &str,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<simplepyq_core::FinishedAndClaimed> {
        // One write: a claim that fails undoes the outcomes too, and the caller records
        // them again without it (the contract's outer error).
        let results = results.to_vec();
        let channel = channel.to_owned();
        let (statuses, due, tasks) = self.write(move |tx| {
            let (statuses, due) = finish_in(tx, &results, now)?;
            let tasks = if limit == 0 {
                Vec::new()
            } else {
                crate::claim::claim_in(tx, &channel, limit, now, lease_until)?
            };
            Ok((statuses, due, tasks))
        })?;
        self.announce_due(&due);
        Ok((statuses, Ok(tasks)))
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        if self
            .read(|conn| ids(conn, EXPIRED, [now.as_millis()]))?
            .is_empty()
        {
            return Ok(0);
        }
        self.write(move |tx| {
            let expired: Vec<(TaskId, String)> = tx
                .prepare_cached(EXPIRED)?
                .query_map([now.as_millis()], |r| {
                    Ok((TaskId::new(r.get(0)?), r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let event = Event::Expire { now, max_lost_runs };
            let mut counted = Vec::with_capacity(expired.len());
            let mut failed = Vec::new();
            for (id, channel) in expired {
                let next = transition(tx, id, &event)?;
                counted.push((channel, Totals::of(&event, next.status)));
                failed.extend(Ended::of(next.status).map(|e| (id, e)));
            }
            dependency::settle(tx, failed, now)?;
            add_totals(
                tx,
                &Totals::by_channel(counted.iter().map(|(c, t)| (c.as_str(), *t))),
            )?;
            let n = counted.len();
            let channels: BTreeSet<String> = counted.into_iter().map(|(c, _)| c).collect();
            Ok((n, channels))
        })
        .map(|(n, channels)| {
            // Tasks of dead workers are due again, for any process to take.
            self.announce(n, &channels);
            n
        })
    }
}

/// Running tasks whose lease ended by ?1: their ids and channels.
pub(crate) const EXPIRED: &str = "SELECT id, channel FROM simplepyq_tasks WHERE status = 'running' \
     AND lease_until <= ?1 ORDER BY lease_until";

/// Reads a task's state for a [`batch`] rule, noting its channel in `channels`.
pub(crate) fn channel_and_state_of<'a>(
    tx: &'a Transaction<'_>,
    channels: &'a mut HashMap<TaskId, String>,
) -> impl FnMut(TaskId) -> Result<Option<TaskState>> + 'a {
    move |id| {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT channel, {STATE_COLUMNS} FROM simplepyq_tasks WHERE id = ?1"
            ))
            .map_err(E::from)?;
        let mut rows = stmt.query([id.get()]).map_err(E::from)?;
        let Some(r) = rows.next().map_err(E::from)? else {
            return Ok(None);
        };
        channels.insert(id, r.get(0).map_err(E::from)?);
        Ok(Some(state_from_row(r, 1)?))
    }
}

/// Adds `counted` to the channels' totals.
pub(crate) fn add_totals(tx: &Transaction<'_>, counted: &BTreeMap<String, Totals>) -> R<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO simplepyq_totals (channel, done, failed, retried, lease_lost) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (channel) DO UPDATE SET \
         done = done + excluded.done, failed = failed + excluded.failed, \
         retried = retried + excluded.retried, lease_lost = lease_lost + excluded.lease_lost",
    )?;
    for (channel, t) in counted {
        let [done, failed, retried, lease_lost] = t.to_i64s();
        stmt.execute(params![channel, done, failed, retried, lease_lost])?;
    }
    Ok(())
}

/// Reads a task's state for a [`batch`] rule.
pub(crate) fn state_of<'a>(
    tx: &'a Transaction<'_>,
) -> impl FnMut(TaskId) -> Result<Option<TaskState>> + 'a {
    move |id| load_state(tx, id).map_err(Error::from)
}

/// Writes the changes of a [`batch`] rule; returns how many.
pub(crate) fn write_changes(tx: &Transaction<'_>, changes: &[batch::Change]) -> R<usize> {
    for (id, next) in changes {
        save_state(tx, *id, next)?;
    }
    Ok(changes.len())
}

/// Applies `event` to the task of each claim still held; returns how many.
pub(crate) fn on_held(tx: &Transaction<'_>, claims: &[Claim], event: &Event) -> R<usize> {
    let changes = batch::on_held(claims, event, state_of(tx))?;
    write_changes(tx, &changes)
}

/// Records how attempts ended in `tx` (the writer's, or a caller's): each task's new status,
/// or [`simplepyq_core::Error::LeaseLost`] for a claim no longer held, which changes nothing;
/// and the channels of the waiting tasks this made due.
pub(crate) fn finish_in(
    tx: &Transaction<'_>,
    results: &[(Claim, Outcome)],
    now: Timestamp,
) -> R<(Vec<Result<Status>>, BTreeSet<String>)> {
    let mut channels = HashMap::with_capacity(results.len());
    let done = batch::finish(results, now, channel_and_state_of(tx, &mut channels))?;
    write_finished(tx, &done)?;
    add_totals(
        tx,
        &done.totals_by_channel(|id| channels.get(&id).map(String::as_str)),
    )?;
    let due = dependency::settle(tx, dependency::ended_by(&done.changes), now)?;
    Ok((done.statuses, due))
}

/// Writes the changes of `done`, each task's result (if its handler gave one) in the same
/// row write as its new state.
fn write_finished(tx: &Transaction<'_>, done: &batch::Finish) -> R<()> {
    for ((id, next), result) in done.changes.iter().zip(&done.results) {
        save_finished(tx, *id, next, result.as_deref())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use std::sync::Arc;
    use std::time::Duration;

    use simplepyq_core::{AdminStore, ClaimStore, Clock, NewTask, OutcomeStore, SystemClock};

    use crate::SqliteStore;

    /// Tasks another process's store makes due again (given back, recovered from a dead
    /// worker, requeued) wake a watching queue as enqueued ones do, not only at its next
    /// poll.
    #[cfg(unix)]
    #[test]
    fn tasks_due_again_wake_other_processes_queues() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tasks.db");
        let watching = SqliteStore::open(&path).expect("open");
        let heard: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let h = Arc::clone(&heard);
        let _watch = watching
            .watch(Arc::new(move |c: Option<&str>| {
                if let Some(c) = c {
                    h.lock().push(c.to_owned());
                }
            }))
            .expect("watching");
        let other = SqliteStore::open(&path).expect("open");
        let hears = |what: &str, channel: &str, act: &dyn Fn()| {
            // Past the announcer's quiet time and the listener's second wake-up.
            std::thread::sleep(Duration::from_millis(20));
            heard.lock().clear();
            act();
            let t0 = std::time::Instant::now();
            while !heard.lock().iter().any(|c| c == channel) {
                assert!(t0.elapsed() < Duration::from_secs(2), "{what}: not heard");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let now = SystemClock.now();
        let later = now.after(Duration::from_secs(60));
        hears("enqueue", "given", &|| {
            other
                .enqueue(
                    &[NewTask::new("given", vec![]), NewTask::new("lost", vec![])],
                    now,
                )
                .map(drop)
                .expect("enqueue");
        });
        let given = other.claim("given", 1, now, later).expect("claim");
        hears("release", "given", &|| {
            other.release(&[given[0].claim()], now).expect("release");
        });
        other.claim("lost", 1, now, now).expect("claim");
        hears("recovery", "lost", &|| {
            assert_eq!(
                other
                    .recover_expired(now.after(Duration::from_millis(1)), 0)
                    .expect("recover"),
                1
            );
        });
        hears("requeue", "lost", &|| {
            assert_eq!(other.requeue_failed(None, None, now).expect("requeue"), 1);
        });
    }
}
