//! Typed channel handles: [`Channel<A, S>`] enqueues arguments of the handler's type only.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use simplepyq_core::{Error, NewTask, Result, Store, StoreExt, TaskId, Timestamp};

use crate::engine::Engine;
use crate::options::EnqueueOptions;

/// The arguments as MessagePack, with field names (the original's format).
pub(crate) fn encode<T: Serialize + ?Sized>(args: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(args).map_err(|e| Error::Codec {
        action: "encoded",
        message: e.to_string(),
    })
}

/// The tasks for `channel` of each of `args`, with `options`, enqueued at `now`.
pub(crate) fn tasks<'a, T, I>(
    channel: &str,
    args: I,
    options: &EnqueueOptions,
    now: Timestamp,
) -> Result<Vec<NewTask>>
where
    T: Serialize + ?Sized + 'a,
    I: IntoIterator<Item = &'a T>,
{
    args.into_iter()
        .map(|a| Ok(options.task(channel, encode(a)?, now)))
        .collect()
}

/// Enqueues one task and wakes an idle worker of the channel here, if any.
pub(crate) fn enqueue<S: Store, T: Serialize + ?Sized>(
    engine: &Engine<S>,
    channel: &str,
    args: &T,
    options: &EnqueueOptions,
) -> Result<TaskId> {
    let now = engine.now();
    let task = options.task(channel, encode(args)?, now);
    let id = engine.store.enqueue_one(task, now)?;
    engine.wake(channel, false);
    Ok(id)
}

/// Enqueues tasks in one transaction, all or none, and wakes the channel's idle workers.
pub(crate) fn enqueue_many<'a, S, T, I>(
    engine: &Engine<S>,
    channel: &str,
    args: I,
    options: &EnqueueOptions,
) -> Result<Vec<TaskId>>
where
    S: Store,
    T: Serialize + ?Sized + 'a,
    I: IntoIterator<Item = &'a T>,
{
    let now = engine.now();
    let tasks = tasks(channel, args, options, now)?;
    let ids = engine.store.enqueue(&tasks, now)?;
    engine.wake(channel, true);
    Ok(ids)
}

/// Enqueues a group of tasks of `channel` and a final task of `then` that waits for all of
/// them, in one transaction; wakes both channels' idle workers.
pub(crate) fn enqueue_group<'a, S, T, I, F>(
    engine: &Engine<S>,
    (channel, args, options): (&str, I, &EnqueueOptions),
    (then, then_args, then_options): (&str, &F, &EnqueueOptions),
) -> Result<(Vec<TaskId>, TaskId)>
where
    S: Store,
    T: Serialize + ?Sized + 'a,
    I: IntoIterator<Item = &'a T>,
    F: Serialize + ?Sized,
{
    let now = engine.now();
    let mut tasks = tasks(channel, args, options, now)?;
    let mut last = then_options.task(then, encode(then_args)?, now);
    for position in 0..tasks.len() {
        last = last.after_earlier(position);
    }
    tasks.push(last);
    let mut ids = engine.store.enqueue(&tasks, now)?;
    engine.wake(channel, true);
    engine.wake(then, false);
    let last = ids
        .pop()
        .ok_or_else(|| Error::config("the store gave no id for the final task"))?;
    Ok((ids, last))
}

/// A channel whose tasks take arguments of type `A`: the compiler checks what is enqueued.
///
/// [`crate::SimplePyQ::add_channel`] and its variants give one back; a producer without the
/// handler gets one from [`crate::SimplePyQ::channel`]. It is cheap to clone, and may be
/// sent to other threads; it keeps the store open while it lives.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use simplepyq::SimplePyQ;
///
/// #[derive(Serialize, Deserialize)]
/// struct Email { to: String }
///
/// # let dir = tempfile::tempdir()?;
/// # let q = SimplePyQ::open(dir.path().join("q.db"))?;
/// let emails = q.add_channel("emails", |e: Email| { println!("to {}", e.to); Ok(()) }, 2)?;
/// emails.enqueue(&Email { to: "ada@example.com".into() })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Arguments of another type do not compile:
///
/// ```compile_fail
/// # let dir = tempfile::tempdir().unwrap();
/// # let q = simplepyq::SimplePyQ::open(dir.path().join("q.db")).unwrap();
/// let numbers = q.add_channel("numbers", |n: u32| { let _ = n; Ok(()) }, 1).unwrap();
/// numbers.enqueue(&"not a number");
/// ```
pub struct Channel<A: ?Sized, S: Store> {
    engine: Arc<Engine<S>>,
    name: Arc<str>,
    args: PhantomData<fn(&A)>,
}

impl<A: ?Sized, S: Store> Channel<A, S> {
    pub(crate) fn new(engine: Arc<Engine<S>>, name: &str) -> Self {
        Channel {
            engine,
            name: Arc::from(name),
            args: PhantomData,
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's engine this handle enqueues through.
    pub(crate) fn engine(&self) -> &Arc<Engine<S>> {
        &self.engine
    }
}

impl<A: Serialize + ?Sized, S: Store> Channel<A, S> {
    /// Enqueues a task with no retries; returns its id.
    pub fn enqueue(&self, args: &A) -> Result<TaskId> {
        enqueue(&self.engine, &self.name, args, &EnqueueOptions::new())
    }

    /// Enqueues a task with options; returns its id (or the id of the unfinished task with
    /// the same unique key).
    pub fn enqueue_with(&self, args: &A, options: EnqueueOptions) -> Result<TaskId> {
        enqueue(&self.engine, &self.name, args, &options)
    }

    /// Enqueues tasks in one transaction, all or none; returns their ids in order.
    pub fn enqueue_many<'a, I>(&self, args: I, options: EnqueueOptions) -> Result<Vec<TaskId>>
    where
        A: 'a,
        I: IntoIterator<Item = &'a A>,
    {
        enqueue_many(&self.engine, &self.name, args, &options)
    }
}

impl<A: ?Sized, S: Store> Clone for Channel<A, S> {
    fn clone(&self) -> Self {
        Channel {
            engine: Arc::clone(&self.engine),
            name: Arc::clone(&self.name),
            args: PhantomData,
        }
    }
}

impl<A: ?Sized, S: Store> fmt::Debug for Channel<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("args", &std::any::type_name::<A>())
            .finish()
    }
}
