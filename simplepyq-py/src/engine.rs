//! `Engine`: one queue of the Rust library, over SQLite, redb or PostgreSQL, for Python.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::Mutex;
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rmpv::Value;
use simplepyq::{
    Backoff, Cancelled, ChannelOptions, EnqueueOptions, Error, ListFilter, MemoryStore,
    PostgresStore, RedbStore, Retention, Schedule, SimplePyQ, SqliteStore, Status, Task,
    TaskContext, TaskEnd, TaskError, TaskId, Timestamp,
};

use crate::QueueError;
use crate::convert::{to_python, to_value};

/// The queue, over the store its path names.
enum Backend {
    Sqlite(SimplePyQ<SqliteStore>),
    Memory(SimplePyQ<MemoryStore>),
    Redb(SimplePyQ<RedbStore>),
    Postgres(SimplePyQ<PostgresStore>),
}

/// Runs `$body` with `$q` bound to the queue, whatever its store.
macro_rules! on {
    ($backend:expr, $q:ident => $body:expr) => {
        match &*$backend {
            Backend::Sqlite($q) => $body,
            Backend::Memory($q) => $body,
            Backend::Redb($q) => $body,
            Backend::Postgres($q) => $body,
        }
    };
}

impl Backend {
    /// A PostgreSQL URL connects to the server; a path ending in `.redb` opens a redb file;
    /// `:memory:` (as for Python's `sqlite3`) makes a queue in this process's memory, gone
    /// when it ends; any other path a SQLite file (a file of the original simplepyq is
    /// imported).
    /// `lease`: how long a claim lasts unless renewed (the library's default if `None`).
    fn open(store: &str, lease: Option<Duration>, keep: Retention) -> simplepyq::Result<Backend> {
        fn build<S: simplepyq::Store>(
            store: S,
            lease: Option<Duration>,
            keep: Retention,
        ) -> simplepyq::Result<SimplePyQ<S>> {
            let mut builder = SimplePyQ::builder(store);
            if let Some(lease) = lease {
                builder = builder.lease(lease);
            }
            if let Some(d) = keep.done {
                builder = builder.keep_done(d);
            }
            if let Some(d) = keep.failed {
                builder = builder.keep_failed(d);
            }
            builder.build()
        }
        if store.starts_with("postgres://") || store.starts_with("postgresql://") {
            let store = PostgresStore::connect(store)?;
            Ok(Backend::Postgres(build(store, lease, keep)?))
        } else if store == ":memory:" {
            Ok(Backend::Memory(build(MemoryStore::new(), lease, keep)?))
        } else if store.ends_with(".redb") {
            Ok(Backend::Redb(build(RedbStore::open(store)?, lease, keep)?))
        } else {
            Ok(Backend::Sqlite(build(
                SqliteStore::open(store)?,
                lease,
                keep,
            )?))
        }
    }
}

/// A library error as the Python exception a caller expects: `ValueError` for bad names,
/// settings and requests, `KeyError` for an unknown task, `QueueError` for the store.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::InvalidChannel { .. }
        | Error::DuplicateChannel(_)
        | Error::InvalidConfig(_)
        | Error::InvalidTransition { .. } => PyValueError::new_err(e.to_string()),
        Error::NotFound(_) | Error::UnknownChannel(_) => PyKeyError::new_err(e.to_string()),
        e => QueueError::new_err(e.to_string()),
    }
}

thread_local! {
    /// Whether this thread runs a Python handler now.
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
    /// The context of the task whose Python handler runs on this thread.
    static CONTEXT: std::cell::RefCell<Option<TaskContext>> = const { std::cell::RefCell::new(None) };
}

/// The results of the parents of the task whose handler runs on this thread (what
/// `simplepyq.parent_results()` returns): `[(id, result), ...]` in id order, `None` for a
/// parent that returned nothing.
#[pyfunction]
pub(crate) fn parent_results(py: Python<'_>) -> PyResult<Vec<(i64, Py<PyAny>)>> {
    let Some(ctx) = CONTEXT.with(|c| c.borrow().clone()) else {
        return Err(PyRuntimeError::new_err(
            "parent_results() is called from a task's function, while it runs",
        ));
    };
    let results = py
        .detach(|| ctx.parent_results::<Value>())
        .map_err(py_err)?;
    results
        .into_iter()
        .map(|(id, value)| {
            let value = match value {
                Some(v) => to_python(py, &v)?.unbind(),
                None => py.None(),
            };
            Ok((id.get(), value))
        })
        .collect()
}

/// The task whose Python handler runs on this thread: `(id, attempt, traceparent)`, or
/// `None` outside a handler (the package's OpenTelemetry span reads it).
#[pyfunction]
pub(crate) fn current_task() -> Option<(i64, u32, Option<String>)> {
    CONTEXT.with(|c| {
        c.borrow().as_ref().map(|ctx| {
            (
                ctx.id().get(),
                ctx.attempt(),
                ctx.traceparent().map(str::to_owned),
            )
        })
    })
}

/// Runs `f` on a thread of its own and waits for it without the GIL, looking for signals
/// every 50 ms: on one (Ctrl-C), calls `interrupted` (with the receiver of `f`'s result,
/// which it may wait on) and returns the signal's exception.
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    f: impl FnOnce() -> T + Send + 'static,
    interrupted: impl FnOnce(&mpsc::Receiver<T>) + Send,
) -> PyResult<T> {
    let (done, result) = mpsc::channel();
    // Locked only by this thread: the lock makes the receiver `Sync`, as `detach` needs.
    let result = Mutex::new(result);
    std::thread::Builder::new()
        .name("simplepyq-wait".into())
        .spawn(move || {
            let _ = done.send(f());
        })
        .map_err(|e| QueueError::new_err(format!("could not start a thread: {e}")))?;
    loop {
        match py.detach(|| result.lock().recv_timeout(Duration::from_millis(50))) {
            Ok(outcome) => return Ok(outcome),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupt) = py.check_signals() {
                    py.detach(|| interrupted(&result.lock()));
                    return Err(interrupt);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(QueueError::new_err("the call ended without an outcome"));
            }
        }
    }
}

/// Seconds as a duration: a finite number, not negative.
fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        PyValueError::new_err(format!("{what} must be a number of seconds >= 0, got {s}"))
    })
}

/// How long finished tasks are kept, from `keep_done=` and `keep_failed=` (seconds).
fn retention(done: Option<f64>, failed: Option<f64>) -> PyResult<Retention> {
    Ok(Retention {
        done: done.map(|s| seconds("keep_done", s)).transpose()?,
        failed: failed.map(|s| seconds("keep_failed", s)).transpose()?,
    })
}

fn to_seconds(t: Timestamp) -> f64 {
    t.as_millis() as f64 / 1000.0
}

/// What a Python exception out of a handler means: `DelayException` defers the task
/// (`delay_seconds` later); anything else is a failed attempt whose error is the traceback.
fn outcome(py: Python<'_>, err: PyErr, delay_exception: &Py<PyAny>) -> TaskError {
    if err
        .value(py)
        .is_instance(delay_exception.bind(py))
        .unwrap_or(false)
    {
        let delay = err
            .value(py)
            .getattr("delay_seconds")
            .and_then(|d| d.extract::<f64>());
        return match delay {
            // NaN is no length of time (`max` would read it as 0, running the task again at
            // once, for ever).
            Ok(s) if s.is_nan() => {
                TaskError::msg("DelayException without a number of seconds: nan")
            }
            Ok(s) => {
                TaskError::delay(Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
            }
            Err(e) => TaskError::msg(format!("DelayException without a number of seconds: {e}")),
        };
    }
    TaskError::msg(traceback(py, &err))
}

/// The exception's traceback as Python prints it.
fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?
        .extract::<Vec<String>>()
    });
    match formatted {
        Ok(lines) => lines.concat().trim_end().to_owned(),
        Err(_) => err.to_string(),
    }
}

/// A queue of the Rust library; `simplepyq.SimplePyQ` wraps it.
#[pyclass(frozen, module = "simplepyq._simplepyq")]
pub(crate) struct Engine {
    backend: Arc<Backend>,
    delay_exception: Py<PyAny>,
    /// The process that opened it: a child forked from it has its memory but none of its
    /// threads (see `Drop`).
    pid: u32,
}

impl Drop for Engine {
    /// In a process forked from the one that opened it, the queue is left as it is: closing
    /// it would join threads that exist only in the parent (a wait for ever, or a panic),
    /// give back tasks that the parent runs, and close the parent's connections. The child's
    /// copy stays unused until the process ends (`simplepyq.SimplePyQ` opens a queue of the
    /// child's own).
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            std::mem::forget(Arc::clone(&self.backend));
        }
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (store, delay_exception, lease=None, keep_done=None, keep_failed=None))]
    fn new(
        py: Python<'_>,
        store: String,
        delay_exception: Py<PyAny>,
        lease: Option<f64>,
        keep_done: Option<f64>,
        keep_failed: Option<f64>,
    ) -> PyResult<Self> {
        let lease = lease.map(|l| seconds("lease", l)).transpose()?;
        let keep = retention(keep_done, keep_failed)?;
        let backend = py
            .detach(|| Backend::open(&store, lease, keep))
            .map_err(py_err)?;
        Ok(Engine {
            backend: Arc::new(backend),
            delay_exception,
            pid: std::process::id(),
        })
    }

    /// Binds `func` to channel `name`, run by up to `max_workers` threads.
    #[pyo3(signature = (name, func, max_workers, backoff=None, timeout=None, keep_done=None, keep_failed=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_channel(
        &self,
        name: &str,
        func: Py<PyAny>,
        max_workers: usize,
        backoff: Option<(f64, f64)>,
        timeout: Option<f64>,
        keep_done: Option<f64>,
        keep_failed: Option<f64>,
    ) -> PyResult<()> {
        let mut options = ChannelOptions::new(max_workers);
        options.retention = retention(keep_done, keep_failed)?;
        if let Some(t) = timeout {
            options = options.timeout(seconds("timeout", t)?);
        }
        if let Some((base, max)) = backoff {
            options = options.backoff(Backoff::exponential(
                seconds("backoff", base)?,
                seconds("backoff", max)?,
            ));
        }
        let delay_exception = Python::attach(|py| self.delay_exception.clone_ref(py));
        let handler = move |args: Value, ctx: &TaskContext| -> Result<(), TaskError> {
            Python::attach(|py| {
                let args = to_python(py, &args).map_err(|e| {
                    TaskError::fatal(format!(
                        "the arguments could not be made Python objects: {e}"
                    ))
                })?;
                IN_HANDLER.with(|h| h.set(true));
                CONTEXT.with(|c| *c.borrow_mut() = Some(ctx.clone()));
                let called = func.call1(py, (args,));
                CONTEXT.with(|c| *c.borrow_mut() = None);
                IN_HANDLER.with(|h| h.set(false));
                let returned = called.map_err(|err| outcome(py, err, &delay_exception))?;
                // What the function returned, unless None: the task's result.
                let returned = returned.bind(py);
                if !returned.is_none() {
                    let value = to_value(returned, 0).map_err(|e| {
                        TaskError::msg(format!("the function's return value cannot be kept: {e}"))
                    })?;
                    ctx.set_result(&value)?;
                }
                Ok(())
            })
        };
        on!(self.backend, q => q.add_channel_with(name, handler, options).map(drop)).map_err(|e| {
            match e {
                Error::DuplicateChannel(_) => {
                    PyValueError::new_err(format!("Channel '{name}' already exists"))
                }
                e => py_err(e),
            }
        })
    }

    /// Enqueues one task; returns its id.
    #[pyo3(signature = (channel, args, retries, delay, at, priority, unique, concurrency_key=None, timeout=None, after=None, traceparent=None))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        py: Python<'_>,
        channel: &str,
        args: &Bound<'_, PyAny>,
        retries: u32,
        delay: Option<f64>,
        at: Option<f64>,
        priority: i32,
        unique: Option<String>,
        concurrency_key: Option<String>,
        timeout: Option<f64>,
        after: Option<Vec<i64>>,
        traceparent: Option<String>,
    ) -> PyResult<i64> {
        let value = to_value(args, 0)?;
        let mut options = options(retries, delay, at, priority, unique, traceparent)?
            .after(after.unwrap_or_default().into_iter().map(TaskId::new));
        if let Some(key) = concurrency_key {
            options = options.concurrency_key(key);
        }
        if let Some(t) = timeout {
            options = options.timeout(seconds("timeout", t)?);
        }
        let id = py
            .detach(|| on!(self.backend, q => q.enqueue_with(channel, &value, options)))
            .map_err(py_err)?;
        Ok(id.get())
    }

    /// Enqueues many tasks in one transaction, all or none; returns their ids.
    #[pyo3(signature = (channel, many, retries, delay, at, priority, traceparent=None))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue_many(
        &self,
        py: Python<'_>,
        channel: &str,
        many: &Bound<'_, PyAny>,
        retries: u32,
        delay: Option<f64>,
        at: Option<f64>,
        priority: i32,
        traceparent: Option<String>,
    ) -> PyResult<Vec<i64>> {
        let values = many
            .try_iter()?
            .map(|item| to_value(&item?, 0))
            .collect::<PyResult<Vec<Value>>>()?;
        let options = options(retries, delay, at, priority, None, traceparent)?;
        let ids = py
            .detach(|| on!(self.backend, q => q.enqueue_many(channel, &values, options)))
            .map_err(py_err)?;
        Ok(ids.into_iter().map(TaskId::get).collect())
    }

    /// Enqueues a group of tasks of `channel` and a final task of `then` that waits for
    /// all of them, in one transaction; returns the group's ids and the final task's.
    #[pyo3(signature = (channel, many, then, then_args, retries, priority, traceparent=None))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue_group(
        &self,
        py: Python<'_>,
        channel: &str,
        many: &Bound<'_, PyAny>,
        then: &str,
        then_args: &Bound<'_, PyAny>,
        retries: u32,
        priority: i32,
        traceparent: Option<String>,
    ) -> PyResult<(Vec<i64>, i64)> {
        let values = many
            .try_iter()?
            .map(|item| to_value(&item?, 0))
            .collect::<PyResult<Vec<Value>>>()?;
        let last = to_value(then_args, 0)?;
        let options = options(retries, None, None, priority, None, traceparent)?;
        let (ids, last) = py
            .detach(|| {
                on!(self.backend, q => q.enqueue_group(
                    channel, &values, options.clone(), then, &last, options.clone()))
            })
            .map_err(py_err)?;
        Ok((ids.into_iter().map(TaskId::get).collect(), last.get()))
    }

    /// The tasks task `id` waited for, in id order.
    fn parents(&self, py: Python<'_>, id: i64) -> PyResult<Vec<i64>> {
        let parents = py
            .detach(|| on!(self.backend, q => q.parents(TaskId::new(id))))
            .map_err(py_err)?;
        Ok(parents.into_iter().map(TaskId::get).collect())
    }

    /// Fires a schedule (`every` seconds, or a `cron` expression in UTC) into `channel`.
    #[pyo3(signature = (name, channel, args, every, cron, retries, priority, unique))]
    #[allow(clippy::too_many_arguments)]
    fn add_schedule(
        &self,
        name: &str,
        channel: &str,
        args: &Bound<'_, PyAny>,
        every: Option<f64>,
        cron: Option<&str>,
        retries: u32,
        priority: i32,
        unique: Option<String>,
    ) -> PyResult<()> {
        let schedule = match (every, cron) {
            (Some(s), None) => Schedule::every(seconds("every", s)?),
            (None, Some(expression)) => Schedule::cron(expression),
            _ => return Err(PyValueError::new_err("give every= or cron=, one of them")),
        }
        .map_err(py_err)?;
        let value = to_value(args, 0)?;
        let options = options(retries, None, None, priority, unique, None)?;
        on!(self.backend, q => q.add_schedule_with(name, channel, schedule, &value, options))
            .map_err(py_err)
    }

    /// Stops firing a schedule here; returns whether there was one.
    fn remove_schedule(&self, name: &str) -> bool {
        on!(self.backend, q => q.remove_schedule(name))
    }

    fn start(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| on!(self.backend, q => q.start()))
            .map_err(py_err)
    }

    /// Stops the workers; with a timeout, waits at most that long for running handlers.
    /// Returns the ids of the tasks whose handlers still ran.
    #[pyo3(signature = (timeout=None))]
    fn stop(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Vec<i64>> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let backend = Arc::clone(&self.backend);
        let stop = move || match timeout {
            Some(t) => on!(backend, q => q.stop_timeout(t)),
            None => on!(backend, q => q.stop()),
        };
        // In a handler, the stop must know its caller (it does not wait for that handler),
        // and no signal comes to that thread: it stops here.
        let report = if IN_HANDLER.with(Cell::get) {
            py.detach(stop)
        } else {
            // Ctrl-C ends the wait (the stop goes on: no handler starts, running ones end
            // as they will) with KeyboardInterrupt: a hung handler cannot hold the process.
            interruptible(py, stop, |_| {})?
        };
        Ok(report.running.into_iter().map(TaskId::get).collect())
    }

    /// Runs until no task of a channel with a handler here is left, then stops. The wait
    /// lets go of the GIL and looks for signals every 50 ms: on Ctrl-C the queue stops
    /// (running handlers finish) and `KeyboardInterrupt` is raised.
    fn run_until_complete(&self, py: Python<'_>) -> PyResult<()> {
        // In a handler: refused at once (it would wait for that very handler).
        if IN_HANDLER.with(Cell::get) {
            return py
                .detach(|| on!(self.backend, q => q.run_until_complete()))
                .map_err(py_err);
        }
        let backend = Arc::clone(&self.backend);
        let stopper = Arc::clone(&self.backend);
        interruptible(
            py,
            move || on!(backend, q => q.run_until_complete()),
            move |result| {
                on!(stopper, q => q.stop());
                let _ = result.recv();
            },
        )?
        .map_err(py_err)
    }

    #[pyo3(signature = (channel=None))]
    fn clear_failed(&self, py: Python<'_>, channel: Option<&str>) -> PyResult<usize> {
        py.detach(|| on!(self.backend, q => q.clear_failed(channel)))
            .map_err(py_err)
    }

    #[pyo3(signature = (channel=None, retries=None))]
    fn requeue_failed(
        &self,
        py: Python<'_>,
        channel: Option<&str>,
        retries: Option<u32>,
    ) -> PyResult<usize> {
        py.detach(|| on!(self.backend, q => q.requeue_failed(channel, retries)))
            .map_err(py_err)
    }

    fn pause(&self, py: Python<'_>, channel: &str) -> PyResult<bool> {
        py.detach(|| on!(self.backend, q => q.pause(channel)))
            .map_err(py_err)
    }

    fn resume(&self, py: Python<'_>, channel: &str) -> PyResult<bool> {
        py.detach(|| on!(self.backend, q => q.resume(channel)))
            .map_err(py_err)
    }

    #[pyo3(signature = (channel, max_running))]
    fn set_max_running(
        &self,
        py: Python<'_>,
        channel: &str,
        max_running: Option<u32>,
    ) -> PyResult<bool> {
        py.detach(|| on!(self.backend, q => q.set_max_running(channel, max_running)))
            .map_err(py_err)
    }

    /// The channel's rate of starts, or (`per_key`) its rate of each concurrency key's.
    #[pyo3(signature = (channel, starts, per, per_key))]
    fn set_rate(
        &self,
        py: Python<'_>,
        channel: &str,
        starts: Option<u32>,
        per: f64,
        per_key: bool,
    ) -> PyResult<bool> {
        let rate = match starts {
            Some(n) => Some(simplepyq::Rate::new(n, seconds("per", per)?)),
            None => None,
        };
        py.detach(|| match per_key {
            true => on!(self.backend, q => q.set_rate_per_key(channel, rate)),
            false => on!(self.backend, q => q.set_rate(channel, rate)),
        })
        .map_err(py_err)
    }

    fn set_max_running_per_key(&self, py: Python<'_>, channel: &str, max: u32) -> PyResult<bool> {
        py.detach(|| on!(self.backend, q => q.set_max_running_per_key(channel, max)))
            .map_err(py_err)
    }

    /// The running tasks whose function ran past its timeout and still runs, in any process:
    /// `(id, channel, attempt, since)`, `since` in seconds since the Unix epoch.
    #[pyo3(signature = (channel=None))]
    fn stuck(
        &self,
        py: Python<'_>,
        channel: Option<String>,
    ) -> PyResult<Vec<(i64, String, u32, f64)>> {
        let marks = py
            .detach(|| on!(self.backend, q => q.stuck(channel.as_deref())))
            .map_err(py_err)?;
        Ok(marks
            .into_iter()
            .map(|m| (m.id.get(), m.channel, m.attempt, to_seconds(m.since)))
            .collect())
    }

    fn paused(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let flows = py
            .detach(|| on!(self.backend, q => q.flows()))
            .map_err(py_err)?;
        Ok(flows
            .into_iter()
            .filter(|(_, f)| f.paused)
            .map(|(name, _)| name)
            .collect())
    }

    fn remove_channel(&self, py: Python<'_>, name: &str) -> PyResult<usize> {
        py.detach(|| on!(self.backend, q => q.remove_channel(name)))
            .map_err(py_err)
    }

    #[pyo3(signature = (channel, older_than))]
    fn purge_done(
        &self,
        py: Python<'_>,
        channel: Option<&str>,
        older_than: f64,
    ) -> PyResult<usize> {
        let older_than = seconds("older_than", older_than)?;
        py.detach(|| on!(self.backend, q => q.purge_done(channel, older_than)))
            .map_err(py_err)
    }

    #[pyo3(signature = (channel=None))]
    fn counts<'py>(&self, py: Python<'py>, channel: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
        let counts = py
            .detach(|| on!(self.backend, q => q.counts(channel)))
            .map_err(py_err)?;
        let dict = PyDict::new(py);
        for status in Status::ALL {
            dict.set_item(status.as_str(), counts.get(status))?;
        }
        Ok(dict)
    }

    #[pyo3(signature = (channel, status, limit, after))]
    fn tasks(
        &self,
        py: Python<'_>,
        channel: Option<String>,
        status: Option<&str>,
        limit: usize,
        after: Option<i64>,
    ) -> PyResult<Vec<TaskInfo>> {
        let mut filter = ListFilter::new(limit);
        filter.channel = channel;
        if let Some(status) = status {
            filter.status = Some(
                status
                    .parse::<Status>()
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            );
        }
        filter.after = after.map(TaskId::new);
        let tasks = py
            .detach(|| on!(self.backend, q => q.tasks(&filter)))
            .map_err(py_err)?;
        tasks.iter().map(|t| TaskInfo::new(py, t)).collect()
    }

    /// What task `id`'s function returned (`None` if it returned nothing, or the task is
    /// not done or does not exist).
    fn result<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Option<Bound<'py, PyAny>>> {
        let value = py
            .detach(|| on!(self.backend, q => q.result::<Value>(TaskId::new(id))))
            .map_err(py_err)?;
        value.map(|v| to_python(py, &v)).transpose()
    }

    /// Waits up to `timeout` seconds (`None`: as long as it takes; Ctrl-C interrupts) for
    /// task `id` to end: `("done", result)`, `("failed", last_error)`, `("gone", None)`, or
    /// `None` if it has not ended by then.
    #[pyo3(signature = (id, timeout=None))]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        id: i64,
        timeout: Option<f64>,
    ) -> PyResult<Option<(&'static str, Bound<'py, PyAny>)>> {
        let timeout = match timeout {
            Some(t) => seconds("timeout", t)?,
            None => Duration::MAX,
        };
        let backend = Arc::clone(&self.backend);
        let ended = interruptible(
            py,
            move || on!(backend, q => q.wait::<Value>(TaskId::new(id), timeout)),
            |_| {},
        )?
        .map_err(py_err)?;
        Ok(match ended {
            None => None,
            Some(TaskEnd::Done(value)) => {
                let value = match value {
                    Some(v) => to_python(py, &v)?,
                    None => py.None().into_bound(py),
                };
                Some(("done", value))
            }
            Some(TaskEnd::Failed(error)) => Some(("failed", error.into_pyobject(py)?.into_any())),
            Some(TaskEnd::Gone) => Some(("gone", py.None().into_bound(py))),
        })
    }

    fn task(&self, py: Python<'_>, id: i64) -> PyResult<Option<TaskInfo>> {
        let task = py
            .detach(|| on!(self.backend, q => q.task(TaskId::new(id))))
            .map_err(py_err)?;
        task.map(|t| TaskInfo::new(py, &t)).transpose()
    }

    /// `"removed"` for a queued task deleted, `"requested"` for a running one asked to stop.
    fn cancel(&self, py: Python<'_>, id: i64) -> PyResult<&'static str> {
        let cancelled = py
            .detach(|| on!(self.backend, q => q.cancel(TaskId::new(id))))
            .map_err(py_err)?;
        Ok(match cancelled {
            Cancelled::Removed => "removed",
            Cancelled::Requested => "requested",
            _ => "requested",
        })
    }
}

/// The enqueue options: retries, when (a delay or a time, in seconds), priority, unique key.
fn options(
    retries: u32,
    delay: Option<f64>,
    at: Option<f64>,
    priority: i32,
    unique: Option<String>,
    traceparent: Option<String>,
) -> PyResult<EnqueueOptions> {
    let mut options = EnqueueOptions::new().retries(retries).priority(priority);
    if let Some(key) = unique {
        options = options.unique(key);
    }
    if let Some(traceparent) = traceparent {
        options = options.traceparent(traceparent);
    }
    match (delay, at) {
        (Some(_), Some(_)) => {
            return Err(PyValueError::new_err("give delay or at, not both"));
        }
        (Some(d), None) => options = options.delay(seconds("delay", d)?),
        (None, Some(t)) => {
            let at = UNIX_EPOCH.checked_add(seconds("at", t)?).ok_or_else(|| {
                PyValueError::new_err(format!("at is too far in the future: {t} seconds"))
            })?;
            options = options.at(at);
        }
        (None, None) => {}
    }
    Ok(options)
}

/// A stored task, as `SimplePyQ.tasks` and `SimplePyQ.task` return it. Times are seconds
/// since the Unix epoch, as `time.time()` gives them.
#[pyclass(frozen, get_all, name = "Task", module = "simplepyq._simplepyq")]
pub(crate) struct TaskInfo {
    id: i64,
    channel: String,
    args: Py<PyAny>,
    status: &'static str,
    retries_left: u32,
    max_retries: u32,
    attempts: u32,
    run_at: f64,
    last_error: Option<String>,
    created_at: f64,
    updated_at: f64,
    priority: i32,
    unique_key: Option<String>,
    concurrency_key: Option<String>,
    traceparent: Option<String>,
}

impl TaskInfo {
    fn new(py: Python<'_>, task: &Task) -> PyResult<Self> {
        let value: Value = simplepyq::decode_args(task).map_err(py_err)?;
        Ok(TaskInfo {
            id: task.id.get(),
            channel: task.channel.clone(),
            args: to_python(py, &value)?.unbind(),
            status: task.state.status.as_str(),
            retries_left: task.state.retries_left,
            max_retries: task.state.max_retries,
            attempts: task.state.attempts,
            run_at: to_seconds(task.state.run_at),
            last_error: task.state.last_error.clone(),
            created_at: to_seconds(task.created_at),
            updated_at: to_seconds(task.state.updated_at),
            priority: task.priority,
            unique_key: task.unique_key.clone(),
            concurrency_key: task.concurrency_key.clone(),
            traceparent: task.traceparent.clone(),
        })
    }
}

#[pymethods]
impl TaskInfo {
    fn __repr__(&self) -> String {
        format!(
            "Task(id={}, channel={:?}, status={:?}, attempts={})",
            self.id, self.channel, self.status, self.attempts
        )
    }
}
