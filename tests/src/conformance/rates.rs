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
    if !fixture.reopen() {
        return;
    }
    let s = &*fixture.store;
    assert_eq!(s.flows().expect("flows")["a"].rate, Some(per_second(2)));
    assert_eq!(claimed(s, "a", 10), 0, "the window's count was kept");
    assert_eq!(claimed(s, "a", 1_000), 2);
}
