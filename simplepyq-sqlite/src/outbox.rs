//! Enqueueing in the caller's own transaction (the outbox pattern): the application's rows
//! and its tasks commit together, or neither.
//!
//! The tasks are inserted by the caller's connection, in its transaction, by the same rule
//! as [`ClaimStore::enqueue`](simplepyq_core::ClaimStore::enqueue) (unique keys, priorities,
//! delays). Nothing is visible to a worker before the commit; nothing remains after a
//! rollback. A waiter ([`Committed`]) then tells the workers once the tasks are committed,
//! never before: it reads the file's last id given out, which only a commit moves past the
//! ids the transaction took (SQLite has one writer at a time, and the last id never goes
//! back: [`LAST_ID`]). A transaction that rolls back leaves its wait to expire.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, Transaction};
use simplepyq_core::{
    Claim, Error, NewTask, OnCommit, Outcome, Result, Status, TaskId, Timestamp, TransactionStore,
};

use crate::claim::{LAST_ID, channels_of, insert_tasks_taking, within};
use crate::error::BACKEND;
use crate::open::connect_read_only;
use crate::outcome::finish_in;
use crate::{SqliteStore, watch};

/// How long a wait for a commit lasts: past it, the workers find the tasks at their next
/// poll instead (a transaction held longer, or one that rolled back).
const WAIT_FOR_COMMIT: Duration = Duration::from_secs(60);
/// The first pause between two looks at the id sequence; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_micros(250);
/// The longest pause between two looks.
const MAX_PAUSE: Duration = Duration::from_millis(20);
/// How long the looking thread waits for another transaction before it ends (a producer
/// that enqueues in one transaction after another keeps one thread).
const LINGER: Duration = Duration::from_secs(1);

/// What to do once a transaction's tasks are committed.
type Then = OnCommit;

impl SqliteStore {
    /// Enqueues `tasks` in the caller's transaction `tx`, on a connection to this store's
    /// file, and returns their ids (as [`ClaimStore::enqueue`] does: a task whose unique key
    /// an unfinished task holds gets that task's id). They commit with `tx`, or roll back
    /// with it; workers see them only once committed, and are told then (or at their next
    /// poll after a minute).
    ///
    /// A busy error is returned, never retried here: begin transactions that write with
    /// `BEGIN IMMEDIATE` ([`rusqlite::TransactionBehavior::Immediate`]) so that they wait
    /// for the lock at their start instead. Errors: [`Error::InvalidConfig`] for a
    /// transaction on another file than the queue's, [`Error::InvalidChannel`],
    /// [`Error::ReadOnly`] for a read-only connection; nothing is written then.
    ///
    /// [`ClaimStore::enqueue`]: simplepyq_core::ClaimStore::enqueue
    pub fn enqueue_in(
        &self,
        tx: &Transaction<'_>,
        tasks: &[NewTask],
        now: Timestamp,
    ) -> Result<Vec<TaskId>> {
        TransactionStore::enqueue_in_then(self, tx, tasks, now, Box::new(|| {}))
    }

    /// Completes the running attempt `claim` in the caller's transaction `tx` on this
    /// store's file: the task is done once `tx` commits, with whatever else `tx` wrote (a
    /// handler's own rows), or stays running if `tx` rolls back. Fenced as an outcome is:
    /// [`Error::LeaseLost`] if the attempt no longer holds its task (its lease expired and
    /// another worker took it over), and then nothing is written: do not commit `tx`. The
    /// other errors are [`SqliteStore::enqueue_in`]'s.
    pub fn complete_in(
        &self,
        tx: &Transaction<'_>,
        claim: Claim,
        now: Timestamp,
    ) -> Result<Status> {
        self.check_writable()?;
        self.check_same_file(tx)?;
        // Waiting tasks this makes due are not announced here, as the wake-up would come
        // before the caller's commit: the queue wakes its channels once the handler
        // returned and its outcome was found recorded; other processes find them at their
        // next look.
        let (mut statuses, _due) =
            finish_in(tx, &[(claim, Outcome::Succeeded)], now).map_err(Error::from)?;
        statuses.pop().unwrap_or_else(|| {
            Err(Error::Backend {
                backend: BACKEND,
                source: "no status for one attempt".into(),
            })
        })
    }

    /// An error if the store was opened read-only.
    fn check_writable(&self) -> Result<()> {
        match self.writer {
            Some(_) => Ok(()),
            None => Err(self.opened_read_only()),
        }
    }

    /// An error unless `tx` is on this store's file.
    fn check_same_file(&self, tx: &Transaction<'_>) -> Result<()> {
        let theirs = tx.path().filter(|p| !p.is_empty());
        // SQLite names a file by its full path: the same name is the same file (the
        // common case, checked without a system call); another name may still be.
        let same = theirs.is_some_and(|name| {
            self.committed.name.as_deref() == Some(name) || same_file(Path::new(name), &self.path)
        });
        if same {
            return Ok(());
        }
        let theirs = theirs.map(Path::new);
        Err(Error::InvalidConfig(format!(
            "the transaction is on {}, not on the queue's file {}: tasks commit with the \
             application's rows only in the queue's own file",
            theirs.map_or_else(
                || "an in-memory database".into(),
                |p| p.display().to_string()
            ),
            self.path.display()
        )))
    }
}

impl<'t, 'c> TransactionStore<&'t Transaction<'c>> for SqliteStore {
    fn enqueue_in_then(
        &self,
        tx: &'t Transaction<'c>,
        tasks: &[NewTask],
        now: Timestamp,
        then: OnCommit,
    ) -> Result<Vec<TaskId>> {
        for t in tasks {
            t.validate()?;
        }
        self.check_writable()?;
        self.check_same_file(tx)?;
        let (ids, taken) = insert_tasks_taking(tx, tasks, now).map_err(Error::from)?;
        // The caller's connection has no cap of its own: the file's is kept here, as in
        // the store's enqueue (the caller rolls back on the error).
        if let Some(most) = self.enqueue_pages {
            within(tx, most).map_err(Error::from)?;
        }
        if let Some(taken) = taken {
            self.committed.wait_for(taken, channels_of(tasks), then);
        }
        Ok(ids)
    }

    fn complete_in(&self, tx: &'t Transaction<'c>, claim: Claim, now: Timestamp) -> Result<Status> {
        SqliteStore::complete_in(self, tx, claim, now)
    }
}

/// Whether two paths name one file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The last id the file's task table gave out (committed, or taken by `conn`'s own
/// transaction).
fn last_id(conn: &Connection) -> Result<i64> {
    conn.query_row(LAST_ID, [], |r| r.get(0))
        .map_err(|e| Error::from(crate::error::E::from(e)))
}

/// One transaction's wait: its tasks are committed once the file's last id reaches
/// `taken`.
struct Waiting {
    taken: i64,
    channels: Vec<String>,
    then: Then,
    until: Instant,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    /// Whether the thread that looks runs.
    looking: bool,
    /// The store closed: the thread ends (the workers find what is left at their poll).
    closed: bool,
}

/// Tells the workers of transactions' tasks once committed: a thread that looks at the id
/// sequence while some transaction waits, and ends when none does.
pub(crate) struct Committed {
    /// The file's name as SQLite gives it (`sqlite3_db_filename`), for a quick check.
    name: Option<String>,
    path: PathBuf,
    busy_timeout: Duration,
    announcer: Arc<watch::Announcer>,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed").finish_non_exhaustive()
    }
}

impl Committed {
    pub(crate) fn new(
        conn: &Connection,
        path: PathBuf,
        busy_timeout: Duration,
        announcer: Arc<watch::Announcer>,
    ) -> Self {
        Committed {
            name: conn.path().map(str::to_owned),
            path,
            busy_timeout,
            announcer,
            state: Arc::default(),
        }
    }

    /// Calls `then` and tells other processes' queues of `channels` once the file's last
    /// id reaches `taken`.
    fn wait_for(&self, taken: i64, channels: Vec<String>, then: Then) {
        let (lock, changed) = &*self.state;
        let mut state = lock.lock();
        // A thread that looks while others wait sees this one at its next look (within
        // its pause, short while commits come); one that waits for work is woken.
        if state.waiting.is_empty() {
            changed.notify_one();
        }
        state.waiting.push(Waiting {
            taken,
            channels,
            then,
            until: Instant::now() + WAIT_FOR_COMMIT,
        });
        if state.looking {
            return;
        }
        let (path, busy_timeout) = (self.path.clone(), self.busy_timeout);
        let (announcer, shared) = (Arc::clone(&self.announcer), Arc::clone(&self.state));
        let spawned = std::thread::Builder::new()
            .name("simplepyq-sqlite-commits".into())
            .spawn(move || look(&path, busy_timeout, &announcer, &shared));
        // Without a thread, the workers find the tasks at their next poll.
        state.looking = spawned.is_ok();
    }
}

impl Drop for Committed {
    fn drop(&mut self) {
        let (lock, changed) = &*self.state;
        lock.lock().closed = true;
        changed.notify_all();
    }
}

/// The looking thread: reads the last id and tells the transactions whose tasks are
/// committed; ends once none has waited for [`LINGER`], or the store closed.
fn look(
    path: &Path,
    busy_timeout: Duration,
    announcer: &watch::Announcer,
    shared: &(Mutex<State>, Condvar),
) {
    let (lock, changed) = shared;
    let conn = crate::fork::within(|| connect_read_only(path, busy_timeout).ok());
    let mut pause = FIRST_PAUSE;
    loop {
        // Read outside the lock: enqueues add their waits meanwhile.
        let last = conn
            .as_ref()
            .and_then(|c| crate::fork::within(|| last_id(c).ok()));
        let mut state = lock.lock();
        let now = Instant::now();
        let mut done = Vec::new();
        let mut i = 0;
        while i < state.waiting.len() {
            let w = &state.waiting[i];
            let committed = last.is_some_and(|last| last >= w.taken);
            if committed || now >= w.until || conn.is_none() {
                done.push(state.waiting.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if state.closed {
            state.looking = false;
            return;
        }
        if done.is_empty() {
            let wait = if state.waiting.is_empty() {
                LINGER
            } else {
                pause
            };
            let woken = !changed.wait_for(&mut state, wait).timed_out();
            if state.closed || (!woken && state.waiting.is_empty()) {
                state.looking = false;
                return;
            }
            // A new transaction waits: look at once and often again.
            pause = if woken {
                FIRST_PAUSE
            } else {
                (pause * 2).min(MAX_PAUSE)
            };
            continue;
        }
        drop(state);
        pause = FIRST_PAUSE;
        for w in done {
            if last.is_some_and(|last| last >= w.taken) {
                announcer.announce(w.channels.iter().map(String::as_str));
                (w.then)();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rusqlite::TransactionBehavior;
    use simplepyq_core::{ClaimStore, InspectStore, OutcomeStore, Status};

    use super::*;
    use crate::testing::T0;

    fn app(path: &Path) -> Connection {
        let conn = Connection::open(path).expect("the application's connection");
        conn.execute_batch(
            "PRAGMA busy_timeout = 5000; \
             CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)",
        )
        .expect("the application's table");
        conn
    }

    #[test]
    fn tasks_commit_with_the_applications_rows_or_roll_back_with_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).expect("open");
        let mut conn = app(&path);
        let told = Arc::new(AtomicUsize::new(0));

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        tx.execute("INSERT INTO orders (item) VALUES ('tea')", [])
            .expect("the application's row");
        let seen = Arc::clone(&told);
        let ids = store
            .enqueue_in_then(
                &tx,
                &[NewTask::new("receipts", vec![1])],
                T0,
                Box::new(move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .expect("enqueue in the transaction");
        // Not committed: the store's own connections see nothing, and no one is told.
        assert_eq!(store.get(ids[0]).expect("get"), None);
        assert!(
            store
                .claim("receipts", 10, T0, T0)
                .expect("claim")
                .is_empty()
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(told.load(Ordering::SeqCst), 0, "told before the commit");
        tx.commit().expect("commit");
        let task = store.get(ids[0]).expect("get").expect("committed");
        assert_eq!(task.state.status, Status::Pending);
        let deadline = Instant::now() + Duration::from_secs(10);
        while told.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "not told of the commit");
            std::thread::sleep(Duration::from_millis(1));
        }

        let tx = conn.transaction().expect("begin");
        tx.execute("INSERT INTO orders (item) VALUES ('cake')", [])
            .expect("the application's row");
        let rolled = store
            .enqueue_in(&tx, &[NewTask::new("receipts", vec![2])], T0)
            .expect("enqueue in the transaction");
        tx.rollback().expect("rollback");
        assert_eq!(store.get(rolled[0]).expect("get"), None);
        let orders: i64 = conn
            .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
            .expect("count");
        assert_eq!(orders, 1);
        assert_eq!(store.counts(None).expect("counts").pending, 1);
        assert_eq!(told.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unique_keys_hold_in_the_callers_transaction_as_in_an_enqueue() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).expect("open");
        let held = store
            .enqueue(&[NewTask::new("c", vec![]).unique_key("k")], T0)
            .expect("enqueue");
        let mut conn = app(&path);
        let tx = conn.transaction().expect("begin");
        let ids = store
            .enqueue_in(
                &tx,
                &[
                    NewTask::new("c", vec![]).unique_key("k"),
                    NewTask::new("c", vec![]).unique_key("other"),
                    NewTask::new("c", vec![]).unique_key("other"),
                ],
                T0,
            )
            .expect("enqueue in the transaction");
        tx.commit().expect("commit");
        assert_eq!(ids[0], held[0]);
        assert_eq!(ids[1], ids[2]);
        assert_eq!(store.counts(Some("c")).expect("counts").pending, 2);
    }

    #[test]
    fn a_transaction_on_another_file_or_a_bad_channel_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
        let mut other = app(&dir.path().join("other.db"));
        let tx = other.transaction().expect("begin");
        let err = store
            .enqueue_in(&tx, &[NewTask::new("c", vec![])], T0)
            .expect_err("another file");
        assert!(
            matches!(err, Error::InvalidConfig(ref m) if m.contains("other.db")),
            "{err}"
        );
        let mut memory = Connection::open_in_memory().expect("in memory");
        let tx = memory.transaction().expect("begin");
        let err = store
            .enqueue_in(&tx, &[NewTask::new("c", vec![])], T0)
            .expect_err("an in-memory database");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        drop(tx);
        let mut conn = app(&dir.path().join("q.db"));
        let tx = conn.transaction().expect("begin");
        let err = store
            .enqueue_in(&tx, &[NewTask::new("", vec![])], T0)
            .expect_err("a bad channel");
        assert!(matches!(err, Error::InvalidChannel { .. }), "{err}");
        tx.commit().expect("commit");
        assert_eq!(store.counts(None).expect("counts").total(), 0);
    }

    /// A run whose lease was lost (recovered, and claimed again by another worker) cannot
    /// complete its task in its transaction: `LeaseLost`, and nothing is written; the run
    /// that holds the task can.
    #[test]
    fn a_stale_runs_completion_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).expect("open");
        store
            .enqueue(&[NewTask::new("c", vec![])], T0)
            .expect("enqueue");
        let lease = T0.after(Duration::from_secs(30));
        let stale = store.claim("c", 1, T0, lease).expect("claim")[0].claim();
        let later = lease.after(Duration::from_secs(1));
        assert_eq!(store.recover_expired(later, 5).expect("recover"), 1);
        let held = store
            .claim("c", 1, later, later.after(Duration::from_secs(30)))
            .expect("claim again")[0]
            .claim();
        let mut conn = app(&path);
        let tx = conn.transaction().expect("begin");
        let err = store
            .complete_in(&tx, stale, later)
            .expect_err("a stale run");
        assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
        tx.commit().expect("commit what the handler would have");
        let task = store.get(held.id).expect("get").expect("the task");
        assert_eq!(
            (task.state.status, task.state.attempts),
            (Status::Running, held.attempt)
        );
        let tx = conn.transaction().expect("begin");
        assert_eq!(
            store.complete_in(&tx, held, later).expect("the holder"),
            Status::Done
        );
        tx.commit().expect("commit");
        assert_eq!(store.counts(None).expect("counts").done, 1);
        assert_eq!(store.totals().expect("totals")["c"].done, 1);
    }
}
