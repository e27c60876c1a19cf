//! The administration group of the contract ([`simplepyq_core::AdminStore`]): failed tasks
//! cleared and requeued, channels removed, done tasks purged, tasks cancelled.

use simplepyq_core::{Claim, Error, NewTask, Outcome, Status, Store, StoreExt};

use super::*;

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
    assert_eq!(s.remove_channel("bulk", T0).expect("remove"), n - 1);
    make_many(s, "bulk", n, &permanent);
    assert_eq!(s.requeue_failed(None, Some(1), at(2)).expect("requeue"), n);
    assert_eq!(s.remove_channel("bulk", T0).expect("remove"), n);
    make_many(s, "done", n, &Outcome::Succeeded);
    make_many(s, "failed", 3, &permanent);
    assert_eq!(s.purge_done(None, at(1)).expect("purge"), n);
    assert_eq!(s.clear_failed(Some("failed")).expect("clear"), 3);
    make_many(s, "failed", n, &permanent);
    assert_eq!(s.purge_failed(Some("failed"), at(1)).expect("purge"), n);
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
    assert_eq!(s.remove_channel("a", T0).expect("remove"), 5);
    assert_eq!(s.counts(Some("a")).expect("counts").total(), 0);
    assert_eq!(s.next_wakeup("a").expect("wakeup"), None);
    assert!(matches!(
        s.complete(r.claim(), T0),
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(status(s, kept), Status::Pending);
    assert_eq!(s.remove_channel("a", T0).expect("remove"), 0);
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

/// purge_failed deletes failed tasks that failed before the cut-off only, of one channel or
/// all; done and queued tasks stay.
pub fn purge_failed_deletes_old_failed_tasks(s: &dyn Store) {
    let mut failed = Vec::new();
    for (channel, at_ms) in [("a", 10), ("a", 20), ("b", 10)] {
        add(s, task(channel));
        let t = claim_one(s, channel, T0);
        let outcome = Outcome::Failed {
            error: "x".into(),
            retry_at: T0,
            permanent: true,
        };
        s.finish(t.claim(), &outcome, at(at_ms)).expect("fail");
        failed.push(t.id);
    }
    add(s, task("a"));
    let t = claim_one(s, "a", T0);
    s.complete(t.claim(), at(0)).expect("complete");
    let pending = add(s, task("a"));
    assert_eq!(s.purge_failed(Some("a"), at(20)).expect("purge"), 1);
    assert_eq!(s.get(failed[0]).expect("get"), None);
    assert_eq!(status(s, failed[1]), Status::Failed);
    assert_eq!(s.purge_failed(None, at(21)).expect("purge"), 2);
    let c = s.counts(None).expect("counts");
    assert_eq!((c.done, c.failed, c.pending), (1, 0, 1));
    assert_eq!(status(s, pending), Status::Pending);
    // Queued and running tasks are never purged: a clear error, nothing deleted.
    for queued in [Status::Pending, Status::Delayed, Status::Running] {
        assert!(matches!(
            s.purge_batch(queued, None, at(1_000_000)),
            Err(Error::InvalidConfig(_))
        ));
    }
    assert_eq!(status(s, pending), Status::Pending);
}

/// A failed task whose unique key another unfinished task now holds stays failed when
/// failed tasks are requeued; of two failed tasks with one key, the first is requeued.
pub fn requeue_keeps_unique_keys_unique(s: &dyn Store) {
    let failed = make_failed_with(s, task("c").unique_key("k"));
    let holder = add(s, task("c").unique_key("k"));
    assert_ne!(holder, failed);
    assert_eq!(s.requeue_failed(None, None, T0).expect("requeue"), 0);
    assert_eq!(status(s, failed), Status::Failed);
    s.cancel(holder, T0).expect("cancel");
    let second = make_failed_with(s, task("c").unique_key("k"));
    assert_eq!(s.requeue_failed(Some("c"), None, T0).expect("requeue"), 1);
    assert_eq!(
        (status(s, failed), status(s, second)),
        (Status::Pending, Status::Failed)
    );
    assert_eq!(add(s, task("c").unique_key("k")), failed);
}

/// Pending and delayed tasks can be cancelled; running and finished ones cannot.
pub fn cancel_deletes_queued_tasks_only(s: &dyn Store) {
    let pending = add(s, task("c"));
    let delayed = add(s, task("c").run_at(at(1_000)));
    let running = add(s, task("c"));
    s.cancel(pending, T0).expect("cancel pending");
    s.cancel(delayed, T0).expect("cancel delayed");
    assert_eq!(s.get(pending).expect("get"), None);
    let t = claim_one(s, "c", T0);
    assert_eq!(t.id, running);
    let err = s.cancel(running, T0).expect_err("running");
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    s.complete(t.claim(), T0).expect("complete");
    let err = s.cancel(running, T0).expect_err("done");
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    let err = s.cancel(delayed, T0).expect_err("gone");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let c = s.counts(None).expect("counts");
    assert_eq!((c.done, c.total()), (1, 1));
    assert_eq!(s.next_wakeup("c").expect("wakeup"), None);
}
