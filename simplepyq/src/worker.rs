//! The worker threads: claim, run, record; and the lease keeper.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use simplepyq_core::{Error, Outcome, Store, Task, Timestamp};

use crate::handler::{ErasedHandler, TaskError};
use crate::queue::Shared;
use crate::signal::Signal;

/// How often a worker tries to record an outcome while the store fails (about 2 s in all).
/// After that the task is left to lease recovery, which runs it again.
const FINISH_ATTEMPTS: u32 = 8;

/// Exponential backoff for store errors: 10 ms doubling to 1 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(10))
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        d
    }
}

/// One worker of `channel`: claims due tasks one at a time and runs them until stopped.
pub(crate) fn work<S: Store>(
    shared: &Shared<S>,
    channel: &str,
    handler: &ErasedHandler,
    signal: &Signal,
) {
    let mut backoff = Backoff::new();
    while let Some(seen) = signal.generation() {
        let now = shared.now();
        match shared.store.claim(channel, 1, now, now.after(shared.lease)) {
            Ok(tasks) if !tasks.is_empty() => {
                backoff = Backoff::new();
                for task in tasks {
                    run(shared, handler, task);
                }
            }
            Ok(_) => {
                let timeout = idle_timeout(shared, channel, now);
                shared.notify_progress();
                signal.wait(seen, timeout);
            }
            Err(e) => {
                shared.record_error(&e);
                signal.wait(seen, backoff.next());
            }
        }
    }
}

/// How long an idle worker may sleep: until the channel's next run-at or lease expiry, at
/// most the poll interval. If that time has passed, a lease has expired: recover it now.
fn idle_timeout<S: Store>(shared: &Shared<S>, channel: &str, now: Timestamp) -> Duration {
    match shared.store.next_wakeup(channel) {
        Ok(Some(at)) if at > now => now.until(at).min(shared.poll_interval),
        Ok(Some(_)) => match shared.store.recover_expired(now) {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => shared.poll_interval,
            Err(e) => {
                shared.record_error(&e);
                shared.poll_interval
            }
        },
        Ok(None) => shared.poll_interval,
        Err(e) => {
            shared.record_error(&e);
            shared.poll_interval
        }
    }
}

/// Runs one claimed task and records its outcome.
fn run<S: Store>(shared: &Shared<S>, handler: &ErasedHandler, task: Task) {
    let claim = task.claim();
    shared.inflight.lock().claims.insert(task.id, claim);
    let result = catch_unwind(AssertUnwindSafe(|| handler(&task.args)));
    let now = shared.now();
    let failed = |error: String, permanent| Outcome::Failed {
        error,
        retry_at: now,
        permanent,
    };
    let outcome = match result {
        Ok(Ok(())) => Outcome::Succeeded,
        Ok(Err(TaskError::Delay(d))) => Outcome::Delayed {
            until: now.after(d),
        },
        Ok(Err(TaskError::Failed(e))) => failed(e.to_string(), false),
        Ok(Err(TaskError::Fatal(e))) => failed(e.to_string(), true),
        Err(panic) => failed(
            format!("handler panicked: {}", panic_message(&*panic)),
            false,
        ),
    };
    let mut backoff = Backoff::new();
    for _ in 0..FINISH_ATTEMPTS {
        match shared.store.finish(claim, &outcome, now) {
            // A lost lease means another worker owns the task now: drop this result.
            Ok(_) | Err(Error::LeaseLost { .. }) => break,
            // The store refused the change itself: trying again cannot help.
            Err(e @ (Error::InvalidTransition { .. } | Error::NotFound(_))) => {
                shared.record_error(&e);
                break;
            }
            // Busy, or a failure of the storage that may pass (a full disk): try again
            // while the lease keeper holds the task.
            Err(e) => {
                shared.record_error(&e);
                std::thread::sleep(backoff.next());
            }
        }
    }
    shared.inflight.lock().claims.remove(&task.id);
    shared.notify_progress();
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}

/// The lease keeper: every third of a lease, renews the leases of the tasks this queue runs
/// and recovers tasks whose lease expired elsewhere.
pub(crate) fn keep_leases<S: Store>(shared: &Shared<S>, signal: &Signal) {
    let period = (shared.lease / 3).max(Duration::from_millis(1));
    while let Some(seen) = signal.generation() {
        signal.wait(seen, period);
        if signal.generation().is_none() {
            return;
        }
        let claims: Vec<_> = shared.inflight.lock().claims.values().copied().collect();
        let now = shared.now();
        if !claims.is_empty()
            && let Err(e) = shared.store.extend_leases(&claims, now.after(shared.lease))
        {
            shared.record_error(&e);
        }
        match shared.store.recover_expired(now) {
            Ok(0) => {}
            Ok(_) => shared.wake_all(),
            Err(e) => shared.record_error(&e),
        }
    }
}
