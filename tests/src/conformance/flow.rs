//! The flow group of the contract ([`simplepyq_core::FlowStore`]): paused channels, limits
//! of running tasks.

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
    assert_eq!(s.remove_channel("a", T0).expect("remove"), 1);
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

fn limited(max: u32) -> Flow {
    let mut flow = Flow::default();
    flow.max_running = Some(max);
    flow
}

/// A limit of N running tasks: claims take no more than the room left (tasks claimed and
/// not finished count), a finish, release or recovery frees a slot, a full channel's next
/// wake-up leaves its queued tasks out, lowering the limit stops nothing, and removing the
/// limit lets everything through. 0 is refused.
pub fn a_limit_caps_the_running_tasks(s: &dyn Store) {
    for _ in 0..6 {
        add(s, task("a"));
    }
    add(s, task("b"));
    assert!(s.set_max_running("a", Some(2)).expect("limit"));
    assert!(!s.set_max_running("a", Some(2)).expect("the same limit"));
    assert_eq!(
        s.flows().expect("flows"),
        [("a".to_owned(), limited(2))].into_iter().collect()
    );
    let first = s.claim("a", 5, T0, T0.after(LEASE)).expect("claim");
    assert_eq!(first.len(), 2, "the limit");
    assert!(
        s.claim("a", 5, T0, T0.after(LEASE))
            .expect("claim")
            .is_empty(),
        "full"
    );
    assert_eq!(
        s.next_wakeup("a").expect("next wakeup"),
        Some(T0.after(LEASE))
    );
    assert_eq!(claim_one(s, "b", T0).channel, "b", "other channels go on");
    // A finish frees a slot.
    s.complete(first[0].claim(), at(10)).expect("complete");
    let second = s.claim("a", 5, at(10), at(10).after(LEASE)).expect("claim");
    assert_eq!(second.len(), 1);
    // A release frees one too.
    assert_eq!(s.release(&[second[0].claim()], at(20)).expect("release"), 1);
    let third = s.claim("a", 5, at(20), at(20).after(LEASE)).expect("claim");
    assert_eq!(third.len(), 1);
    // Lowering the limit stops nothing; slots free up one by one.
    assert!(s.set_max_running("a", Some(1)).expect("lower"));
    assert_eq!(s.counts(Some("a")).expect("counts").running, 2);
    s.complete(first[1].claim(), at(30)).expect("complete");
    assert!(
        s.claim("a", 5, at(30), at(30).after(LEASE))
            .expect("claim")
            .is_empty()
    );
    // A recovered lease frees its slot (the task of "b" is recovered too).
    let expired = at(1_000).after(LEASE);
    assert_eq!(s.recover_expired(expired, 10).expect("recover"), 2);
    assert_eq!(claim_one(s, "a", expired).channel, "a");
    let err = s.set_max_running("a", Some(0)).expect_err("a limit of 0");
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    assert_eq!(s.flows().expect("flows")["a"], limited(1));
    // Paused and limited: both kept, each undone alone.
    s.set_paused("a", true).expect("pause");
    let mut both = limited(1);
    both.paused = true;
    assert_eq!(s.flows().expect("flows")["a"], both);
    s.set_paused("a", false).expect("resume");
    assert!(s.set_max_running("a", None).expect("no limit"));
    assert!(s.flows().expect("flows").is_empty());
    let rest = s
        .claim("a", 10, expired, expired.after(LEASE))
        .expect("claim");
    assert_eq!(rest.len(), 3, "the rest, at once");
}

/// Threads claiming a limited channel at once never leave more than the limit running
/// (five rounds, a channel each).
pub fn concurrent_claims_never_exceed_the_limit(s: &dyn Store) {
    for round in 0..5 {
        let channel = format!("a{round}");
        for _ in 0..40 {
            add(s, task(&channel));
        }
        s.set_max_running(&channel, Some(3)).expect("limit");
        let claimed = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        let got = s.claim(&channel, 2, T0, T0.after(LEASE)).expect("claim");
                        claimed.lock().expect("lock").extend(got);
                    }
                });
            }
        });
        let claimed = claimed.into_inner().expect("lock");
        assert_eq!(
            claimed.len(),
            3,
            "claims together left more than the limit running"
        );
        assert_eq!(s.counts(Some(&channel)).expect("counts").running, 3);
    }
}

/// `finish_and_claim` records the outcomes, then claims with their slots free: a channel
/// limited to one running task claims its next task in the call that records the running
/// one's outcome; a stale claim is lease-lost and frees no slot; a paused channel's
/// outcome is recorded and nothing claimed.
pub fn an_outcome_frees_the_slot_its_call_claims(s: &dyn Store) {
    for _ in 0..3 {
        add(s, task("a"));
    }
    s.set_max_running("a", Some(1)).expect("limit");
    let first = claim_one(s, "a", T0);
    assert!(
        s.claim("a", 5, T0, T0.after(LEASE))
            .expect("claim")
            .is_empty()
    );
    let call = |claim: simplepyq_core::Claim, ms: u64| {
        let now = at(ms);
        let (statuses, claimed) = s
            .finish_and_claim(
                &[(claim, Outcome::Succeeded)],
                now,
                "a",
                5,
                now.after(LEASE),
            )
            .expect("finish and claim");
        (statuses, claimed.expect("the claim"))
    };
    let (statuses, next) = call(first.claim(), 10);
    assert!(matches!(statuses[..], [Ok(Status::Done)]), "{statuses:?}");
    assert_eq!(next.len(), 1, "the slot the outcome freed, and no more");
    assert_eq!(next[0].state.status, Status::Running);
    assert_eq!(
        s.get(first.id).expect("get").expect("task").state.status,
        Status::Done
    );
    let (statuses, none) = call(first.claim(), 20);
    assert!(
        matches!(statuses[..], [Err(Error::LeaseLost { .. })]),
        "{statuses:?}"
    );
    assert!(none.is_empty(), "a stale claim frees no slot");
    s.set_paused("a", true).expect("pause");
    let (statuses, none) = call(next[0].claim(), 30);
    assert!(matches!(statuses[..], [Ok(Status::Done)]), "{statuses:?}");
    assert!(none.is_empty(), "paused");
    let counts = s.counts(Some("a")).expect("counts");
    assert_eq!((counts.done, counts.pending, counts.running), (2, 1, 0));
}
