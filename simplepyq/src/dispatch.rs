//! The meeting point of one channel's workers: wake-ups, the stop, and the tasks one worker
//! claimed for the others.
//!
//! One idle worker at a time claims, for itself and every other idle worker, in one store
//! call, and hands the extra tasks over here. A task leaves this place only to start (its
//! claim marked running, under this lock) or to be given back: once [`Dispatch::stop`] ran,
//! no handler starts, and every task claimed but not started is returned for release.

use std::collections::VecDeque;
use std::time::Duration;

use crate::sync::{Condvar, Mutex};
use simplepyq_core::Task;

use crate::context::CancelToken;
use crate::held::Held;

/// A task whose handler starts now, with the run's cancellation signal.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) task: Task,
    pub(crate) cancel: CancelToken,
}

impl Started {
    fn new(task: Task, held: &Held) -> Self {
        let cancel = held.start(task.claim());
        Started { task, cancel }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Moves on every wake-up, so that a waiter never misses one.
    generation: u64,
    stopped: bool,
    /// A worker is in a claim call for the idle ones.
    claiming: bool,
    /// Workers waiting on this dispatch: for a claimer (in [`Dispatch::turn`]) or for a
    /// wake-up (in [`Dispatch::rest`]). Any of them woken takes a handed task or claims.
    idle: usize,
    /// Claimed tasks waiting for a worker.
    handed: VecDeque<Task>,
    /// The last claim took all it asked for, so more may be due: a worker claims again
    /// before the handed tasks run out (see [`Dispatch::turn`]).
    more: bool,
}

/// What a worker does next. (Returned once per task: moving a task is cheaper than boxing
/// it, an allocation per task.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Turn {
    /// Run this task: its handler counts as started.
    Run(Started),
    /// Claim from the store: for itself and `idle` others; `seen` is the wake-up generation.
    Claim { idle: usize, seen: u64 },
    /// The channel stopped.
    Stop,
}

/// What became of a claim's tasks.
#[derive(Debug)]
// The task moves by value, as in [`Turn`]: boxing it would allocate once per task.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Claimed {
    /// Run this one; the rest were handed over.
    Run(Started),
    /// Run all of these (an async channel's claim).
    #[cfg(feature = "tokio")]
    RunAll(Vec<Started>),
    /// Nothing was due.
    Nothing,
    /// The channel stopped meanwhile: give these back.
    GiveBack(Vec<Task>),
}

/// One channel's dispatch.
#[derive(Debug, Default)]
pub(crate) struct Dispatch {
    state: Mutex<State>,
    cv: Condvar,
}

impl Dispatch {
    /// New work: wake one idle worker, or all.
    pub(crate) fn notify(&self, all: bool) {
        self.state.lock().generation += 1;
        if all {
            self.cv.notify_all();
        } else {
            self.cv.notify_one();
        }
    }

    /// Stops the channel: no handler starts from now on. Returns the tasks claimed but not
    /// started, to be given back.
    pub(crate) fn stop(&self) -> Vec<Task> {
        let mut st = self.state.lock();
        st.stopped = true;
        self.cv.notify_all();
        st.handed.drain(..).collect()
    }

    /// Takes task `id` out of the tasks claimed and not started, if it is one of them: it
    /// will not start here, and is the caller's to give back.
    pub(crate) fn take(&self, id: simplepyq_core::TaskId) -> Option<Task> {
        let mut st = self.state.lock();
        let at = st.handed.iter().position(|t| t.id == id)?;
        st.handed.remove(at)
    }

    /// The worker's next turn. While another worker claims, it waits at most `wait`, then
    /// looks again, so that some worker always looks at the store within that time.
    ///
    /// Once no more than `low` handed tasks are left, and the last claim took all it asked
    /// for, the worker claims before it takes one: the other workers run those meanwhile
    /// instead of waiting for the claim once they are gone.
    pub(crate) fn turn(&self, held: &Held, wait: Duration, low: usize) -> Turn {
        let mut st = self.state.lock();
        loop {
            if st.stopped {
                return Turn::Stop;
            }
            if st.more && !st.claiming && !st.handed.is_empty() && st.handed.len() <= low {
                st.claiming = true;
                return Turn::Claim {
                    idle: st.idle,
                    seen: st.generation,
                };
            }
            if let Some(task) = st.handed.pop_front() {
                return Turn::Run(Started::new(task, held));
            }
            if !st.claiming {
                st.claiming = true;
                return Turn::Claim {
                    idle: st.idle,
                    seen: st.generation,
                };
            }
            st.idle += 1;
            self.cv.wait_for(&mut st, wait);
            st.idle -= 1;
        }
    }

    /// The claimer is back with `tasks` (none if the claim failed); `full`: it got all it
    /// asked for.
    ///
    /// No worker stays idle longer than one claim while a due task waits: each handed task
    /// wakes an idle worker, and if idle workers are left over (some came while the claim
    /// ran, and it claimed nothing for them), one of them is woken to claim next.
    pub(crate) fn claimed(&self, tasks: Vec<Task>, full: bool, held: &Held) -> Claimed {
        self.back(tasks, full, |st, tasks| self.start_first(st, tasks, held))
    }

    /// A worker that claimed `tasks` while recording its outcome (not in a claiming turn) is
    /// back with them: the first is its next task and the rest are handed over, as
    /// [`Dispatch::claimed`] does; given back if the channel stopped meanwhile.
    pub(crate) fn claimed_after(&self, tasks: Vec<Task>, held: &Held) -> Claimed {
        let mut st = self.state.lock();
        if st.stopped {
            return Claimed::GiveBack(tasks);
        }
        if tasks.is_empty() {
            return Claimed::Nothing;
        }
        self.start_first(&mut st, tasks, held)
    }

    /// Hands `tasks` over after those handed before, and starts the first handed for the
    /// caller, waking as many idle workers as are left (and one more to claim next, if any
    /// is idle).
    fn start_first(&self, st: &mut State, tasks: Vec<Task>, held: &Held) -> Claimed {
        st.handed.extend(tasks);
        let first = st.handed.pop_front();
        let mine = Started::new(first.expect("tasks were handed"), held);
        for _ in 0..(st.handed.len() + 1).min(st.idle) {
            self.cv.notify_one();
        }
        Claimed::Run(mine)
    }

    /// The claimer of an async channel is back with `tasks`: every one starts at once.
    #[cfg(feature = "tokio")]
    pub(crate) fn claimed_all(&self, tasks: Vec<Task>, held: &Held) -> Claimed {
        // It starts all it claims: no task is ever handed, so no claim is early.
        self.back(tasks, false, |_, tasks| {
            Claimed::RunAll(tasks.into_iter().map(|t| Started::new(t, held)).collect())
        })
    }

    /// Ends a claiming turn with `tasks` (`full`: all it asked for, so more may be due):
    /// given back if the channel stopped meanwhile, `Nothing` if there are none, else what
    /// `start` makes of them (under the lock, so that a stop sees them started or not at
    /// all). A claim that brought fewer than it asked for, none included, ends the early
    /// claims: else the handed tasks would wait while a worker claimed again and again.
    fn back(
        &self,
        tasks: Vec<Task>,
        full: bool,
        start: impl FnOnce(&mut State, Vec<Task>) -> Claimed,
    ) -> Claimed {
        let mut st = self.state.lock();
        st.claiming = false;
        st.more = full;
        if st.stopped {
            return Claimed::GiveBack(tasks);
        }
        if tasks.is_empty() {
            return Claimed::Nothing;
        }
        start(&mut st, tasks)
    }

    /// Waits up to `timeout` unless woken since `seen`, stopped, or given work; counted
    /// as idle meanwhile, so that a claim takes a task for it too.
    pub(crate) fn rest(&self, seen: u64, timeout: Duration) {
        let mut st = self.state.lock();
        if st.generation == seen && !st.stopped && st.handed.is_empty() {
            st.idle += 1;
            self.cv.wait_for(&mut st, timeout);
            st.idle -= 1;
        }
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;
    use simplepyq_core::{NewTask, TaskId, Timestamp};

    /// `n` claimed tasks, numbered from `first`.
    fn claimed(first: i64, n: i64) -> Vec<Task> {
        let now = Timestamp::from_millis(0);
        (first..first + n)
            .map(|id| {
                let task = NewTask::new("c", vec![0x90]).to_task(TaskId::new(id), now);
                let next = simplepyq_core::transition::Event::Claim {
                    now,
                    lease_until: now,
                };
                let state = simplepyq_core::transition::apply(&task.state, &next);
                simplepyq_core::Task {
                    state: state.expect("a new task can be claimed"),
                    ..task
                }
            })
            .collect()
    }

    fn claims(turn: Turn) -> bool {
        matches!(turn, Turn::Claim { .. })
    }

    fn runs(turn: Turn) -> Option<TaskId> {
        match turn {
            Turn::Run(started) => Some(started.task.id),
            _ => None,
        }
    }

    #[test]
    fn a_worker_claims_again_before_the_handed_tasks_run_out_while_more_may_be_due() {
        let (d, held) = (Dispatch::default(), Held::default());
        let wait = Duration::ZERO;
        assert!(claims(d.turn(&held, wait, 2)));
        // A claim that took all it asked for: the claimer runs task 1, three are handed.
        assert!(matches!(
            d.claimed(claimed(1, 4), true, &held),
            Claimed::Run(_)
        ));
        assert_eq!(runs(d.turn(&held, wait, 2)), Some(TaskId::new(2)));
        // Two are left, no more than `low`: this worker claims before it takes one...
        assert!(claims(d.turn(&held, wait, 2)));
        // ...while the others take the handed tasks, in claim order.
        assert_eq!(runs(d.turn(&held, wait, 2)), Some(TaskId::new(3)));
        // The claim found fewer than it asked for: its tasks are handed after those left,
        // and the claimer takes the first handed.
        match d.claimed(claimed(5, 1), false, &held) {
            Claimed::Run(started) => assert_eq!(started.task.id, TaskId::new(4)),
            other => panic!("expected a task to run, got {other:?}"),
        }
        // Nothing more may be due: the last handed task runs, no claim before it.
        assert_eq!(runs(d.turn(&held, wait, 2)), Some(TaskId::new(5)));
        assert!(claims(d.turn(&held, wait, 2)));
    }

    /// An early claim that finds nothing (or fails) ends the early claims: the handed tasks
    /// run. Before, `more` stayed set when a claim brought no task, and the only worker of
    /// a channel claimed again and again, finding nothing, while two handed tasks waited
    /// (a test's `run_until_complete` hung with their leases renewed for 17 minutes).
    #[test]
    fn an_early_claim_that_finds_nothing_lets_the_handed_tasks_run() {
        let (d, held) = (Dispatch::default(), Held::default());
        let wait = Duration::ZERO;
        assert!(claims(d.turn(&held, wait, 2)));
        assert!(matches!(
            d.claimed(claimed(1, 3), true, &held),
            Claimed::Run(_)
        ));
        // Two handed, no more than `low`, and the last claim was full: an early claim.
        assert!(claims(d.turn(&held, wait, 2)));
        // It finds nothing (a failed claim is answered with nothing too).
        assert!(matches!(
            d.claimed(Vec::new(), false, &held),
            Claimed::Nothing
        ));
        assert_eq!(runs(d.turn(&held, wait, 2)), Some(TaskId::new(2)));
        assert_eq!(runs(d.turn(&held, wait, 2)), Some(TaskId::new(3)));
        assert!(claims(d.turn(&held, wait, 2)));
    }
}
