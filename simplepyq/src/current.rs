//! Which claim's handler runs on the calling thread, of which queue: a queue's calls made
//! from its own handlers (a stop, a start, `run_until_complete`) must not wait for that
//! handler.

use std::cell::Cell;

use simplepyq_core::Claim;

use crate::engine::Engine;

thread_local! {
    /// The claim whose handler runs on this thread, if any, with its queue's id.
    static CURRENT: Cell<Option<(u64, Claim)>> = const { Cell::new(None) };
}

/// The claim of `engine`'s queue whose handler runs on the calling thread: a stop called
/// from inside a handler does not wait for that handler, nor for another stop that waits
/// for it. A handler of another queue is not this queue's.
pub(crate) fn current_claim<S>(engine: &Engine<S>) -> Option<Claim> {
    CURRENT
        .with(Cell::get)
        .and_then(|(queue, claim)| (queue == engine.id).then_some(claim))
}

/// Runs `f` as the handler of `claim` of queue `queue` (an engine's id): a thread's handler,
/// or an async handler's poll on a runtime's thread.
pub(crate) fn as_current<T>(queue: u64, claim: Claim, f: impl FnOnce() -> T) -> T {
    let before = CURRENT.with(|c| c.replace(Some((queue, claim))));
    let result = f();
    CURRENT.with(|c| c.set(before));
    result
}
