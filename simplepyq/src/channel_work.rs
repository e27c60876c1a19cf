//! What the workers of one channel share: its name, how many work at once, how it runs its
//! handler, its backoff, and the handler's average run time (for the claim's reserve).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use simplepyq_core::{Outcome, Task, Timestamp};

use crate::handler::{TaskError, chain};
use crate::options::Backoff;
use crate::outcomes::Ended;
use crate::report;
use crate::runner::Runner;

/// What the workers of one channel share.
pub(crate) struct ChannelWork {
    pub(crate) name: Arc<str>,
    /// Worker threads, or for an async channel, futures in flight at most.
    pub(crate) workers: usize,
    pub(crate) runner: Runner,
    pub(crate) backoff: Backoff,
    /// How long one run may last.
    pub(crate) timeout: Option<Duration>,
    /// A running average of the handler's run time, in nanoseconds; 0 until measured.
    pub(crate) average_run: AtomicU64,
    /// The store's cap on the reserve ([`simplepyq_core::ClaimStore::max_reserve`]).
    pub(crate) max_reserve: usize,
}

/// How much work a claim may take beyond one task per idle worker: the claimed tasks wait
/// in this process (their leases held) until a worker is free, so the reserve is kept to
/// about this long of handler time, and to at most the store's `max_reserve` tasks.
const RESERVE_TIME: Duration = Duration::from_millis(5);

impl ChannelWork {
    /// Tasks to claim beyond one per idle worker: none until the handler's run time is
    /// known, then about [`RESERVE_TIME`] of work for quick handlers (none for slow ones),
    /// at most the store's cap.
    pub(crate) fn reserve(&self) -> usize {
        let average = self.average_run.load(Ordering::Relaxed);
        if average == 0 {
            return 0;
        }
        let quick = RESERVE_TIME.as_nanos() / u128::from(average);
        usize::try_from(quick).map_or(self.max_reserve, |n| n.min(self.max_reserve))
    }

    /// Adds one run time to the average (weight 1/16).
    fn observe(&self, run: Duration) {
        let ns = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.average_run.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns
        } else {
            old - old / 16 + ns / 16
        }
        .max(1);
        // Written only when it moves: every worker of the channel reads this line, and a
        // quick handler's runs leave the average where it was.
        if new != old {
            self.average_run.store(new, Ordering::Relaxed);
        }
    }

    /// The outcome of a run of `task` that ended with `result` (`Err` for a panic) and
    /// gave `given` ([`crate::TaskContext::set_result`]), ready for the recorder; `now` reads
    /// the time it ended, for a retry's or a delay's run-at (a success needs no clock).
    pub(crate) fn finished(
        &self,
        task: &Task,
        result: std::thread::Result<Result<(), TaskError>>,
        given: Option<Result<Vec<u8>, String>>,
        elapsed: Duration,
        now: impl Fn() -> Timestamp,
        completed_in: bool,
    ) -> Ended {
        self.observe(elapsed);
        let claim = task.claim();
        let failed = |error: String, permanent| Outcome::Failed {
            error,
            retry_at: now().after(self.backoff.wait(claim.attempt, task.id.get())),
            permanent,
        };
        let outcome = match result {
            Ok(Ok(())) => match given {
                None => Outcome::Succeeded,
                Some(Ok(bytes)) => Outcome::Returned(bytes),
                Some(Err(e)) => failed(e, false),
            },
            Ok(Err(TaskError::Delay(d))) => Outcome::Delayed {
                until: now().after(d),
            },
            Ok(Err(TaskError::Failed(e))) => failed(chain(&*e), false),
            Ok(Err(TaskError::Fatal(e))) => failed(chain(&*e), true),
            Err(panic) => failed(
                format!("handler panicked: {}", report::panic_message(&*panic)),
                false,
            ),
        };
        Ended {
            channel: Arc::clone(&self.name),
            claim,
            outcome,
            elapsed,
            completed_in,
            keyed: task.concurrency_key.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::ChannelWork;
    use crate::handler::erase;
    use crate::options::Backoff;
    use crate::runner::Runner;

    fn channel(max_reserve: usize) -> ChannelWork {
        ChannelWork {
            name: Arc::from("c"),
            workers: 4,
            runner: Runner::Threads(erase(|_: u32| Ok(()))),
            backoff: Backoff::Immediate,
            timeout: None,
            average_run: AtomicU64::new(0),
            max_reserve,
        }
    }

    /// The reserve is about 5 ms of handler time, capped by the store's `max_reserve`: a
    /// store of one process (the memory store's 4,096) lets a quick handler's claims take
    /// more than a shared one's 256.
    #[test]
    fn the_reserve_is_five_ms_of_work_at_most_the_stores_cap() {
        for (cap, average_ns, reserve) in [
            (256, 0, 0),
            (256, 1_000_000, 5),
            (256, 1_000, 256),
            (4096, 1_000, 4096),
            (4096, 2_000, 2500),
            (4096, 10_000_000, 0),
        ] {
            let c = channel(cap);
            c.average_run.store(average_ns, Ordering::Relaxed);
            assert_eq!(c.reserve(), reserve, "cap {cap}, average {average_ns} ns");
        }
    }
}
