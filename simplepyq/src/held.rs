//! The claims a queue holds: each task it claimed, from the claim until the task is given
//! back or its outcome is recorded. The lease keeper renews exactly these; `stop_timeout`
//! reports the ones whose handlers still run; `run_until_complete` waits on their changes.

use std::time::Duration;

use crate::context::{CancelReason, CancelToken};
use crate::sync::{Condvar, Mutex};
use simplepyq_core::{Claim, IdMap, TaskId};

/// Where a held claim stands in this process.
#[derive(Debug)]
enum Phase {
    /// Claimed, waiting for a worker: no handler started, so it can be given back.
    Reserved,
    /// Its handler runs; the run's cancellation signal.
    Running(CancelToken),
    /// Its handler returned; the outcome waits to be recorded.
    Recording,
}

impl Phase {
    fn is_running(&self) -> bool {
        matches!(self, Phase::Running(_))
    }
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by claim, not task: a stale attempt of a task never touches a live one's entry.
    claims: IdMap<Claim, Phase>,
    /// Moves on every change that may end a wait: a claim let go, a worker idle, a stop.
    generation: u64,
    /// Moves when the last claim goes and on every bump (a worker idle, a stop): all that
    /// a wait for the queue's work to end needs while claims are held, without a wake-up
    /// per batch of outcomes recorded.
    quiet: u64,
    /// The tickets of the claim calls under way: their tasks may already be running in the
    /// store, and are not held yet.
    claiming: Vec<u64>,
    /// The next claim call's ticket.
    next_ticket: u64,
}

/// The claims of one queue, shared by its workers, recorder and keeper.
#[derive(Debug, Default)]
pub(crate) struct Held {
    state: Mutex<State>,
    changed: Condvar,
    /// Woken when `quiet` moves.
    quieted: Condvar,
}

impl Held {
    /// A claim call begins; returns its ticket, for [`Held::claimed`].
    pub(crate) fn claiming(&self) -> u64 {
        let mut st = self.state.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.claiming.push(ticket);
        ticket
    }

    /// The claim call of `ticket` ended with `claims` (none if it failed), held from now
    /// on, not started yet.
    pub(crate) fn claimed(&self, ticket: u64, claims: impl IntoIterator<Item = Claim>) {
        let mut st = self.state.lock();
        st.claiming.retain(|t| *t != ticket);
        for c in claims {
            st.claims.insert(c, Phase::Reserved);
        }
    }

    /// The ticket the next claim call gets: a claim whose tasks a look at the store saw
    /// running began before the mark taken after that look.
    pub(crate) fn mark(&self) -> u64 {
        self.state.lock().next_ticket
    }

    /// Whether task `id` may be on its way to start here: a claim call begun before `mark`
    /// is under way, or `id` is held and not started.
    pub(crate) fn on_its_way(&self, id: TaskId, mark: u64) -> bool {
        let st = self.state.lock();
        st.claiming.iter().any(|t| *t < mark)
            || st
                .claims
                .iter()
                .any(|(c, p)| c.id == id && matches!(p, Phase::Reserved))
    }

    /// Marks a held claim's handler as started; returns the run's cancellation signal.
    pub(crate) fn start(&self, claim: Claim) -> CancelToken {
        let token = CancelToken::default();
        if let Some(p) = self.state.lock().claims.get_mut(&claim) {
            *p = Phase::Running(token.clone());
        }
        token
    }

    /// Marks a held claim's handler as returned: its outcome waits to be recorded.
    pub(crate) fn recording(&self, claim: Claim) {
        if let Some(p) = self.state.lock().claims.get_mut(&claim) {
            *p = Phase::Recording;
        }
    }

    /// Asks the running handlers of task `id` (or of every task, with `None`) to stop;
    /// returns whether one runs here.
    pub(crate) fn cancel(&self, id: Option<TaskId>, reason: CancelReason) -> bool {
        let st = self.state.lock();
        let mut found = false;
        for (c, p) in &st.claims {
            if let Phase::Running(token) = p
                && id.is_none_or(|id| c.id == id)
            {
                token.cancel(reason);
                found = true;
            }
        }
        found
    }

    /// Lets claims go: given back, recorded, or lost. Returns whether none is held now.
    pub(crate) fn remove(&self, claims: &[Claim]) -> bool {
        let mut st = self.state.lock();
        for c in claims {
            st.claims.remove(c);
        }
        st.generation += 1;
        self.changed.notify_all();
        let none = st.claims.is_empty();
        if none {
            st.quiet += 1;
            self.quieted.notify_all();
        }
        none
    }

    /// Wakes the waiters, e.g. when a worker found nothing to do or the queue stopped.
    pub(crate) fn bump(&self) {
        let mut st = self.state.lock();
        st.generation += 1;
        st.quiet += 1;
        self.changed.notify_all();
        self.quieted.notify_all();
    }

    /// Every held claim, for lease renewal.
    pub(crate) fn all(&self) -> Vec<Claim> {
        self.state.lock().claims.keys().copied().collect()
    }

    /// The tasks whose handlers run now, in id order.
    pub(crate) fn running(&self) -> Vec<TaskId> {
        self.ids_where(true)
    }

    /// The tasks held and not running: waiting to start (being given back) or for their
    /// outcome to be recorded; in id order.
    pub(crate) fn unsettled(&self) -> Vec<TaskId> {
        self.ids_where(false)
    }

    /// The tasks held whose handler runs (or not), in id order.
    fn ids_where(&self, running: bool) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = self
            .state
            .lock()
            .claims
            .iter()
            .filter(|(_, p)| p.is_running() == running)
            .map(|(c, _)| c.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether a handler other than the one of `own` runs.
    pub(crate) fn running_except(&self, own: Option<Claim>) -> bool {
        self.state
            .lock()
            .claims
            .iter()
            .any(|(c, p)| p.is_running() && Some(*c) != own)
    }

    /// The generation, and whether any claim is held.
    pub(crate) fn snapshot(&self) -> (u64, bool) {
        let st = self.state.lock();
        (st.generation, !st.claims.is_empty())
    }

    /// Whether every held claim is `Running` (none waits to start or to be recorded).
    pub(crate) fn only_running(&self) -> bool {
        self.state.lock().claims.values().all(Phase::is_running)
    }

    /// The mark of [`Held::wait_quiet`]: take it before looking at what the wait is for.
    pub(crate) fn quiet(&self) -> u64 {
        self.state.lock().quiet
    }

    /// Waits up to `timeout` while a claim is held, until none is or a bump came since the
    /// mark `seen` (from [`Held::quiet`]).
    pub(crate) fn wait_quiet(&self, seen: u64, timeout: Duration) {
        let mut st = self.state.lock();
        if st.quiet == seen && !st.claims.is_empty() {
            self.quieted.wait_for(&mut st, timeout);
        }
    }

    /// Waits up to `timeout` for the generation to move past `seen`.
    pub(crate) fn wait(&self, seen: u64, timeout: Duration) {
        let mut st = self.state.lock();
        if st.generation == seen {
            self.changed.wait_for(&mut st, timeout);
        }
    }
}
