//! A task's row in the SQL stores (SQLite, PostgreSQL): its columns in order, and how the
//! values of a row read as a [`Task`] or a [`TaskState`]. The order is written here once;
//! each store only says how its driver reads one value ([`RowValues`]).

use crate::{Status, Stuck, Task, TaskId, TaskState, Timestamp};

/// The columns of a [`TaskState`], in the order [`read_state`] reads them.
#[macro_export]
macro_rules! state_columns {
    () => {
        "status, retries_left, max_retries, attempts, run_at, lease_until, last_error, \
         updated_at, lost_runs"
    };
}

/// The columns of a [`Task`]: its own, then [`state_columns!`], in the order [`read_task`]
/// reads them.
#[macro_export]
macro_rules! task_columns {
    () => {
        concat!(
            "id, channel, args, created_at, priority, unique_key, concurrency_key, timeout_ms, \
             traceparent, ",
            $crate::state_columns!()
        )
    };
}

/// The place of `concurrency_key` in [`task_columns!`] (from 0).
pub const CONCURRENCY_KEY_COLUMN: usize = 6;

/// A statement whose one value is whether channel `channel` (a parameter, `?1` or `$1`)
/// has a task in `table` in any of `statuses`
/// ([`InspectStore::has_tasks`](crate::InspectStore::has_tasks)): one `EXISTS` per status,
/// the status written into the statement, so that the planner takes that status's partial
/// index (SQLite takes one only so; PostgreSQL's generic plans neither).
pub fn has_tasks_sql(table: &str, channel: &str, statuses: &[Status]) -> String {
    let looks: Vec<String> = statuses
        .iter()
        .map(|s| {
            format!(
                "EXISTS (SELECT 1 FROM {table} WHERE channel = {channel} AND status = '{}')",
                s.as_str()
            )
        })
        .collect();
    format!("SELECT {}", looks.join(" OR "))
}

/// The values of one row of a query, as a SQL store's driver reads them by column index.
pub trait RowValues {
    /// The driver's error (or the store's).
    type Error;

    /// A 64-bit integer.
    fn int(&self, column: usize) -> Result<i64, Self::Error>;

    /// A 64-bit integer, or NULL.
    fn opt_int(&self, column: usize) -> Result<Option<i64>, Self::Error>;

    /// A 32-bit integer (a task's priority).
    fn int32(&self, column: usize) -> Result<i32, Self::Error>;

    /// Text, handed to `read` without a copy.
    fn text<T>(&self, column: usize, read: impl FnOnce(&str) -> T) -> Result<T, Self::Error>;

    /// Text, or NULL.
    fn opt_text(&self, column: usize) -> Result<Option<String>, Self::Error>;

    /// Bytes (a task's arguments).
    fn bytes(&self, column: usize) -> Result<Vec<u8>, Self::Error>;

    /// The error for a value simplepyq never writes in `column`: the store's `Corrupt`.
    fn bad_value(&self, column: &str, value: &dyn std::fmt::Display) -> Self::Error;
}

/// Reads the columns of [`state_columns!`] starting at column `at`.
pub fn read_state<R: RowValues>(r: &R, at: usize) -> Result<TaskState, R::Error> {
    let count = |column: &str, i: usize| -> Result<u32, R::Error> {
        let v = r.int(i)?;
        u32::try_from(v).map_err(|_| r.bad_value(column, &v))
    };
    let status = r.text(at, |s| s.parse::<Status>().map_err(|_| s.to_owned()))?;
    Ok(TaskState {
        status: status.map_err(|s| r.bad_value("status", &s))?,
        retries_left: count("retries_left", at + 1)?,
        max_retries: count("max_retries", at + 2)?,
        attempts: count("attempts", at + 3)?,
        run_at: Timestamp::from_millis(r.int(at + 4)?),
        lease_until: r.opt_int(at + 5)?.map(Timestamp::from_millis),
        last_error: r.opt_text(at + 6)?,
        updated_at: Timestamp::from_millis(r.int(at + 7)?),
        lost_runs: count("lost_runs", at + 8)?,
    })
}

/// Reads the columns of [`task_columns!`].
pub fn read_task<R: RowValues>(r: &R) -> Result<Task, R::Error> {
    Ok(Task {
        id: TaskId::new(r.int(0)?),
        channel: r.text(1, str::to_owned)?,
        args: r.bytes(2)?,
        created_at: Timestamp::from_millis(r.int(3)?),
        priority: r.int32(4)?,
        unique_key: r.opt_text(5)?,
        concurrency_key: r.opt_text(CONCURRENCY_KEY_COLUMN)?,
        timeout: match r.opt_int(7)? {
            Some(ms) if ms <= 0 => return Err(r.bad_value("timeout_ms", &ms)),
            ms => ms.map(crate::time::duration_of),
        },
        traceparent: r.opt_text(8)?,
        state: read_state(r, 9)?,
    })
}

/// Reads a mark of [`crate::InspectStore::stuck`]: the columns `id, channel, attempt,
/// since` (milliseconds).
pub fn read_stuck<R: RowValues>(r: &R) -> Result<Stuck, R::Error> {
    let attempt = r.int(2)?;
    Ok(Stuck {
        id: TaskId::new(r.int(0)?),
        channel: r.text(1, str::to_owned)?,
        attempt: u32::try_from(attempt).map_err(|_| r.bad_value("attempt", &attempt))?,
        since: Timestamp::from_millis(r.int(3)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of values by column, as a driver would give them.
    enum Value {
        Int(i64),
        Null,
        Text(&'static str),
        Bytes(Vec<u8>),
    }

    struct Row(Vec<Value>);

    impl RowValues for Row {
        type Error = String;

        fn int(&self, column: usize) -> Result<i64, String> {
            match &self.0[column] {
                Value::Int(v) => Ok(*v),
                _ => Err(format!("column {column} is not an integer")),
            }
        }

        fn opt_int(&self, column: usize) -> Result<Option<i64>, String> {
            match &self.0[column] {
                Value::Null => Ok(None),
                _ => self.int(column).map(Some),
            }
        }

        fn int32(&self, column: usize) -> Result<i32, String> {
            let v = self.int(column)?;
            i32::try_from(v).map_err(|_| format!("column {column} is past 32 bits"))
        }

        fn text<T>(&self, column: usize, read: impl FnOnce(&str) -> T) -> Result<T, String> {
            match &self.0[column] {
                Value::Text(s) => Ok(read(s)),
                _ => Err(format!("column {column} is not text")),
            }
        }

        fn opt_text(&self, column: usize) -> Result<Option<String>, String> {
            match &self.0[column] {
                Value::Null => Ok(None),
                _ => self.text(column, str::to_owned).map(Some),
            }
        }

        fn bytes(&self, column: usize) -> Result<Vec<u8>, String> {
            match &self.0[column] {
                Value::Bytes(b) => Ok(b.clone()),
                _ => Err(format!("column {column} is not bytes")),
            }
        }

        fn bad_value(&self, column: &str, value: &dyn std::fmt::Display) -> String {
            format!("bad {column}: {value}")
        }
    }

    fn row(status: &'static str, attempts: i64) -> Row {
        use Value::*;
        Row(vec![
            Int(7),
            Text("mail"),
            Bytes(vec![0x90]),
            Int(1_000),
            Int(-3),
            Null,
            Text("customer-9"),
            Int(30_000),
            Text("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Text(status),
            Int(2),
            Int(3),
            Int(attempts),
            Int(5_000),
            Int(35_000),
            Text("boom"),
            Int(4_000),
            Int(1),
        ])
    }

    #[test]
    fn a_row_reads_as_its_task_in_the_columns_order() {
        let task = read_task(&row("running", 1)).expect("a task");
        assert_eq!((task.id, task.channel.as_str()), (TaskId::new(7), "mail"));
        assert_eq!(
            (task.args, task.priority, task.unique_key),
            (vec![0x90], -3, None)
        );
        assert_eq!(task.concurrency_key.as_deref(), Some("customer-9"));
        assert_eq!(task.timeout, Some(std::time::Duration::from_secs(30)));
        assert_eq!(
            task.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(task.created_at, Timestamp::from_millis(1_000));
        let s = task.state;
        assert_eq!(
            (s.status, s.retries_left, s.max_retries),
            (Status::Running, 2, 3)
        );
        assert_eq!((s.attempts, s.lost_runs), (1, 1));
        assert_eq!(s.run_at, Timestamp::from_millis(5_000));
        assert_eq!(s.lease_until, Some(Timestamp::from_millis(35_000)));
        assert_eq!(s.last_error.as_deref(), Some("boom"));
        assert_eq!(s.updated_at, Timestamp::from_millis(4_000));
        let columns: Vec<&str> = task_columns!().split(", ").collect();
        assert_eq!(columns.len(), row("running", 1).0.len());
        assert_eq!(columns[9], "status");
        assert_eq!(columns[CONCURRENCY_KEY_COLUMN], "concurrency_key");
        assert!(task_columns!().ends_with(state_columns!()));
    }

    #[test]
    fn a_row_reads_as_a_stuck_mark() {
        use Value::*;
        let mark = Row(vec![Int(7), Text("mail"), Int(2), Int(1_000)]);
        assert_eq!(
            read_stuck(&mark),
            Ok(Stuck {
                id: TaskId::new(7),
                channel: "mail".into(),
                attempt: 2,
                since: Timestamp::from_millis(1_000),
            })
        );
        let bad = Row(vec![Int(7), Text("mail"), Int(-1), Int(1_000)]);
        assert_eq!(read_stuck(&bad), Err("bad attempt: -1".to_owned()));
    }

    #[test]
    fn values_simplepyq_never_writes_are_the_stores_errors() {
        assert_eq!(
            read_task(&row("paused", 1)).map(|_| ()),
            Err("bad status: paused".to_owned())
        );
        assert_eq!(
            read_task(&row("pending", -1)).map(|_| ()),
            Err("bad attempts: -1".to_owned())
        );
    }
}
