//! What a handler may know about the task it runs: [`TaskContext`], with its cancellation
//! signal.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use simplepyq_core::{Error, Task, TaskId};

use crate::handler::TaskError;
use crate::reads::{Reads, decode_result};

/// Why a running task was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`crate::SimplePyQ::stop_timeout`] passed its deadline while the task ran.
    Stop,
    /// [`crate::SimplePyQ::cancel`] was called on the task.
    Cancel,
    /// The task ran past its timeout ([`crate::ChannelOptions::timeout`]).
    Timeout,
}

#[derive(Debug, Default)]
struct CancelState {
    set: AtomicBool,
    reason: Mutex<Option<CancelReason>>,
    wakers: Mutex<Vec<Waker>>,
    /// Set once the handler completed the task in its own transaction; whether that
    /// transaction committed, the recorder finds out.
    completed_in: AtomicBool,
    /// The result the handler gave ([`TaskContext::set_result`]), encoded, or why it could
    /// not be kept.
    result: Mutex<Option<Result<Vec<u8>, String>>>,
}

/// The cancellation signal of one run: set once, read by the handler.
#[derive(Clone, Debug, Default)]
pub(crate) struct CancelToken(Arc<CancelState>);

impl CancelToken {
    /// Asks the run to stop; the first reason given is kept.
    pub(crate) fn cancel(&self, reason: CancelReason) {
        self.0.reason.lock().get_or_insert(reason);
        self.0.set.store(true, Ordering::Release);
        for w in self.0.wakers.lock().drain(..) {
            w.wake();
        }
    }

    /// Whether the handler of this run completed its task in its own transaction.
    pub(crate) fn completed_in(&self) -> bool {
        self.0.completed_in.load(Ordering::Acquire)
    }

    /// The result the handler gave, encoded, or why it could not be kept; `None` if it
    /// gave none.
    pub(crate) fn take_result(&self) -> Option<Result<Vec<u8>, String>> {
        self.0.result.lock().take()
    }

    pub(crate) fn reason(&self) -> Option<CancelReason> {
        if self.0.set.load(Ordering::Acquire) {
            *self.0.reason.lock()
        } else {
            None
        }
    }
}

/// The task a handler runs, and a signal asking it to stop early.
///
/// A handler takes it as a second argument: `|args: A, ctx: &TaskContext|` for a thread
/// channel, `|args: A, ctx: TaskContext| async move {…}` for an async one (a future cannot
/// borrow it, so async handlers own a copy; cloning it is cheap).
///
/// The signal is set when the queue stops past its deadline ([`crate::SimplePyQ::stop_timeout`]),
/// when [`crate::SimplePyQ::cancel`] is called on the running task, or when the task runs past
/// its timeout ([`crate::ChannelOptions::timeout`]). Nothing is interrupted:
/// the handler decides. Return [`crate::TaskError::delay`] with a zero duration to have the
/// task run again later without using a retry, or a fatal error to end it.
///
/// ```
/// use std::time::Duration;
/// use simplepyq::{SimplePyQ, TaskContext, TaskError};
/// # let dir = tempfile::tempdir()?;
/// # let q = SimplePyQ::open(dir.path().join("q.db"))?;
/// q.add_channel("export", |rows: u32, ctx: &TaskContext| {
///     for _ in 0..rows {
///         if ctx.is_cancelled() {
///             return Err(TaskError::delay(Duration::ZERO)); // again after the restart
///         }
///         // ... export one row ...
///     }
///     println!("task {} attempt {} done", ctx.id(), ctx.attempt());
///     Ok(())
/// }, 1)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct TaskContext {
    id: TaskId,
    channel: Arc<str>,
    attempt: u32,
    retries_left: u32,
    enqueued_ms: i64,
    traceparent: Option<String>,
    cancel: CancelToken,
    /// The queue running the task (an engine's id).
    queue: u64,
    /// The queue's store, to read the task's parents with.
    reads: Weak<dyn Reads>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// The context of `task`'s run, in channel `channel` of queue `queue` (an engine's id),
    /// whose store `reads` reads.
    pub(crate) fn new(
        task: &Task,
        channel: &Arc<str>,
        cancel: CancelToken,
        queue: u64,
        reads: Weak<dyn Reads>,
    ) -> Self {
        TaskContext {
            id: task.id,
            channel: Arc::clone(channel),
            attempt: task.state.attempts,
            retries_left: task.state.retries_left,
            enqueued_ms: task.created_at.as_millis(),
            traceparent: task.traceparent.clone(),
            cancel,
            queue,
            reads,
        }
    }

    /// The tasks this task waited for ([`crate::EnqueueOptions::after`]), in id order;
    /// none for a task enqueued without. Read from the store at each call.
    ///
    /// Errors: the store's, or [`Error::Stopped`] once the queue is dropped.
    pub fn parents(&self) -> Result<Vec<TaskId>, Error> {
        self.reads()?.parents(self.id)
    }

    /// The result each parent gave ([`TaskContext::set_result`]), decoded as `T`, in id
    /// order: `None` for a parent that gave none, or was deleted since it was done (its
    /// retention passed). A fan-in reads what its group made:
    ///
    /// ```
    /// use simplepyq::{EnqueueOptions, SimplePyQ, TaskContext};
    /// # let dir = tempfile::tempdir()?;
    /// let q = SimplePyQ::open(dir.path().join("q.db"))?;
    /// q.add_channel("count", |word: String, ctx: &TaskContext| {
    ///     ctx.set_result(&word.len())?;
    ///     Ok(())
    /// }, 2)?;
    /// q.add_channel("total", |(): (), ctx: &TaskContext| {
    ///     let total: usize = ctx.parent_results::<usize>()?.into_iter().flat_map(|(_, n)| n).sum();
    ///     ctx.set_result(&total)?;
    ///     Ok(())
    /// }, 1)?;
    /// let (_, total) = q.enqueue_group("count", &["a", "bb", "ccc"], EnqueueOptions::new(),
    ///                                  "total", &(), EnqueueOptions::new())?;
    /// q.run_until_complete()?;
    /// assert_eq!(q.result::<usize>(total)?, Some(6));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Errors: as [`TaskContext::parents`], and [`Error::Codec`] for a result that does not
    /// decode as `T`.
    pub fn parent_results<T: DeserializeOwned>(&self) -> Result<Vec<(TaskId, Option<T>)>, Error> {
        let reads = self.reads()?;
        reads
            .parents(self.id)?
            .into_iter()
            .map(|p| Ok((p, decode_result(p, reads.result(p)?)?)))
            .collect()
    }

    fn reads(&self) -> Result<Arc<dyn Reads>, Error> {
        self.reads.upgrade().ok_or(Error::Stopped)
    }

    /// The claim of the run this context is for.
    pub(crate) fn claim(&self) -> simplepyq_core::Claim {
        simplepyq_core::Claim {
            id: self.id,
            attempt: self.attempt,
        }
    }

    /// The queue running the task (an engine's id).
    pub(crate) fn queue(&self) -> u64 {
        self.queue
    }

    /// Notes that the handler completed the task in its own transaction.
    pub(crate) fn mark_completed_in(&self) {
        self.cancel.0.completed_in.store(true, Ordering::Release);
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The channel the task belongs to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Keeps `value` as the task's result: when this run succeeds, it is stored with the
    /// task in the same write as `done` (a run that fails, or whose lease was lost, stores
    /// nothing), and [`crate::SimplePyQ::result`] reads it, here or in any process on the
    /// store. A later call replaces it. As River's `RecordOutput`: handlers keep their
    /// `Result<(), TaskError>`, and only those that give a result pay for one.
    ///
    /// A value that does not encode to MessagePack, or takes more than
    /// [`simplepyq_core::MAX_RESULT_BYTES`] (1 MiB), is an error here, and the attempt
    /// fails with it (following the retry policy) even if the handler then returns `Ok`.
    ///
    /// ```
    /// use simplepyq::{SimplePyQ, TaskContext};
    /// # let dir = tempfile::tempdir()?;
    /// let q = SimplePyQ::open(dir.path().join("q.db"))?;
    /// q.add_channel("square", |n: u64, ctx: &TaskContext| {
    ///     ctx.set_result(&(n * n))?;
    ///     Ok(())
    /// }, 1)?;
    /// let id = q.enqueue("square", &12u64)?;
    /// q.run_until_complete()?;
    /// assert_eq!(q.result::<u64>(id)?, Some(144));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_result<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), TaskError> {
        let kept = match rmp_serde::to_vec_named(value) {
            Ok(bytes) if bytes.len() > simplepyq_core::MAX_RESULT_BYTES => Err(format!(
                "the result is {} bytes of MessagePack, over the limit of {} bytes",
                bytes.len(),
                simplepyq_core::MAX_RESULT_BYTES
            )),
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(format!("the result does not encode to MessagePack: {e}")),
        };
        let error = kept.as_ref().err().map(TaskError::msg);
        *self.cancel.0.result.lock() = Some(kept);
        error.map_or(Ok(()), Err)
    }

    /// This attempt's number: 1 for the first run (a run lost to a dead worker counts too).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many more attempts may follow if this one fails.
    pub fn retries_left(&self) -> u32 {
        self.retries_left
    }

    /// The trace context the task was enqueued with (a W3C `traceparent`): the enqueuing
    /// code's OpenTelemetry span with the `opentelemetry` feature, or the one given in
    /// [`crate::EnqueueOptions::traceparent`]; `None` if it had none.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// When the task was enqueued (by the queue's clock).
    pub fn enqueued_at(&self) -> SystemTime {
        let ms = u64::try_from(self.enqueued_ms).unwrap_or(0);
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// Whether the task was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.0.set.load(Ordering::Acquire)
    }

    /// Why the task was asked to stop, if it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.cancel.reason()
    }

    /// Completes when the task is asked to stop (for `tokio::select!` in async handlers).
    pub fn cancelled(&self) -> OnCancel {
        OnCancel(self.cancel.clone())
    }
}

/// The future of [`TaskContext::cancelled`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct OnCancel(CancelToken);

impl Future for OnCancel {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = &(self.0).0;
        if signal.set.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut wakers = signal.wakers.lock();
        // Looked at again under the lock: `cancel` sets the flag before it takes the lock.
        if signal.set.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_is_kept_and_waiters_wake() {
        let token = CancelToken::default();
        let waker = Arc::new(Flag::default());
        let mut fut = OnCancel(token.clone());
        let w = Waker::from(Arc::clone(&waker));
        let mut cx = Context::from_waker(&w);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        token.cancel(CancelReason::Cancel);
        token.cancel(CancelReason::Stop);
        assert!(
            waker.0.load(Ordering::SeqCst),
            "the waiting future was woken"
        );
        assert!(Pin::new(&mut fut).poll(&mut cx).is_ready());
        assert_eq!(token.reason(), Some(CancelReason::Cancel));
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
