//! What the commands and the dashboard show of a store, as JSON.

use serde_json::{Value, json};
use simplepyq::{Counts, Store, Task, Timestamp};
use simplepyq_core::{Clock, Error, StoreExt, SystemClock};

/// The time by the store's clock (the server's, for PostgreSQL).
pub(crate) fn now(store: &dyn Store) -> Timestamp {
    store.clock().map_or_else(|| SystemClock.now(), |c| c.now())
}

/// What a channel holds now.
pub(crate) struct ChannelStats {
    pub(crate) name: String,
    pub(crate) counts: Counts,
    /// When its oldest pending task (by id) was enqueued.
    pub(crate) oldest_pending: Option<Timestamp>,
    pub(crate) next_wakeup: Option<Timestamp>,
}

/// The stats of every channel that has tasks, in name order.
pub(crate) fn channel_stats(store: &dyn Store) -> Result<Vec<ChannelStats>, Error> {
    let mut channels = Vec::new();
    for name in store.channels()? {
        channels.push(ChannelStats {
            counts: store.counts(Some(&name))?,
            oldest_pending: store.oldest_pending(&name)?,
            next_wakeup: store.next_wakeup(&name)?,
            name,
        });
    }
    Ok(channels)
}

/// The stats of every channel, as JSON.
pub(crate) fn stats(store: &dyn Store, now: Timestamp) -> Result<Value, Error> {
    let channels: Vec<Value> = channel_stats(store)?
        .into_iter()
        .map(|c| {
            json!({
                "channel": c.name,
                "pending": c.counts.pending, "running": c.counts.running,
                "delayed": c.counts.delayed, "done": c.counts.done, "failed": c.counts.failed,
                "oldest_pending_age_ms":
                    c.oldest_pending.map(|t| now.as_millis() - t.as_millis()),
                "next_wakeup_ms": c.next_wakeup.map(Timestamp::as_millis),
            })
        })
        .collect();
    Ok(json!({ "now_ms": now.as_millis(), "channels": channels }))
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
        "run_at_ms": t.state.run_at.as_millis(),
        "lease_until_ms": t.state.lease_until.map(Timestamp::as_millis),
        "created_at_ms": t.created_at.as_millis(),
        "updated_at_ms": t.state.updated_at.as_millis(),
        "last_error": t.state.last_error,
        "args": args,
    })
}
