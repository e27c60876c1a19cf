//! Handlers: what a channel runs, and how a run ends.

use std::any::type_name;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use simplepyq_core::BoxError;

use crate::context::TaskContext;

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

// TaskError deliberately does not implement std::error::Error, so that everything that
// converts into a boxed error converts into it with `?`: every `std::error::Error + Send +
// Sync`, `Box<dyn Error + Send + Sync>`, `anyhow::Error`, `String` and `&str`.
impl<E: Into<BoxError>> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError::Failed(e.into())
    }
}

/// An error and its chain of causes, as a task's last error keeps it: `outer: cause: root`.
/// A cause whose text the message already holds (errors that print their source) is not
/// repeated.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(e) | TaskError::Fatal(e) => f.write_str(&chain(&**e)),
            TaskError::Delay(d) => write!(f, "delayed by {d:?}"),
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
pub(crate) type ErasedHandler = dyn Fn(&[u8], &TaskContext) -> Result<(), TaskError> + Send + Sync;

/// The arguments, decoded; arguments that do not decode fail the task for good.
pub(crate) fn decode<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, TaskError> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        TaskError::fatal(format_args!(
            "arguments do not decode into {}: {e}",
            type_name::<A>()
        ))
    })
}

/// The handlers of thread channels: a function of the task's arguments, or of its arguments
/// and its [`TaskContext`], returning `Result<(), TaskError>`.
///
/// ```
/// use simplepyq::{SimplePyQ, TaskContext};
/// # let dir = tempfile::tempdir()?;
/// # let q = SimplePyQ::open(dir.path().join("q.db"))?;
/// q.add_channel("plain", |n: u32| { println!("{n}"); Ok(()) }, 1)?;
/// q.add_channel("aware", |n: u32, ctx: &TaskContext| {
///     println!("{n}, attempt {}", ctx.attempt());
///     Ok(())
/// }, 1)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The second type parameter only tells the two kinds apart; it is inferred.
pub trait Handler<A, Kind>: Send + Sync + 'static {
    /// Runs the handler on one task.
    fn call(&self, args: A, ctx: &TaskContext) -> Result<(), TaskError>;
}

/// Marks handlers that take the task's arguments only.
#[derive(Debug)]
pub enum ArgsOnly {}

/// Marks handlers that take the task's arguments and its [`TaskContext`].
#[derive(Debug)]
pub enum WithContext {}

impl<A, F> Handler<A, ArgsOnly> for F
where
    F: Fn(A) -> Result<(), TaskError> + Send + Sync + 'static,
{
    fn call(&self, args: A, _: &TaskContext) -> Result<(), TaskError> {
        self(args)
    }
}

impl<A, F> Handler<A, WithContext> for F
where
    F: Fn(A, &TaskContext) -> Result<(), TaskError> + Send + Sync + 'static,
{
    fn call(&self, args: A, ctx: &TaskContext) -> Result<(), TaskError> {
        self(args, ctx)
    }
}

/// Wraps a typed handler so that arguments that do not decode fail the task for good.
pub(crate) fn erase<A, K, H>(handler: H) -> Box<ErasedHandler>
where
    A: DeserializeOwned + 'static,
    H: Handler<A, K>,
{
    Box::new(move |bytes: &[u8], ctx: &TaskContext| handler.call(decode(bytes)?, ctx))
}

/// The handlers of async channels: a function of the task's arguments, or of its arguments
/// and its [`TaskContext`] (owned: a future cannot borrow it), returning a future of
/// `Result<(), TaskError>`.
///
/// The second type parameter only tells the two kinds apart; it is inferred.
#[cfg(feature = "tokio")]
pub trait AsyncHandler<A, Kind>: Send + Sync + 'static {
    /// The future of one task's run.
    type Future: std::future::Future<Output = Result<(), TaskError>> + Send + 'static;

    /// Starts the handler on one task.
    fn call(&self, args: A, ctx: TaskContext) -> Self::Future;
}

#[cfg(feature = "tokio")]
impl<A, F, Fut> AsyncHandler<A, ArgsOnly> for F
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), TaskError>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, args: A, _: TaskContext) -> Fut {
        self(args)
    }
}

#[cfg(feature = "tokio")]
impl<A, F, Fut> AsyncHandler<A, WithContext> for F
where
    F: Fn(A, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), TaskError>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, args: A, ctx: TaskContext) -> Fut {
        self(args, ctx)
    }
}
