//! Wake-ups without lost notifications: a generation counter under a condvar.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Wakes the workers of one channel (or the lease keeper) when there is work, or tells them
/// to stop. A waiter passes the generation it saw before it last looked for work, so a
/// notification that came in between is never missed.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    stopped: bool,
}

impl Signal {
    /// The current generation, or `None` once stopped.
    pub(crate) fn generation(&self) -> Option<u64> {
        let s = self.state.lock();
        (!s.stopped).then_some(s.generation)
    }

    /// New work: wake one waiter, or all.
    pub(crate) fn notify(&self, all: bool) {
        self.state.lock().generation += 1;
        if all {
            self.cv.notify_all();
        } else {
            self.cv.notify_one();
        }
    }

    /// Tells every waiter to stop.
    pub(crate) fn stop(&self) {
        self.state.lock().stopped = true;
        self.cv.notify_all();
    }

    /// Waits until the generation moves past `seen`, a stop, or `timeout`.
    pub(crate) fn wait(&self, seen: u64, timeout: Duration) {
        let mut s = self.state.lock();
        if s.generation == seen && !s.stopped {
            self.cv.wait_for(&mut s, timeout);
        }
    }
}
