//! One function per behaviour of the [`Store`] contract. Each takes a fresh, empty store.
//! Time is passed explicitly, so nothing here sleeps.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use simplepyq_core::transition::WORKER_LOST;
use simplepyq_core::{
    Claim, Error, Finished, ListFilter, NewTask, Outcome, Status, Store, StoreExt, Task, TaskId,
    TaskState, Timestamp, Totals,
};

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

/// Ids are unique, increase, and come back in the order of the tasks.
pub fn enqueue_assigns_unique_ids_in_order(s: &dyn Store) {
    let ids = s
        .enqueue(&[task("a"), task("b"), task("a")], T0)
        .expect("enqueue");
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let t = s.get(ids[1]).expect("get").expect("exists");
    assert_eq!(t.channel, "b");
    assert_eq!(t.state.status, Status::Pending);
    assert_eq!((t.state.attempts, t.created_at), (0, T0));
}

/// A bad channel name fails the whole batch and adds nothing.
pub fn enqueue_is_all_or_nothing_on_bad_channel(s: &dyn Store) {
    let long = "x".repeat(256);
    for bad in ["", long.as_str(), "tab\there"] {
        let err = s
            .enqueue(&[task("ok"), task(bad)], T0)
            .expect_err("must fail");
        assert!(matches!(err, Error::InvalidChannel { .. }), "{err}");
    }
    assert_eq!(s.counts(None).expect("counts").total(), 0);
}

/// A run-at later than now starts the task delayed; it becomes claimable at that time.
pub fn enqueue_in_the_future_is_delayed(s: &dyn Store) {
    let id = add(s, task("a").run_at(at(5_000)));
    assert_eq!(status(s, id), Status::Delayed);
    assert!(
        s.claim("a", 10, at(4_999), at(60_000))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(claim_one(s, "a", at(5_000)).id, id);
}

/// Arguments come back byte for byte, also large ones and empty ones.
pub fn args_round_trip_exactly(s: &dyn Store) {
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for args in [vec![], vec![0u8, 0xff, 0xc1], big] {
        let id = add(s, NewTask::new("bytes", args.clone()));
        assert_eq!(s.get(id).expect("get").expect("exists").args, args);
        assert_eq!(claim_one(s, "bytes", T0).args, args);
    }
}

/// Claims come in run-at order, then id order.
pub fn claim_follows_run_at_then_id(s: &dyn Store) {
    let late = add(s, task("a").run_at(at(20)));
    let first = add(s, task("a"));
    let second = add(s, task("a"));
    let early = add(s, task("a").run_at(at(10)));
    let got: Vec<TaskId> = s
        .claim("a", 10, at(100), at(60_000))
        .expect("claim")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(got, vec![first, second, early, late]);
}

/// At most `limit` tasks, only of the channel asked for.
pub fn claim_respects_limit_and_channel(s: &dyn Store) {
    for _ in 0..5 {
        add(s, task("a"));
    }
    let other = add(s, task("b"));
    assert!(s.claim("a", 0, T0, at(1)).expect("claim").is_empty());
    let got = s.claim("a", 3, T0, at(1)).expect("claim");
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|t| t.channel == "a"));
    assert!(got.iter().all(|t| t.state.status == Status::Running));
    assert!(got.iter().all(|t| t.state.attempts == 1));
    assert!(got.iter().all(|t| t.state.lease_until == Some(at(1))));
    assert_eq!(s.claim("a", 10, T0, at(1)).expect("claim").len(), 2);
    assert!(s.claim("nope", 10, T0, at(1)).expect("claim").is_empty());
    assert_eq!(status(s, other), Status::Pending);
}

/// Tasks not due yet are not claimed, however many.
pub fn claim_skips_tasks_not_due(s: &dyn Store) {
    add(s, task("a").run_at(at(1_000)));
    add(s, task("a").run_at(at(2_000)));
    assert!(s.claim("a", 10, T0, at(30_000)).expect("claim").is_empty());
    assert_eq!(
        s.claim("a", 10, at(1_500), at(30_000))
            .expect("claim")
            .len(),
        1
    );
}

/// A claim promotes at most `PROMOTE_PER_CLAIM` due delayed tasks, earliest due first;
/// the next claims promote the rest.
pub fn claims_promote_due_delayed_tasks_in_batches(s: &dyn Store) {
    let batch = simplepyq_core::batch::PROMOTE_PER_CLAIM;
    let extra = 10;
    // Due in reverse order of their ids: the promotion follows run-at, not id.
    let tasks: Vec<NewTask> = (0..batch + extra)
        .map(|i| {
            let due = 1_000 + u64::try_from(batch + extra - i).expect("small");
            task("a").run_at(at(due))
        })
        .collect();
    let ids = s.enqueue(&tasks, T0).expect("enqueue");
    let now = at(100_000);
    let first = s.claim("a", 1, now, at(200_000)).expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].id,
        *ids.last().expect("ids"),
        "the earliest due first"
    );
    let counts = s.counts(Some("a")).expect("counts");
    assert_eq!(
        (counts.running, counts.pending, counts.delayed),
        (1, batch - 1, extra),
        "{counts:?}"
    );
    // The ones left delayed are the latest due, the first enqueued.
    for id in &ids[..extra] {
        let state = s.get(*id).expect("get").expect("there").state;
        assert_eq!(state.status, Status::Delayed, "{id}");
    }
    s.claim("a", 1, now, at(200_000)).expect("claim");
    let counts = s.counts(Some("a")).expect("counts");
    assert_eq!((counts.running, counts.delayed), (2, 0), "{counts:?}");
}

/// A running task is not handed out again while its lease is live.
pub fn claimed_task_is_not_claimed_again(s: &dyn Store) {
    add(s, task("a"));
    claim_one(s, "a", T0);
    assert!(
        s.claim("a", 10, at(29_000), at(60_000))
            .expect("claim")
            .is_empty()
    );
}

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

/// clear_failed deletes failed tasks only, of one channel or all.
pub fn clear_failed_per_channel_or_all(s: &dyn Store) {
    make_failed(s, "a", 0);
    make_failed(s, "a", 0);
    make_failed(s, "b", 0);
    let pending = add(s, task("a"));
    assert_eq!(s.clear_failed(Some("a")).expect("clear"), 2);
    assert_eq!(s.counts(Some("b")).expect("counts").failed, 1);
    assert_eq!(s.clear_failed(None).expect("clear"), 1);
    assert_eq!(s.clear_failed(None).expect("clear"), 0);
    assert_eq!(status(s, pending), Status::Pending);
    assert_eq!(s.counts(None).expect("counts").total(), 1);
}

/// `n` tasks of `channel`, claimed and ended with `outcome`, in large batches.
fn make_many(s: &dyn Store, channel: &str, n: usize, outcome: &Outcome) {
    let tasks: Vec<NewTask> = (0..n).map(|_| task(channel)).collect();
    for chunk in tasks.chunks(2_000) {
        s.enqueue(chunk, T0).expect("enqueue");
        let claimed = s
            .claim(channel, chunk.len(), T0, T0.after(LEASE))
            .expect("claim");
        assert_eq!(claimed.len(), chunk.len());
        let results: Vec<(Claim, Outcome)> = claimed
            .iter()
            .map(|t| (t.claim(), outcome.clone()))
            .collect();
        for r in s.finish_many(&results, T0).expect("finish") {
            r.expect("recorded");
        }
    }
}

/// Requeueing, clearing, removing and purging more tasks than one of their transactions
/// takes ([`simplepyq_core::batch::BULK_BATCH`]): every task is reached, each once, and a
/// failed task whose unique key a task requeued in an earlier batch holds stays failed.
pub fn bulk_calls_reach_every_task_across_batches(s: &dyn Store) {
    let n = 2 * simplepyq_core::batch::BULK_BATCH + 7;
    let permanent = Outcome::Failed {
        error: "x".into(),
        retry_at: T0,
        permanent: true,
    };
    // Two failed tasks with one key, far apart: the second is in a later batch.
    let first = make_failed_with(s, task("bulk").unique_key("k"));
    make_many(s, "bulk", n - 2, &permanent);
    let second = make_failed_with(s, task("bulk").unique_key("k"));
    assert_eq!(s.counts(Some("bulk")).expect("counts").failed, n);
    assert_eq!(
        s.requeue_failed(Some("bulk"), None, at(1))
            .expect("requeue"),
        n - 1
    );
    assert_eq!(
        (status(s, first), status(s, second)),
        (Status::Pending, Status::Failed)
    );
    assert_eq!(s.clear_failed(None).expect("clear"), 1);
    let c = s.counts(Some("bulk")).expect("counts");
    assert_eq!((c.pending, c.failed), (n - 1, 0), "{c:?}");
    assert_eq!(s.remove_channel("bulk").expect("remove"), n - 1);
    make_many(s, "bulk", n, &permanent);
    assert_eq!(s.requeue_failed(None, Some(1), at(2)).expect("requeue"), n);
    assert_eq!(s.remove_channel("bulk").expect("remove"), n);
    make_many(s, "done", n, &Outcome::Succeeded);
    make_many(s, "failed", 3, &permanent);
    assert_eq!(s.purge_done(None, at(1)).expect("purge"), n);
    assert_eq!(s.clear_failed(Some("failed")).expect("clear"), 3);
    assert_eq!(s.counts(None).expect("counts").total(), 0);
}

/// requeue_failed restores the enqueued retry count, or sets a new one; per channel or all.
pub fn requeue_failed_restores_or_sets_retries(s: &dyn Store) {
    let a = make_failed(s, "a", 2);
    let b = make_failed(s, "b", 1);
    assert_eq!(
        s.requeue_failed(Some("a"), None, at(7)).expect("requeue"),
        1
    );
    let ra = s.get(a).expect("get").expect("exists");
    assert_eq!(
        (ra.state.status, ra.state.retries_left),
        (Status::Pending, 2)
    );
    assert_eq!((ra.state.attempts, ra.state.run_at), (1, at(7)));
    assert_eq!(status(s, b), Status::Failed);
    assert_eq!(s.requeue_failed(None, Some(4), at(8)).expect("requeue"), 1);
    let rb = s.get(b).expect("get").expect("exists");
    assert_eq!(
        (rb.state.status, rb.state.retries_left),
        (Status::Pending, 4)
    );
    assert_eq!(s.requeue_failed(None, None, at(9)).expect("requeue"), 0);
}

/// remove_channel deletes every task of the channel, whatever its status, and no other.
pub fn remove_channel_deletes_every_status(s: &dyn Store) {
    make_failed(s, "a", 0);
    let done = add(s, task("a"));
    let t = claim_one(s, "a", T0);
    assert_eq!(t.id, done);
    s.complete(t.claim(), T0).expect("complete");
    let running = add(s, task("a"));
    add(s, task("a"));
    add(s, task("a").run_at(at(1_000)));
    let kept = add(s, task("b"));
    let r = claim_one(s, "a", T0);
    assert_eq!(r.id, running);
    assert_eq!(s.remove_channel("a").expect("remove"), 5);
    assert_eq!(s.counts(Some("a")).expect("counts").total(), 0);
    assert_eq!(s.next_wakeup("a").expect("wakeup"), None);
    assert!(matches!(
        s.complete(r.claim(), T0),
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(status(s, kept), Status::Pending);
    assert_eq!(s.remove_channel("a").expect("remove"), 0);
}

/// purge_done deletes done tasks finished before the cut-off only.
pub fn purge_done_deletes_old_done_tasks(s: &dyn Store) {
    let mut done = Vec::new();
    for (channel, finished) in [("a", 10), ("a", 20), ("b", 10)] {
        let id = add(s, task(channel));
        let t = claim_one(s, channel, T0);
        s.complete(t.claim(), at(finished)).expect("complete");
        done.push(id);
    }
    make_failed(s, "a", 0);
    let pending = add(s, task("a"));
    assert_eq!(s.purge_done(Some("a"), at(20)).expect("purge"), 1);
    assert_eq!(s.get(done[0]).expect("get"), None);
    assert_eq!(status(s, done[1]), Status::Done);
    assert_eq!(s.purge_done(None, at(21)).expect("purge"), 2);
    let c = s.counts(None).expect("counts");
    assert_eq!((c.done, c.failed, c.pending), (0, 1, 1));
    assert_eq!(status(s, pending), Status::Pending);
}

/// The channels with tasks, in name order; a channel whose last task is gone is no longer
/// listed.
pub fn channels_lists_channels_with_tasks(s: &dyn Store) {
    assert!(s.channels().expect("channels").is_empty());
    add(s, task("b"));
    add(s, task("a"));
    make_failed(s, "c", 0);
    add(s, task("a"));
    assert_eq!(s.channels().expect("channels"), vec!["a", "b", "c"]);
    s.remove_channel("b").expect("remove");
    s.clear_failed(Some("c")).expect("clear");
    assert_eq!(s.channels().expect("channels"), vec!["a"]);
    // A channel is listed whatever the status of its tasks: one of each status apiece,
    // several channels per status.
    add(s, task("delayed-1").run_at(at(60_000)));
    add(s, task("delayed-2").run_at(at(60_000)));
    for channel in ["done-1", "done-2"] {
        add(s, task(channel));
        let t = claim_one(s, channel, T0);
        s.complete(t.claim(), T0).expect("complete");
    }
    for channel in ["running-1", "running-2"] {
        add(s, task(channel));
        claim_one(s, channel, T0);
    }
    make_failed(s, "failed-1", 0);
    let all = [
        "a",
        "delayed-1",
        "delayed-2",
        "done-1",
        "done-2",
        "failed-1",
        "running-1",
        "running-2",
    ];
    assert_eq!(s.channels().expect("channels"), all);
}

/// Counts per status, for one channel and for all.
pub fn counts_per_channel_and_total(s: &dyn Store) {
    make_failed(s, "a", 0);
    add(s, task("a"));
    add(s, task("a"));
    add(s, task("a").run_at(at(1_000)));
    claim_one(s, "a", T0);
    add(s, task("b"));
    let b = claim_one(s, "b", T0);
    s.complete(b.claim(), T0).expect("complete");
    let a = s.counts(Some("a")).expect("counts");
    assert_eq!(
        (a.pending, a.running, a.delayed, a.done, a.failed),
        (1, 1, 1, 0, 1)
    );
    let all = s.counts(None).expect("counts");
    assert_eq!((all.done, all.total()), (1, 5));
    assert_eq!(s.counts(Some("zzz")).expect("counts").total(), 0);
}

/// next_wakeup: the earliest queued run-at or running lease expiry; None when idle.
pub fn next_wakeup_is_earliest_run_at_or_lease(s: &dyn Store) {
    assert_eq!(s.next_wakeup("a").expect("wakeup"), None);
    add(s, task("a").run_at(at(5_000)));
    assert_eq!(s.next_wakeup("a").expect("wakeup"), Some(at(5_000)));
    add(s, task("a"));
    assert_eq!(s.next_wakeup("a").expect("wakeup"), Some(T0));
    let t = s.claim("a", 1, T0, at(3_000)).expect("claim");
    assert_eq!(s.next_wakeup("a").expect("wakeup"), Some(at(3_000)));
    s.complete(t[0].claim(), T0).expect("complete");
    assert_eq!(s.next_wakeup("a").expect("wakeup"), Some(at(5_000)));
    let d = claim_one(s, "a", at(5_000));
    s.complete(d.claim(), at(5_000)).expect("complete");
    assert_eq!(s.next_wakeup("a").expect("wakeup"), None);
    assert_eq!(s.next_wakeup("other").expect("wakeup"), None);
}

/// Unknown ids are `None`, not an error.
pub fn get_returns_none_for_unknown_id(s: &dyn Store) {
    assert_eq!(s.get(TaskId::new(42)).expect("get"), None);
}

/// Ids of deleted tasks are not given out again (stale claims must stay stale).
pub fn ids_are_never_reused(s: &dyn Store) {
    let first = make_failed(s, "a", 0);
    s.clear_failed(None).expect("clear");
    let next = add(s, task("a"));
    assert!(next > first, "{next} reused after {first}");
}

/// Many threads claiming at once never get the same task twice.
pub fn concurrent_claims_never_share_a_task(s: &dyn Store) {
    let tasks: Vec<NewTask> = (0..400).map(|_| task("a")).collect();
    s.enqueue(&tasks, T0).expect("enqueue");
    let claimed: Vec<Vec<TaskId>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let got = s.claim("a", 3, T0, at(60_000)).expect("claim");
                        if got.is_empty() {
                            return mine;
                        }
                        for t in got {
                            s.complete(t.claim(), T0).expect("complete");
                            mine.push(t.id);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let all: Vec<TaskId> = claimed.into_iter().flatten().collect();
    let unique: HashSet<TaskId> = all.iter().copied().collect();
    assert_eq!(all.len(), 400);
    assert_eq!(unique.len(), 400);
    assert_eq!(s.counts(None).expect("counts").done, 400);
}

/// Higher priorities are claimed first; equal ones in run-at, then id order.
pub fn priority_orders_claims(s: &dyn Store) {
    let a = add(s, task("c"));
    let b = add(s, task("c").priority(5));
    let c = add(s, task("c"));
    let d = add(s, task("c").priority(5));
    let e = add(s, task("c").priority(-1));
    let order: Vec<TaskId> = s
        .claim("c", 10, T0, at(60_000))
        .expect("claim")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(order, vec![b, d, a, c, e]);
    assert_eq!(s.get(b).expect("get").expect("exists").priority, 5);
}

/// A delayed task whose time has come is promoted, and then competes by priority.
pub fn due_delayed_tasks_are_promoted_and_keep_their_priority(s: &dyn Store) {
    let low = add(s, task("c"));
    let urgent_later = add(s, task("c").priority(9).run_at(at(1_000)));
    assert_eq!(status(s, urgent_later), Status::Delayed);
    // A claim of nothing changes nothing, not even a due delayed task.
    assert!(
        s.claim("c", 0, at(1_000), at(60_000))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(status(s, urgent_later), Status::Delayed);
    let first = s.claim("c", 1, at(1_000), at(60_000)).expect("claim");
    assert_eq!(first[0].id, urgent_later);
    assert_eq!(claim_one(s, "c", at(1_000)).id, low);
    // A delayed task not yet due stays delayed.
    let later = add(s, task("c").priority(9).run_at(at(5_000)));
    assert!(
        s.claim("c", 5, at(4_000), at(60_000))
            .expect("claim")
            .is_empty()
    );
    assert_eq!(status(s, later), Status::Delayed);
}

/// A unique key returns the unfinished task that has it instead of adding another; once
/// that task is done, failed or cancelled, the key is free again.
pub fn unique_keys_deduplicate_unfinished_tasks(s: &dyn Store) {
    let first = add(s, task("c").unique_key("k"));
    assert_eq!(add(s, task("c").unique_key("k")), first);
    let batch = s
        .enqueue(
            &[
                task("c").unique_key("k"),
                task("c").unique_key("j"),
                task("c").unique_key("j"),
                task("other").unique_key("k"),
            ],
            T0,
        )
        .expect("enqueue");
    assert_eq!(batch[0], first);
    assert_eq!(batch[1], batch[2]);
    assert_ne!(batch[3], first, "keys are per channel");
    assert_eq!(s.counts(Some("c")).expect("counts").total(), 2);
    // While running, still the same task.
    let t = claim_one(s, "c", T0);
    assert_eq!(t.id, first);
    assert_eq!(add(s, task("c").unique_key("k")), first);
    s.complete(t.claim(), T0).expect("complete");
    let again = add(s, task("c").unique_key("k"));
    assert_ne!(again, first, "a done task frees its key");
    s.cancel(again).expect("cancel");
    let third = add(s, task("c").unique_key("k"));
    assert_ne!(third, again, "a cancelled task frees its key");
    assert_eq!(
        s.get(third)
            .expect("get")
            .expect("exists")
            .unique_key
            .as_deref(),
        Some("k")
    );
}

/// A failed task whose unique key another unfinished task now holds stays failed when
/// failed tasks are requeued; of two failed tasks with one key, the first is requeued.
pub fn requeue_keeps_unique_keys_unique(s: &dyn Store) {
    let failed = make_failed_with(s, task("c").unique_key("k"));
    let holder = add(s, task("c").unique_key("k"));
    assert_ne!(holder, failed);
    assert_eq!(s.requeue_failed(None, None, T0).expect("requeue"), 0);
    assert_eq!(status(s, failed), Status::Failed);
    s.cancel(holder).expect("cancel");
    let second = make_failed_with(s, task("c").unique_key("k"));
    assert_eq!(s.requeue_failed(Some("c"), None, T0).expect("requeue"), 1);
    assert_eq!(
        (status(s, failed), status(s, second)),
        (Status::Pending, Status::Failed)
    );
    assert_eq!(add(s, task("c").unique_key("k")), failed);
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

/// Pages of tasks in id order, by channel and status.
pub fn list_pages_in_id_order(s: &dyn Store) {
    let ids: Vec<TaskId> = (0..7)
        .map(|i| add(s, task(if i % 2 == 0 { "a" } else { "b" })))
        .collect();
    let t = claim_one(s, "a", T0);
    let page =
        |f: ListFilter| -> Vec<TaskId> { s.list(&f).expect("list").iter().map(|t| t.id).collect() };
    assert_eq!(page(ListFilter::new(100)), ids);
    assert_eq!(page(ListFilter::new(3)), ids[..3].to_vec());
    assert_eq!(page(ListFilter::new(3).after(ids[2])), ids[3..6].to_vec());
    assert_eq!(
        page(ListFilter::new(100).channel("b")),
        vec![ids[1], ids[3], ids[5]]
    );
    assert_eq!(
        page(ListFilter::new(100).channel("a").status(Status::Pending)),
        vec![ids[2], ids[4], ids[6]]
    );
    assert_eq!(
        page(ListFilter::new(100).status(Status::Running)),
        vec![t.id]
    );
    assert!(page(ListFilter::new(0)).is_empty());
}

/// Pending and delayed tasks can be cancelled; running and finished ones cannot.
pub fn cancel_deletes_queued_tasks_only(s: &dyn Store) {
    let pending = add(s, task("c"));
    let delayed = add(s, task("c").run_at(at(1_000)));
    let running = add(s, task("c"));
    s.cancel(pending).expect("cancel pending");
    s.cancel(delayed).expect("cancel delayed");
    assert_eq!(s.get(pending).expect("get"), None);
    let t = claim_one(s, "c", T0);
    assert_eq!(t.id, running);
    let err = s.cancel(running).expect_err("running");
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    s.complete(t.claim(), T0).expect("complete");
    let err = s.cancel(running).expect_err("done");
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    let err = s.cancel(delayed).expect_err("gone");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let c = s.counts(None).expect("counts");
    assert_eq!((c.done, c.total()), (1, 1));
    assert_eq!(s.next_wakeup("c").expect("wakeup"), None);
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

/// Tasks that ended done or failed count in the bucket of their last change, per channel
/// or all together; tasks finished before `since`, queued ones and failures with a retry
/// left do not count.
pub fn finished_counts_per_bucket(s: &dyn Store) {
    let minute = Duration::from_secs(60);
    for _ in 0..6 {
        add(s, task("a"));
    }
    add(s, task("b"));
    add(s, task("b").retries(1));
    let finish = |channel: &str, outcome: Outcome, now: Timestamp| {
        let t = claim_one(s, channel, now);
        s.finish(t.claim(), &outcome, now).expect("finish");
    };
    finish("a", Outcome::Succeeded, at(0)); // before `since`
    finish("a", Outcome::Succeeded, at(1_000));
    finish("a", Outcome::Succeeded, at(1_001));
    finish("a", Outcome::Succeeded, at(61_000));
    finish("a", fail("boom", at(61_500)), at(61_500));
    finish("b", Outcome::Succeeded, at(2_000));
    finish("b", fail("again", at(2_500)), at(2_500)); // a retry is left: pending again
    let since = at(500);
    let bucket = |ms| Finished::bucket_of(at(ms), minute);
    let row = |ms, done, failed| Finished {
        bucket: bucket(ms),
        done,
        failed,
    };
    let mut expected = vec![(1_000, 3, 0), (61_000, 1, 1)];
    if bucket(1_000) == bucket(61_000) {
        expected = vec![(1_000, 4, 1)];
    }
    let all: Vec<_> = expected.iter().map(|&(ms, d, f)| row(ms, d, f)).collect();
    assert_eq!(s.finished(None, since, minute).expect("finished"), all);
    let only_b = vec![row(2_000, 1, 0)];
    assert_eq!(
        s.finished(Some("b"), since, minute).expect("finished"),
        only_b
    );
    let per_ms = s
        .finished(Some("a"), since, Duration::from_millis(1))
        .expect("finished");
    let ms_rows = [(1_000, 1, 0), (1_001, 1, 0), (61_000, 1, 0), (61_500, 0, 1)];
    let ms_rows: Vec<_> = ms_rows
        .iter()
        .map(|&(ms, done, failed)| Finished {
            bucket: at(ms),
            done,
            failed,
        })
        .collect();
    assert_eq!(per_ms, ms_rows);
    assert_eq!(
        s.finished(Some("c"), since, minute).expect("finished"),
        vec![]
    );
    assert_eq!(
        s.finished(None, at(62_000), minute).expect("finished"),
        vec![]
    );
}

/// Every recorded outcome and recovered lost run counts once in its channel's totals; a
/// refused outcome, a deferral and a release count nothing; removing, clearing, purging and
/// requeueing leave the totals.
pub fn totals_count_each_run_once(s: &dyn Store) {
    assert!(s.totals().expect("totals").is_empty());
    let t = |done, failed, retried, lease_lost| Totals {
        done,
        failed,
        retried,
        lease_lost,
    };
    for _ in 0..3 {
        add(s, task("a"));
    }
    add(s, task("a").retries(1));
    add(s, task("a"));
    let now = at(10);
    let claims: Vec<Claim> = s
        .claim("a", 5, now, now.after(LEASE))
        .expect("claim")
        .iter()
        .map(Task::claim)
        .collect();
    let delay = Outcome::Delayed { until: at(20) };
    let results = [
        (claims[0], Outcome::Succeeded),
        (claims[1], Outcome::Succeeded),
        (claims[0], Outcome::Succeeded), // repeated in the batch: refused
        (claims[2], fail("boom", now)),  // no retry left: failed
        (claims[3], fail("boom", now)),  // one retry left: retried
        (claims[4], delay),
    ];
    s.finish_many(&results, now).expect("finish");
    let again = s.finish(claims[1], &Outcome::Succeeded, now);
    assert!(matches!(again, Err(Error::LeaseLost { .. })), "{again:?}");
    let a = t(2, 1, 1, 0);
    assert_eq!(s.totals().expect("totals").get("a"), Some(&a));

    // A release counts nothing; two lost runs of one task with one allowed: the second
    // fails it; its worker's late outcome is refused.
    let b = add(s, task("b"));
    let held = claim_one(s, "b", now);
    assert_eq!(s.release(&[held.claim()], now).expect("release"), 1);
    let lost = claim_one(s, "b", now);
    assert_eq!(s.recover_expired(now.after(LEASE), 1).expect("recover"), 1);
    claim_one(s, "b", now.after(LEASE));
    assert_eq!(
        s.recover_expired(now.after(LEASE * 2), 1).expect("recover"),
        1
    );
    assert_eq!(status(s, b), Status::Failed);
    assert!(s.finish(lost.claim(), &Outcome::Succeeded, now).is_err());
    let expected: Vec<(String, Totals)> = vec![("a".into(), a), ("b".into(), t(0, 1, 0, 2))];
    let totals = |s: &dyn Store| -> Vec<(String, Totals)> {
        s.totals().expect("totals").into_iter().collect()
    };
    assert_eq!(totals(s), expected);

    assert_eq!(s.requeue_failed(Some("a"), None, now).expect("requeue"), 1);
    assert_eq!(s.clear_failed(None).expect("clear"), 1);
    assert_eq!(s.purge_done(None, at(1_000_000)).expect("purge"), 2);
    assert!(s.remove_channel("a").expect("remove") > 0);
    assert_eq!(totals(s), expected, "totals only grow");
}

/// A schedule's firings move forward: each fire time enqueues once, with its run-at; an
/// earlier or equal one changes nothing; schedules are apart; a bad channel records
/// nothing; removing the channel keeps the record; a held unique key gives its holder.
pub fn schedule_firings_move_forward(s: &dyn Store) {
    assert_eq!(s.last_fired("tick").expect("last fired"), None);
    let t1 = at(1_000);
    let id = s
        .fire_schedule("tick", t1, &task("a").run_at(t1), at(1_005))
        .expect("fire")
        .expect("the first firing enqueues");
    let fired = s.get(id).expect("get").expect("the task");
    assert_eq!(
        (fired.state.status, fired.state.run_at),
        (Status::Pending, t1)
    );
    assert_eq!(fired.args, vec![0x91, 0x01]);
    assert_eq!(s.last_fired("tick").expect("last fired"), Some(t1));
    for again in [t1, at(500)] {
        let none = s
            .fire_schedule("tick", again, &task("a").run_at(again), at(1_010))
            .expect("fire");
        assert_eq!(none, None, "a firing at or before the recorded one");
    }
    assert_eq!(s.counts(Some("a")).expect("counts").pending, 1);
    // Another schedule is apart.
    assert!(
        s.fire_schedule("other", t1, &task("b").run_at(t1), at(1_005))
            .expect("fire")
            .is_some()
    );
    // A bad channel fails and records nothing.
    let err = s
        .fire_schedule("tick", at(2_000), &task(""), at(2_000))
        .expect_err("an empty channel");
    assert!(matches!(err, Error::InvalidChannel { .. }), "{err}");
    assert_eq!(s.last_fired("tick").expect("last fired"), Some(t1));
    // The record outlives the channel's tasks.
    assert_eq!(s.remove_channel("a").expect("remove"), 1);
    assert_eq!(s.last_fired("tick").expect("last fired"), Some(t1));
    // A unique key an unfinished task holds: its holder's id, the firing recorded.
    let holder = add(s, task("a").unique_key("one-at-a-time"));
    let t2 = at(2_000);
    let keyed = task("a").unique_key("one-at-a-time").run_at(t2);
    assert_eq!(
        s.fire_schedule("tick", t2, &keyed, t2).expect("fire"),
        Some(holder)
    );
    assert_eq!(s.last_fired("tick").expect("last fired"), Some(t2));
    assert_eq!(s.counts(Some("a")).expect("counts").pending, 1);
}

/// Threads firing the same fire times at once enqueue each exactly once.
pub fn concurrent_firings_enqueue_each_fire_time_once(s: &dyn Store) {
    const TIMES: u64 = 40;
    let fired: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = 0;
                    for k in 1..=TIMES {
                        let t = at(k * 100);
                        let got = s
                            .fire_schedule("tick", t, &task("ticks").run_at(t), t)
                            .expect("fire");
                        mine += usize::from(got.is_some());
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(fired.iter().sum::<usize>(), TIMES as usize);
    let tasks = s
        .list(&ListFilter::new(1_000).channel("ticks"))
        .expect("list");
    let mut run_ats: Vec<Timestamp> = tasks.iter().map(|t| t.state.run_at).collect();
    run_ats.sort();
    assert_eq!(
        run_ats,
        (1..=TIMES).map(|k| at(k * 100)).collect::<Vec<_>>()
    );
    assert_eq!(
        s.last_fired("tick").expect("last fired"),
        Some(at(TIMES * 100))
    );
}
