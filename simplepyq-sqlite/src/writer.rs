//! Group commit: the writes of every caller are gathered into shared transactions, and
//! each caller is answered once its transaction committed.
//!
//! A caller queues its write, then, if the connection is free, commits everything queued
//! itself (alone, when no one else is writing: no thread hand-off). If another commit is
//! under way, the writes queued meanwhile go into the next transaction, committed by the
//! next leader: among producers enqueuing together, one looks out for the connection while
//! the others sleep, and commits their writes with its own as soon as the commit under way
//! ends. Otherwise (a lone producer, a worker's claim or outcome) the store's writer thread
//! commits them, woken by the committer that leaves them queued. A committer answers its
//! callers once it released the connection, so that the next group's commit runs while
//! the callers are woken (each wake-up is a system call, made in turn by the committer).
//! A lookout spins, yielding its core, for at most as long as the last commit took: a lone
//! producer beside draining workers does not look out, since its spinning slowed the
//! workers it shares the cores with. The figures are in BENCHMARKS.md.
//!
//! Producers enqueuing in a loop, answered by one commit, come back together but not at
//! once: the first back would commit alone, and the others form the next group behind it
//! (measured: 2.1 writes per commit with 4 producers). So a committer that finds fewer
//! enqueues queued than the last group had waits for the others, yielding its core to
//! them (a timed sleep lasted 50 µs or more on the machine measured), for no longer than
//! the last commit took and at most [`Gather`]'s bound: a few tens of microseconds at
//! `synchronous=NORMAL`, where a commit is work of the cores that the others need, and the
//! time of an fsync at FULL, where a commit waits for the disk and the others would each
//! wait for one more. A wait that runs out lowers the expectation to the enqueues
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use simplepyq_core::{Error, Result};

use crate::error::{BACKEND, E, R};

/// The most writes one transaction gathers.
const MAX_BATCH: usize = 512;
/// How long a committer may wait for the rest of a group (never longer than the last
/// commit took).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gather {
    /// At most 30 µs: commits cost the cores' time (`synchronous=NORMAL`), which a longer
    /// wait takes from the callers it waits for (16 producers, two runs each: waiting up to
    /// 200 µs enqueued 94-98k against 100-114k/s).
    Briefly,
    /// At most 200 µs: each commit waits for an fsync (`synchronous=FULL`). With 4
    /// producers, whose commits took 150-200 µs: capped at 30 µs, the producers answered by
    /// one commit came back too late for the next, and groups settled at 2 to 3 writes;
    /// waiting up to the commit's time, 95% of the groups had all 4, the others back after
    /// 30 µs on average. The figures are in BENCHMARKS.md.
    ForTheDisk,
}

impl Gather {
    fn most(self) -> Duration {
        match self {
            Gather::Briefly => Duration::from_micros(30),
            Gather::ForTheDisk => Duration::from_micros(200),
        }
    }
}
/// After this many waits for a group ran out in a row, one group in 2^this waits.
const MAX_MISSES: u32 = 6;
/// The longest a caller looks out for the connection before it sleeps.
const MAX_LOOKOUT: Duration = Duration::from_micros(200);

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
    /// Its transaction committed: the caller's answer is the write's result.
    fn committed(&mut self);
    /// Its transaction failed as a whole: the caller's answer is `error`.
    fn failed(&mut self, error: Error);
    /// Gives the caller its answer (once the connection is released: a caller woken then
    /// can commit the next group at once).
    fn deliver(self: Box<Self>);
    /// The error of a write that ran and failed.
    fn failure(&self) -> Option<Error>;
}

struct Write<T, F> {
    caller: Caller,
    op: F,
    result: Option<R<T>>,
    /// The caller's answer, once its transaction committed or failed.
    outcome: Option<Result<T>>,
    /// Where the caller waits; taken when answered.
    reply: Option<Arc<Answer<T>>>,
}

/// Where a caller waits for its write's result: it looks, or sleeps until woken (a wake-up
/// of a caller that is not asleep costs no system call).
struct Answer<T> {
    value: Mutex<Option<Result<T>>>,
    ready: AtomicBool,
    caller: Thread,
}

impl<T> Answer<T> {
    fn new() -> Self {
        Answer {
            value: Mutex::new(None),
            ready: AtomicBool::new(false),
            caller: std::thread::current(),
        }
    }

    fn set(&self, result: Result<T>) {
        *self.value.lock() = Some(result);
        self.ready.store(true, Ordering::Release);
        self.caller.unpark();
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The result, once set.
    fn take(&self) -> Option<Result<T>> {
        if self.ready() {
            self.value.lock().take()
        } else {
            None
        }
    }

    /// Sleeps until the result is set (called by the caller's own thread).
    fn wait(&self) -> Result<T> {
        loop {
            if let Some(result) = self.take() {
                return result;
            }
            std::thread::park();
        }
    }
}

impl<T, F> Drop for Write<T, F> {
    fn drop(&mut self) {
        // A write dropped unanswered (a panic while it ran, or delivered with no outcome):
        // its caller must not wait for ever.
        if let Some(reply) = self.reply.take() {
            reply.set(Err(stopped("it dropped a write unanswered")));
        }
    }
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

    fn committed(&mut self) {
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err(E::Core(stopped("a write was committed unrun"))));
        self.outcome = Some(result.map_err(Error::from));
    }

    fn failed(&mut self, error: Error) {
        self.outcome = Some(Err(error));
    }

    fn deliver(mut self: Box<Self>) {
        if let (Some(reply), Some(outcome)) = (self.reply.take(), self.outcome.take()) {
            reply.set(outcome);
        }
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

struct Queue {
    jobs: Vec<Box<dyn Job>>,
    closed: bool,
    /// How long a committer may wait for the rest of a group.
    gather: Gather,
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
    fn new(gather: Gather) -> Self {
        Queue {
            jobs: Vec::new(),
            closed: false,
            gather,
            expected: 0,
            last_commit: Duration::ZERO,
            misses: 0,
            skip: 0,
        }
    }

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
            let deadline = Instant::now() + queue.last_commit.min(queue.gather.most());
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
    /// A caller looks out for the connection to commit what queued behind the commit under
    /// way: the next leader.
    next_leader: AtomicBool,
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
    pub(crate) fn start(conn: Connection, busy_timeout: Duration, gather: Gather) -> Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(gather)),
            cv: Condvar::new(),
            conn: Mutex::new(conn),
            busy_timeout,
            next_leader: AtomicBool::new(false),
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

    /// A holder of the writer's connection, for the checkpointer.
    pub(crate) fn holder(&self) -> Holder {
        Holder(Arc::clone(&self.shared))
    }

    /// Runs `op`, written by `caller`, in the writer's next transaction and returns its
    /// result once committed.
    ///
    /// The caller commits what is queued itself when the connection is free. Otherwise one
    /// caller at a time looks out for the connection, for about as long as a commit takes,
    /// and commits what queued meanwhile (its own write with it) as soon as the commit under
    /// way ends; the others sleep until answered. No thread has to be woken for a group to
    /// be committed. The writer thread commits only when no caller looks out: one that
    /// stops looking, or a committer that leaves writes queued, wakes it.
    pub(crate) fn run<T, F>(&self, caller: Caller, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Transaction<'_>) -> R<T> + Send + 'static,
    {
        let shared = &*self.shared;
        let answer = Arc::new(Answer::new());
        let look_for = {
            let mut queue = shared.queue.lock();
            if queue.closed {
                return Err(stopped("the store is closing"));
            }
            queue.jobs.push(Box::new(Write {
                caller,
                op,
                result: None,
                outcome: None,
                reply: Some(Arc::clone(&answer)),
            }));
            // Only producers among others look out: a lone producer or a worker would only
            // spin beside the workers it shares the cores with (measured: a lone producer
            // enqueuing while 4 workers drain, 12k against 9k enqueues/s).
            if caller == Caller::Producer && queue.expected > 1 {
                queue.last_commit.min(MAX_LOOKOUT)
            } else {
                Duration::ZERO
            }
        };
        let mut looked_out = false;
        loop {
            if let Some(result) = answer.take() {
                return result;
            }
            if let Some(conn) = shared.conn.try_lock() {
                if !shared.commit_next(conn) {
                    // Nothing queued: this write left the queue with another committer, who
                    // answers it once its connection is released.
                    return answer.wait();
                }
                continue;
            }
            if looked_out
                || look_for.is_zero()
                || shared
                    .next_leader
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                // The connection is busy: someone must commit this write once it is free,
                // the lookout if there is one, else the writer thread.
                shared.hand_on();
                return answer.wait();
            }
            looked_out = true;
            let deadline = Instant::now() + look_for;
            loop {
                if let Some(conn) = shared.conn.try_lock() {
                    // Another caller may look out while this one commits.
                    shared.next_leader.store(false, Ordering::SeqCst);
                    if !shared.commit_next(conn) {
                        return answer.wait();
                    }
                    break;
                }
                if answer.ready() || Instant::now() >= deadline {
                    shared.next_leader.store(false, Ordering::SeqCst);
                    shared.hand_on();
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
}

/// Holds a store's writer connection for a checkpoint: no write of this store's callers
/// commits meanwhile (they queue, and commit together after).
#[derive(Clone)]
pub(crate) struct Holder(Arc<Shared>);

impl Holder {
    /// Runs `f` while no write of this store commits.
    pub(crate) fn hold<T>(&self, f: impl FnOnce() -> T) -> T {
        let conn = self.0.conn.lock();
        // Held off by a fork only once the connection is held: a commit under way, which a
        // fork waits for, must not wait for this one.
        let result = crate::fork::within(f);
        drop(conn);
        result
    }
}

impl Shared {
    /// Commits the next group of queued writes on `conn`, releases it, then answers each
    /// write's caller; whether any write was queued.
    fn commit_next(&self, mut conn: MutexGuard<'_, Connection>) -> bool {
        let jobs = Queue::next_group(&mut self.queue.lock());
        if jobs.is_empty() {
            return false;
        }
        let started = Instant::now();
        let mut settled = Vec::with_capacity(jobs.len());
        crate::fork::within(|| commit_batch(&mut conn, jobs, self.busy_timeout, &mut settled));
        self.queue.lock().last_commit = started.elapsed();
        drop(conn);
        for job in settled {
            job.deliver();
        }
        true
    }

    /// Writes left queued, and no caller looking out for the connection: wakes the writer
    /// thread to commit them. (A caller that stops looking out calls this after it stopped.)
    fn hand_on(&self) {
        if self.next_leader.load(Ordering::SeqCst) {
            return;
        }
        if !self.queue.lock().jobs.is_empty() {
            self.cv.notify_one();
        }
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
        while shared.commit_next(shared.conn.lock()) {}
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

/// Runs `jobs` in one transaction and settles each (its answer is set, to be delivered),
/// moving it to `settled`.
fn commit_batch(
    conn: &mut Connection,
    jobs: Vec<Box<dyn Job>>,
    busy_timeout: Duration,
    settled: &mut Vec<Box<dyn Job>>,
) {
    commit_guarded(conn, jobs, busy_timeout, Guard::Optimistic, settled);
}

fn commit_guarded(
    conn: &mut Connection,
    mut jobs: Vec<Box<dyn Job>>,
    busy_timeout: Duration,
    guard: Guard,
    settled: &mut Vec<Box<dyn Job>>,
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
                return fail_all(jobs, || e.to_error(), settled);
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
            return commit_guarded(conn, jobs, busy_timeout, Guard::Savepoints, settled);
        }
        let step = run_cached(&tx, "SAVEPOINT job").map(|()| job.run(&tx));
        let step = match step {
            Ok(true) => run_cached(&tx, "RELEASE job"),
            // Some errors (a full disk, an I/O error) make SQLite roll the whole
            // transaction back: this write fails with its error, and the others, which
            // were not at fault, run again in a new transaction.
            Ok(false) if tx.is_autocommit() => {
                drop(tx);
                let mut at_fault = jobs.remove(i);
                let error = at_fault.failure();
                at_fault.failed(error.as_ref().map_or_else(stopped_write, copy));
                settled.push(at_fault);
                if !jobs.is_empty() {
                    commit_batch(conn, jobs, busy_timeout, settled);
                }
                return;
            }
            Ok(false) => tx.execute_batch("ROLLBACK TO job; RELEASE job"),
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            // The transaction is rolled back when `tx` is dropped.
            let e = E::Sql(e);
            return fail_all(jobs, || e.to_error(), settled);
        }
    }
    match tx.commit() {
        Ok(()) => {
            for mut job in jobs {
                job.committed();
                settled.push(job);
            }
        }
        // A failed commit names no write: try each alone, so that only those that cannot
        // be committed fail.
        Err(_) if jobs.len() > 1 => {
            for job in jobs {
                commit_batch(conn, vec![job], busy_timeout, settled);
            }
        }
        Err(e) => {
            let e = E::Sql(e);
            fail_all(jobs, || e.to_error(), settled);
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

/// Settles every job of a failed transaction with the error that failed it.
fn fail_all(jobs: Vec<Box<dyn Job>>, error: impl Fn() -> Error, settled: &mut Vec<Box<dyn Job>>) {
    for mut job in jobs {
        job.failed(error());
        settled.push(job);
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
        Writer::start(conn, Duration::from_secs(5), Gather::Briefly).expect("writer")
    }

    /// Starts a `caller` for each of `writes`, whose writes queue up for one transaction
    /// (the connection is held until all are queued), in order; returns their results.
    /// Each caller found the connection busy and went to sleep: someone must commit their
    /// writes once it is released (a caller not answered within 60 s fails the test).
    fn grouped(
        writer: &Arc<Writer>,
        caller: Caller,
        writes: Vec<&'static str>,
    ) -> Vec<Result<usize>> {
        let held = writer.shared.conn.lock();
        let mut answers = Vec::new();
        for (i, sql) in writes.into_iter().enumerate() {
            let (w, (tell, answer)) = (Arc::clone(writer), std::sync::mpsc::channel());
            std::thread::spawn(move || {
                let _ = tell.send(w.run(caller, move |tx| Ok(tx.execute(sql, [])?)));
            });
            answers.push(answer);
            while writer.shared.queue.lock().jobs.len() <= i {
                std::thread::yield_now();
            }
        }
        drop(held);
        answers
            .into_iter()
            .map(|a| {
                a.recv_timeout(Duration::from_secs(60))
                    .expect("the caller is answered")
            })
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

    /// Every write is answered once, with its own result, and each that succeeded committed
    /// once, whoever commits it: threads of producers (who look out for the connection and
    /// lead) and of other callers (left to the writer thread) write at once, some writes
    /// failing. A caller never answered would hang: the test fails after 60 s instead.
    #[test]
    fn callers_writing_at_once_are_each_answered_once() {
        const THREADS: usize = 12;
        const WRITES: usize = 400;
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("w.db")).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER);")
            .expect("schema");
        let writer =
            Arc::new(Writer::start(conn, Duration::from_secs(5), Gather::Briefly).expect("writer"));
        let (done, finished) = std::sync::mpsc::channel();
        for thread in 0..THREADS {
            let (writer, done) = (Arc::clone(&writer), done.clone());
            std::thread::spawn(move || {
                let caller = if thread % 3 == 2 {
                    Caller::Other
                } else {
                    Caller::Producer
                };
                let mut committed = 0;
                for i in 0..WRITES {
                    let v = i64::try_from(thread * WRITES + i).expect("value");
                    let fails = i % 7 == 3;
                    let result = writer.run(caller, move |tx| {
                        let table = if fails { "missing" } else { "t" };
                        Ok(tx.execute(&format!("INSERT INTO {table} VALUES (?1)"), [v])?)
                    });
                    assert_eq!(result.is_err(), fails, "write {v}: {result:?}");
                    committed += usize::from(!fails);
                }
                done.send(committed).expect("report");
            });
        }
        drop(done);
        let committed: usize = (0..THREADS)
            .map(|_| {
                finished
                    .recv_timeout(Duration::from_secs(60))
                    .expect("every caller answered")
            })
            .sum();
        let conn = writer.shared.conn.lock();
        let (rows, distinct): (i64, i64) = conn
            .query_row("SELECT count(*), count(DISTINCT v) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("count");
        assert_eq!((rows, distinct), (committed as i64, committed as i64));
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
