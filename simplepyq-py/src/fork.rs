//! Forks of the interpreter (`os.fork`; multiprocessing's `fork` start method; servers that
//! fork their workers, such as gunicorn with `--preload`): the package registers these with
//! `os.register_at_fork`, so that a child is never forked while a queue's thread is inside
//! SQLite (see `simplepyq::fork`).

use std::time::Duration;

use pyo3::prelude::*;

/// How long a fork waits for the SQLite calls under way to return.
const WAIT: Duration = Duration::from_secs(2);

/// Before a fork: holds off the queues' calls into SQLite until the fork is done; whether
/// none was left under way.
#[pyfunction]
pub(crate) fn before_fork(py: Python<'_>) -> bool {
    py.detach(|| simplepyq::fork::hold_for_fork(WAIT))
}

/// In the parent, after a fork.
#[pyfunction]
pub(crate) fn after_fork_in_parent() {
    simplepyq::fork::release_after_fork();
}

/// In the child, after a fork.
#[pyfunction]
pub(crate) fn after_fork_in_child() {
    simplepyq::fork::reset_in_child();
}
