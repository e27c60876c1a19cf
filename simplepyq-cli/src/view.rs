//! What the commands and the dashboard show of a store, as JSON.

use serde_json::{Value, json};
use simplepyq::{Store, Task, Timestamp};
use simplepyq_core::{ChannelSummary, Clock, Error, StoreExt, SystemClock};

/// The time by the store's clock (the server's, for PostgreSQL).
pub(crate) fn now(store: &dyn Store) -> Timestamp {
    store.clock().map_or_else(|| SystemClock.now(), |c| c.now())
}

/// The stats of every channel, as JSON.
pub(crate) fn summary(store: &dyn Store, now: Timestamp) -> Result<Value, Error> {
    Ok(summary_json(&store.channel_summaries()?, now))
}

/// `channels`' stats as JSON.
pub(crate) fn summary_json(channels: &[ChannelSummary], now: Timestamp) -> Value {
    let channels: Vec<Value> = channels
        .iter()
        .map(|c| {
            json!({
                "channel": c.name,
                "pending": c.counts.pending, "running": c.counts.running,
                "delayed": c.counts.delayed, "waiting": c.counts.waiting,
                "done": c.counts.done, "failed": c.counts.failed,
                "oldest_pending_age_ms":
                    c.oldest_pending.map(|t| now.as_millis() - t.as_millis()),
                "next_wakeup_ms": c.next_wakeup.map(Timestamp::as_millis),
                "paused": c.paused,
                "max_running": c.max_running,
                "max_running_per_key": c.max_running_per_key,
                "rate": c.rate.map(rate_json),
                "rate_per_key": c.rate_per_key.map(rate_json),
            })
        })
        .collect();
    json!({ "now_ms": now.as_millis(), "channels": channels })
}

/// A rate of starts as JSON.
fn rate_json(rate: simplepyq_core::Rate) -> Value {
    json!({ "starts": rate.starts, "per_ms": rate.per_ms() })
}

/// A done task's result as JSON (decoded from MessagePack), `null` for none.
pub(crate) fn result_json(result: Option<Vec<u8>>) -> Value {
    match result {
        None => Value::Null,
        Some(bytes) => rmp_serde::from_slice::<Value>(&bytes)
            .unwrap_or_else(|_| json!({ "undecodable_bytes": bytes })),
    }
}

/// A task as JSON, its arguments decoded from MessagePack (or shown as bytes if they are
/// not valid MessagePack).
pub(crate) fn task_json(t: &Task) -> Value {
    let args = rmp_serde::from_slice::<Value>(&t.args)
        .unwrap_or_else(|_| json!({ "undecodable_bytes": t.args }));
    json!({
        "id": t.id.get(),
        "channel": t.channel,
        "status": t.state.status.as_str(),
        "attempts": t.state.attempts,
        "retries_left": t.state.retries_left,
        "max_retries": t.state.max_retries,
        "priority": t.priority,
        "unique_key": t.unique_key,
        "concurrency_key": t.concurrency_key,
        "timeout_ms": t.timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "traceparent": t.traceparent,
        "run_at_ms": t.state.run_at.as_millis(),
        "lease_until_ms": t.state.lease_until.map(Timestamp::as_millis),
        "created_at_ms": t.created_at.as_millis(),
        "updated_at_ms": t.state.updated_at.as_millis(),
        "last_error": t.state.last_error,
        "args": args,
    })
}
