//! A store's state in the Prometheus text exposition format (version 0.0.4): the gauges the
//! library's `metrics` feature records and the store's [`Totals`], under the feature's names.

use std::fmt::Write;

use simplepyq::{Status, Store, Timestamp, Totals};
use simplepyq_core::{Error, StoreExt};

/// A counter of `/metrics`: its name, its help, and the figure of [`Totals`] it shows.
type Counter = (&'static str, &'static str, fn(&Totals) -> u64);

/// The counters of the store's [`Totals`].
const COUNTERS: [Counter; 4] = [
    (
        "simplepyq_store_tasks_done_total",
        "Runs that succeeded, by channel.",
        |t| t.done,
    ),
    (
        "simplepyq_store_tasks_failed_total",
        "Tasks that became failed, by channel.",
        |t| t.failed,
    ),
    (
        "simplepyq_store_tasks_retried_total",
        "Runs that failed and left a retry, by channel.",
        |t| t.retried,
    ),
    (
        "simplepyq_store_lease_lost_total",
        "Runs whose lease expired before they ended (worker died or hung), by channel.",
        |t| t.lease_lost,
    ),
];

/// Tasks by channel and status, each channel's oldest pending task's age, and the totals
/// of what became of runs, as `GET /metrics` serves them.
pub(crate) fn exposition(store: &dyn Store, now: Timestamp) -> Result<String, Error> {
    let channels = store.channel_summaries()?;
    let mut out = String::new();
    header(
        &mut out,
        "simplepyq_store_tasks",
        "gauge",
        "Tasks in the store, by channel and status.",
    );
    for c in &channels {
        for status in Status::ALL {
            sample(
                &mut out,
                "simplepyq_store_tasks",
                &[("channel", &c.name), ("status", status.as_str())],
                c.counts.get(status) as f64,
            );
        }
    }
    header(
        &mut out,
        "simplepyq_store_oldest_pending_age_seconds",
        "gauge",
        "How long ago each channel's oldest pending task was enqueued (0 with none pending).",
    );
    for c in &channels {
        let age = c.oldest_pending_age(now).as_secs_f64();
        sample(
            &mut out,
            "simplepyq_store_oldest_pending_age_seconds",
            &[("channel", &c.name)],
            age,
        );
    }
    header(
        &mut out,
        "simplepyq_channel_paused",
        "gauge",
        "1 for a paused channel (no process starts its tasks), 0 for a running one.",
    );
    for c in &channels {
        sample(
            &mut out,
            "simplepyq_channel_paused",
            &[("channel", &c.name)],
            f64::from(u8::from(c.paused)),
        );
    }
    header(
        &mut out,
        "simplepyq_channel_max_running",
        "gauge",
        "A channel's limit of running tasks across every process (channels with a limit).",
    );
    for c in &channels {
        if let Some(max) = c.max_running {
            sample(
                &mut out,
                "simplepyq_channel_max_running",
                &[("channel", &c.name)],
                f64::from(max),
            );
        }
    }
    header(
        &mut out,
        "simplepyq_store_tasks_stuck",
        "gauge",
        "Running tasks whose thread handler is past its timeout and still runs, in any \
         process, by channel.",
    );
    let mut stuck = std::collections::BTreeMap::<String, usize>::new();
    for mark in store.stuck(None)? {
        *stuck.entry(mark.channel).or_default() += 1;
    }
    for c in &channels {
        let n = stuck.get(&c.name).copied().unwrap_or(0);
        sample(
            &mut out,
            "simplepyq_store_tasks_stuck",
            &[("channel", &c.name)],
            n as f64,
        );
    }
    let totals = store.totals()?;
    for (name, help, figure) in COUNTERS {
        header(&mut out, name, "counter", help);
        for (channel, t) in &totals {
            sample(&mut out, name, &[("channel", channel)], figure(t) as f64);
        }
    }
    Ok(out)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
        .collect();
    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
}

/// A label value with `\`, `"` and line feeds escaped, as the format asks.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        let mut out = String::new();
        sample(
            &mut out,
            "m",
            &[("channel", "x\"y"), ("status", "done")],
            2.0,
        );
        assert_eq!(out, "m{channel=\"x\\\"y\",status=\"done\"} 2\n");
    }
}
