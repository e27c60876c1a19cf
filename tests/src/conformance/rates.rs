//! Rates of starts ([`simplepyq_core::FlowStore::set_rate`]): at most so many claims of a
//! channel's tasks in each window of time, for every process.

use simplepyq_core::{Error, Rate, Store};

use super::*;
use crate::Fixture;

fn per_second(starts: u32) -> Rate {
    Rate::new(starts, Duration::from_secs(1))
}

fn claimed(s: &dyn Store, channel: &str, ms: u64) -> usize {
    let now = at(ms);
    s.claim(channel, 10, now, now.after(LEASE))
        .expect("claim")
        .len()
}

/// Each window of the rate (whole seconds here) starts at most its number of tasks: claims
/// take no more than the room left; outcomes and releases give no start back; the next
/// wake-up of a used-up window is its end; the next window starts afresh, and so does a
/// changed rate; other channels go on; removing the rate lets the rest through.
pub fn a_rate_caps_the_starts_of_each_window(s: &dyn Store) {
    assert_eq!(
        T0.as_millis() % 1_000,
        0,
        "the tests' time line starts a window"
    );
    for _ in 0..10 {
        add(s, task("a"));
    }
    add(s, task("b"));
    assert!(s.set_rate("a", Some(per_second(3))).expect("rate"));
    assert!(!s.set_rate("a", Some(per_second(3))).expect("the same"));
    assert_eq!(s.flows().expect("flows")["a"].rate, Some(per_second(3)));
    let first = s.claim("a", 2, T0, T0.after(LEASE)).expect("claim");
    assert_eq!(first.len(), 2);
    assert_eq!(claimed(s, "a", 100), 1, "the window's room");
    assert_eq!(claimed(s, "a", 500), 0, "used up");
    assert_eq!(
        claim_one(s, "b", at(500)).channel,
        "b",
        "other channels go on"
    );
    assert_eq!(
        s.next_wakeup("a").expect("next wakeup"),
        Some(at(1_000)),
        "the window's end"
    );
    // Outcomes and releases give no start back.
    s.complete(first[0].claim(), at(600)).expect("complete");
    assert_eq!(s.release(&[first[1].claim()], at(600)).expect("release"), 1);
    assert_eq!(claimed(s, "a", 999), 0);
    assert_eq!(claimed(s, "a", 1_000), 3, "a new window");
    assert_eq!(claimed(s, "a", 1_999), 0);
    assert_eq!(claimed(s, "a", 2_500), 3);
    // A changed rate counts afresh: one more start in this window.
    assert!(s.set_rate("a", Some(per_second(1))).expect("another rate"));
    assert_eq!(claimed(s, "a", 2_550), 1);
    assert_eq!(claimed(s, "a", 2_560), 0);
    assert!(s.set_rate("a", None).expect("no rate"));
    assert!(s.flows().expect("flows").is_empty());
    assert_eq!(claimed(s, "a", 2_600), 1, "the rest, at once");
}

/// A rate of 0 starts or a window under a millisecond is refused; a rate is kept apart
/// from the channel's tasks, as a pause is; a used-up window of a channel with nothing
/// queued asks for no wake-up.
pub fn bad_rates_are_refused_and_a_rate_outlives_its_tasks(s: &dyn Store) {
    for bad in [
        Rate::new(0, Duration::from_secs(1)),
        Rate::new(1, Duration::ZERO),
        Rate::new(1, Duration::from_micros(500)),
    ] {
        let err = s.set_rate("a", Some(bad)).expect_err("bad");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    assert!(s.flows().expect("flows").is_empty());
    add(s, task("a"));
    s.set_rate("a", Some(per_second(1))).expect("rate");
    assert_eq!(s.remove_channel("a", T0).expect("remove"), 1);
    assert_eq!(s.flows().expect("flows")["a"].rate, Some(per_second(1)));
    // A used-up window with nothing queued: nothing to wake up for.
    add(s, task("c"));
    s.set_rate("c", Some(per_second(1))).expect("rate");
    let only = claim_one(s, "c", T0);
    s.complete(only.claim(), at(10)).expect("complete");
    assert_eq!(s.next_wakeup("c").expect("next wakeup"), None);
}

/// Threads claiming at once never start more than a window allows.
pub fn concurrent_claims_never_exceed_a_rate(s: &dyn Store) {
    for _ in 0..40 {
        add(s, task("a"));
    }
    s.set_rate("a", Some(per_second(5))).expect("rate");
    let claimed = std::sync::Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..5 {
                    let got = s.claim("a", 2, T0, T0.after(LEASE)).expect("claim");
                    *claimed.lock().expect("lock") += got.len();
                }
            });
        }
    });
    assert_eq!(claimed.into_inner().expect("lock"), 5);
}

/// A rate and its window's count outlive the store (for durable stores).
pub fn a_rate_outlives_the_store(fixture: &mut Fixture) {
    for _ in 0..4 {
        add(&*fixture.store, task("a"));
    }
    fixture
        .store
        .set_rate("a", Some(per_second(2)))
        .expect("rate");
    assert_eq!(claimed(&*fixture.store, "a", 0), 2);
    for _ in 0..2 {
        add(&*fixture.store, keyed("b", "x"));
    }
    fixture
        .store
        .set_rate_per_key("b", Some(per_second(1)))
        .expect("rate per key");
    assert_eq!(started(&*fixture.store, "b", 0), some(&["x"]));
    if !fixture.reopen() {
        return;
    }
    let s = &*fixture.store;
    assert_eq!(s.flows().expect("flows")["a"].rate, Some(per_second(2)));
    assert_eq!(claimed(s, "a", 10), 0, "the window's count was kept");
    assert_eq!(claimed(s, "a", 1_000), 2);
    let b = &s.flows().expect("flows")["b"];
    assert_eq!(b.rate_per_key, Some(per_second(1)));
    assert_eq!(
        started(s, "b", 10),
        some(&[]),
        "the key's window's count was kept"
    );
    assert_eq!(started(s, "b", 1_000), some(&["x"]));
}

fn keyed(channel: &str, key: &str) -> simplepyq_core::NewTask {
    task(channel).concurrency_key(key)
}

/// The keys of `tasks`, sorted (`None` first).
fn keys(tasks: &[simplepyq_core::Task]) -> Vec<Option<&str>> {
    let mut keys: Vec<Option<&str>> = tasks.iter().map(|t| t.concurrency_key.as_deref()).collect();
    keys.sort_unstable();
    keys
}

/// Claims up to 10 of `channel`'s tasks at `ms` and records each done at once (outcomes
/// give no start back); returns their keys, sorted.
fn started(s: &dyn Store, channel: &str, ms: u64) -> Vec<Option<String>> {
    let now = at(ms);
    let tasks = s.claim(channel, 10, now, now.after(LEASE)).expect("claim");
    for t in &tasks {
        s.complete(t.claim(), now).expect("complete");
    }
    keys(&tasks)
        .into_iter()
        .map(|k| k.map(str::to_owned))
        .collect()
}

fn some(keys: &[&str]) -> Vec<Option<String>> {
    keys.iter().map(|k| Some((*k).to_owned())).collect()
}

/// A rate per key caps each key's starts in each window apart: a used-up key holds up no
/// other key and no task without a key; the next wake-up of tasks held up is their key's
/// window's end; the next window starts afresh, and so does a changed rate; removing the
/// rate lets the rest through.
pub fn a_rate_per_key_caps_each_keys_starts(s: &dyn Store) {
    for key in ["a", "a", "a", "b", "b", "b"] {
        add(s, keyed("k", key));
    }
    add(s, task("k"));
    add(s, task("k"));
    s.set_max_running_per_key("k", 10).expect("per key");
    assert!(s.set_rate_per_key("k", Some(per_second(2))).expect("rate"));
    assert!(
        !s.set_rate_per_key("k", Some(per_second(2)))
            .expect("the same")
    );
    let flow = &s.flows().expect("flows")["k"];
    assert_eq!((flow.rate_per_key, flow.rate), (Some(per_second(2)), None));
    let first = started(s, "k", 0);
    let mut expected = vec![None, None];
    expected.extend(some(&["a", "a", "b", "b"]));
    assert_eq!(
        first, expected,
        "two of each key, and every task without one"
    );
    assert_eq!(
        started(s, "k", 500),
        some(&[]),
        "each key's window is used up"
    );
    assert_eq!(
        s.next_wakeup("k").expect("next wakeup"),
        Some(at(1_000)),
        "the keys' windows' end"
    );
    add(s, keyed("k", "c"));
    assert_eq!(started(s, "k", 600), some(&["c"]), "other keys go on");
    assert_eq!(started(s, "k", 999), some(&[]));
    assert_eq!(started(s, "k", 1_000), some(&["a", "b"]), "a new window");
    // A changed rate counts afresh: key a started once in this window, and may once more.
    for _ in 0..3 {
        add(s, keyed("k", "a"));
    }
    assert!(
        s.set_rate_per_key("k", Some(per_second(1)))
            .expect("another rate")
    );
    assert_eq!(started(s, "k", 1_100), some(&["a"]));
    assert_eq!(started(s, "k", 1_200), some(&[]));
    assert!(s.set_rate_per_key("k", None).expect("no rate"));
    assert_eq!(s.flows().expect("flows")["k"].rate_per_key, None);
    assert_eq!(
        started(s, "k", 1_300),
        some(&["a", "a"]),
        "the rest, at once"
    );
}

/// A rate per key is refused as a channel's rate is, outlives the channel's tasks, and a
/// key whose running tasks are at its limit waits for an outcome (a lease), not for its
/// window's end; a used-up key with nothing queued asks for no wake-up.
pub fn a_rate_per_key_waits_for_busy_keys_and_outlives_its_tasks(s: &dyn Store) {
    for bad in [
        Rate::new(0, Duration::from_secs(1)),
        Rate::new(1, Duration::from_micros(500)),
    ] {
        let err = s.set_rate_per_key("a", Some(bad)).expect_err("bad");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    assert!(s.flows().expect("flows").is_empty());
    add(s, keyed("a", "x"));
    s.set_rate_per_key("a", Some(per_second(1))).expect("rate");
    assert_eq!(s.remove_channel("a", T0).expect("remove"), 1);
    assert_eq!(
        s.flows().expect("flows")["a"].rate_per_key,
        Some(per_second(1))
    );
    add(s, keyed("a", "x"));
    add(s, keyed("a", "x"));
    let running = claim_one(s, "a", T0);
    let lease = running.state.lease_until;
    assert_eq!(s.next_wakeup("a").expect("next wakeup"), lease, "busy");
    assert_eq!(claimed(s, "a", 1_000), 0, "still busy in the next window");
    s.complete(running.claim(), at(1_100)).expect("complete");
    assert_eq!(
        started(s, "a", 1_100),
        some(&["x"]),
        "free, and a fresh window"
    );
    assert_eq!(
        s.next_wakeup("a").expect("next wakeup"),
        None,
        "nothing queued"
    );
}

/// Threads claiming at once never start more of a key than its window allows.
pub fn concurrent_claims_never_exceed_a_rate_per_key(s: &dyn Store) {
    for _ in 0..40 {
        add(s, keyed("a", "x"));
        add(s, keyed("a", "y"));
    }
    s.set_max_running_per_key("a", 100).expect("per key");
    s.set_rate_per_key("a", Some(per_second(5))).expect("rate");
    let claimed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..5 {
                    let got = s.claim("a", 2, T0, T0.after(LEASE)).expect("claim");
                    let mut all = claimed.lock().expect("lock");
                    all.extend(got.into_iter().filter_map(|t| t.concurrency_key));
                }
            });
        }
    });
    let mut all = claimed.into_inner().expect("lock");
    all.sort_unstable();
    let expected: Vec<String> = ["x"; 5]
        .iter()
        .chain(&["y"; 5])
        .map(|k| (*k).to_owned())
        .collect();
    assert_eq!(all, expected);
}
