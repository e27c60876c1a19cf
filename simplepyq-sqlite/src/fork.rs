//! Forks: this crate's calls into SQLite are held off while a process forks.
//!
//! A forked child has a copy of the parent's memory and only the thread that forked. A
//! mutex that another thread held at that moment stays held in the child for good: SQLite's
//! own (its allocator's, its table of open files' locks) are taken inside almost every call,
//! so a child forked while a queue's thread was in SQLite hangs at its first SQLite call,
//! whatever database it opens. A process about to fork calls [`hold_for_fork`], which waits
//! until no call of this crate is in SQLite and keeps new ones out (they wait), then
//! [`release_after_fork`] in the parent and [`reset_in_child`] in the child. Python's
//! `os.fork` (and multiprocessing's `fork` start method) does so through the package's
//! hooks; a Rust program that forks calls them itself.
//!
//! A call waits only while a fork is under way; otherwise it costs two atomic operations.
//! Calls nested in one thread count once, so a call made inside another never waits for a
//! fork that waits for the outer one.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The calls in SQLite now (the low 32 bits), and the forks under way, each counted as
/// [`HOLD`] (threads of one process may prepare forks at once: Python runs its hooks with
/// the interpreter's lock let go here).
static STATE: AtomicU64 = AtomicU64::new(0);
const HOLD: u64 = 1 << 32;
const CALLS: u64 = HOLD - 1;

thread_local! {
    /// How deep this thread is in calls of [`within`].
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f`, which calls into SQLite, outside any fork.
pub(crate) fn within<T>(f: impl FnOnce() -> T) -> T {
    let _inside = Inside::enter();
    f()
}

struct Inside;

impl Inside {
    fn enter() -> Self {
        let depth = DEPTH.get();
        if depth == 0 {
            loop {
                let s = STATE.load(Ordering::Acquire);
                if s < HOLD {
                    if STATE
                        .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        break;
                    }
                    continue;
                }
                // Forks are rare and short.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        DEPTH.set(depth + 1);
        Inside
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let depth = DEPTH.get() - 1;
        DEPTH.set(depth);
        if depth == 0 {
            STATE.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Keeps new calls of this crate out of SQLite and waits up to `wait` for those under way
/// to return; whether none is left (when `wait` ran out, a call is under way: a child forked
/// now may hang at its first SQLite call). Call it just before forking, then
/// [`release_after_fork`] in the parent and [`reset_in_child`] in the child. A thread that
/// is itself in a call of this crate must not call it.
pub fn hold_for_fork(wait: Duration) -> bool {
    STATE.fetch_add(HOLD, Ordering::AcqRel);
    let deadline = Instant::now() + wait;
    while STATE.load(Ordering::Acquire) & CALLS != 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// In the parent, after a fork: lets calls into SQLite go on.
pub fn release_after_fork() {
    STATE.fetch_sub(HOLD, Ordering::Release);
}

/// In the child, after a fork: lets calls into SQLite go on; the calls the parent's other
/// threads had under way do not exist here.
pub fn reset_in_child() {
    STATE.store(0, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::{hold_for_fork, release_after_fork, within};

    /// A hold waits for a call under way, keeps new calls out until released, and a call
    /// nested in another does not wait for it.
    #[test]
    fn a_hold_waits_for_calls_under_way_and_keeps_new_ones_out() {
        let in_call = AtomicBool::new(false);
        let second_ran = AtomicBool::new(false);
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                within(|| {
                    in_call.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    // Nested: does not wait for the hold that waits for this call.
                    within(|| ());
                });
            });
            while !in_call.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            assert!(
                !hold_for_fork(Duration::from_millis(10)),
                "a call is under way"
            );
            // A fork prepared meanwhile by another thread holds too, until released.
            assert!(hold_for_fork(Duration::from_secs(5)), "the call returned");
            release_after_fork();
            first.join().expect("first call");
            let second = s.spawn(|| within(|| second_ran.store(true, Ordering::SeqCst)));
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !second_ran.load(Ordering::SeqCst),
                "a call ran during a hold"
            );
            release_after_fork();
            second.join().expect("second call");
            assert!(second_ran.load(Ordering::SeqCst));
        });
    }
}
