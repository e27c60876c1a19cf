//! The row codec: the columns of a task, how a row reads as a [`Task`] or a
//! [`TaskState`], and how a state is written back.

use rusqlite::{Connection, Row, Statement, Transaction};
use simplepyq_core::row::{self, RowValues};
use simplepyq_core::transition::{Event, apply};
use simplepyq_core::{Error, Task, TaskId, TaskState, Timestamp};

use crate::error::{E, R, bad_value};

/// The columns [`task_from_row`] reads: the task's own, then [`STATE_COLUMNS`].
pub(crate) const COLUMNS: &str = simplepyq_core::task_columns!();

/// The columns of a [`TaskState`], as [`state_from_row`] reads them.
pub(crate) const STATE_COLUMNS: &str = simplepyq_core::state_columns!();

/// A row as [`simplepyq_core::row`] reads it.
struct Values<'a, 'r>(&'a Row<'r>);

impl RowValues for Values<'_, '_> {
    type Error = E;

    fn int(&self, column: usize) -> R<i64> {
        Ok(self.0.get(column)?)
    }

    fn opt_int(&self, column: usize) -> R<Option<i64>> {
        Ok(self.0.get(column)?)
    }

    fn int32(&self, column: usize) -> R<i32> {
        Ok(self.0.get(column)?)
    }

    fn text<T>(&self, column: usize, read: impl FnOnce(&str) -> T) -> R<T> {
        let text: String = self.0.get(column)?;
        Ok(read(&text))
    }

    fn opt_text(&self, column: usize) -> R<Option<String>> {
        Ok(self.0.get(column)?)
    }

    fn bytes(&self, column: usize) -> R<Vec<u8>> {
        Ok(self.0.get(column)?)
    }

    fn bad_value(&self, column: &str, value: &dyn std::fmt::Display) -> E {
        bad_value(column, value)
    }
}

/// Reads the columns of [`STATE_COLUMNS`] starting at column `at`.
pub(crate) fn state_from_row(r: &Row<'_>, at: usize) -> R<TaskState> {
    row::read_state(&Values(r), at)
}

/// Reads the columns of [`COLUMNS`].
/// A mark of `InspectStore::stuck` from a row of `id, channel, attempt, since`.
pub(crate) fn stuck_from_row(r: &Row<'_>) -> R<simplepyq_core::Stuck> {
    row::read_stuck(&Values(r))
}

pub(crate) fn task_from_row(r: &Row<'_>) -> R<Task> {
    row::read_task(&Values(r))
}

pub(crate) fn load_state(tx: &Transaction<'_>, id: TaskId) -> R<Option<TaskState>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM simplepyq_tasks WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id.get()])?;
    match rows.next()? {
        Some(r) => Ok(Some(state_from_row(r, 0)?)),
        None => Ok(None),
    }
}

/// Binds the values of [`STATE_COLUMNS`] to parameters `first..first + 9`.
pub(crate) fn bind_state(stmt: &mut Statement<'_>, first: usize, s: &TaskState) -> R<()> {
    stmt.raw_bind_parameter(first, s.status.as_str())?;
    stmt.raw_bind_parameter(first + 1, s.retries_left)?;
    stmt.raw_bind_parameter(first + 2, s.max_retries)?;
    stmt.raw_bind_parameter(first + 3, s.attempts)?;
    stmt.raw_bind_parameter(first + 4, s.run_at.as_millis())?;
    stmt.raw_bind_parameter(first + 5, s.lease_until.map(Timestamp::as_millis))?;
    stmt.raw_bind_parameter(first + 6, &s.last_error)?;
    stmt.raw_bind_parameter(first + 7, s.updated_at.as_millis())?;
    stmt.raw_bind_parameter(first + 8, s.lost_runs)?;
    Ok(())
}

/// The statement that stores a task's state (?2 to ?10, see [`bind_state`]) in row ?1,
/// with `$more` assignments.
macro_rules! save_state_sql {
    ($more:literal) => {
        concat!(
            "UPDATE simplepyq_tasks SET status = ?2, retries_left = ?3, max_retries = ?4, \
             attempts = ?5, run_at = ?6, lease_until = ?7, last_error = ?8, updated_at = ?9, \
             lost_runs = ?10",
            $more,
            " WHERE id = ?1"
        )
    };
}

/// Writes a task's state: ?1 the id, ?2.. the values of [`STATE_COLUMNS`].
pub(crate) const SAVE_STATE: &str = save_state_sql!("");

/// [`SAVE_STATE`], and the task's result (?11) with it.
pub(crate) const SAVE_STATE_AND_RESULT: &str = save_state_sql!(", result = ?11");

pub(crate) fn save_state(tx: &Transaction<'_>, id: TaskId, s: &TaskState) -> R<()> {
    save_finished(tx, id, s, None)
}

/// Stores task `id`'s new state and, in the same row write, the result its handler gave.
pub(crate) fn save_finished(
    tx: &Transaction<'_>,
    id: TaskId,
    s: &TaskState,
    result: Option<&[u8]>,
) -> R<()> {
    let mut stmt = tx.prepare_cached(match result {
        None => SAVE_STATE,
        Some(_) => SAVE_STATE_AND_RESULT,
    })?;
    stmt.raw_bind_parameter(1, id.get())?;
    bind_state(&mut stmt, 2, s)?;
    if let Some(result) = result {
        stmt.raw_bind_parameter(11, result)?;
    }
    stmt.raw_execute()?;
    Ok(())
}

/// Applies `event` to task `id` and stores the result.
pub(crate) fn transition(tx: &Transaction<'_>, id: TaskId, event: &Event) -> R<TaskState> {
    let state = load_state(tx, id)?.ok_or(Error::NotFound(id))?;
    let next = apply(&state, event).map_err(|r| r.into_error(id))?;
    save_state(tx, id, &next)?;
    Ok(next)
}

/// Ids selected by `sql` with `params`.
pub(crate) fn ids(tx: &Connection, sql: &str, params: impl rusqlite::Params) -> R<Vec<TaskId>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let ids = stmt
        .query_map(params, |r| r.get(0).map(TaskId::new))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// The tasks selected by `sql` (which selects [`COLUMNS`]) with `params`.
pub(crate) fn select_tasks(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> R<Vec<Task>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut tasks = Vec::new();
    while let Some(r) = rows.next()? {
        tasks.push(task_from_row(r)?);
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use simplepyq_core::{ClaimStore, Error, InspectStore, ListFilter, NewTask, StoreExt, TaskId};

    use crate::SqliteStore;
    use crate::testing::*;

    /// Another program wrote bytes that are not UTF-8 into text columns (channel, error,
    /// unique key) and a wrong type into a number column: reading those rows gives
    /// `Error::Corrupt` naming the problem, never a panic; other channels go on.
    #[test]
    fn values_simplepyq_never_writes_are_corrupt_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).expect("create");
        let good = store
            .enqueue_one(NewTask::new("good", vec![1]), T0)
            .expect("enqueue");
        let bad: Vec<TaskId> = (0..3)
            .map(|_| {
                store
                    .enqueue_one(NewTask::new("bad", vec![2]), T0)
                    .expect("enqueue")
            })
            .collect();
        let raw = Connection::open(&path).expect("open raw");
        raw.execute(
            "UPDATE simplepyq_tasks SET last_error = CAST(X'66ff6f' AS TEXT) WHERE id = ?1",
            [bad[0].get()],
        )
        .expect("damage the error");
        raw.execute(
            "UPDATE simplepyq_tasks SET unique_key = CAST(X'c328' AS TEXT) WHERE id = ?1",
            [bad[1].get()],
        )
        .expect("damage the key");
        raw.execute(
            "UPDATE simplepyq_tasks SET attempts = 'many' WHERE id = ?1",
            [bad[2].get()],
        )
        .expect("damage a number");
        for id in &bad {
            let err = store.get(*id).expect_err("a damaged row");
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        }
        assert!(matches!(
            store.list(&ListFilter::new(10)),
            Err(Error::Corrupt { .. })
        ));
        let err = store.claim("bad", 10, T0, T0).expect_err("damaged rows");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        let ok = store.claim("good", 10, T0, T0).expect("another channel");
        assert_eq!(ok.iter().map(|t| t.id).collect::<Vec<_>>(), vec![good]);
        store.complete(ok[0].claim(), T0).expect("complete");
    }
}
