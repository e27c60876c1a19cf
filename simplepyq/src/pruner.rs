//! The pruner thread of a run: deletes the channels' finished tasks older than their
//! retention says, a pass at a time, while the queue runs.

use simplepyq_core::{Result, Store};

use crate::engine::{Engine, guarded};
use crate::retention::{Retention, period};
use crate::signal::StopSignal;

/// The pruner of a run: deletes the channels' finished tasks older than they are kept, a
/// pass at a time, until the run stops. Each store deletes in short transactions of at most
/// [`simplepyq_core::batch::BULK_BATCH`] tasks, so that no pass holds the store for long
/// (on SQLite, its only writer).
pub(crate) fn prune<S: Store>(engine: &Engine<S>, signal: &StopSignal) {
    loop {
        let kept = engine.kept.all();
        for (channel, retention) in &kept {
            if signal.is_stopped() {
                return;
            }
            if let Err(e) = guarded(|| pass(engine, channel, *retention)) {
                engine.errors.record(&e);
            }
        }
        if signal.wait(period(&kept)) {
            return;
        }
    }
}

/// One pass over `channel`: deletes its done and failed tasks older than kept.
fn pass<S: Store>(engine: &Engine<S>, channel: &str, retention: Retention) -> Result<usize> {
    let store = &engine.store;
    let now = engine.now();
    let mut deleted = 0;
    if let Some(keep) = retention.done {
        deleted += store.purge_done(Some(channel), now.before(keep))?;
    }
    if let Some(keep) = retention.failed {
        deleted += store.purge_failed(Some(channel), now.before(keep))?;
    }
    Ok(deleted)
}
