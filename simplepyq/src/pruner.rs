//! The pruner thread of a run: deletes the channels' finished tasks older than their
//! retention says, a pass at a time, while the queue runs.

use std::time::{Duration, Instant};

use simplepyq_core::{Status, Store, batch};

use crate::engine::{Engine, guarded};
use crate::retention::period;
use crate::signal::StopSignal;

/// After a batch that took the store `t`, the pruner waits this many times `t` before the
/// next: it takes a tenth of the store's time (on SQLite, of its only writer) from the
/// workers...
const YIELD: u32 = 9;
/// ...and while batches keep coming back full (finished tasks come faster than a tenth of
/// the store deletes them), the wait halves at each full batch down to this many times `t`:
/// a quarter of the store's time. With a tenth, a PostgreSQL channel finishing 20,000 tasks
/// a second gathered done tasks without end (about 13,600 deleted a second; BENCHMARKS.md,
/// "A PostgreSQL queue under steady load"). A short batch ends the pass, and the next pass
/// starts at a tenth again.
const BEHIND_YIELD: u32 = 3;

/// The pruner of a run: deletes the channels' finished tasks older than they are kept, a
/// pass at a time, until the run stops. A pass deletes a batch at a time
/// ([`simplepyq_core::AdminStore::purge_batch`]: at most
/// [`simplepyq_core::batch::BULK_BATCH`] tasks, one short transaction), yielding the store
/// to the workers between batches.
pub(crate) fn prune<S: Store>(engine: &Engine<S>, signal: &StopSignal) {
    loop {
        let kept = engine.kept.all();
        for (channel, retention) in &kept {
            let statuses = [
                (Status::Done, retention.done),
                (Status::Failed, retention.failed),
            ];
            for (status, keep) in statuses {
                let Some(keep) = keep else { continue };
                if !purge(engine, signal, channel, status, keep) {
                    return;
                }
            }
        }
        if signal.wait(period(&kept)) {
            return;
        }
    }
}

/// Deletes `channel`'s tasks with `status` older than `keep`, a batch at a time, until none
/// is left or an error (recorded; the next pass tries again). Returns false once the run
/// stopped.
fn purge<S: Store>(
    engine: &Engine<S>,
    signal: &StopSignal,
    channel: &str,
    status: Status,
    keep: Duration,
) -> bool {
    let mut wait = YIELD;
    loop {
        if signal.is_stopped() {
            return false;
        }
        let before = engine.now().before(keep);
        let began = Instant::now();
        match guarded(|| engine.store.purge_batch(status, Some(channel), before)) {
            Ok(n) if n >= batch::BULK_BATCH => {}
            Ok(_) => return true,
            Err(e) => {
                engine.errors.record(&e);
                return true;
            }
        }
        if signal.wait(began.elapsed() * wait) {
            return false;
        }
        wait = (wait / 2).max(BEHIND_YIELD);
    }
}
