//! The fuzz corpus (`fuzz/corpus/<target>/`), replayed through the targets' bodies on the
//! stable toolchain: every input `cargo fuzz` kept, and every crash it found (kept there
//! after the fix), runs on every test run.

use std::path::PathBuf;

use simplepyq_tests::fuzz;

fn replay(target: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus folder") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("read a corpus input");
        let run = std::panic::catch_unwind(|| fuzz::run(target, &data));
        assert!(run.is_ok(), "{target}: {} panics", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "{target}: the corpus is empty");
}

#[test]
fn args() {
    replay("args");
}

#[test]
fn redb_record() {
    replay("redb_record");
}

#[test]
fn sqlite_file() {
    replay("sqlite_file");
}

#[test]
fn redb_file() {
    replay("redb_file");
}
