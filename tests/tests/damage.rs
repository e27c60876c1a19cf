//! A queue file damaged while in use: the queue reports it instead of waiting forever.

use std::sync::mpsc;
use std::time::Duration;

use simplepyq::{Error, SimplePyQ, SqliteStore};

/// Another program wrote bytes that are not UTF-8 into a task's unique key: claims of its
/// channel fail with `Error::Corrupt`, and `run_until_complete` returns that error (rather
/// than waiting for a task no worker can take); the tasks of the other channel are done.
#[test]
fn run_until_complete_returns_a_damaged_file_error_instead_of_waiting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tasks.db");
    let q = SimplePyQ::open(&path).expect("open");
    q.add_channel("good", |_: u32| Ok(()), 1).expect("add");
    for n in 0..3u32 {
        q.enqueue("good", &n).expect("enqueue");
    }
    q.run_until_complete().expect("the good channel runs");
    q.add_channel("bad", |_: u32| Ok(()), 1).expect("add");
    let bad = q.enqueue("bad", &7u32).expect("enqueue");
    rusqlite::Connection::open(&path)
        .expect("open raw")
        .execute(
            "UPDATE simplepyq_tasks SET unique_key = CAST(X'c328' AS TEXT) WHERE id = ?1",
            [bad.get()],
        )
        .expect("damage the row");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = q.run_until_complete();
        let _ = tx.send((result, q.counts("good").map(|c| c.done)));
    });
    let (result, good_done) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("run_until_complete must return, not wait forever");
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
    assert_eq!(good_done.expect("counts"), 3);
    // The damaged task is still there, for a person to repair or remove.
    let store = SqliteStore::open(&path).expect("reopen");
    assert!(matches!(
        simplepyq::InspectStore::get(&store, bad),
        Err(Error::Corrupt { .. })
    ));
}
