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
            (Outcome::Succeeded | Outcome::Returned(_), _) => "simplepyq_tasks_done_total",
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

/// Counts an attempt of `channel` that ran past its timeout.
pub(crate) fn count_timed_out(channel: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("simplepyq_tasks_timed_out_total", "channel" => channel.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = channel;
}

/// Sets the gauge of thread handlers running past their timeout now.
pub(crate) fn gauge_stuck(stuck: u64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("simplepyq_tasks_stuck").set(stuck as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = stuck;
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
    let flows = store.flows()?;
    #[cfg(feature = "metrics")]
    for name in channels {
        let c = store.summary_with(name, &flows)?;
        for status in Status::ALL {
            let labels = [
                ("channel", c.name.clone()),
                ("status", status.as_str().to_owned()),
            ];
            metrics::gauge!("simplepyq_store_tasks", &labels).set(c.counts.get(status) as f64);
        }
        let age = c.oldest_pending_age(now).as_secs_f64();
        metrics::gauge!("simplepyq_store_oldest_pending_age_seconds", "channel" => c.name.clone())
            .set(age);
        if let Some(max) = c.max_running {
            metrics::gauge!("simplepyq_channel_max_running", "channel" => c.name.clone())
                .set(f64::from(max));
        }
        metrics::gauge!("simplepyq_channel_paused", "channel" => c.name)
            .set(f64::from(u8::from(c.paused)));
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (store, channels, now);
    Ok(())
}
