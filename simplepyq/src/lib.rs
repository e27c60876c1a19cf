//! Queueing tasks doesn't have to be complicated.
//!
//! simplepyq hands work to background worker threads, and that work survives restarts and
//! crashes with nothing to run beside it. It re-implements the Python library `simplepyq`
//! in Rust: channels bind a name to a handler and a number of workers; tasks carry
//! MessagePack-encoded arguments, retries and a run-at time; a handler can fail (and be
//! retried), panic (and be recorded as failed) or delay its task.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use simplepyq::{SimplePyQ, TaskError};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Scrape { url: String }
//!
//! let dir = tempfile::tempdir()?;
//! let q = SimplePyQ::open(dir.path().join("tasks.db"))?; // created if needed
//! let seen = Arc::new(AtomicUsize::new(0));
//! let counter = Arc::clone(&seen);
//! q.add_channel("scrape", move |job: Scrape| {
//!     assert!(job.url.starts_with("https://"));
//!     counter.fetch_add(1, Ordering::SeqCst);
//!     Ok::<(), TaskError>(())
//! }, 2)?;
//! for i in 0..10 {
//!     q.enqueue("scrape", &Scrape { url: format!("https://example.com/{i}") })?;
//! }
//! q.run_until_complete()?;
//! assert_eq!(seen.load(Ordering::SeqCst), 10);
//! assert_eq!(q.counts("scrape")?.done, 10);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Handlers, sync and async
//! A handler takes the task's arguments, and may take its [`TaskContext`] too. Thread
//! channels run blocking functions; with the `tokio` feature, async channels run futures:
//!
//! ```
//! # #[cfg(feature = "tokio")] {
//! use simplepyq::{SimplePyQ, TaskContext};
//! # let dir = tempfile::tempdir()?;
//! let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
//! q.add_channel("sync", |n: u32| { println!("{n}"); Ok(()) }, 2)?;
//! q.add_channel("sync_ctx", |n: u32, ctx: &TaskContext| {
//!     println!("{n}: task {} attempt {}", ctx.id(), ctx.attempt());
//!     Ok(())
//! }, 2)?;
//! q.add_channel_async("async", |n: u32| async move { println!("{n}"); Ok(()) }, 100)?;
//! q.add_channel_async("async_ctx", |n: u32, ctx: TaskContext| async move {
//!     println!("{n}: task {} attempt {}", ctx.id(), ctx.attempt());
//!     Ok(())
//! }, 100)?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Semantics
//! - **At least once.** A task is claimed atomically under a lease; a worker that dies
//!   leaves its task `running` until the lease expires, and then it runs again: a lost run,
//!   which uses no retry (a task that loses more than [`Builder::max_lost_runs`] runs fails
//!   with "worker lost"). No task runs twice at the same time while its lease is live:
//!   running workers renew their leases.
//! - **Stopping.** Once [`SimplePyQ::stop`], [`SimplePyQ::stop_timeout`], a drop or
//!   [`SimplePyQ::remove_channel`] begins, no handler starts; tasks claimed ahead and not
//!   started are given back unused; running handlers keep their leases until their outcomes
//!   are recorded.
//! - **Retries.** `retries = N` allows N more attempts after a failed first one. A panic is
//!   a failure. Arguments that do not decode fail the task at once, without retries.
//! - **Delays** ([`TaskError::Delay`]) defer a task without using a retry.
//!
//! # Crate features
//! - `sqlite` (default): [`SimplePyQ::open`] and [`SqliteStore`], the durable backend on a
//!   SQLite file (SQLite is compiled in).
//! - `memory`: [`SimplePyQ::memory`] and [`MemoryStore`], the in-memory backend.
//! - `redb`: [`RedbStore`], a durable backend in pure Rust (one process per file); use it
//!   with [`SimplePyQ::new`] or [`SimplePyQ::builder`].
//! - `tokio`: async channels ([`SimplePyQ::add_channel_async`]): handlers that are futures,
//!   run on a tokio runtime; [`SimplePyQ::stop_async`] and
//!   [`SimplePyQ::run_until_complete_async`].
//! - `tracing`: [`tracing`](https://docs.rs/tracing) events for each task (claimed at
//!   debug level; succeeded, delayed and retried at info; failed, and storage errors met by
//!   workers, at warn), with the task's id, channel and attempt as fields.
//! - `metrics`: counters, a histogram and gauges through the [`metrics`](https://docs.rs/metrics)
//!   facade, for whichever exporter the program installs: `simplepyq_tasks_done_total`,
//!   `simplepyq_tasks_failed_total`, `simplepyq_tasks_retried_total`,
//!   `simplepyq_tasks_delayed_total` and `simplepyq_lease_lost_total` (each by `channel`,
//!   counted by the process that ran the attempt), `simplepyq_tasks_recovered_total` (tasks
//!   of dead workers this process recovered), `simplepyq_task_duration_seconds` (a
//!   histogram of handler run times, by `channel`); and the store's state as gauges, set by
//!   each running queue every third of a lease: `simplepyq_store_tasks` (by `channel` and
//!   `status`) and `simplepyq_store_oldest_pending_age_seconds`, `simplepyq_channel_paused` (1 for a
//!   paused channel) and `simplepyq_channel_max_running` (a channel's limit of running
//!   tasks, if it has one; all by `channel`), figures of
//!   the store that `simplepyq serve` gives at `/metrics` too (the store's figures are named
//!   `simplepyq_store_*`; a process's own, the others, are not).
//! - `opentelemetry`: traces that cross the queue. An enqueue keeps the current
//!   [OpenTelemetry](https://docs.rs/opentelemetry) span's context with the task (a W3C
//!   `traceparent`, [`Task::traceparent`]), and whichever process runs the task makes the
//!   handler's span (`process {channel}`, with the task's id, channel and attempt) its child,
//!   current while the handler runs, through the global tracer provider the program installs.
//!   With `tracing-opentelemetry`, `tracing` spans take part on both sides.

mod channel;
mod channel_work;
mod context;
mod current;
mod deadlines;
mod dispatch;
mod engine;
mod flow;
mod handler;
mod held;
mod leases;
mod metered;
mod options;
mod outbox;
#[cfg(all(feature = "postgres", feature = "tokio"))]
mod outbox_async;
mod outcomes;
mod periodic;
mod pruner;
mod queue;
mod reads;
mod recorder;
mod report;
mod retention;
mod runner;
mod schedules;
#[cfg(all(test, shuttle))]
mod shuttle_tests;
mod signal;
#[cfg(feature = "tokio")]
mod spawner;
mod sync;
mod traces;
mod turn;
mod waiting;
mod worker;
mod workers;

pub use channel::Channel;
pub use context::{CancelReason, OnCancel, TaskContext};
#[cfg(feature = "tokio")]
pub use handler::AsyncHandler;
pub use handler::{ArgsOnly, Handler, TaskError, WithContext};
pub use options::{Backoff, ChannelOptions, EnqueueOptions, When};
pub use queue::{Builder, Cancelled, SimplePyQ, decode_args};
pub use report::{QueueStats, StopReport, TaskReport};
pub use retention::Retention;
pub use simplepyq_core::{
    AdminStore, ClaimStore, Clock, Counts, Error, Finished, Flow, FlowStore, InspectStore,
    ListFilter, ManualClock, Outcome, OutcomeStore, Rate, Result, Schedule, ScheduleStore, Status,
    Store, Stuck, SystemClock, Task, TaskId, TaskState, Timestamp, Totals, TransactionStore,
};
#[cfg(feature = "memory")]
pub use simplepyq_memory::MemoryStore;
#[cfg(all(feature = "postgres", feature = "tokio"))]
pub use simplepyq_postgres::tokio_postgres;
#[cfg(feature = "postgres")]
pub use simplepyq_postgres::{PostgresOptions, PostgresStore, ServerClock, postgres};
#[cfg(feature = "redb")]
pub use simplepyq_redb::{RedbDurability, RedbOptions, RedbStore};
#[cfg(any(feature = "sqlite", feature = "system-sqlite"))]
pub use simplepyq_sqlite::{Durability, SqliteOptions, SqliteStore, fork, rusqlite};
pub use waiting::TaskEnd;

/// The README's examples, compiled and run as doctests (they use every feature).
#[cfg(all(
    doctest,
    any(feature = "sqlite", feature = "system-sqlite"),
    feature = "postgres",
    feature = "tokio"
))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
