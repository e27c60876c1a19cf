//! The contract every storage backend fulfils, grouped by who calls it.
//!
//! - [`ClaimStore`], putting work in and taking it out: enqueue, claim, the next due time,
//!   wake-ups, the clock. What producers and the dispatcher call.
//! - [`OutcomeStore`], what becomes of claimed tasks: leases, outcomes, claims given back,
//!   dead workers' tasks recovered. What the recorder and the lease keeper call.
//! - [`AdminStore`], administration: the original's calls on failed tasks and channels,
//!   purging and cancelling. What programs, the command line and the dashboard call.
//! - [`InspectStore`], inspection: channels, counts, tasks, what finished when, totals.
//! - [`ScheduleStore`], the firings of periodic tasks.
//! - [`FlowStore`], flow control: pausing a channel and limiting its running tasks, for
//!   every process.
//! - [`TransactionStore`], writes in the caller's own transaction, for stores whose
//!   database the application writes too (not part of [`Store`]).
//!
//! [`Store`] is the six together, what a queue runs on; [`StoreExt`] adds helpers over it.
//! A wrapper or a new backend reads and implements one group at a time; the conformance
//! suite in the `simplepyq-tests` package follows the same groups.

use std::sync::Arc;

/// Implements a store trait for `Box<S>`, `Arc<S>` and `&'static S` by forwarding each
/// method to `S`.
macro_rules! forward {
    ($trait:ident { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }) => {
        impl<S: $trait + ?Sized> $trait for Box<S> {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret { (**self).$name($($arg),*) })*
        }
        impl<S: $trait + ?Sized> $trait for std::sync::Arc<S> {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret { (**self).$name($($arg),*) })*
        }
        impl<S: $trait + ?Sized> $trait for &'static S {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret { (**self).$name($($arg),*) })*
        }
    };
}

mod admin;
mod claim;
mod ext;
mod flow;
mod inspect;
mod outcome;
mod schedule;
mod transaction;
mod wakes;

pub use admin::AdminStore;
pub use claim::{ClaimStore, SHARED_MAX_RESERVE};
#[allow(deprecated)]
pub use ext::ChannelStats;
pub use ext::{ChannelSummary, StoreExt};
pub use flow::{
    CountedWindows, Flow, FlowStore, KeyLoad, KeyWindows, KeyedClaim, KeyedWake, Rate, RateWindow,
    change_flow, check_max_running, check_max_running_per_key, check_rate, claim_allowance,
};
pub use inspect::InspectStore;
pub use outcome::{FinishedAndClaimed, OutcomeStore};
pub use schedule::ScheduleStore;
pub use transaction::{OnCommit, TransactionStore};
pub use wakes::LocalWakes;

/// Durable (or in-memory) storage of tasks: the six groups of the contract together.
///
/// Every method is one atomic operation: it happens whole or not at all, also when several
/// threads, queues or (for backends that allow it) processes use one store. State changes
/// go through [`crate::transition::apply`]. Stores never read a clock: callers pass `now`.
///
/// The `# Contract` of each method is checked for every backend by the conformance suite
/// in the `simplepyq-tests` package. A type that implements the six groups is a `Store`.
pub trait Store:
    ClaimStore + OutcomeStore + AdminStore + InspectStore + ScheduleStore + FlowStore
{
}

impl<S> Store for S where
    S: ClaimStore + OutcomeStore + AdminStore + InspectStore + ScheduleStore + FlowStore + ?Sized
{
}

/// What [`crate::ClaimStore::watch`] calls: with a channel's name, or `None` for every channel.
pub type Wake = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// Ends the wake-ups of [`crate::ClaimStore::watch`] when dropped.
pub struct Watch(Option<Box<dyn FnOnce() + Send>>);

impl Watch {
    /// A watch that runs `stop` when dropped.
    pub fn new(stop: impl FnOnce() + Send + 'static) -> Self {
        Watch(Some(Box::new(stop)))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            stop();
        }
    }
}

impl Watch {
    /// One watch that ends both `a` and `b`.
    pub fn both(a: Option<Watch>, b: Option<Watch>) -> Option<Watch> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Watch::new(move || drop((a, b)))),
            (a, b) => a.or(b),
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}
