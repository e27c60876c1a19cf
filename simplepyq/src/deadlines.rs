//! Execution timeouts: a thread of the queue's sets a run's cancellation signal
//! ([`CancelReason::Timeout`]) at its deadline and wakes an async run's future, which is
//! then dropped. A thread handler cannot be stopped: it is reported as stuck until it
//! returns, its lease kept meanwhile (no second run of its task can start).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use simplepyq_core::Claim;

use crate::context::{CancelReason, CancelToken};
use crate::{metered, report};

/// How long the deadline thread waits with no run to watch before it ends (started again
/// by the next run with a timeout).
const IDLE: Duration = Duration::from_secs(1);

/// The deadlines of one queue's runs.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    /// Thread handlers running past their timeout now.
    stuck: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Runs whose deadline has not come, by deadline.
    waiting: BTreeMap<(Instant, u64), Watched>,
    /// Runs whose deadline passed while they ran, by number.
    passed: HashSet<u64>,
    next: u64,
    /// Whether the deadline thread runs.
    thread: bool,
    /// Thread handlers' runs that became stuck and that the store has not been told of yet
    /// (the lease keeper marks them), each with its deadline.
    unmarked: Vec<(Claim, Instant)>,
}

#[derive(Debug)]
struct Watched {
    cancel: CancelToken,
    claim: Claim,
    channel: Arc<str>,
    timeout: Duration,
    /// A thread handler's run, which cannot be stopped.
    on_thread: bool,
    /// An async run's future, woken when its deadline passes.
    waker: Option<Waker>,
}

/// One run's deadline, watched until this is dropped.
#[derive(Debug)]
pub(crate) struct Deadline {
    inner: Arc<Inner>,
    key: (Instant, u64),
    on_thread: bool,
    timeout: Duration,
}

impl Deadlines {
    /// Watches the run of `claim` on `channel` (`on_thread`: a thread handler's) that may
    /// last `timeout`: at its deadline its signal `cancel` is set.
    pub(crate) fn watch(
        &self,
        cancel: &CancelToken,
        claim: Claim,
        channel: &Arc<str>,
        timeout: Duration,
        on_thread: bool,
    ) -> Deadline {
        let at = Instant::now() + timeout;
        let mut state = self.inner.state.lock();
        state.next += 1;
        let key = (at, state.next);
        let watched = Watched {
            cancel: cancel.clone(),
            claim,
            channel: Arc::clone(channel),
            timeout,
            on_thread,
            waker: None,
        };
        state.waiting.insert(key, watched);
        if !state.thread {
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("simplepyq-deadlines".into())
                .spawn(move || inner.run());
            // Without the thread no deadline passes (logged at each try).
            match spawned {
                Ok(_) => state.thread = true,
                Err(e) => report::trace_no_deadline_thread(&e),
            }
        }
        self.inner.changed.notify_one();
        Deadline {
            inner: Arc::clone(&self.inner),
            key,
            on_thread,
            timeout,
        }
    }

    /// Thread handlers running past their timeout now.
    pub(crate) fn stuck(&self) -> u64 {
        self.inner.stuck.load(Ordering::Relaxed)
    }

    /// The runs that became stuck since the last call, each with its deadline: for the
    /// store to know (`OutcomeStore::mark_stuck`).
    pub(crate) fn take_unmarked(&self) -> Vec<(Claim, Instant)> {
        std::mem::take(&mut self.inner.state.lock().unmarked)
    }

    /// Gives back runs [`Deadlines::take_unmarked`] took that the store could not be told
    /// of, for the next try.
    pub(crate) fn put_back(&self, runs: Vec<(Claim, Instant)>) {
        self.inner.state.lock().unmarked.extend(runs);
    }
}

impl Inner {
    /// The deadline thread: sets each run's signal at its deadline; ends once nothing has
    /// been watched for [`IDLE`].
    fn run(&self) {
        let mut state = self.state.lock();
        loop {
            let now = Instant::now();
            while let Some(entry) = state.waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((at, n), watched) = entry.remove_entry();
                state.passed.insert(n);
                if watched.on_thread {
                    state.unmarked.push((watched.claim, at));
                }
                self.passed(watched);
            }
            match state.waiting.keys().next() {
                Some(&(at, _)) => {
                    self.changed.wait_until(&mut state, at);
                }
                None => {
                    if self.changed.wait_for(&mut state, IDLE).timed_out()
                        && state.waiting.is_empty()
                    {
                        state.thread = false;
                        return;
                    }
                }
            }
        }
    }

    /// A run's deadline passed: its signal is set, an async run's future woken (to be
    /// dropped), a thread handler's run counted as stuck.
    fn passed(&self, watched: Watched) {
        watched.cancel.cancel(CancelReason::Timeout);
        if watched.on_thread {
            metered::gauge_stuck(self.stuck.fetch_add(1, Ordering::Relaxed) + 1);
        }
        report::trace_timeout(
            watched.claim.id,
            &watched.channel,
            watched.timeout,
            watched.on_thread,
        );
        if let Some(waker) = watched.waker {
            waker.wake();
        }
    }
}

impl Deadline {
    /// Whether the deadline passed.
    pub(crate) fn passed(&self) -> bool {
        self.inner.state.lock().passed.contains(&self.key.1)
    }

    /// Whether the deadline passed; if not, `waker` is woken when it does.
    #[cfg(feature = "tokio")]
    pub(crate) fn passed_or_wake(&self, waker: &Waker) -> bool {
        let mut state = self.inner.state.lock();
        if state.passed.contains(&self.key.1) {
            return true;
        }
        if let Some(watched) = state.waiting.get_mut(&self.key) {
            watched.waker = Some(waker.clone());
        }
        false
    }

    /// The message of an attempt that ran past its deadline.
    pub(crate) fn message(&self) -> String {
        format!("timed out after {:?}", self.timeout)
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let mut state = self.inner.state.lock();
        if state.waiting.remove(&self.key).is_none()
            && state.passed.remove(&self.key.1)
            && self.on_thread
        {
            metered::gauge_stuck(self.inner.stuck.fetch_sub(1, Ordering::Relaxed) - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simplepyq_core::TaskId;

    fn claim(id: i64) -> Claim {
        Claim {
            id: TaskId::new(id),
            attempt: 1,
        }
    }

    #[test]
    fn a_deadline_sets_the_signal_and_counts_a_thread_run_as_stuck_until_it_ends() {
        let deadlines = Deadlines::default();
        let channel: Arc<str> = Arc::from("c");
        let (slow, quick) = (CancelToken::default(), CancelToken::default());
        let late = deadlines.watch(&slow, claim(1), &channel, Duration::from_millis(30), true);
        let early = deadlines.watch(&quick, claim(2), &channel, Duration::from_secs(60), true);
        assert!(!late.passed());
        std::thread::sleep(Duration::from_millis(200));
        assert!(late.passed());
        assert_eq!(slow.reason(), Some(CancelReason::Timeout));
        assert_eq!(deadlines.stuck(), 1);
        // The stuck run is the store's to know, once.
        let unmarked = deadlines.take_unmarked();
        assert_eq!(
            unmarked.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            vec![claim(1)]
        );
        assert!(deadlines.take_unmarked().is_empty());
        assert!(!early.passed());
        assert_eq!(quick.reason(), None);
        drop(late);
        drop(early);
        assert_eq!(deadlines.stuck(), 0);
        assert!(deadlines.inner.state.lock().waiting.is_empty());
    }
}
