//! Metrics through the `metrics` crate's facade (the `metrics` feature): what became of
//! each attempt, and the store's state. Without the feature every function does nothing.

#[cfg(feature = "metrics")]
use simplepyq_core::{Outcome, Status, StoreExt};
use simplepyq_core::{Result, Store, Timestamp};

use crate::report::TaskReport;

/// Counts a recorded attempt by what became of it, and times its handler.
pub(crate) fn count(report: &TaskReport<'_>) {
    #[cfg(feature = "metrics")]
    {
        let channel = report.channel.to_owned();
        let name = match (report.outcome, report.status) {
            (Outcome::Succeeded, _) => "simplepyq_tasks_done_total",
            (Outcome::Delayed { .. }, _) => "simplepyq_tasks_delayed_total",
            (Outcome::Failed { .. }, Status::Failed) => "simplepyq_tasks_failed_total",
            (Outcome::Failed { .. }, _) => "simplepyq_tasks_retried_total",
        };
        metrics::counter!(name, "channel" => channel.clone()).increment(1);
        metrics::histogram!("simplepyq_task_duration_seconds", "channel" => channel)
            .record(report.elapsed.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = report;
}

/// Counts an outcome the store refused because the attempt's lease was lost.
pub(crate) fn count_lease_lost(channel: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("simplepyq_lease_lost_total", "channel" => channel.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = channel;
}

/// Counts tasks of dead workers recovered.
pub(crate) fn count_recovered(n: usize) {
    #[cfg(feature = "metrics")]
    metrics::counter!("simplepyq_tasks_recovered_total")
        .increment(u64::try_from(n).unwrap_or(u64::MAX));
    #[cfg(not(feature = "metrics"))]
    let _ = n;
}

/// Sets the gauges of the tasks of `channels` (this queue's), by channel and status, and of
/// each channel's oldest pending task's age.
pub(crate) fn gauge_channels<S: Store>(
    store: &S,
    channels: Vec<String>,
    now: Timestamp,
) -> Result<()> {
    #[cfg(feature = "metrics")]
    for name in channels {
        let c = store.stats_of(name)?;
        for status in Status::ALL {
            let labels = [
                ("channel", c.name.clone()),
                ("status", status.as_str().to_owned()),
            ];
            metrics::gauge!("simplepyq_tasks", &labels).set(c.counts.get(status) as f64);
        }
        let age = c.oldest_pending_age(now).as_secs_f64();
        metrics::gauge!("simplepyq_oldest_pending_age_seconds", "channel" => c.name).set(age);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (store, channels, now);
    Ok(())
}

#[cfg(all(test, feature = "metrics", feature = "memory"))]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use metrics::{SharedString, Unit};
    use metrics_util::CompositeKey;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use simplepyq_core::{Clock, NewTask, Store, SystemClock};

    use crate::{EnqueueOptions, MemoryStore, SimplePyQ, TaskError};

    type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

    /// The value of metric `name` whose labels include `labels`.
    fn value<'a>(
        snapshot: &'a Snapshot,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'a DebugValue> {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let matches = key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
            matches.then_some(value)
        })
    }

    fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
        match value(snapshot, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    #[test]
    fn attempts_and_the_store_are_recorded_through_the_facade() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // Workers run on their own threads: the recorder must be the global one.
        recorder.install().expect("the first recorder");
        let store = Arc::new(MemoryStore::new());
        // A dead worker's claim, its lease already expired: the queue recovers it.
        let now = SystemClock.now();
        store
            .enqueue(
                &[NewTask::new(
                    "metered",
                    rmp_serde::to_vec(&0u32).expect("encode"),
                )],
                now,
            )
            .expect("enqueue");
        assert_eq!(store.claim("metered", 1, now, now).expect("claim").len(), 1);
        let q = SimplePyQ::builder(store.clone())
            .lease(Duration::from_millis(300))
            .build()
            .expect("build");
        q.add_channel(
            "metered",
            |n: u32| match n {
                0 => Ok(()),
                1 => Err(TaskError::msg("boom")),
                _ => Err(TaskError::delay(Duration::from_millis(1))),
            },
            2,
        )
        .expect("add");
        for n in [0u32, 0, 1] {
            q.enqueue_with(
                "metered",
                &n,
                EnqueueOptions::new().retries(u32::from(n == 1)),
            )
            .expect("enqueue");
        }
        q.run_until_complete().expect("run");
        // A snapshot takes what it reads out of the recorder: one for these checks.
        let snapshot = snapshotter.snapshot().into_vec();
        let c = |name| counter(&snapshot, name, &[("channel", "metered")]);
        // The recovered task, and two more, done; the failing one retried, then failed.
        assert_eq!(c("simplepyq_tasks_done_total"), 3);
        assert_eq!(c("simplepyq_tasks_retried_total"), 1);
        assert_eq!(c("simplepyq_tasks_failed_total"), 1);
        assert_eq!(
            counter(&snapshot, "simplepyq_tasks_recovered_total", &[]),
            1
        );
        match value(
            &snapshot,
            "simplepyq_task_duration_seconds",
            &[("channel", "metered")],
        ) {
            Some(DebugValue::Histogram(times)) => assert_eq!(times.len(), 5),
            other => panic!("no histogram: {other:?}"),
        }
        // The gauges follow the store while the queue runs.
        q.start().expect("start");
        let deadline = Instant::now() + Duration::from_secs(10);
        let snapshot = loop {
            let snapshot = snapshotter.snapshot().into_vec();
            let done = value(
                &snapshot,
                "simplepyq_tasks",
                &[("channel", "metered"), ("status", "done")],
            );
            if let Some(DebugValue::Gauge(n)) = done
                && n.into_inner() == 3.0
            {
                break snapshot;
            }
            assert!(Instant::now() < deadline, "no done gauge of 3: {done:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let failed = value(
            &snapshot,
            "simplepyq_tasks",
            &[("channel", "metered"), ("status", "failed")],
        );
        assert!(matches!(failed, Some(DebugValue::Gauge(n)) if n.into_inner() == 1.0));
        q.stop();
    }
}
