//! Shared parts of the simplepyq benchmarks: the backends under test, the bare SQLite limits
//! they are compared with, and the task payload every benchmark enqueues.

use serde::{Deserialize, Serialize};

pub mod backends;
pub mod bare;
pub mod bare_pg;
pub mod stores;

/// The payload of every benchmark task: `{"i": i, "url": "https://example.com/<i>"}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    /// The task's number.
    pub i: u64,
    /// A URL as a scraping task would carry.
    pub url: String,
}

/// The payload of task `i`.
pub fn payload(i: u64) -> Payload {
    Payload {
        i,
        url: format!("https://example.com/{i}"),
    }
}
