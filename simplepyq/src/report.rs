//! Telling the user what became of each attempt: a hook, and `tracing` events.

use std::time::Duration;

use simplepyq_core::{Outcome, Status, TaskId};

/// What became of one attempt of a task, as recorded in the store. Passed to the hook set
/// with [`crate::Builder::on_outcome`], e.g. to count successes and failures.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskReport<'a> {
    /// The task.
    pub id: TaskId,
    /// Its channel.
    pub channel: &'a str,
    /// The attempt (1 for the first run).
    pub attempt: u32,
    /// How long the handler ran.
    pub elapsed: Duration,
    /// How the handler's run ended.
    pub outcome: &'a Outcome,
    /// The task's status after it was recorded: `Done`; `Pending` or `Delayed` for a retry
    /// or a delay; `Failed` when no retry is left.
    pub status: Status,
}

/// The hook's type.
pub(crate) type Hook = dyn Fn(&TaskReport<'_>) + Send + Sync;

/// What the queue's runtime did beside running handlers, since the queue was built; from
/// [`crate::SimplePyQ::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Tasks claimed ahead for a worker and given back unstarted (pending again, no attempt
    /// used) when the queue stopped, was dropped, or their channel was removed.
    pub released: u64,
    /// Outcomes the store refused because the attempt no longer held its task: its lease had
    /// expired and another worker took the task over (the task ran twice), or the task was
    /// removed. Each is also a `tracing` warning.
    pub lease_lost: u64,
    /// Outcomes never recorded: the store kept failing while the queue stopped. Their tasks
    /// run again once their lease expires (a lost run, which uses no retry).
    pub unrecorded: u64,
    /// Running tasks of dead workers (in any process) that this queue's lease keeper
    /// recovered as lost runs.
    pub recovered: u64,
    /// Attempts that ran past their timeout ([`crate::ChannelOptions::timeout`]), recorded as
    /// failed with "timed out after …".
    pub timed_out: u64,
    /// Thread handlers running past their timeout now: a thread cannot be stopped, so each
    /// keeps its task's lease until it returns (a `tracing` warning names each).
    pub stuck: u64,
}

/// What a stop left behind, from [`crate::SimplePyQ::stop`] and
/// [`crate::SimplePyQ::stop_timeout`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopReport {
    /// The tasks whose handlers were still running when the stop returned: after a
    /// `stop_timeout` deadline, and the calling handler's own task when the stop is called
    /// from a handler. Their leases are kept until they finish and their outcomes are
    /// recorded.
    pub running: Vec<TaskId>,
    /// How many tasks claimed ahead and not started were given back.
    pub released: usize,
    /// Tasks whose outcome could not be recorded before the stop returned (the store kept
    /// failing): they run again once their lease expires.
    pub unrecorded: Vec<TaskId>,
    /// Tasks whose outcome, or whose giving back, the store had not taken by a
    /// `stop_timeout` deadline (a slow store: a busy file, a database failing over). The
    /// queue goes on in the background, their leases renewed, until the store takes them;
    /// a process that exits before leaves them to lease recovery, as a crash would.
    pub unsettled: Vec<TaskId>,
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}

/// Emits the `tracing` warning of an outcome the store refused as lease-lost.
pub(crate) fn trace_lease_lost(id: TaskId, channel: &str, attempt: u32) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        id = id.get(),
        channel,
        attempt,
        "simplepyq outcome dropped: the attempt's lease was lost (the task was taken over or removed)"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (id, channel, attempt);
}

/// Emits the `tracing` warning of a run past its timeout (`on_thread`: a thread handler's,
/// which runs on).
pub(crate) fn trace_timeout(
    id: TaskId,
    channel: &str,
    timeout: std::time::Duration,
    on_thread: bool,
) {
    #[cfg(feature = "tracing")]
    {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        if on_thread {
            tracing::warn!(
                id = id.get(),
                channel,
                timeout_ms = ms,
                "simplepyq task ran past its timeout: its cancellation signal is set; a thread \
                 handler cannot be stopped, so the task keeps its lease (no second run starts) \
                 until the handler returns, and its attempt is then recorded as timed out"
            );
        } else {
            tracing::warn!(
                id = id.get(),
                channel,
                timeout_ms = ms,
                "simplepyq task ran past its timeout: its future is dropped and its attempt \
                 recorded as timed out"
            );
        }
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (id, channel, timeout, on_thread);
}

/// Emits the `tracing` error of a queue that could not start the thread of its timeouts.
pub(crate) fn trace_no_deadline_thread(e: &std::io::Error) {
    #[cfg(feature = "tracing")]
    tracing::error!(error = %e, "simplepyq: no thread for timeouts; runs are not timed out");
    #[cfg(not(feature = "tracing"))]
    let _ = e;
}

/// Emits the `tracing` event of a recorded attempt (with the `tracing` feature).
pub(crate) fn trace(report: &TaskReport<'_>) {
    #[cfg(feature = "tracing")]
    {
        let (id, channel, attempt) = (report.id.get(), report.channel, report.attempt);
        let ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX);
        match (report.outcome, report.status) {
            (Outcome::Succeeded | Outcome::Returned(_), _) => {
                tracing::info!(id, channel, attempt, ms, "simplepyq task succeeded");
            }
            (Outcome::Delayed { until }, _) => {
                let until = until.as_millis();
                tracing::info!(id, channel, attempt, ms, until, "simplepyq task delayed");
            }
            (Outcome::Failed { error, .. }, Status::Failed) => {
                tracing::warn!(id, channel, attempt, ms, error, "simplepyq task failed");
            }
            (
                Outcome::Failed {
                    error, retry_at, ..
                },
                _,
            ) => {
                let retry_at = retry_at.as_millis();
                tracing::info!(
                    id,
                    channel,
                    attempt,
                    ms,
                    error,
                    retry_at,
                    "simplepyq task will be retried"
                );
            }
        }
    }
    #[cfg(not(feature = "tracing"))]
    let _ = report;
}

/// Emits the `tracing` event of a claimed task (with the `tracing` feature).
pub(crate) fn trace_claim(id: TaskId, channel: &str, attempt: u32) {
    #[cfg(feature = "tracing")]
    tracing::debug!(id = id.get(), channel, attempt, "simplepyq task claimed");
    #[cfg(not(feature = "tracing"))]
    let _ = (id, channel, attempt);
}

/// Emits a `tracing` event for a storage error a worker met (with the `tracing` feature).
pub(crate) fn trace_store_error(error: &simplepyq_core::Error) {
    #[cfg(feature = "tracing")]
    tracing::warn!(%error, "simplepyq storage error in a worker");
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

#[cfg(all(test, feature = "tracing", feature = "memory"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use crate::{EnqueueOptions, SimplePyQ, TaskError};

    /// Keeps the message of every event of channel "traced" (other tests run beside).
    #[derive(Clone, Default)]
    struct Messages(Arc<Mutex<Vec<String>>>);

    #[derive(Default)]
    struct Fields {
        message: String,
        channel: String,
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "channel" {
                self.channel = value.to_owned();
            }
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Messages {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if fields.channel == "traced" {
                self.0.lock().expect("lock").push(fields.message);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn each_outcome_is_a_tracing_event() {
        let messages = Messages::default();
        // Workers run on their own threads: the subscriber must be the global default.
        tracing::subscriber::set_global_default(messages.clone()).expect("first subscriber");
        let q = SimplePyQ::memory();
        q.add_channel(
            "traced",
            |n: u32| match n {
                0 => Ok(()),
                1 => Err(TaskError::msg("boom")),
                _ => Err(TaskError::fatal("bad")),
            },
            1,
        )
        .expect("add");
        for n in 0..3u32 {
            q.enqueue_with(
                "traced",
                &n,
                EnqueueOptions::new().retries(u32::from(n == 1)),
            )
            .expect("enqueue");
        }
        q.run_until_complete().expect("run");
        let messages = messages.0.lock().expect("lock").clone();
        let count = |m: &str| messages.iter().filter(|x| x.as_str() == m).count();
        assert_eq!(count("simplepyq task claimed"), 4, "{messages:?}");
        assert_eq!(count("simplepyq task succeeded"), 1, "{messages:?}");
        assert_eq!(count("simplepyq task will be retried"), 1, "{messages:?}");
        assert_eq!(count("simplepyq task failed"), 2, "{messages:?}");
    }
}
