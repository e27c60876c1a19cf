//! The core of [simplepyq](https://docs.rs/simplepyq): the task state machine, the
//! [`Store`] trait that storage backends implement, the error type and the clock.
//!
//! Users of the queue want the `simplepyq` crate; this one is for backend authors. A
//! backend stores [`Task`]s and changes them only through [`transition::apply`]:
//!
//! ```
//! use simplepyq_core::transition::{apply, Event};
//! use simplepyq_core::{Outcome, Status, TaskState, Timestamp};
//!
//! let now = Timestamp::from_millis(0);
//! let queued = TaskState::new(1, now, now); // one retry
//! let running = apply(&queued, &Event::Claim { now, lease_until: now }).unwrap();
//! let failed_once = apply(&running, &Event::Finish {
//!     now,
//!     outcome: Outcome::Failed { error: "boom".into(), retry_at: now, permanent: false },
//! })
//! .unwrap();
//! assert_eq!((failed_once.status, failed_once.retries_left), (Status::Pending, 0));
//! ```

pub mod batch;
pub mod dependency;
mod error;
mod ids;
pub mod row;
pub mod schedule;
mod store;
mod task;
mod time;
mod totals;
pub mod trace;
pub mod transition;

pub use error::{BoxError, Error, Result};
pub use ids::{IdHasher, IdMap, IdSet};
pub use schedule::Schedule;
/// The store traits, for calling a store's methods on a concrete store type:
/// `use simplepyq_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AdminStore, ClaimStore, FlowStore, InspectStore, OutcomeStore, ScheduleStore, Store,
        StoreExt, TransactionStore,
    };
}

#[allow(deprecated)]
pub use store::ChannelStats;
pub use store::{
    AdminStore, ChannelSummary, ClaimStore, CountedWindows, FinishedAndClaimed, Flow, FlowStore,
    InspectStore, KeyLoad, KeyWindows, KeyedClaim, KeyedWake, LocalWakes, OnCommit, OutcomeStore,
    Rate, RateWindow, SHARED_MAX_RESERVE, ScheduleStore, Store, StoreExt, TransactionStore, Wake,
    Watch, change_flow, check_max_running, check_max_running_per_key, check_rate, claim_allowance,
};
pub use task::{
    Claim, Counts, Finished, ListFilter, MAX_CHANNEL_LEN, MAX_KEY_LEN, MAX_RESULT_BYTES, NewTask,
    Outcome, Parent, ParseStatusError, Status, Stuck, Task, TaskId, TaskState, validate_channel,
    validate_concurrency_key,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp, duration_of, millis_of};
pub use totals::Totals;
