//! How a channel runs its handler: on worker threads, or as futures on a tokio runtime
//! (the handler, its runtime and its futures in flight).

#[cfg(feature = "tokio")]
pub(crate) use self::async_runner::{AsyncRunner, BoxFuture, OwnedRuntime, Runtime};

use crate::handler::ErasedHandler;

/// How a channel runs its handler.
pub(crate) enum Runner {
    /// On worker threads, one task per thread at a time.
    Threads(Box<ErasedHandler>),
    /// As futures on a tokio runtime.
    #[cfg(feature = "tokio")]
    Async(AsyncRunner),
}

#[cfg(feature = "tokio")]
mod async_runner {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use serde::de::DeserializeOwned;
    use simplepyq_core::{Error, Result};

    use crate::context::TaskContext;
    use crate::handler::{AsyncHandler, TaskError, decode};

    pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

    /// An async handler with its argument type erased: it decodes MessagePack itself.
    type ErasedAsync = dyn Fn(&[u8], TaskContext) -> Result<BoxFuture, TaskError> + Send + Sync;

    /// Where an async channel's futures run.
    #[derive(Debug)]
    pub(crate) enum Runtime {
        /// A runtime of the application's.
        Given(tokio::runtime::Handle),
        /// The queue's own.
        Owned(Arc<OwnedRuntime>),
    }

    impl Runtime {
        pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
            match self {
                Runtime::Given(handle) => handle,
                Runtime::Owned(own) => own.0.as_ref().expect("set until dropped").handle(),
            }
        }
    }

    /// A runtime the queue started because the application gave none. Dropped without waiting
    /// (it may be dropped on one of its own threads, by the last future that held it).
    #[derive(Debug)]
    pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

    impl OwnedRuntime {
        pub(crate) fn start() -> Result<Self> {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("simplepyq-async")
                .build()
                .map(|rt| OwnedRuntime(Some(rt)))
                .map_err(Error::Spawn)
        }
    }

    impl Drop for OwnedRuntime {
        fn drop(&mut self) {
            if let Some(rt) = self.0.take() {
                rt.shutdown_background();
            }
        }
    }

    /// How an async channel runs: its handler, its runtime, and its futures in flight.
    pub(crate) struct AsyncRunner {
        pub(crate) handler: Box<ErasedAsync>,
        pub(crate) runtime: Runtime,
        pub(crate) in_flight: Arc<AtomicUsize>,
        /// The runtime dropped a future before it ended: it shut down, and every future spawned
        /// on it from now on would be dropped unpolled. The channel claims no more.
        pub(crate) dead: Arc<AtomicBool>,
    }

    impl AsyncRunner {
        pub(crate) fn new<A, K, H>(handler: H, runtime: Runtime) -> Self
        where
            A: DeserializeOwned + Send + 'static,
            H: AsyncHandler<A, K>,
        {
            let handler = Box::new(move |bytes: &[u8], ctx: TaskContext| {
                let args: A = decode(bytes)?;
                Ok(Box::pin(handler.call(args, ctx)) as BoxFuture)
            });
            AsyncRunner {
                handler,
                runtime,
                in_flight: Arc::new(AtomicUsize::new(0)),
                dead: Arc::new(AtomicBool::new(false)),
            }
        }
    }
}
