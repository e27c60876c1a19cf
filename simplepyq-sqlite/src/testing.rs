//! What the tests of several files share.

use std::path::Path;

use rusqlite::Connection;

use simplepyq_core::Timestamp;

/// The time the tests' tasks are enqueued at.
pub(crate) const T0: Timestamp = Timestamp::from_millis(1_000_000);

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
