//! Concurrency keys ([`simplepyq_core::FlowStore::set_max_running_per_key`]): at most so
//! many running tasks per key, a busy key holding up no other task.

use simplepyq_core::{Error, Flow, Store, TaskId};

use super::*;

fn keyed(channel: &str, key: &str) -> NewTask {
    task(channel).concurrency_key(key)
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

/// A claim skips the tasks whose key has a running task and takes the next ones in claim
/// order (tasks without a key, and of other keys); the next wake-up leaves busy keys' tasks
/// out; an outcome frees the key; the key is stored with the task.
pub fn a_busy_key_holds_up_no_other_task(s: &dyn Store) {
    let first = add(s, keyed("a", "k1"));
    let second = add(s, keyed("a", "k1"));
    let other = add(s, keyed("a", "k2"));
    let free = add(s, task("a"));
    let third = add(s, keyed("a", "k1"));
    let last = add(s, keyed("a", "k3"));
    let claimed = s.claim("a", 10, T0, T0.after(LEASE)).expect("claim");
    assert_eq!(ids(&claimed), [first, other, free, last]);
    assert_eq!(claimed[0].concurrency_key.as_deref(), Some("k1"));
    assert_eq!(claimed[2].concurrency_key, None);
    assert!(
        s.claim("a", 10, T0, T0.after(LEASE))
            .expect("claim")
            .is_empty(),
        "k1 is busy"
    );
    assert_eq!(
        s.next_wakeup("a").expect("next wakeup"),
        Some(T0.after(LEASE)),
        "only the leases: k1's tasks wait"
    );
    let stored = s.get(second).expect("get").expect("stored");
    assert_eq!(stored.concurrency_key.as_deref(), Some("k1"));
    s.complete(claimed[0].claim(), at(10)).expect("complete");
    assert!(
        s.next_wakeup("a")
            .expect("next wakeup")
            .is_some_and(|t| t <= at(10))
    );
    let next = s
        .claim("a", 10, at(10), at(10).after(LEASE))
        .expect("claim");
    assert_eq!(ids(&next), [second], "one of k1 at a time");
    s.complete(next[0].claim(), at(20)).expect("complete");
    assert_eq!(claim_one(s, "a", at(20)).id, third);
}

/// A per-key limit of N lets N tasks of a key run; a release or a recovery frees a slot;
/// the channel's limit of running tasks holds as well; 0 is refused; back at 1 the setting
/// is the default again.
pub fn a_per_key_limit_lets_n_run(s: &dyn Store) {
    for _ in 0..5 {
        add(s, keyed("a", "k"));
    }
    assert!(s.set_max_running_per_key("a", 2).expect("per key"));
    assert!(!s.set_max_running_per_key("a", 2).expect("the same"));
    let mut expected = Flow::default();
    expected.max_running_per_key = 2;
    assert_eq!(s.flows().expect("flows")["a"], expected);
    let two = s.claim("a", 10, T0, T0.after(LEASE)).expect("claim");
    assert_eq!(two.len(), 2);
    assert_eq!(s.release(&[two[0].claim()], at(10)).expect("release"), 1);
    assert_eq!(
        s.claim("a", 10, at(10), at(10).after(LEASE))
            .expect("claim")
            .len(),
        1
    );
    let err = s.set_max_running_per_key("a", 0).expect_err("0");
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    // Everything recovered: the channel's limit of 1 holds below the key's 2.
    let expired = at(1_000).after(LEASE);
    assert_eq!(s.recover_expired(expired, 10).expect("recover"), 2);
    s.set_max_running("a", Some(1)).expect("limit");
    assert_eq!(
        s.claim("a", 10, expired, expired.after(LEASE))
            .expect("claim")
            .len(),
        1
    );
    s.set_max_running("a", None).expect("no limit");
    assert!(s.set_max_running_per_key("a", 1).expect("back to 1"));
    assert!(s.flows().expect("flows").is_empty(), "1 is the default");
    assert!(
        s.claim("a", 10, expired, expired.after(LEASE))
            .expect("claim")
            .is_empty(),
        "a running task holds k at 1"
    );
}

/// Keys are per channel; delayed tasks keep their key when they come due.
pub fn keys_belong_to_their_channel(s: &dyn Store) {
    add(s, keyed("a", "k"));
    add(s, keyed("b", "k"));
    let later = add(s, keyed("a", "k").run_at(at(100)));
    assert_eq!(claim_one(s, "a", T0).channel, "a");
    assert_eq!(claim_one(s, "b", T0).channel, "b");
    assert!(
        s.claim("a", 10, at(200), at(200).after(LEASE))
            .expect("claim")
            .is_empty(),
        "promoted, and k of a is busy"
    );
    assert_eq!(s.counts(Some("a")).expect("counts").pending, 1);
    let running = s
        .list(&simplepyq_core::ListFilter::new(10).channel("a"))
        .expect("list");
    s.complete(running[0].claim(), at(300)).expect("complete");
    assert_eq!(claim_one(s, "a", at(300)).id, later);
}

/// An empty key or one longer than 255 bytes is refused, and nothing of its enqueue is
/// stored.
pub fn bad_keys_are_refused(s: &dyn Store) {
    for bad in [String::new(), "k".repeat(256)] {
        let err = s
            .enqueue(&[task("a"), keyed("a", &bad)], T0)
            .expect_err("a bad key");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    assert_eq!(s.counts(None).expect("counts").total(), 0);
    add(s, keyed("a", &"k".repeat(255)));
}

/// Threads claiming at once never run two tasks of a key (20 keys of 5 tasks each: each
/// key once).
pub fn concurrent_claims_never_run_a_key_twice(s: &dyn Store) {
    for _ in 0..5 {
        for key in 0..20 {
            add(s, keyed("a", &format!("k{key}")));
        }
    }
    let claimed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..10 {
                    let got = s.claim("a", 3, T0, T0.after(LEASE)).expect("claim");
                    claimed.lock().expect("lock").extend(got);
                }
            });
        }
    });
    let mut keys: Vec<String> = claimed
        .into_inner()
        .expect("lock")
        .into_iter()
        .filter_map(|t| t.concurrency_key)
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(n, keys.len(), "a key ran twice");
    assert_eq!(n, 20, "every key once");
}
