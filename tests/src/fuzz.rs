//! The bodies of the fuzz targets in `fuzz/`: whatever reads bytes that came from disk.
//!
//! They live here, in the stable build, so that the test suite replays the committed corpus
//! (`fuzz/corpus/<target>/`) through the same code on every run; `cargo fuzz` (nightly)
//! searches for new inputs. Each body may return early on an error: only a panic, a hang or
//! an outsized allocation is a finding.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use simplepyq::{RedbStore, SqliteStore, decode_args};
use simplepyq_core::{ListFilter, NewTask, Outcome, Store, StoreExt, TaskId, Timestamp};

/// The names of the targets, as `fuzz/` and its corpus folders call them.
pub const TARGETS: [&str; 4] = ["args", "redb_record", "sqlite_file", "redb_file"];

/// Runs the body of `target` on `data`.
///
/// # Panics
/// On a finding, and for an unknown target.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "args" => args(data),
        "redb_record" => simplepyq_redb::fuzz_record(data),
        "sqlite_file" => sqlite_file(data),
        "redb_file" => redb_file(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// A handler's argument type with the shapes MessagePack can nest: strings, byte
/// strings, sequences, maps, options, enums and numbers.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // decoded, never read
struct Order {
    id: u64,
    customer: String,
    items: Vec<(String, u32)>,
    notes: Option<String>,
    blob: Vec<u8>,
    totals: BTreeMap<String, f64>,
    kind: Kind,
    parts: Vec<Order>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)] // decoded, never read
enum Kind {
    Plain,
    Gift { message: String },
    Split(u8, i64),
}

/// Stored arguments decoded into handler types: an error is fine, a panic or a huge
/// allocation (a length field claiming gigabytes) is not.
pub fn args(data: &[u8]) {
    let task = NewTask::new("c", data.to_vec()).to_task(TaskId::new(1), Timestamp::from_millis(0));
    let _ = decode_args::<u32>(&task);
    let _ = decode_args::<String>(&task);
    let _ = decode_args::<Vec<u64>>(&task);
    let _ = decode_args::<(String, Vec<u8>, Option<i32>)>(&task);
    let _ = decode_args::<BTreeMap<String, Vec<String>>>(&task);
    let _ = decode_args::<Order>(&task);
}

const T0: Timestamp = Timestamp::from_millis(1_000_000);

/// A small queue with a task in every status, a unique key, priorities and a failure.
fn fill(store: &dyn Store) {
    let tasks: Vec<NewTask> = (0u8..12)
        .map(|i| {
            let channel = if i % 3 == 0 { "mail" } else { "resize" };
            let mut t = NewTask::new(channel, vec![0x92, i, 0xa1, b'x'])
                .retries(u32::from(i % 3))
                .priority(i32::from(i % 4) - 1);
            if i == 5 {
                t = t.unique_key("daily-report");
            }
            if i == 7 {
                t = t.run_at(T0.after(Duration::from_secs(60)));
            }
            t
        })
        .collect();
    let _ = store.enqueue(&tasks, T0);
    let claimed = store.claim("resize", 5, T0, T0.after(Duration::from_secs(30)));
    for (n, t) in claimed.into_iter().flatten().enumerate() {
        let outcome = match n {
            0 => Outcome::Succeeded,
            1 => Outcome::Failed {
                error: "boom".into(),
                retry_at: T0,
                permanent: true,
            },
            2 => Outcome::Delayed {
                until: T0.after(Duration::from_secs(5)),
            },
            _ => continue, // left running
        };
        let _ = store.finish(t.claim(), &outcome, T0);
    }
}

/// Every kind of call on a store opened from a damaged file; errors are fine.
fn exercise(store: &dyn Store) {
    let _ = store.channels();
    let _ = store.counts(None);
    let _ = store.list(&ListFilter::new(100));
    let _ = store.get(TaskId::new(5));
    let _ = store.next_wakeup("resize");
    let later = T0.after(Duration::from_secs(3_600));
    let _ = store.recover_expired(later, 3);
    for channel in ["mail", "resize"] {
        if let Ok(tasks) = store.claim(channel, 100, later, later.after(Duration::from_secs(30))) {
            for t in tasks {
                let _ = store.complete(t.claim(), later);
            }
        }
    }
    let _ = store.requeue_failed(None, Some(1), later);
    let _ = store.enqueue_one(NewTask::new("mail", vec![0xc0]), later);
    let _ = store.purge_done(None, later);
    let _ = store.remove_channel("resize", T0);
}

/// One template queue file per backend and process, and a scratch copy to damage.
struct Files {
    _dir: tempfile::TempDir,
    template: Vec<u8>,
    scratch: PathBuf,
}

fn files(name: &str, open: fn(&Path) -> Box<dyn Store>) -> Files {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("template-{name}"));
    {
        let store = open(&path);
        fill(&*store);
    }
    let template = std::fs::read(&path).expect("read the template");
    Files {
        scratch: dir.path().join(name),
        _dir: dir,
        template,
    }
}

/// Writes the template with the damage `data` describes: each 4 bytes are a little-endian
/// 24-bit offset (modulo the file's length) and a byte to XOR there.
fn damaged_copy(files: &Files, data: &[u8]) -> Vec<u8> {
    let mut bytes = files.template.clone();
    for patch in data.chunks_exact(4) {
        let at = u32::from_le_bytes([patch[0], patch[1], patch[2], 0]) as usize % bytes.len();
        bytes[at] ^= patch[3];
    }
    bytes
}

/// A SQLite queue file with damage: opens and serves, or errors; never panics.
pub fn sqlite_file(data: &[u8]) {
    static FILES: OnceLock<Files> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        files("q.db", |p| {
            Box::new(SqliteStore::open(p).expect("open the template"))
        })
    });
    let bytes = damaged_copy(files, data);
    for suffix in ["-wal", "-shm"] {
        let mut side = files.scratch.clone().into_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    std::fs::write(&files.scratch, bytes).expect("write the scratch file");
    if let Ok(store) = SqliteStore::open(&files.scratch) {
        exercise(&store);
    }
}

/// A redb queue file with damage: opens and serves, or errors; never panics.
pub fn redb_file(data: &[u8]) {
    static FILES: OnceLock<Files> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        files("q.redb", |p| {
            Box::new(RedbStore::open(p).expect("open the template"))
        })
    });
    std::fs::write(&files.scratch, damaged_copy(files, data)).expect("write the scratch file");
    if let Ok(store) = RedbStore::open(&files.scratch) {
        exercise(&store);
    }
}
