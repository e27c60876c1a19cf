//! The task state machine: every legal change of a task's state, as one pure function.
//!
//! Backends load a task's [`TaskState`], call [`apply`], and store what it returns in the
//! same transaction. They never re-encode these rules.
//!
//! ```text
//! Pending  --claim-->    Running    a due task; one more attempt, under a lease
//! Delayed  --promote-->  Pending    its run-at has come
//! Running  --succeed-->  Done
//! Running  --fail-->     Pending or Delayed (retry_at) with one retry fewer; Failed if none
//! Running  --delay-->    Delayed    no retry used
//! Running  --release-->  Pending    given back unstarted: the claim's attempt is not counted
//! Running  --expire-->   Pending    a lost run: the lease ran out; no retry used, but past
//!                                   max_lost_runs lost runs: Failed, with "worker lost"
//! Failed   --requeue-->  Pending, or Waiting while a parent is not done
//! Waiting  --unblock-->  Pending (Delayed if its run-at is later): every parent is done
//! Waiting  --parent lost--> Failed   a parent failed or was removed before it was done
//! Pending, Delayed or Waiting --cancel--> deleted
//! ```
//!
//! A task enqueued with parents ([`crate::NewTask::after`]) starts `Waiting` unless they are
//! all done; [`crate::dependency`] says when a waiting task is unblocked or lost.
//!
//! A pending task is due: stores promote delayed tasks whose run-at has come to pending
//! before they claim, so that claims can take pending tasks in priority order.

use crate::{Outcome, Status, TaskState, Timestamp};

/// The error message recorded when a running task's lease expires.
pub const WORKER_LOST: &str = "worker lost: the lease expired before the task finished";

/// How many lost runs a task may have before the next one fails it, unless a queue says
/// otherwise: a crash costs a task no retry, but a task that kills its worker every time (a
/// poison pill) ends failed.
pub const DEFAULT_MAX_LOST_RUNS: u32 = 3;

/// Something that happens to a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A worker takes a due queued task, holding it until `lease_until`.
    Claim {
        /// The time of the claim; the task's run-at must not be later.
        now: Timestamp,
        /// When the lease expires unless extended.
        lease_until: Timestamp,
    },
    /// The worker still runs the task and extends its lease.
    Extend {
        /// The new expiry; a lease never shrinks.
        lease_until: Timestamp,
    },
    /// The handler's run ended.
    Finish {
        /// The time it ended.
        now: Timestamp,
        /// How it ended.
        outcome: Outcome,
    },
    /// The worker gives a running task back before its handler started (the queue stops, is
    /// dropped, or the channel is removed): it is pending again and the attempt its claim
    /// counted is not counted.
    Release {
        /// The time of the release.
        now: Timestamp,
    },
    /// The lease of a running task expired: its worker is presumed dead, and the run lost.
    /// A lost run uses no retry: the task is due again, with [`WORKER_LOST`] as its last
    /// error; the lost run past `max_lost_runs` fails it.
    Expire {
        /// The time of recovery; the lease must have expired by then.
        now: Timestamp,
        /// How many lost runs a task may have; one more fails it.
        max_lost_runs: u32,
    },
    /// A delayed task whose run-at has come becomes pending.
    Promote {
        /// The time of the promotion; the run-at must not be later.
        now: Timestamp,
    },
    /// A failed task is queued again with the retry count it was enqueued with (`None`)
    /// or a new one.
    Requeue {
        /// The time of the requeue; the task is due at once (unless it waits).
        now: Timestamp,
        /// The new retry count, or `None` to restore the original one.
        retries: Option<u32>,
        /// A parent of the task is not done yet: it waits again instead of being due.
        waiting: bool,
    },
    /// Every parent of a waiting task is done: it is due, queued behind the tasks already
    /// due (its run-at is at least `now`).
    Unblock {
        /// The time the last parent was done.
        now: Timestamp,
    },
    /// A parent of a waiting task failed or was removed before it was done: the task
    /// fails with no retry, naming the parent.
    ParentLost {
        /// The time the parent failed or was removed.
        now: Timestamp,
        /// The parent.
        parent: crate::TaskId,
        /// Removed (cancelled, or its channel removed) rather than failed.
        removed: bool,
    },
}

impl Event {
    /// The verb for error messages.
    pub fn action(&self) -> &'static str {
        match self {
            Event::Claim { .. } => "claim",
            Event::Extend { .. } => "extend the lease of",
            Event::Finish {
                outcome: Outcome::Succeeded | Outcome::Returned(_),
                ..
            } => "complete",
            Event::Finish {
                outcome: Outcome::Failed { .. },
                ..
            } => "fail",
            Event::Finish {
                outcome: Outcome::Delayed { .. },
                ..
            } => "delay",
            Event::Release { .. } => "release",
            Event::Expire { .. } => "recover",
            Event::Promote { .. } => "promote",
            Event::Requeue { .. } => "requeue",
            Event::Unblock { .. } => "unblock",
            Event::ParentLost { .. } => "fail the dependent",
        }
    }
}

/// Why [`apply`] refused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The task's status.
    pub status: Status,
    /// The refused action, e.g. "claim".
    pub action: &'static str,
}

impl Refused {
    /// The user-facing error for task `id`.
    pub fn into_error(self, id: crate::TaskId) -> crate::Error {
        crate::Error::InvalidTransition {
            id,
            status: self.status,
            action: self.action,
        }
    }
}

/// The state after `event`, or why the event is not legal in `state`.
///
/// Rules: a claim needs a queued task whose run-at has come and counts one attempt; a
/// release gives a running task back uncounted; a failure consumes one retry if any is
/// left (a permanent one sets none left), otherwise the task is `Failed`; a delay consumes
/// no retry; an expired lease is a lost run, which consumes no retry but is bounded; only a
/// `Failed` task can be requeued, and it keeps its attempts. `Done` is final.
pub fn apply(state: &TaskState, event: &Event) -> Result<TaskState, Refused> {
    let refuse = || Refused {
        status: state.status,
        action: event.action(),
    };
    let mut next = state.clone();
    match event {
        Event::Claim { now, lease_until } => {
            if !state.status.is_queued() || state.run_at > *now {
                return Err(refuse());
            }
            next.status = Status::Running;
            next.attempts = state.attempts.saturating_add(1);
            next.lease_until = Some(*lease_until);
            next.updated_at = *now;
        }
        Event::Extend { lease_until } => {
            if state.status != Status::Running {
                return Err(refuse());
            }
            next.lease_until = state.lease_until.max(Some(*lease_until));
        }
        Event::Finish { now, outcome } => {
            if state.status != Status::Running {
                return Err(refuse());
            }
            finish(&mut next, *now, outcome);
        }
        Event::Release { now } => {
            if state.status != Status::Running {
                return Err(refuse());
            }
            next.status = Status::Pending;
            next.attempts = state.attempts.saturating_sub(1);
            next.lease_until = None;
            next.updated_at = *now;
        }
        Event::Expire { now, max_lost_runs } => {
            if state.status != Status::Running || state.lease_until.is_some_and(|l| l > *now) {
                return Err(refuse());
            }
            next.lost_runs = state.lost_runs.saturating_add(1);
            next.last_error = Some(WORKER_LOST.to_owned());
            next.lease_until = None;
            next.updated_at = *now;
            if next.lost_runs > *max_lost_runs {
                next.status = Status::Failed;
                next.retries_left = 0;
            } else {
                next.status = Status::Pending;
                next.run_at = *now;
            }
        }
        Event::Promote { now } => {
            if state.status != Status::Delayed || state.run_at > *now {
                return Err(refuse());
            }
            next.status = Status::Pending;
            next.updated_at = *now;
        }
        Event::Requeue {
            now,
            retries,
            waiting,
        } => {
            if state.status != Status::Failed {
                return Err(refuse());
            }
            next.status = if *waiting {
                Status::Waiting
            } else {
                Status::Pending
            };
            next.retries_left = retries.unwrap_or(state.max_retries);
            next.lost_runs = 0;
            next.run_at = *now;
            next.updated_at = *now;
        }
        Event::Unblock { now } => {
            if state.status != Status::Waiting {
                return Err(refuse());
            }
            next.run_at = state.run_at.max(*now);
            next.status = if next.run_at > *now {
                Status::Delayed
            } else {
                Status::Pending
            };
            next.updated_at = *now;
        }
        Event::ParentLost {
            now,
            parent,
            removed,
        } => {
            if state.status != Status::Waiting {
                return Err(refuse());
            }
            next.status = Status::Failed;
            next.retries_left = 0;
            next.last_error = Some(parent_lost(*parent, *removed));
            next.updated_at = *now;
        }
    }
    Ok(next)
}

/// The error a task fails with when its parent failed or was removed before it was done.
pub fn parent_lost(parent: crate::TaskId, removed: bool) -> String {
    if removed {
        format!("parent task {parent} was removed before it was done")
    } else {
        format!("parent task {parent} failed")
    }
}

/// Whether a task in `state` may be cancelled (deleted before it runs): only a pending,
/// delayed or waiting one. A running task cannot be taken from its worker; a finished one
/// is kept.
pub fn cancel(state: &TaskState) -> Result<(), Refused> {
    if state.status.is_queued() || state.status == Status::Waiting {
        Ok(())
    } else {
        Err(Refused {
            status: state.status,
            action: "cancel",
        })
    }
}

fn finish(next: &mut TaskState, now: Timestamp, outcome: &Outcome) {
    next.lease_until = None;
    next.updated_at = now;
    match outcome {
        Outcome::Succeeded | Outcome::Returned(_) => next.status = Status::Done,
        Outcome::Delayed { until } => {
            next.status = Status::Delayed;
            next.run_at = *until;
        }
        Outcome::Failed {
            error,
            retry_at,
            permanent,
        } => {
            next.last_error = Some(error.clone());
            if *permanent || next.retries_left == 0 {
                next.status = Status::Failed;
                next.retries_left = 0;
            } else {
                next.retries_left -= 1;
                next.run_at = (*retry_at).max(now);
                next.status = if *retry_at > now {
                    Status::Delayed
                } else {
                    Status::Pending
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_millis(1_000);

    fn claimed(retries: u32) -> TaskState {
        let s = TaskState::new(retries, T0, T0);
        apply(
            &s,
            &Event::Claim {
                now: T0,
                lease_until: Timestamp::from_millis(2_000),
            },
        )
        .expect("a pending due task can be claimed")
    }

    fn failure(permanent: bool) -> Event {
        Event::Finish {
            now: T0,
            outcome: Outcome::Failed {
                error: "boom".into(),
                retry_at: T0,
                permanent,
            },
        }
    }

    #[test]
    fn retries_n_means_n_plus_one_attempts() {
        let mut s = claimed(2);
        let mut runs = 1;
        loop {
            s = apply(&s, &failure(false)).expect("running tasks can fail");
            if s.status == Status::Failed {
                break;
            }
            assert_eq!(s.status, Status::Pending);
            s = apply(
                &s,
                &Event::Claim {
                    now: T0,
                    lease_until: T0,
                },
            )
            .expect("retry is due at once");
            runs += 1;
        }
        assert_eq!(runs, 3);
        assert_eq!(s.attempts, 3);
        assert_eq!(s.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn delay_keeps_retries_and_requires_due_time_to_claim() {
        let s = claimed(1);
        let until = Timestamp::from_millis(5_000);
        let d = apply(
            &s,
            &Event::Finish {
                now: T0,
                outcome: Outcome::Delayed { until },
            },
        )
        .expect("running tasks can be delayed");
        assert_eq!(
            (d.status, d.retries_left, d.run_at),
            (Status::Delayed, 1, until)
        );
        let early = Event::Claim {
            now: Timestamp::from_millis(4_999),
            lease_until: until,
        };
        assert!(apply(&d, &early).is_err());
        let due = Event::Claim {
            now: until,
            lease_until: until,
        };
        assert_eq!(apply(&d, &due).map(|s| s.status), Ok(Status::Running));
    }

    #[test]
    fn permanent_failure_skips_retries_and_requeue_restores_them() {
        let f = apply(&claimed(3), &failure(true)).expect("running tasks can fail");
        assert_eq!((f.status, f.retries_left), (Status::Failed, 0));
        let r = apply(
            &f,
            &Event::Requeue {
                now: T0,
                retries: None,
                waiting: false,
            },
        )
        .expect("failed tasks can be requeued");
        assert_eq!(
            (r.status, r.retries_left, r.attempts),
            (Status::Pending, 3, 1)
        );
        let r5 = apply(
            &f,
            &Event::Requeue {
                now: T0,
                retries: Some(5),
                waiting: false,
            },
        )
        .expect("failed tasks can be requeued");
        assert_eq!(r5.retries_left, 5);
    }

    fn expire(now: i64) -> Event {
        Event::Expire {
            now: Timestamp::from_millis(now),
            max_lost_runs: 2,
        }
    }

    #[test]
    fn lease_expiry_only_after_the_lease() {
        let s = claimed(0);
        assert!(apply(&s, &expire(1_999)).is_err());
        let late = apply(&s, &expire(2_000)).expect("expired leases can be recovered");
        assert_eq!(
            (
                late.status,
                late.retries_left,
                late.lost_runs,
                late.attempts
            ),
            (Status::Pending, 0, 1, 1),
            "a lost run uses no retry"
        );
        assert_eq!(late.last_error.as_deref(), Some(WORKER_LOST));
        assert_eq!(late.lease_until, None);
    }

    #[test]
    fn the_lost_run_past_the_bound_fails_the_task() {
        let mut s = claimed(5);
        for lost in 1..=3 {
            s = apply(&s, &expire(2_000)).expect("expired leases can be recovered");
            assert_eq!(s.lost_runs, lost);
            if lost <= 2 {
                assert_eq!((s.status, s.retries_left), (Status::Pending, 5));
                s = apply(
                    &s,
                    &Event::Claim {
                        now: Timestamp::from_millis(2_000),
                        lease_until: Timestamp::from_millis(2_000),
                    },
                )
                .expect("due");
            }
        }
        assert_eq!((s.status, s.retries_left), (Status::Failed, 0));
        let again = apply(
            &s,
            &Event::Requeue {
                now: T0,
                retries: None,
                waiting: false,
            },
        )
        .expect("failed tasks can be requeued");
        assert_eq!((again.lost_runs, again.retries_left), (0, 5));
    }

    #[test]
    fn release_gives_the_attempt_back() {
        let s = TaskState::new(0, T0, T0);
        let running = claimed(0);
        let released = apply(&running, &Event::Release { now: T0 }).expect("running");
        assert_eq!(released, s);
        assert!(apply(&released, &Event::Release { now: T0 }).is_err());
    }

    #[test]
    fn done_accepts_nothing() {
        let done = apply(
            &claimed(1),
            &Event::Finish {
                now: T0,
                outcome: Outcome::Succeeded,
            },
        )
        .expect("running tasks can succeed");
        for e in [
            Event::Claim {
                now: T0,
                lease_until: T0,
            },
            failure(false),
            Event::Requeue {
                now: T0,
                retries: None,
                waiting: false,
            },
            Event::Expire {
                now: T0,
                max_lost_runs: 3,
            },
            Event::Release { now: T0 },
            Event::Extend { lease_until: T0 },
        ] {
            assert_eq!(
                apply(&done, &e),
                Err(Refused {
                    status: Status::Done,
                    action: e.action()
                })
            );
        }
    }

    fn ts() -> impl Strategy<Value = Timestamp> {
        (0i64..10_000).prop_map(Timestamp::from_millis)
    }

    fn event() -> impl Strategy<Value = Event> {
        let outcome = prop_oneof![
            Just(Outcome::Succeeded),
            Just(Outcome::Returned(vec![0xc0])),
            (ts(), any::<bool>()).prop_map(|(retry_at, permanent)| Outcome::Failed {
                error: "e".into(),
                retry_at,
                permanent
            }),
            ts().prop_map(|until| Outcome::Delayed { until }),
        ];
        prop_oneof![
            (ts(), ts()).prop_map(|(now, lease_until)| Event::Claim { now, lease_until }),
            ts().prop_map(|lease_until| Event::Extend { lease_until }),
            (ts(), outcome).prop_map(|(now, outcome)| Event::Finish { now, outcome }),
            (ts(), 0u32..4).prop_map(|(now, max_lost_runs)| Event::Expire { now, max_lost_runs }),
            ts().prop_map(|now| Event::Release { now }),
            ts().prop_map(|now| Event::Promote { now }),
            (ts(), proptest::option::of(0u32..5), any::<bool>()).prop_map(
                |(now, retries, waiting)| Event::Requeue {
                    now,
                    retries,
                    waiting
                }
            ),
            ts().prop_map(|now| Event::Unblock { now }),
            (ts(), any::<bool>()).prop_map(|(now, removed)| Event::ParentLost {
                now,
                parent: crate::TaskId::new(1),
                removed
            }),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_over_random_event_sequences(
            retries in 0u32..5,
            events in proptest::collection::vec(event(), 0..60),
        ) {
            let mut s = TaskState::new(retries, T0, T0);
            for e in &events {
                let Ok(next) = apply(&s, e) else {
                    // Refused events leave the task as it was, and are refused only
                    // where the rules say so.
                    match e {
                        Event::Claim { now, .. } => prop_assert!(!s.status.is_queued() || s.run_at > *now),
                        Event::Requeue { .. } => prop_assert_ne!(s.status, Status::Failed),
                        Event::Expire { now, .. } => prop_assert!(s.status != Status::Running || s.lease_until > Some(*now)),
                        Event::Promote { now } => prop_assert!(s.status != Status::Delayed || s.run_at > *now),
                        Event::Unblock { .. } | Event::ParentLost { .. } => prop_assert_ne!(s.status, Status::Waiting),
                        _ => prop_assert_ne!(s.status, Status::Running),
                    }
                    continue;
                };
                if !matches!(e, Event::Release { .. }) {
                    prop_assert!(next.attempts >= s.attempts, "attempts only grow, but by a release");
                }
                if next.status == Status::Failed {
                    prop_assert_eq!(next.retries_left, 0, "failed only when retries are exhausted");
                }
                prop_assert_eq!(next.lease_until.is_some(), next.status == Status::Running);
                match e {
                    Event::Finish { outcome: Outcome::Delayed { .. }, .. } => {
                        prop_assert_eq!(next.retries_left, s.retries_left, "a delay consumes no retry");
                    }
                    Event::Finish { outcome: Outcome::Failed { .. }, .. } => {
                        prop_assert!(next.retries_left <= s.retries_left);
                        prop_assert!(next.status == Status::Failed || next.retries_left + 1 == s.retries_left);
                    }
                    Event::Expire { max_lost_runs, .. } => {
                        prop_assert_eq!(next.lost_runs, s.lost_runs + 1);
                        if next.status == Status::Failed {
                            prop_assert!(next.lost_runs > *max_lost_runs);
                        } else {
                            prop_assert_eq!(next.retries_left, s.retries_left, "a lost run uses no retry");
                        }
                    }
                    Event::Release { .. } => prop_assert_eq!(
                        (next.status, next.attempts, next.retries_left),
                        (Status::Pending, s.attempts - 1, s.retries_left)
                    ),
                    Event::Claim { .. } => prop_assert_eq!(next.attempts, s.attempts + 1),
                    Event::Unblock { now } => {
                        prop_assert!(next.status.is_queued() && next.run_at >= *now);
                        prop_assert_eq!((next.retries_left, next.attempts), (s.retries_left, s.attempts));
                    }
                    Event::ParentLost { .. } => prop_assert_eq!(
                        (next.status, next.attempts),
                        (Status::Failed, s.attempts)
                    ),
                    Event::Requeue { waiting, .. } => prop_assert_eq!(
                        next.status == Status::Waiting,
                        *waiting
                    ),
                    Event::Promote { .. } => prop_assert_eq!(
                        (next.status, next.retries_left, next.attempts),
                        (Status::Pending, s.retries_left, s.attempts)
                    ),
                    _ => {}
                }
                if s.status == Status::Done {
                    prop_assert!(false, "done accepted {:?}", e);
                }
                if s.status == Status::Failed {
                    prop_assert!(matches!(e, Event::Requeue { .. }), "failed accepted {:?}", e);
                }
                s = next;
            }
        }
    }
}
