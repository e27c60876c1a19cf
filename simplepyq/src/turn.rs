//! The claim turn: a worker's claim of due tasks for its channel (thread and async
//! channels alike), and how long a worker with nothing to do waits before it looks again.

use std::time::Duration;

use simplepyq_core::{Store, Task};

use crate::dispatch::Dispatch;
use crate::engine::{Engine, Pause, guarded};
use crate::leases;

/// Claims up to `want` due tasks of `channel` for a worker whose turn it is to claim
/// (`seen`, from [`Dispatch::turn`]); they are reserved in the held claims. After a store
/// error (then resting for the next of `errors`' pauses) the turn ends here and `None` is
/// returned; so too after an answer that came after the lease it asked for ran out (a slow
/// or cut network): another worker may hold those tasks by now, so not one of them runs
/// here, and what is still this queue's is given back.
pub(crate) fn claim_turn<S: Store>(
    engine: &Engine<S>,
    channel: &str,
    want: usize,
    dispatch: &Dispatch,
    seen: u64,
    errors: &mut Pause,
) -> Option<Vec<Task>> {
    let mut lease_until = None;
    let ticket = engine.held.claiming();
    let claimed = guarded(|| {
        let now = engine.now();
        let until = now.after(engine.lease);
        lease_until = Some(until);
        engine.store.claim(channel, want, now, until)
    });
    let tasks = match claimed {
        Ok(tasks) => tasks,
        Err(e) => {
            engine.held.claimed(ticket, []);
            engine.errors.record(&e);
            dispatch.claimed(Vec::new(), false, &engine.held);
            dispatch.rest(seen, errors.next());
            return None;
        }
    };
    errors.reset();
    engine.held.claimed(ticket, tasks.iter().map(Task::claim));
    if !tasks.is_empty() && lease_until.is_some_and(|u| engine.now() >= u) {
        dispatch.claimed(Vec::new(), false, &engine.held);
        // Held until given back, so that the keeper renews those still this queue's and
        // no one recovers them as lost runs while the store fails.
        leases::give_back_held(engine, &tasks);
        return None;
    }
    Some(tasks)
}

/// The pauses of an idle worker: from an eighth of the poll interval, doubling up to it.
pub(crate) fn idle_pause<S>(engine: &Engine<S>) -> Pause {
    let first_poll = (engine.poll_interval / 8).max(Duration::from_millis(1));
    Pause::new(first_poll, engine.poll_interval)
}

/// How long an idle worker may sleep: until the channel's next run-at or lease expiry, at
/// most `poll`. If that time has passed, a lease has expired: recover it now.
pub(crate) fn idle_timeout<S: Store>(
    engine: &Engine<S>,
    channel: &str,
    poll: Duration,
) -> Duration {
    let now = engine.now();
    match guarded(|| engine.store.next_wakeup(channel)) {
        Ok(Some(at)) if at > now => now.until(at).min(poll),
        Ok(Some(_)) => match guarded(|| leases::renew_and_recover(engine)) {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => poll,
            Err(e) => {
                engine.errors.record(&e);
                poll
            }
        },
        Ok(None) => poll,
        Err(e) => {
            engine.errors.record(&e);
            poll
        }
    }
}
