//! The inspection group of the contract ([`simplepyq_core::InspectStore`]): channels, counts,
//! tasks, what finished when, totals.

use std::time::Duration;

use simplepyq_core::{
    Claim, Error, Finished, ListFilter, Outcome, Status, Store, StoreExt, Task, TaskId, Timestamp,
    Totals,
};

use super::*;

/// The channels with tasks, in name order; a channel whose last task is gone is no longer
/// listed.
pub fn channels_lists_channels_with_tasks(s: &dyn Store) {
    assert!(s.channels().expect("channels").is_empty());
    add(s, task("b"));
    add(s, task("a"));
    make_failed(s, "c", 0);
    add(s, task("a"));
    assert_eq!(s.channels().expect("channels"), vec!["a", "b", "c"]);
    s.remove_channel("b", T0).expect("remove");
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

/// `has_tasks` tells whether a channel has a task in any of the statuses asked, and only of
/// that channel.
pub fn has_tasks_per_channel_and_status(s: &dyn Store) {
    make_failed(s, "a", 0);
    add(s, task("a").run_at(at(1_000)));
    add(s, task("b"));
    let has = |channel: &str, statuses: &[Status]| s.has_tasks(channel, statuses).expect("has");
    assert!(has("a", &[Status::Failed]));
    assert!(has("a", &[Status::Delayed]));
    assert!(has("a", &[Status::Pending, Status::Delayed]));
    assert!(!has(
        "a",
        &[Status::Pending, Status::Running, Status::Waiting]
    ));
    assert!(!has("a", &[]));
    assert!(has("b", &[Status::Pending]));
    assert!(!has("b", &[Status::Failed, Status::Delayed, Status::Done]));
    let b = claim_one(s, "b", T0);
    assert!(has("b", &[Status::Running]) && !has("b", &[Status::Pending]));
    s.complete(b.claim(), T0).expect("complete");
    assert!(has("b", &[Status::Done]) && !has("b", &[Status::Running]));
    assert!(!has("zzz", &Status::ALL));
}

/// Unknown ids are `None`, not an error.
pub fn get_returns_none_for_unknown_id(s: &dyn Store) {
    assert_eq!(s.get(TaskId::new(42)).expect("get"), None);
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
    assert!(s.remove_channel("a", T0).expect("remove") > 0);
    assert_eq!(totals(s), expected, "totals only grow");
}
