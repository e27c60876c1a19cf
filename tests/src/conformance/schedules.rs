//! The schedules group of the contract ([`simplepyq_core::ScheduleStore`]): firings that
//! only move forward, one enqueue per fire time.

use simplepyq_core::{Error, ListFilter, Status, Store, Timestamp};

use super::*;

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
    assert_eq!(s.remove_channel("a", T0).expect("remove"), 1);
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
