//! Tasks that wait for others ([`simplepyq_core::NewTask::after`], the rules of
//! [`simplepyq_core::dependency`]): due once every parent is done, failed when one fails or
//! is removed, exactly once however the parents end.

use simplepyq_core::transition::parent_lost;
use simplepyq_core::{Error, Status, Store, TaskId};

use super::*;

fn done(s: &dyn Store, channel: &str, id: TaskId, now: Timestamp) {
    let t = claim_one(s, channel, now);
    assert_eq!(t.id, id, "the due task of {channel:?}");
    s.complete(t.claim(), now).expect("complete");
}

fn failed_for_good(s: &dyn Store, channel: &str, id: TaskId, now: Timestamp) {
    let t = claim_one(s, channel, now);
    assert_eq!(t.id, id);
    let outcome = Outcome::Failed {
        error: "boom".into(),
        retry_at: now,
        permanent: true,
    };
    s.finish(t.claim(), &outcome, now).expect("fail");
}

fn error_of(s: &dyn Store, id: TaskId) -> Option<String> {
    s.get(id).expect("get").expect("exists").state.last_error
}

/// A task waits (a status of its own, counted, never claimed) until its last parent is
/// done; then it is due at that time, and its parents stay listed.
pub fn a_task_waits_for_every_parent(s: &dyn Store) {
    let a = add(s, task("p"));
    let b = add(s, task("p"));
    let child = add(s, task("c").after([b, a, b]));
    assert_eq!(status(s, child), Status::Waiting);
    assert_eq!(s.counts(Some("c")).expect("counts").waiting, 1);
    assert_eq!(
        s.parents(child).expect("parents"),
        [a, b],
        "each once, in id order"
    );
    assert!(
        s.claim("c", 10, T0, T0.after(LEASE))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(s.next_wakeup("c").expect("next wakeup"), None);
    done(s, "p", a, at(10));
    assert_eq!(status(s, child), Status::Waiting, "b is not done");
    done(s, "p", b, at(20));
    let due = s.get(child).expect("get").expect("exists").state;
    assert_eq!((due.status, due.run_at), (Status::Pending, at(20)));
    assert_eq!(claim_one(s, "c", at(20)).id, child);
    assert_eq!(s.parents(child).expect("parents"), [a, b]);
    assert_eq!(s.parents(a).expect("parents"), [], "a parent has none");
}

/// A task whose parents are all done already is due at once; one delayed past the last
/// parent's end stays delayed until its time.
pub fn done_parents_hold_up_nothing(s: &dyn Store) {
    let a = add(s, task("p"));
    done(s, "p", a, T0);
    let child = add(s, task("c").after([a]));
    assert_eq!(status(s, child), Status::Pending);
    let b = add(s, task("p"));
    let later = add(s, task("c").after([b]).run_at(at(500)));
    done(s, "p", b, at(10));
    assert_eq!(status(s, later), Status::Delayed);
    assert_eq!(claim_one(s, "c", T0).id, child);
    assert!(
        s.claim("c", 10, at(10), at(10).after(LEASE))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(claim_one(s, "c", at(500)).id, later);
}

/// A group and its final task go in one call: the final task names earlier tasks of the
/// call by position; a position that is not earlier fails the call, which adds nothing.
pub fn a_group_and_its_final_task_go_in_one_call(s: &dyn Store) {
    let tasks = [
        task("p"),
        task("p"),
        task("c").after_earlier(0).after_earlier(1),
    ];
    let ids = s.enqueue(&tasks, T0).expect("enqueue");
    assert_eq!(s.parents(ids[2]).expect("parents"), [ids[0], ids[1]]);
    assert_eq!(status(s, ids[2]), Status::Waiting);
    let before = s.counts(None).expect("counts").total();
    for bad in [
        [task("p"), task("c").after_earlier(1)],
        [task("p"), task("c").after_earlier(7)],
    ] {
        let err = s.enqueue(&bad, T0).expect_err("not an earlier task");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }
    assert_eq!(
        s.counts(None).expect("counts").total(),
        before,
        "all or none"
    );
}

/// A parent that does not exist, or failed, is refused: its dependents could never run.
pub fn lost_parents_are_refused(s: &dyn Store) {
    let unknown = TaskId::new(1_000_000);
    let err = s
        .enqueue_one(task("c").after([unknown]), T0)
        .expect_err("unknown");
    assert!(
        matches!(&err, Error::InvalidConfig(m) if m.contains("1000000")),
        "{err:?}"
    );
    let failed = make_failed(s, "p", 0);
    let err = s
        .enqueue(&[task("c"), task("c").after([failed])], T0)
        .expect_err("failed parent");
    assert!(
        matches!(&err, Error::InvalidConfig(m) if m.contains("failed")),
        "{err:?}"
    );
    assert_eq!(
        s.counts(Some("c")).expect("counts").total(),
        0,
        "all or none"
    );
}

/// A parent that fails for good fails its waiting children, naming it, and they theirs;
/// each counts as failed in its channel's totals. A retry is not a failure for good.
pub fn a_failed_parent_fails_its_dependents(s: &dyn Store) {
    let a = add(s, task("p").retries(1));
    let b = add(s, task("c").after([a]));
    let c = add(s, task("d").after([b]));
    let t = claim_one(s, "p", T0);
    s.finish(t.claim(), &fail("once", T0), T0).expect("retry");
    assert_eq!(status(s, b), Status::Waiting, "a is retried");
    failed_for_good(s, "p", a, at(10));
    assert_eq!(status(s, b), Status::Failed);
    assert_eq!(error_of(s, b), Some(parent_lost(a, false)));
    assert_eq!(status(s, c), Status::Failed);
    assert_eq!(error_of(s, c), Some(parent_lost(b, false)));
    let totals = s.totals().expect("totals");
    assert_eq!((totals["c"].failed, totals["d"].failed), (1, 1));
}

/// A parent cancelled, or deleted with its channel, before it was done fails its waiting
/// children (of other channels), naming it as removed; a waiting task can be cancelled.
pub fn a_removed_parent_fails_its_dependents(s: &dyn Store) {
    let a = add(s, task("p"));
    let b = add(s, task("c").after([a]));
    s.cancel(a, at(5)).expect("cancel");
    assert_eq!(status(s, b), Status::Failed);
    assert_eq!(error_of(s, b), Some(parent_lost(a, true)));
    let running = add(s, task("q"));
    let waiting = add(s, task("c").after([running]));
    let own = add(s, task("q").after([running]));
    claim_one(s, "q", T0);
    s.remove_channel("q", at(10)).expect("remove");
    assert_eq!(error_of(s, waiting), Some(parent_lost(running, true)));
    assert!(
        s.get(own).expect("get").is_none(),
        "the channel's own go with it"
    );
    let x = add(s, task("p"));
    let y = add(s, task("c").after([x]));
    s.cancel(y, at(20)).expect("a waiting task is cancelled");
    assert!(s.get(y).expect("get").is_none());
    assert_eq!(s.parents(y).expect("parents"), [], "its edges went with it");
}

/// A requeued task waits again for its parents: requeued with them in one call (in id
/// order, whatever the channels), it waits; while a parent stays failed, it stays failed.
pub fn requeue_waits_for_the_parents(s: &dyn Store) {
    let a = add(s, task("z").retries(0));
    let b = add(s, task("a").after([a]));
    failed_for_good(s, "z", a, T0);
    assert_eq!(status(s, b), Status::Failed);
    assert_eq!(
        s.requeue_failed(Some("a"), None, at(5)).expect("requeue"),
        0
    );
    assert_eq!(status(s, b), Status::Failed, "its parent is still failed");
    assert_eq!(s.requeue_failed(None, None, at(10)).expect("requeue"), 2);
    assert_eq!(status(s, a), Status::Pending);
    assert_eq!(status(s, b), Status::Waiting);
    done(s, "z", a, at(20));
    assert_eq!(claim_one(s, "a", at(20)).id, b);
}

/// A waiting task holds its unique key, as every unfinished task does.
pub fn a_waiting_task_holds_its_unique_key(s: &dyn Store) {
    let a = add(s, task("p"));
    let first = add(s, task("c").after([a]).unique_key("k"));
    let again = add(s, task("c").unique_key("k"));
    assert_eq!(again, first);
}

/// Parents that end at the same moment on several threads unblock their child once (ten
/// rounds, as a race shows only now and then).
pub fn parents_ending_together_unblock_once(s: &dyn Store) {
    const N: usize = 8;
    for round in 0..10 {
        let parents: Vec<TaskId> = (0..N).map(|_| add(s, task("p"))).collect();
        let child = add(s, task("c").after(parents.iter().copied()));
        let claimed = s.claim("p", N, T0, T0.after(LEASE)).expect("claim");
        assert_eq!(claimed.len(), N);
        let barrier = std::sync::Barrier::new(N);
        std::thread::scope(|scope| {
            for t in &claimed {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    s.complete(t.claim(), at(10)).expect("complete");
                });
            }
        });
        assert_eq!(status(s, child), Status::Pending, "round {round}");
        let got = s
            .claim("c", 10, at(10), at(10).after(LEASE))
            .expect("claim");
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [child]);
        s.complete(got[0].claim(), at(10)).expect("complete");
    }
}

/// A chain costs each task one step: the children of a done parent are found by the
/// parent, and the last of many parents is found without reading the others.
pub fn a_fan_in_is_unblocked_by_its_last_parent(s: &dyn Store) {
    let tasks: Vec<NewTask> = (0..300).map(|_| task("p")).collect();
    let parents = s.enqueue(&tasks, T0).expect("enqueue");
    let child = add(s, task("c").after(parents.iter().copied()));
    for (i, t) in s
        .claim("p", 300, T0, T0.after(LEASE))
        .expect("claim")
        .into_iter()
        .enumerate()
    {
        assert_eq!(status(s, child), Status::Waiting, "before parent {i}");
        s.complete(t.claim(), at(10)).expect("complete");
    }
    assert_eq!(status(s, child), Status::Pending);
}

/// Tasks enqueued to wait for a parent while its outcome is being recorded are all settled:
/// each is due once the parent is done, none waits forever (twenty rounds).
pub fn children_enqueued_while_the_parent_ends_are_settled(s: &dyn Store) {
    for round in 0..20 {
        let parent = add(s, task("p"));
        let claimed = claim_one(s, "p", T0);
        let barrier = std::sync::Barrier::new(2);
        let children = std::thread::scope(|scope| {
            let enqueuer = scope.spawn(|| {
                barrier.wait();
                (0..10)
                    .map(|_| add(s, task("c").after([parent])))
                    .collect::<Vec<TaskId>>()
            });
            barrier.wait();
            s.complete(claimed.claim(), at(10)).expect("complete");
            enqueuer.join().expect("the enqueuer")
        });
        for child in children {
            assert_eq!(status(s, child), Status::Pending, "round {round}: {child}");
        }
        let n = s
            .claim("c", 100, at(10), at(10).after(LEASE))
            .expect("claim");
        for t in n {
            s.complete(t.claim(), at(10)).expect("complete");
        }
    }
}
