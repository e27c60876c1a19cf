//! Group commit: the writes of every caller are gathered into shared transactions, and
//! each caller is answered once its transaction committed.
//!
//! A caller queues its write, then, if the connection is free, commits everything queued
//! itself (alone, when no one else is writing: no thread hand-off). If another commit is
//! under way, it leaves its write to the store's writer thread, which takes all that queued
//! meanwhile into its next transaction.
//!
//! Producers enqueuing in a loop, answered by one commit, come back together but not at
//! once: the first back would commit alone, and the others form the next group behind it
//! (measured: 2.1 writes per commit with 4 producers). So a committer that finds fewer
//! enqueues queued than the last group had waits for the others, a few tens of
//! microseconds at most, yielding its core to them (a timed sleep lasted 50 µs or more
//! on the machine measured). A wait that runs out lowers the expectation to the enqueues
//! that came, and the next groups (2, 4, ... up to 64 after waits that ran out in a row)
//! do not wait. Other
//! writes (claims, outcomes) are never waited for: a worker does not come back on a
//! schedule, and waiting for writes that might come delayed a lone producer's enqueues
//! while workers drained (measured: 4.4k against 6.2k enqueues/s without waiting).
//!
//! A commit is what a SQLite queue pays for (an fsync with `synchronous=FULL`); callers on
//! many threads (enqueues, workers' claims and results) share it. A group runs without
//! savepoints (each would copy every page its write changes); when a write fails, the
//! transaction is rolled back and the group runs again with a savepoint around each write,
//! so that the one that fails is rolled back alone, and its caller gets its own error,
//! while the others commit. Some failures (a full disk, an I/O error) make SQLite roll the
//! whole transaction back instead: then only the write at fault gets the error, and the others
//! run again in a new transaction; a commit that fails is retried one write at a time, so
//! that a failure costs only the writes that cannot be committed. A call returns only after
//! its transaction committed, so a returned `enqueue` is as durable as the `synchronous`
//! setting promises.

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use simplepyq_core::{Error, Result};

use crate::error::{BACKEND, E, R};

/// The most writes one transaction gathers.
const MAX_BATCH: usize = 512;
/// The longest a committer waits for the rest of a group.
const MAX_GATHER: Duration = Duration::from_micros(30);
/// After this many waits for a group ran out in a row, one group in 2^this waits.
const MAX_MISSES: u32 = 6;

/// Who writes: what a committer may expect of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A producer's enqueue: producers come back together after their commit.
    Producer,
    /// Anything else (claims, outcomes, maintenance): not waited for.
    Other,
}

/// A write waiting for the writer thread.
trait Job: Send {
    /// Who wrote it.
    fn caller(&self) -> Caller;
    /// Runs the write in `tx`; whether it succeeded (else its savepoint, or the whole
    /// transaction, is rolled back). A write whose transaction was rolled back as a whole
    /// runs again in the next.
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Its transaction committed: answer the caller with the write's result.
    fn committed(self: Box<Self>);
    /// Its transaction failed as a whole: answer the caller with `error`.
    fn failed(self: Box<Self>, error: Error);
    /// The error of a write that ran and failed.
    fn failure(&self) -> Option<Error>;
}

struct Write<T, F> {
    caller: Caller,
    op: F,
    result: Option<R<T>>,
    reply: SyncSender<Result<T>>,
}

impl<T: Send, F: Fn(&Transaction<'_>) -> R<T> + Send> Job for Write<T, F> {
    fn caller(&self) -> Caller {
        self.caller
    }

    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let result = (self.op)(tx);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn committed(self: Box<Self>) {
        let result = self
            .result
            .unwrap_or_else(|| Err(E::Core(stopped("a write was committed unrun"))));
        // The caller waits for this answer; if it is gone there is no one to tell.
        let _ = self.reply.send(result.map_err(Error::from));
    }

    fn failed(self: Box<Self>, error: Error) {
        let _ = self.reply.send(Err(error));
    }

    fn failure(&self) -> Option<Error> {
        match &self.result {
            Some(Err(e)) => Some(e.to_error()),
            _ => None,
        }
    }
}

fn stopped(why: &str) -> Error {
    Error::Backend {
        backend: BACKEND,
        source: format!("the store's writer thread stopped: {why}").into(),
    }
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Box<dyn Job>>,
    closed: bool,
    /// How many enqueues the next group is expected to gather: as many as the groups
    /// before had, until a wait for that many runs out.
    expected: usize,
    /// How long the last commit took: no wait for a group lasts longer.
    last_commit: Duration,
    /// Waits for a group that ran out, in a row (up to [`MAX_MISSES`]).
    misses: u32,
    /// Groups to commit without waiting: after a wait that ran out, 2^misses of them.
    skip: u32,
}

impl Queue {
    /// The producers' writes queued.
    fn enqueues(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.caller() == Caller::Producer)
            .count()
    }

    /// Takes the next group (up to [`MAX_BATCH`] writes), first waiting for the enqueues
    /// [`Queue::expected`] says are coming.
    fn next_group(queue: &mut MutexGuard<'_, Queue>) -> Vec<Box<dyn Job>> {
        if queue.jobs.is_empty() {
            return Vec::new();
        }
        if queue.skip > 0 {
            queue.skip -= 1;
        } else if queue.enqueues() < queue.expected {
            let deadline = Instant::now() + queue.last_commit.min(MAX_GATHER);
            loop {
                if queue.closed || queue.enqueues() >= queue.expected {
                    queue.misses = 0;
                    break;
                }
                if Instant::now() >= deadline {
                    queue.expected = queue.enqueues();
                    queue.misses = (queue.misses + 1).min(MAX_MISSES);
                    queue.skip = 1 << queue.misses;
                    break;
                }
                MutexGuard::unlocked(queue, std::thread::yield_now);
            }
        }
        let n = queue.jobs.len().min(MAX_BATCH);
        let group: Vec<Box<dyn Job>> = queue.jobs.drain(..n).collect();
        let enqueues = group.iter().filter(|j| j.caller() == Caller::Producer);
        queue.expected = queue.expected.max(enqueues.count());
        group
    }
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    conn: Mutex<Connection>,
    busy_timeout: Duration,
}

/// The handle on a store's writer thread. Dropping it lets the thread finish the writes
/// already queued, then joins it.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread on `conn`, which it owns from now on.
    pub(crate) fn start(conn: Connection, busy_timeout: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            conn: Mutex::new(conn),
            busy_timeout,
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("simplepyq-sqlite-writer".into())
            .spawn(move || write_loop(&theirs))
            .map_err(Error::Spawn)?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs `op`, written by `caller`, in the writer's next transaction and returns its
    /// result once committed.
    pub(crate) fn run<T, F>(&self, caller: Caller, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Transaction<'_>) -> R<T> + Send + 'static,
    {
        let (reply, answer) = sync_channel(1);
        {
            let mut queue = self.shared.queue.lock();
            if queue.closed {
                return Err(stopped("the store is closing"));
            }
            queue.jobs.push(Box::new(Write {
                caller,
                op,
                result: None,
                reply,
            }));
        }
        match self.shared.conn.try_lock() {
            // Nobody is committing: commit what is queued (this write at least) right here.
            // While this thread holds the connection no one else commits, so a write that
            // left the queue was answered.
            Some(mut conn) => loop {
                match answer.try_recv() {
                    Ok(result) => return result,
                    Err(TryRecvError::Empty) if commit_queued(&self.shared, &mut conn) => {}
                    Err(_) => break,
                }
            },
            None => {
                self.shared.cv.notify_one();
            }
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err(stopped("it dropped a write unanswered")))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.cv.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic in the writer thread has already answered no one more; nothing to do.
            let _ = thread.join();
        }
    }
}

/// Commits the next group of queued writes on `conn`; whether there were any.
fn commit_queued(shared: &Shared, conn: &mut Connection) -> bool {
    let jobs = Queue::next_group(&mut shared.queue.lock());
    if jobs.is_empty() {
        return false;
    }
    let started = Instant::now();
    commit_batch(conn, jobs, shared.busy_timeout);
    shared.queue.lock().last_commit = started.elapsed();
    true
}

/// The writer thread: commits what callers left queued while another commit was under way.
fn write_loop(shared: &Shared) {
    loop {
        {
            let mut queue = shared.queue.lock();
            while queue.jobs.is_empty() && !queue.closed {
                shared.cv.wait(&mut queue);
            }
            if queue.jobs.is_empty() {
                return;
            }
        }
        let mut conn = shared.conn.lock();
        while commit_queued(shared, &mut conn) {}
    }
}

/// How the writes of a group are kept apart in their transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// None: the usual case, where every write succeeds. A write that fails rolls the
    /// whole transaction back, and the group runs again with savepoints.
    Optimistic,
    /// A savepoint around each write (which costs a copy of each page it changes), so
    /// that a write that fails is rolled back alone.
    Savepoints,
}

/// Runs `jobs` in one transaction and answers each.
fn commit_batch(conn: &mut Connection, jobs: Vec<Box<dyn Job>>, busy_timeout: Duration) {
    commit_guarded(conn, jobs, busy_timeout, Guard::Optimistic);
}

fn commit_guarded(
    conn: &mut Connection,
    mut jobs: Vec<Box<dyn Job>>,
    busy_timeout: Duration,
    guard: Guard,
) {
    let deadline = Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    let tx = loop {
        match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => break tx,
            Err(e) => {
                let e = E::Sql(e);
                if e.is_busy() && Instant::now() < deadline {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                    continue;
                }
                return fail_all(jobs, || e.to_error());
            }
        }
    };
    for i in 0..jobs.len() {
        let job = &mut jobs[i];
        if guard == Guard::Optimistic {
            if job.run(&tx) {
                continue;
            }
            drop(tx);
            return commit_guarded(conn, jobs, busy_timeout, Guard::Savepoints);
        }
        let step = run_cached(&tx, "SAVEPOINT job").map(|()| job.run(&tx));
        let step = match step {
            Ok(true) => run_cached(&tx, "RELEASE job"),
            // Some errors (a full disk, an I/O error) make SQLite roll the whole
            // transaction back: this write fails with its error, and the others, which
            // were not at fault, run again in a new transaction.
            Ok(false) if tx.is_autocommit() => {
                drop(tx);
                let at_fault = jobs.remove(i);
                let error = at_fault.failure();
                at_fault.failed(error.as_ref().map_or_else(stopped_write, copy));
                if !jobs.is_empty() {
                    commit_batch(conn, jobs, busy_timeout);
                }
                return;
            }
            Ok(false) => tx.execute_batch("ROLLBACK TO job; RELEASE job"),
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            // The transaction is rolled back when `tx` is dropped.
            let e = E::Sql(e);
            return fail_all(jobs, || e.to_error());
        }
    }
    match tx.commit() {
        Ok(()) => jobs.into_iter().for_each(|job| job.committed()),
        // A failed commit names no write: try each alone, so that only those that cannot
        // be committed fail.
        Err(_) if jobs.len() > 1 => {
            for job in jobs {
                commit_batch(conn, vec![job], busy_timeout);
            }
        }
        Err(e) => {
            let e = E::Sql(e);
            fail_all(jobs, || e.to_error());
        }
    }
}

/// Runs `sql` with a statement the connection keeps prepared.
fn run_cached(tx: &Transaction<'_>, sql: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(sql)?.execute([]).map(drop)
}

fn stopped_write() -> Error {
    stopped("a write failed without an error")
}

/// An error with the same meaning, for another caller.
fn copy(e: &Error) -> Error {
    e.try_clone().unwrap_or_else(|| Error::Backend {
        backend: BACKEND,
        source: e.to_string().into(),
    })
}

/// Answers every job of a failed transaction with the error that failed it.
fn fail_all(jobs: Vec<Box<dyn Job>>, error: impl Fn() -> Error) {
    for job in jobs {
        job.failed(error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer on a fresh file capped at a few pages, with a table `t (v BLOB)`.
    fn small_file(dir: &std::path::Path) -> Writer {
        let conn = Connection::open(dir.join("w.db")).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v BLOB);")
            .expect("schema");
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page_count");
        conn.pragma_update(None, "max_page_count", pages + 4)
            .expect("cap");
        Writer::start(conn, Duration::from_secs(5)).expect("writer")
    }

    /// Starts a `caller` for each of `writes`, whose writes queue up for one transaction
    /// (the connection is held until all are queued), in order; returns their results.
    fn grouped(
        writer: &Arc<Writer>,
        caller: Caller,
        writes: Vec<&'static str>,
    ) -> Vec<Result<usize>> {
        let held = writer.shared.conn.lock();
        let mut callers = Vec::new();
        for (i, sql) in writes.into_iter().enumerate() {
            let w = Arc::clone(writer);
            callers.push(std::thread::spawn(move || {
                w.run(caller, move |tx| Ok(tx.execute(sql, [])?))
            }));
            while writer.shared.queue.lock().jobs.len() <= i {
                std::thread::yield_now();
            }
        }
        drop(held);
        callers
            .into_iter()
            .map(|c| c.join().expect("caller"))
            .collect()
    }

    fn rows(writer: &Writer) -> i64 {
        writer
            .shared
            .conn
            .lock()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count")
    }

    /// A write that fails in a group (here on a table that does not exist) fails alone: the
    /// group runs again with a savepoint per write, and each other write commits once.
    #[test]
    fn a_failing_write_fails_alone_and_the_others_commit_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Arc::new(small_file(dir.path()));
        let results = grouped(
            &writer,
            Caller::Other,
            vec![
                "INSERT INTO t VALUES (1)",
                "INSERT INTO missing VALUES (1)",
                "INSERT INTO t VALUES (2)",
            ],
        );
        assert!(matches!(results[0], Ok(1)), "{:?}", results[0]);
        assert!(results[1].is_err(), "{:?}", results[1]);
        assert!(matches!(results[2], Ok(1)), "{:?}", results[2]);
        assert_eq!(rows(&writer), 2);
    }

    /// The next group is expected to hold as many enqueues as the last; a committer waits
    /// for them, and when they do not come, commits what it has and expects as many next.
    /// Other writes are not waited for.
    #[test]
    fn a_committer_expects_the_last_groups_enqueues_until_a_wait_runs_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Arc::new(small_file(dir.path()));
        let four = vec!["INSERT INTO t VALUES (1)"; 4];
        assert!(
            grouped(&writer, Caller::Other, four.clone())
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(writer.shared.queue.lock().expected, 0);
        assert!(
            grouped(&writer, Caller::Producer, four)
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(writer.shared.queue.lock().expected, 4);
        // One caller alone: its wait for three more runs out, and it commits.
        writer
            .run(Caller::Producer, |tx| {
                Ok(tx.execute("INSERT INTO t VALUES (2)", [])?)
            })
            .expect("a lone write");
        assert_eq!(writer.shared.queue.lock().expected, 1);
        assert_eq!(rows(&writer), 9);
    }

    /// A write that makes SQLite roll the whole group commit back (a full file) fails
    /// alone: the writes it shared the transaction with, before and after it, commit.
    #[test]
    fn a_write_that_rolls_back_the_batch_fails_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Arc::new(small_file(dir.path()));
        let results = grouped(
            &writer,
            Caller::Other,
            vec![
                "INSERT INTO t VALUES (randomblob(10))",
                "INSERT INTO t VALUES (randomblob(1000000))",
                "INSERT INTO t VALUES (randomblob(10))",
            ],
        );
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(
            matches!(results[1], Err(Error::Full { .. })),
            "{:?}",
            results[1]
        );
        assert!(results[2].is_ok(), "{:?}", results[2]);
        assert_eq!(rows(&writer), 2);
    }
}
