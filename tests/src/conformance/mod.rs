//! One function per behaviour of the [`Store`] contract, in one file per group of the
//! contract (as the stores implement it). Each takes a fresh, empty store. Time is passed
//! explicitly, so nothing here sleeps.

pub mod admin;
pub mod claim;
pub mod dependencies;
pub mod flow;
pub mod inspect;
pub mod keys;
pub mod outcome;
pub mod rates;
pub mod schedules;

use std::sync::Arc;
use std::time::Duration;

use simplepyq_core::{NewTask, Outcome, Status, Store, StoreExt, Task, TaskId, Timestamp};

/// The start of every test's time line.
pub const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// The lease used in tests.
pub const LEASE: Duration = Duration::from_secs(30);

fn at(ms: u64) -> Timestamp {
    T0.after(Duration::from_millis(ms))
}

fn task(channel: &str) -> NewTask {
    NewTask::new(channel, vec![0x91, 0x01])
}

fn add(s: &dyn Store, t: NewTask) -> TaskId {
    s.enqueue_one(t, T0).expect("enqueue")
}

fn claim_one(s: &dyn Store, channel: &str, now: Timestamp) -> Task {
    let mut got = s.claim(channel, 1, now, now.after(LEASE)).expect("claim");
    assert_eq!(got.len(), 1, "expected one due task in {channel:?}");
    got.remove(0)
}

fn status(s: &dyn Store, id: TaskId) -> Status {
    s.get(id).expect("get").expect("task exists").state.status
}

fn fail(error: &str, now: Timestamp) -> Outcome {
    Outcome::Failed {
        error: error.into(),
        retry_at: now,
        permanent: false,
    }
}

fn make_failed(s: &dyn Store, channel: &str, retries: u32) -> TaskId {
    let id = add(s, task(channel).retries(retries));
    let t = claim_one(s, channel, T0);
    let outcome = Outcome::Failed {
        error: "x".into(),
        retry_at: T0,
        permanent: true,
    };
    s.finish(t.claim(), &outcome, T0).expect("fail");
    id
}

fn make_failed_with(s: &dyn Store, t: NewTask) -> TaskId {
    let channel = t.channel.clone();
    let id = add(s, t);
    let claimed = claim_one(s, &channel, T0);
    assert_eq!(claimed.id, id);
    let outcome = Outcome::Failed {
        error: "x".into(),
        retry_at: T0,
        permanent: true,
    };
    s.finish(claimed.claim(), &outcome, T0).expect("fail");
    id
}

/// The `Box`, `Arc` and `&'static` forwarding impls reach the same store.
pub fn forwarding_impls_behave_alike(store: Box<dyn Store>) {
    let id = add(&store, task("a"));
    let arc: Arc<Box<dyn Store>> = Arc::new(store);
    let t = claim_one(&arc, "a", T0);
    arc.complete(t.claim(), T0).expect("complete");
    // A leaked store lives for 'static; leaking one small test store is fine.
    let leaked: &'static Arc<Box<dyn Store>> = Box::leak(Box::new(arc));
    let by_ref: &'static Arc<Box<dyn Store>> = leaked;
    assert_eq!(status(&by_ref, id), Status::Done);
}
