//! The compiled half of the Python package `simplepyq`: `simplepyq._simplepyq`.
//!
//! `Engine` is a queue of the Rust library over one store; the package's `SimplePyQ` class
//! (in `python/simplepyq/__init__.py`) gives it the original's API. Every call that waits
//! (opening, enqueueing, stopping, running) lets go of the GIL while it waits; handlers run
//! on the queue's worker threads and take the GIL only to call the Python function.

mod convert;
mod engine;
mod fork;

use pyo3::prelude::*;

pyo3::create_exception!(
    _simplepyq,
    QueueError,
    pyo3::exceptions::PyRuntimeError,
    "The store failed: a file that is damaged, not a queue, or unwritable; a database server \
     that cannot be reached."
);

/// The module `simplepyq._simplepyq`.
#[pymodule]
fn _simplepyq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::TaskInfo>()?;
    m.add_function(wrap_pyfunction!(engine::parent_results, m)?)?;
    m.add_function(wrap_pyfunction!(engine::current_task, m)?)?;
    m.add_function(wrap_pyfunction!(fork::before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(fork::after_fork_in_parent, m)?)?;
    m.add_function(wrap_pyfunction!(fork::after_fork_in_child, m)?)?;
    m.add("QueueError", m.py().get_type::<QueueError>())?;
    // The SQLite library the queue runs on: the package checks that it is the interpreter's.
    m.add("sqlite_version", simplepyq::SqliteStore::library_version())?;
    Ok(())
}
