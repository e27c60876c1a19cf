//! The claim group of the contract ([`simplepyq_core::ClaimStore`]): enqueue, claim, the
//! next due time; ids, priorities, promotion of delayed tasks, unique keys.

use std::collections::HashSet;

use simplepyq_core::{Error, NewTask, Status, Store, StoreExt, TaskId};

use super::*;

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

/// A large batch (stores may insert it another way than a small one: PostgreSQL by `COPY`
/// from 1,000 tasks) keeps its order and
/// every field of every task: ids increase in the tasks' order, and each task reads back
/// as it was enqueued, pending or delayed, with its priority, retries, key, timeout and
/// trace context.
pub fn a_large_batch_keeps_its_order_and_fields(s: &dyn Store) {
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tasks: Vec<NewTask> = (0..1_200u32)
        .map(|i| {
            let mut t = NewTask::new(["a", "b", "c"][i as usize % 3], vec![0x91, (i % 100) as u8])
                .priority(i as i32 % 5 - 2)
                .retries(i % 4);
            if i % 7 == 0 {
                t = t.run_at(T0.after(Duration::from_secs(60)));
            }
            if i % 5 == 0 {
                t = t.concurrency_key(format!("k{i}"));
            }
            if i % 11 == 0 {
                t = t.timeout(Duration::from_millis(u64::from(i) + 1));
            }
            if i % 13 == 0 {
                t = t.traceparent(trace);
            }
            t
        })
        .collect();
    let ids = s.enqueue(&tasks, T0).expect("enqueue");
    assert_eq!(ids.len(), tasks.len());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (id, t) in ids.iter().zip(&tasks) {
        let got = s.get(*id).expect("get").expect("exists");
        assert_eq!(
            (&got.channel, &got.args, got.priority, got.created_at),
            (&t.channel, &t.args, t.priority, T0)
        );
        assert_eq!(got.state, t.initial_state(T0), "{id}");
        assert_eq!(
            (
                &got.concurrency_key,
                got.timeout,
                &got.traceparent,
                &got.unique_key
            ),
            (&t.concurrency_key, t.timeout, &t.traceparent, &None)
        );
    }
    let counts = s.counts(None).expect("counts");
    assert_eq!((counts.pending, counts.delayed), (1_028, 172));
}

/// Threads enqueueing at once (stores may gather their calls into one commit) each get
/// their own tasks' ids: each id reads back as its caller's task, with its caller's time,
/// and no id is given twice.
pub fn concurrent_enqueues_each_get_their_own_ids(s: &dyn Store) {
    let all = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for thread in 0..8u8 {
            let all = &all;
            scope.spawn(move || {
                let now = T0.after(Duration::from_millis(u64::from(thread)));
                for i in 0..40u8 {
                    let mut batch = vec![NewTask::new("a", vec![0x92, thread, i])];
                    if i % 4 == 0 {
                        // Now and then a call of two, one of them delayed.
                        let later = now.after(Duration::from_secs(5));
                        batch.push(NewTask::new("b", vec![0x92, thread, i]).run_at(later));
                    }
                    let ids = s.enqueue(&batch, now).expect("enqueue");
                    assert_eq!(ids.len(), batch.len());
                    let mut all = all.lock().expect("lock");
                    all.extend(ids.into_iter().zip(batch).map(|(id, t)| (id, t, now)));
                }
            });
        }
    });
    let all = all.into_inner().expect("lock");
    let ids: HashSet<TaskId> = all.iter().map(|(id, ..)| *id).collect();
    assert_eq!(ids.len(), all.len(), "an id given twice");
    for (id, t, now) in &all {
        let got = s.get(*id).expect("get").expect("exists");
        assert_eq!(
            (&got.channel, &got.args, got.created_at),
            (&t.channel, &t.args, *now)
        );
        assert_eq!(got.state, t.initial_state(*now), "{id}");
    }
    let counts = s.counts(None).expect("counts");
    assert_eq!((counts.pending, counts.delayed), (320, 80));
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

/// A task's own timeout is kept to the millisecond, read back and claimed with it; one
/// under a millisecond is refused, and nothing of its enqueue is stored.
pub fn timeouts_round_trip_in_milliseconds(s: &dyn Store) {
    let timeout = Duration::from_millis(1_500);
    let id = add(s, task("a").timeout(timeout));
    let plain = add(s, task("a"));
    assert_eq!(
        s.get(id).expect("get").expect("kept").timeout,
        Some(timeout)
    );
    let claimed = s.claim("a", 2, T0, T0.after(LEASE)).expect("claim");
    assert_eq!(claimed[0].timeout, Some(timeout));
    assert_eq!((claimed[1].id, claimed[1].timeout), (plain, None));
    for bad in [Duration::ZERO, Duration::from_micros(500)] {
        let err = s
            .enqueue(&[task("b"), task("b").timeout(bad)], T0)
            .expect_err("under a millisecond");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    assert_eq!(s.counts(Some("b")).expect("counts").total(), 0);
}

/// A task's trace context (a W3C `traceparent`) is kept as given, by every way a task is
/// enqueued (one, a batch, a batch with a unique key, a batch with a task waiting for an
/// earlier one), and read back by every way a task is claimed (with and without a
/// concurrency key); a malformed one is refused and nothing of its enqueue is stored.
pub fn traceparents_round_trip(s: &dyn Store) {
    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const OTHER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let one = add(s, task("a").traceparent(TRACE));
    let batch = s
        .enqueue(&[task("a").traceparent(OTHER), task("a")], T0)
        .expect("enqueue");
    let keyed = s
        .enqueue(&[task("a").unique_key("u").traceparent(TRACE)], T0)
        .expect("enqueue");
    let grouped = s
        .enqueue(
            &[
                task("g").traceparent(TRACE),
                task("g").traceparent(OTHER).after_earlier(0),
            ],
            T0,
        )
        .expect("enqueue");
    let by_key = add(s, task("k").concurrency_key("c").traceparent(OTHER));
    let trace = |id: TaskId| s.get(id).expect("get").expect("kept").traceparent;
    assert_eq!(trace(one).as_deref(), Some(TRACE));
    assert_eq!(trace(batch[0]).as_deref(), Some(OTHER));
    assert_eq!(trace(batch[1]), None);
    assert_eq!(trace(keyed[0]).as_deref(), Some(TRACE));
    assert_eq!(trace(grouped[1]).as_deref(), Some(OTHER));
    let claimed: Vec<(TaskId, Option<String>)> = s
        .claim("a", 10, T0, T0.after(LEASE))
        .expect("claim")
        .into_iter()
        .map(|t| (t.id, t.traceparent))
        .collect();
    assert_eq!(
        claimed,
        vec![
            (one, Some(TRACE.to_owned())),
            (batch[0], Some(OTHER.to_owned())),
            (batch[1], None),
            (keyed[0], Some(TRACE.to_owned())),
        ]
    );
    let keyed_claim = claim_one(s, "k", T0);
    assert_eq!(
        (keyed_claim.id, keyed_claim.traceparent.as_deref()),
        (by_key, Some(OTHER))
    );
    let listed = s
        .list(&simplepyq_core::ListFilter::new(10).channel("g"))
        .expect("list");
    assert_eq!(listed[0].traceparent.as_deref(), Some(TRACE));
    for bad in [
        "",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "traceparent",
    ] {
        let err = s
            .enqueue(&[task("b"), task("b").traceparent(bad)], T0)
            .expect_err("a malformed traceparent");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    assert_eq!(s.counts(Some("b")).expect("counts").total(), 0);
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

/// Ids of deleted tasks are not given out again (stale claims must stay stale), whichever
/// way the task with the largest id goes: cleared when failed, cancelled, removed with its
/// channel among others, purged when done, or several at once in any order.
pub fn ids_are_never_reused(s: &dyn Store) {
    // A task after `last`, the largest id deleted so far; it stays, in a channel of its own.
    let never_again = |last: TaskId| {
        let next = add(s, task("next"));
        assert!(next > last, "{next} given again after {last}");
    };
    let failed = make_failed(s, "failed", 0);
    s.clear_failed(None).expect("clear");
    never_again(failed);
    let cancelled = add(s, task("cancelled"));
    s.cancel(cancelled, T0).expect("cancel");
    never_again(cancelled);
    let removed: Vec<TaskId> = (0..3).map(|_| add(s, task("gone"))).collect();
    assert_eq!(s.remove_channel("gone", T0).expect("remove"), 3);
    never_again(removed[2]);
    let done = add(s, task("done"));
    let claimed = claim_one(s, "done", T0);
    s.complete(claimed.claim(), T0).expect("complete");
    assert_eq!(s.purge_done(None, at(1)).expect("purge"), 1);
    never_again(done);
    // Cancelled from the largest down, each then the largest.
    let more: Vec<TaskId> = (0..3).map(|_| add(s, task("more"))).collect();
    for &id in more.iter().rev() {
        s.cancel(id, T0).expect("cancel");
    }
    never_again(more[2]);
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
    s.cancel(again, T0).expect("cancel");
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
