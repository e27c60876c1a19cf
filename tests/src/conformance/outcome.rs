//! The outcome group of the contract ([`simplepyq_core::OutcomeStore`]): outcomes recorded
//! and fenced by the claim, leases renewed, claims given back, dead workers' tasks
//! recovered.

use std::time::Duration;

use simplepyq_core::transition::WORKER_LOST;
use simplepyq_core::{
    Claim, Error, Outcome, Status, Store, StoreExt, Stuck, TaskId, TaskState, Timestamp,
};

use super::*;

/// Success is final.
pub fn success_marks_done(s: &dyn Store) {
    let id = add(s, task("a"));
    let t = claim_one(s, "a", T0);
    assert_eq!(
        s.complete(t.claim(), at(5)).expect("complete"),
        Status::Done
    );
    let done = s.get(id).expect("get").expect("exists");
    assert_eq!(done.state.status, Status::Done);
    assert_eq!(done.state.lease_until, None);
    assert_eq!(done.state.updated_at, at(5));
    let again = s.complete(t.claim(), at(6)).expect_err("must fail");
    assert!(matches!(again, Error::LeaseLost { .. }), "{again}");
}

/// `retries = 2` allows three attempts; the last error is kept.
pub fn retries_allow_n_plus_one_attempts(s: &dyn Store) {
    let id = add(s, task("a").retries(2));
    for attempt in 1..=3 {
        let t = claim_one(s, "a", T0);
        assert_eq!(t.state.attempts, attempt);
        let st = s
            .finish(t.claim(), &fail(&format!("boom {attempt}"), T0), T0)
            .expect("fail");
        let expected = if attempt < 3 {
            Status::Pending
        } else {
            Status::Failed
        };
        assert_eq!(st, expected);
    }
    let t = s.get(id).expect("get").expect("exists");
    assert_eq!(t.state.status, Status::Failed);
    assert_eq!(t.state.last_error.as_deref(), Some("boom 3"));
    assert_eq!((t.state.attempts, t.state.retries_left), (3, 0));
    assert!(s.claim("a", 10, at(1), at(2)).expect("claim").is_empty());
}

/// A permanent failure fails the task at once.
pub fn permanent_failure_skips_retries(s: &dyn Store) {
    let id = add(s, task("a").retries(5));
    let t = claim_one(s, "a", T0);
    let outcome = Outcome::Failed {
        error: "undecodable".into(),
        retry_at: T0,
        permanent: true,
    };
    assert_eq!(
        s.finish(t.claim(), &outcome, T0).expect("fail"),
        Status::Failed
    );
    assert_eq!(status(s, id), Status::Failed);
}

/// A delay keeps the retries and makes the task due again at its time.
pub fn delay_consumes_no_retry(s: &dyn Store) {
    let id = add(s, task("a").retries(1));
    let t = claim_one(s, "a", T0);
    let delayed = Outcome::Delayed { until: at(5_000) };
    assert_eq!(
        s.finish(t.claim(), &delayed, T0).expect("delay"),
        Status::Delayed
    );
    let d = s.get(id).expect("get").expect("exists");
    assert_eq!((d.state.retries_left, d.state.run_at), (1, at(5_000)));
    assert!(
        s.claim("a", 1, at(4_999), at(60_000))
            .expect("claim")
            .is_empty()
    );
    let again = claim_one(s, "a", at(5_000));
    assert_eq!(again.state.attempts, 2);
    assert_eq!(again.state.retries_left, 1);
}

/// A failure whose retry is due later leaves the task delayed until then.
pub fn retry_at_in_the_future_delays(s: &dyn Store) {
    let id = add(s, task("a").retries(1));
    let t = claim_one(s, "a", T0);
    let outcome = Outcome::Failed {
        error: "later".into(),
        retry_at: at(1_000),
        permanent: false,
    };
    assert_eq!(
        s.finish(t.claim(), &outcome, T0).expect("fail"),
        Status::Delayed
    );
    assert!(
        s.claim("a", 1, at(999), at(60_000))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(claim_one(s, "a", at(1_000)).id, id);
}

/// Finishing with a claim that is not the current attempt changes nothing.
pub fn stale_claim_is_lease_lost(s: &dyn Store) {
    let id = add(s, task("a").retries(3));
    let t = claim_one(s, "a", T0);
    let wrong = Claim {
        id,
        attempt: t.state.attempts + 1,
    };
    let err = s.complete(wrong, T0).expect_err("must fail");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert_eq!(status(s, id), Status::Running);
    let missing = Claim {
        id: TaskId::new(id.get() + 1_000),
        attempt: 1,
    };
    assert!(matches!(
        s.complete(missing, T0),
        Err(Error::LeaseLost { .. })
    ));
}

/// Extending leases skips claims no longer held, and never shrinks a lease.
pub fn extend_leases_keeps_held_claims_only(s: &dyn Store) {
    add(s, task("a"));
    add(s, task("a"));
    let held = claim_one(s, "a", T0);
    let done = claim_one(s, "a", T0);
    s.complete(done.claim(), T0).expect("complete");
    let n = s
        .extend_leases(&[held.claim(), done.claim()], at(90_000))
        .expect("extend");
    assert_eq!(n, 1);
    let lease = |s: &dyn Store| {
        s.get(held.id)
            .expect("get")
            .expect("exists")
            .state
            .lease_until
    };
    assert_eq!(lease(s), Some(at(90_000)));
    s.extend_leases(&[held.claim()], at(10)).expect("extend");
    assert_eq!(lease(s), Some(at(90_000)));
    // An extended lease is not recovered at the old expiry.
    assert_eq!(s.recover_expired(T0.after(LEASE), 3).expect("recover"), 0);
}

/// Expired leases are recovered as lost runs: due again with no retry used, with "worker
/// lost" as the last error; the lost run past the bound fails the task (here the bound is
/// 1 for one task and 0 for the other). The old claim is then lost.
pub fn recover_expired_counts_lost_runs(s: &dyn Store) {
    let a = add(s, task("a"));
    let t1 = claim_one(s, "a", T0);
    let expiry = T0.after(LEASE);
    let just_before = Timestamp::from_millis(expiry.as_millis() - 1);
    assert_eq!(s.recover_expired(just_before, 1).expect("recover"), 0);
    assert_eq!(s.recover_expired(expiry, 1).expect("recover"), 1);
    let r = s.get(a).expect("get").expect("exists").state;
    assert_eq!(
        (
            r.status,
            r.retries_left,
            r.lost_runs,
            r.attempts,
            r.lease_until
        ),
        (Status::Pending, 0, 1, 1, None),
        "a lost run uses no retry, even with none left"
    );
    assert_eq!(r.last_error.as_deref(), Some(WORKER_LOST));
    assert!(matches!(
        s.complete(t1.claim(), expiry),
        Err(Error::LeaseLost { .. })
    ));
    let t2 = claim_one(s, "a", expiry);
    assert_eq!(t2.state.attempts, 2);
    let second_expiry = expiry.after(LEASE);
    assert_eq!(s.recover_expired(second_expiry, 1).expect("recover"), 1);
    let r = s.get(a).expect("get").expect("exists").state;
    assert_eq!((r.status, r.lost_runs), (Status::Failed, 2));
    assert_eq!(s.recover_expired(second_expiry, 1).expect("recover"), 0);
    // A requeue gives the task its lost-run budget back.
    assert_eq!(
        s.requeue_failed(Some("a"), None, second_expiry)
            .expect("requeue"),
        1
    );
    assert_eq!(s.get(a).expect("get").expect("exists").state.lost_runs, 0);
    let b = add(s, task("b").retries(2));
    claim_one(s, "b", T0);
    assert_eq!(s.recover_expired(expiry, 0).expect("recover"), 1);
    let r = s.get(b).expect("get").expect("exists").state;
    assert_eq!(
        (r.status, r.retries_left, r.lost_runs),
        (Status::Failed, 0, 1)
    );
}

/// Released claims give their tasks back as they were before the claim: pending, no
/// attempt counted, no lease, in their old place in claim order. Claims no longer held are
/// skipped.
pub fn release_gives_unstarted_tasks_back(s: &dyn Store) {
    let first = add(s, task("a").retries(1));
    let second = add(s, task("a"));
    let before = s.get(first).expect("get").expect("exists").state;
    let claimed = s.claim("a", 2, T0, T0.after(LEASE)).expect("claim");
    assert_eq!(claimed.len(), 2);
    s.complete(claimed[1].claim(), T0).expect("complete");
    let later = T0.after(Duration::from_secs(1));
    let claims = [claimed[0].claim(), claimed[1].claim()];
    assert_eq!(s.release(&claims, later).expect("release"), 1);
    let after = s.get(first).expect("get").expect("exists").state;
    assert_eq!(
        TaskState {
            updated_at: before.updated_at,
            ..after.clone()
        },
        before,
        "{after:?}"
    );
    assert_eq!(after.updated_at, later);
    assert_eq!(status(s, second), Status::Done);
    assert!(matches!(
        s.complete(claims[0], later),
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(s.release(&claims, later).expect("release"), 0);
    let again = claim_one(s, "a", later);
    assert_eq!((again.id, again.state.attempts), (first, 1));
    assert_eq!(s.counts(Some("a")).expect("counts").running, 1);
}

/// A handler's result is kept with its task, written with `done`: read back exactly; a
/// stale attempt's result is refused with its outcome (nothing stored); a result over
/// [`simplepyq_core::MAX_RESULT_BYTES`] is refused for that attempt only (its task still
/// running); a task done without a result, one not done, an unknown one and a deleted one
/// have none.
pub fn results_are_kept_with_done_tasks(s: &dyn Store) {
    let returned = |bytes: &[u8]| Outcome::Returned(bytes.to_vec());
    let with = add(s, task("r").retries(1));
    let without = add(s, task("r"));
    let big = add(s, task("r"));
    let first = claim_one(s, "r", T0);
    assert_eq!(first.id, with);
    // The first attempt's lease runs out; a second attempt runs.
    assert_eq!(s.recover_expired(T0.after(LEASE), 10).expect("recover"), 1);
    let later = T0.after(LEASE * 2);
    let claimed = s.claim("r", 3, later, later.after(LEASE)).expect("claim");
    assert_eq!(claimed.len(), 3);
    let second = claimed
        .iter()
        .find(|t| t.id == with)
        .expect("claimed again");
    let other = claimed.iter().find(|t| t.id == without).expect("claimed");
    let large = claimed.iter().find(|t| t.id == big).expect("claimed");
    let too_big = vec![0xc4; simplepyq_core::MAX_RESULT_BYTES + 1];
    let statuses = s
        .finish_many(
            &[
                (first.claim(), returned(b"stale")),
                (second.claim(), returned(&[0x92, 0x01, 0xa1, 0x78])),
                (other.claim(), Outcome::Succeeded),
                (large.claim(), Outcome::Returned(too_big)),
            ],
            later,
        )
        .expect("finish");
    assert!(matches!(statuses[0], Err(Error::LeaseLost { .. })));
    assert_eq!(statuses[1].as_ref().ok(), Some(&Status::Done));
    assert_eq!(statuses[2].as_ref().ok(), Some(&Status::Done));
    assert!(matches!(statuses[3], Err(Error::InvalidConfig(_))));
    assert_eq!(
        s.result(with).expect("result"),
        Some(vec![0x92, 0x01, 0xa1, 0x78])
    );
    assert_eq!(s.result(without).expect("result"), None);
    assert_eq!(status(s, big), Status::Running);
    assert_eq!(s.result(big).expect("result"), None);
    assert_eq!(s.result(TaskId::new(999_999)).expect("result"), None);
    // Deleted with its task.
    assert_eq!(
        s.purge_done(Some("r"), later.after(LEASE)).expect("purge"),
        2
    );
    assert_eq!(s.result(with).expect("result"), None);
}

/// A running attempt marked stuck is listed, with its channel and the time of the mark,
/// while it is its task's running attempt; once the task's outcome is recorded, or its
/// lease expired and it runs again, the mark counts no more. A claim that holds nothing
/// marks nothing.
pub fn stuck_marks_count_while_their_attempt_runs(s: &dyn Store) {
    let a = add(s, task("c"));
    let queued = add(s, task("c"));
    let other = add(s, task("d"));
    let held = claim_one(s, "c", T0);
    assert_eq!(held.id, a);
    let since = at(1_000);
    assert!(s.mark_stuck(held.claim(), since).expect("mark"));
    let unclaimed = Claim {
        id: queued,
        attempt: 1,
    };
    assert!(
        !s.mark_stuck(unclaimed, since).expect("mark"),
        "not running"
    );
    let stuck_a = Stuck {
        id: a,
        channel: "c".into(),
        attempt: 1,
        since,
    };
    assert_eq!(s.stuck(None).expect("stuck"), vec![stuck_a.clone()]);
    assert_eq!(s.stuck(Some("d")).expect("stuck"), vec![]);

    // A lease that expires: the task runs again, in another attempt.
    let d = claim_one(s, "d", T0);
    assert!(s.mark_stuck(d.claim(), at(2_000)).expect("mark"));
    assert_eq!(s.stuck(None).expect("stuck").len(), 2);
    assert_eq!(
        s.recover_expired(T0.after(LEASE).after(LEASE), 5)
            .expect("recover"),
        2
    );
    assert_eq!(s.stuck(None).expect("stuck"), vec![], "no attempt runs");
    let again = claim_one(s, "d", T0.after(LEASE).after(LEASE));
    assert_eq!((again.id, again.state.attempts), (other, 2));
    assert_eq!(
        s.stuck(Some("d")).expect("stuck"),
        vec![],
        "another attempt"
    );
    assert!(
        !s.mark_stuck(d.claim(), at(3_000)).expect("mark"),
        "a stale claim"
    );
    assert!(s.mark_stuck(again.claim(), at(4_000)).expect("mark"));
    assert_eq!(
        s.stuck(None).expect("stuck"),
        vec![Stuck {
            id: other,
            channel: "d".into(),
            attempt: 2,
            since: at(4_000),
        }]
    );
    // Its outcome ends the mark.
    s.finish(again.claim(), &Outcome::Succeeded, at(5_000))
        .expect("finish");
    assert_eq!(s.stuck(None).expect("stuck"), vec![]);
}
