//! The flow group of the contract ([`simplepyq_core::FlowStore`]): paused channels.

use simplepyq_core::{Error, Flow, Status, Store};

use super::*;
use crate::Fixture;

fn paused() -> Flow {
    let mut flow = Flow::default();
    flow.paused = true;
    flow
}

/// A paused channel's tasks are not claimed, due or delayed, and its next wake-up leaves
/// them out; other channels and enqueues go on; a resume makes them claimable again.
/// Setting what is set already changes nothing.
pub fn a_paused_channel_is_not_claimed(s: &dyn Store) {
    let first = add(s, task("a"));
    add(s, task("a").run_at(at(1_000)));
    add(s, task("b"));
    assert!(s.set_paused("a", true).expect("pause"));
    assert!(!s.set_paused("a", true).expect("pause again"));
    let later = at(5_000);
    assert!(
        s.claim("a", 10, later, later.after(LEASE))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(s.next_wakeup("a").expect("next wakeup"), None);
    assert_eq!(claim_one(s, "b", later).channel, "b");
    add(s, task("a"));
    let counts = s.counts(Some("a")).expect("counts");
    assert_eq!((counts.pending, counts.delayed), (2, 1), "nothing moved");
    assert_eq!(
        s.flows().expect("flows"),
        [("a".to_owned(), paused())].into_iter().collect()
    );
    assert!(s.set_paused("a", false).expect("resume"));
    assert!(!s.set_paused("a", false).expect("resume again"));
    assert!(s.flows().expect("flows").is_empty());
    assert!(s.next_wakeup("a").expect("next wakeup").is_some());
    let claimed = s.claim("a", 10, later, later.after(LEASE)).expect("claim");
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].id, first);
}

/// Running tasks of a paused channel finish, renew and are recovered as usual; its next
/// wake-up is then a lease expiry; a recovered task waits for the resume.
pub fn running_tasks_of_a_paused_channel_go_on(s: &dyn Store) {
    let done = add(s, task("a"));
    let lost = add(s, task("a"));
    let a = claim_one(s, "a", T0);
    let b = claim_one(s, "a", T0);
    assert_eq!((a.id, b.id), (done, lost));
    assert!(s.set_paused("a", true).expect("pause"));
    assert_eq!(
        s.extend_leases(&[a.claim()], at(10).after(LEASE))
            .expect("extend"),
        1
    );
    assert_eq!(
        s.complete(a.claim(), at(20)).expect("complete"),
        Status::Done
    );
    assert_eq!(
        s.next_wakeup("a").expect("next wakeup"),
        Some(T0.after(LEASE))
    );
    let expired = at(1_000).after(LEASE);
    assert_eq!(s.recover_expired(expired, 10).expect("recover"), 1);
    assert_eq!(status(s, lost), Status::Pending);
    assert!(
        s.claim("a", 1, expired, expired.after(LEASE))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(s.next_wakeup("a").expect("next wakeup"), None);
    s.set_paused("a", false).expect("resume");
    assert_eq!(claim_one(s, "a", expired).id, lost);
}

/// A pause is kept apart from the channel's tasks: removing the channel leaves it; names
/// are checked; a name the store knows nothing of is refused by the checked call unless
/// the caller knows it.
pub fn a_pause_is_a_setting_of_its_own(s: &dyn Store) {
    add(s, task("a"));
    s.set_paused("a", true).expect("pause");
    assert_eq!(s.remove_channel("a").expect("remove"), 1);
    assert!(s.flows().expect("flows")["a"].paused);
    let err = s.set_paused("", true).expect_err("an empty name");
    assert!(matches!(err, Error::InvalidChannel { .. }), "{err}");
    let err = s.pause_known("nope", true, false).expect_err("unknown");
    assert!(matches!(err, Error::UnknownChannel(_)), "{err}");
    assert!(!s.flows().expect("flows").contains_key("nope"));
    assert!(s.pause_known("nope", true, true).expect("known here"));
    // A channel known by its pause alone.
    assert!(s.pause_known("a", false, false).expect("resume"));
    let summaries = s.channel_summaries().expect("summaries");
    let nope = summaries.iter().find(|c| c.name == "nope").expect("listed");
    assert!(nope.paused);
}

/// A pause outlives the store: read back after reopening (for durable stores).
pub fn a_pause_outlives_the_store(fixture: &mut Fixture) {
    add(&*fixture.store, task("a"));
    fixture.store.set_paused("a", true).expect("pause");
    if !fixture.reopen() {
        return;
    }
    let s = &*fixture.store;
    assert!(s.flows().expect("flows")["a"].paused);
    assert!(
        s.claim("a", 1, at(10), at(10).after(LEASE))
            .expect("claim")
            .is_empty()
    );
    s.set_paused("a", false).expect("resume");
    assert_eq!(claim_one(s, "a", at(10)).channel, "a");
}
