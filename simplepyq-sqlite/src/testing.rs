//! What the tests of several files share.

use std::path::Path;

use rusqlite::Connection;

use simplepyq_core::Timestamp;

/// The time the tests' tasks are enqueued at.
pub(crate) const T0: Timestamp = Timestamp::from_millis(1_000_000);

/// The file's queue version, as its version table says (0 for none).
pub(crate) fn queue_version(path: &Path) -> i64 {
    let conn = Connection::open(path).expect("open raw");
    conn.query_row("SELECT max(version) FROM simplepyq_schema", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .expect("the version table")
    .unwrap_or(0)
}

/// The file's `application_id` and `user_version`.
pub(crate) fn header(path: &Path) -> (i32, i64) {
    let conn = Connection::open(path).expect("open raw");
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .expect("application_id");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    (app, version)
}
