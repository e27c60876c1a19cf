//! The Python package (`simplepyq-py`): its pytest suite, run by `simplepyq-py/test.sh`
//! (a virtualenv with maturin and pytest from PyPI, the original simplepyq 0.1.3 beside it,
//! the package built into it), with the test PostgreSQL server for its PostgreSQL
//! test. Needs CPython >= 3.9 with `venv`, and PyPI on first run.

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_package_passes_its_pytest_suite() {
    let server = simplepyq_tests::postgres::server();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplepyq-py/test.sh");
    let status = Command::new("bash")
        .arg(&script)
        .env("SIMPLEPYQ_TEST_POSTGRES_URL", server.url())
        .status()
        .expect("run simplepyq-py/test.sh with bash");
    assert!(
        status.success(),
        "the Python package's tests failed ({status}): their output is above"
    );
}
