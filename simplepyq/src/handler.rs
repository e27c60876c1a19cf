//! Handlers: what a channel runs, and how a run ends.

use std::any::type_name;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use simplepyq_core::BoxError;

/// Why a handler did not succeed. Returning it from a handler decides what happens next:
///
/// - [`TaskError::Failed`]: the attempt failed; the task is retried if it has retries left,
///   otherwise it is `failed` with this error as its last error. Any error type converts into
///   this variant with `?`.
/// - [`TaskError::Delay`]: the original's `DelayException(seconds)`. The task is `delayed`
///   and runs again by itself after the duration. A delay consumes no retry.
/// - [`TaskError::Fatal`]: the attempt failed in a way no retry can fix; the task is
///   `failed` at once, whatever retries it has left.
///
/// ```
/// use std::time::Duration;
/// use simplepyq::TaskError;
///
/// fn fetch(url: String) -> Result<(), TaskError> {
///     if url.is_empty() {
///         return Err(TaskError::fatal("no url given"));
///     }
///     if url.contains("rate-limited") {
///         return Err(TaskError::Delay(Duration::from_secs(60))); // try again in a minute
///     }
///     let _n: u16 = "8080".parse()?; // any std::error::Error converts
///     Ok(())
/// }
/// # assert!(fetch("x".into()).is_ok());
/// ```
#[non_exhaustive]
pub enum TaskError {
    /// The attempt failed; retry if retries are left.
    Failed(BoxError),
    /// Run the task again after this long, without using a retry.
    Delay(Duration),
    /// The attempt failed and retrying cannot help: fail the task now.
    Fatal(BoxError),
}

impl TaskError {
    /// A failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        TaskError::Failed(message.to_string().into())
    }

    /// A failure that no retry can fix.
    pub fn fatal(message: impl fmt::Display) -> Self {
        TaskError::Fatal(message.to_string().into())
    }

    /// Defer the task by `d` (the original's `DelayException`).
    pub fn delay(d: Duration) -> Self {
        TaskError::Delay(d)
    }
}

// Like anyhow::Error, TaskError deliberately does not implement std::error::Error, so that
// every error type can convert into it with `?`.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError::Failed(Box::new(e))
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(e) => write!(f, "{e}"),
            TaskError::Delay(d) => write!(f, "delayed by {d:?}"),
            TaskError::Fatal(e) => write!(f, "{e}"),
        }
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            TaskError::Delay(d) => f.debug_tuple("Delay").field(d).finish(),
            TaskError::Fatal(e) => f.debug_tuple("Fatal").field(e).finish(),
        }
    }
}

/// A handler with its argument type erased: it decodes MessagePack itself.
pub(crate) type ErasedHandler = dyn Fn(&[u8]) -> Result<(), TaskError> + Send + Sync;

/// Wraps a typed handler so that arguments that do not decode fail the task for good.
pub(crate) fn erase<A, F>(handler: F) -> Box<ErasedHandler>
where
    A: DeserializeOwned + 'static,
    F: Fn(A) -> Result<(), TaskError> + Send + Sync + 'static,
{
    Box::new(move |bytes: &[u8]| {
        let args: A = rmp_serde::from_slice(bytes).map_err(|e| {
            TaskError::fatal(format_args!(
                "arguments do not decode into {}: {e}",
                type_name::<A>()
            ))
        })?;
        handler(args)
    })
}
