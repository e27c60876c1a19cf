//! A stop signal that wakes its waiter.

use std::time::Duration;

use crate::sync::{Condvar, Mutex};

/// Tells a run's helper threads that the run stopped, waking the lease keeper from its
/// wait between rounds.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopSignal {
    /// Tells the waiter to stop.
    pub(crate) fn stop(&self) {
        *self.stopped.lock() = true;
        self.cv.notify_all();
    }

    /// Whether the run stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        *self.stopped.lock()
    }

    /// Waits up to `timeout`; returns whether to stop.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let mut stopped = self.stopped.lock();
        if !*stopped {
            self.cv.wait_for(&mut stopped, timeout);
        }
        *stopped
    }
}
