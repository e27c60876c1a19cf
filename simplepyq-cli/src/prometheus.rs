//! A store's state in the Prometheus text exposition format (version 0.0.4): the gauges the
//! library's `metrics` feature records, under the same names.

use std::fmt::Write;

use simplepyq::{Status, Store, Timestamp};
use simplepyq_core::{Error, StoreExt};

/// Tasks by channel and status, and each channel's oldest pending task's age, as
/// `GET /metrics` serves them.
pub(crate) fn exposition(store: &dyn Store, now: Timestamp) -> Result<String, Error> {
    let channels = store.channel_stats()?;
    let mut out = String::new();
    header(
        &mut out,
        "simplepyq_tasks",
        "gauge",
        "Tasks in the store, by channel and status.",
    );
    for c in &channels {
        for status in Status::ALL {
            sample(
                &mut out,
                "simplepyq_tasks",
                &[("channel", &c.name), ("status", status.as_str())],
                c.counts.get(status) as f64,
            );
        }
    }
    header(
        &mut out,
        "simplepyq_oldest_pending_age_seconds",
        "gauge",
        "How long ago each channel's oldest pending task was enqueued (0 with none pending).",
    );
    for c in &channels {
        let age = c.oldest_pending_age(now).as_secs_f64();
        sample(
            &mut out,
            "simplepyq_oldest_pending_age_seconds",
            &[("channel", &c.name)],
            age,
        );
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
