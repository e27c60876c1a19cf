//! The `metrics` feature: what a queue records through the `metrics` facade. A binary of
//! its own, since the test installs the process's global recorder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use simplepyq_core::prelude::*;
use simplepyq_core::{Clock, NewTask, SystemClock};

use simplepyq::{ChannelOptions, EnqueueOptions, MemoryStore, SimplePyQ, TaskError};

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
    // A thread handler past its timeout: stuck for a while, then timed out.
    q.add_channel_with(
        "slow",
        |_: u32| {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        },
        ChannelOptions::new(1).timeout(Duration::from_millis(50)),
    )
    .expect("add");
    q.enqueue("slow", &0u32).expect("enqueue");
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
    let slow = [("channel", "slow")];
    assert_eq!(
        counter(&snapshot, "simplepyq_tasks_timed_out_total", &slow),
        1
    );
    assert_eq!(counter(&snapshot, "simplepyq_tasks_failed_total", &slow), 1);
    assert!(
        matches!(value(&snapshot, "simplepyq_tasks_stuck", &[]), Some(DebugValue::Gauge(n)) if n.into_inner() == 0.0),
        "the stuck gauge, back at 0"
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
            "simplepyq_store_tasks",
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
        "simplepyq_store_tasks",
        &[("channel", "metered"), ("status", "failed")],
    );
    assert!(matches!(failed, Some(DebugValue::Gauge(n)) if n.into_inner() == 1.0));
    q.stop();
}
