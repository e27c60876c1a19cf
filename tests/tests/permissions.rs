//! Queue files this process may not write: a read-only file, a read-only directory.
//!
//! File permissions do not stop root, and CI runs as root. So the store is opened by the
//! worker process, started as user `nobody` when this process is privileged (a copy of the
//! worker binary goes into the test's directory, which that user can reach); otherwise as
//! this user.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::processes::{Backend, WORKER, enqueue_numbers};

/// The user and group ids of `nobody`.
const NOBODY: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Whether file permissions fail to stop this process (root, or a capability).
fn privileged(dir: &Path) -> bool {
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").expect("write the probe");
    chmod(&probe, 0o444);
    let writes = std::fs::OpenOptions::new().write(true).open(&probe).is_ok();
    std::fs::remove_file(&probe).expect("remove the probe");
    writes
}

/// A directory for one test, reachable by an unprivileged user: `queue/` holds the queue
/// file, `bin/` the worker, `log/` the worker's log.
struct Place {
    root: tempfile::TempDir,
    worker: PathBuf,
    as_nobody: bool,
}

impl Place {
    fn new() -> Place {
        let root = tempfile::tempdir().expect("temp dir");
        chmod(root.path(), 0o755);
        for sub in ["queue", "bin", "log"] {
            std::fs::create_dir(root.path().join(sub)).expect("mkdir");
        }
        chmod(&root.path().join("log"), 0o777);
        let as_nobody = privileged(root.path());
        let worker = if as_nobody {
            let copy = root.path().join("bin/simplepyq-test-worker");
            std::fs::copy(WORKER, &copy).expect("copy the worker");
            chmod(&copy, 0o755);
            copy
        } else {
            PathBuf::from(WORKER)
        };
        Place {
            root,
            worker,
            as_nobody,
        }
    }

    fn queue_dir(&self) -> PathBuf {
        self.root.path().join("queue")
    }

    /// Runs the worker on `db` until nothing is left, as the unprivileged user.
    fn run_worker(&self, backend: Backend, db: &Path) -> Output {
        let mut cmd = Command::new(&self.worker);
        cmd.arg(backend.name())
            .arg(db)
            .arg(self.root.path().join("log/runs.log"))
            .args(["1", "0", "1000"])
            .stdin(Stdio::null());
        if self.as_nobody {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        // The copy was just written: a child another test forks meanwhile may hold its
        // write descriptor until it execs, and then exec fails with "text file busy".
        for _ in 0..100 {
            match cmd.output() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => return result.expect("run the worker"),
            }
        }
        panic!("the worker's copy stayed busy for a second")
    }
}

/// Every file of `dir`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let bytes = std::fs::read(e.path()).expect("read");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

fn pending(backend: Backend, db: &Path) -> usize {
    backend.open(db).counts(None).expect("counts").pending
}

/// The worker must fail to open the queue, saying why, and change nothing in `dir`.
fn refused_unchanged(place: &Place, backend: Backend, db: &Path) -> String {
    let before = snapshot(&place.queue_dir());
    let out = place.run_worker(backend, db);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot be written"), "{stderr}");
    assert!(
        snapshot(&place.queue_dir()) == before,
        "the queue's directory changed"
    );
    stderr
}

fn a_read_only_file_is_refused_unchanged(backend: Backend, name: &str) {
    let place = Place::new();
    let db = place.queue_dir().join(name);
    enqueue_numbers(backend, &db, 3, 0);
    chmod(&place.queue_dir(), 0o777);
    chmod(&db, 0o444);
    let stderr = refused_unchanged(&place, backend, &db);
    assert!(stderr.contains("read-only"), "{stderr}");
    chmod(&db, 0o644);
    assert_eq!(pending(backend, &db), 3, "the tasks are all there");
}

#[test]
fn a_read_only_file_is_refused_unchanged_sqlite() {
    a_read_only_file_is_refused_unchanged(Backend::Sqlite, "tasks.db");
}

#[test]
fn a_read_only_file_is_refused_unchanged_redb() {
    a_read_only_file_is_refused_unchanged(Backend::Redb, "tasks.redb");
}

/// No queue file can be created in a read-only directory.
fn no_queue_is_created_in_a_read_only_directory(backend: Backend, name: &str) {
    let place = Place::new();
    chmod(&place.queue_dir(), 0o555);
    refused_unchanged(&place, backend, &place.queue_dir().join(name));
}

#[test]
fn no_queue_is_created_in_a_read_only_directory_sqlite() {
    no_queue_is_created_in_a_read_only_directory(Backend::Sqlite, "tasks.db");
}

#[test]
fn no_queue_is_created_in_a_read_only_directory_redb() {
    no_queue_is_created_in_a_read_only_directory(Backend::Redb, "tasks.redb");
}

/// SQLite keeps a write-ahead log and an index beside the database: a writable file in a
/// read-only directory cannot be used, and the error says why.
#[test]
fn a_sqlite_queue_in_a_read_only_directory_is_refused_unchanged() {
    let place = Place::new();
    let db = place.queue_dir().join("tasks.db");
    enqueue_numbers(Backend::Sqlite, &db, 3, 0);
    chmod(&db, 0o666);
    chmod(&place.queue_dir(), 0o555);
    let stderr = refused_unchanged(&place, Backend::Sqlite, &db);
    assert!(stderr.contains("directory"), "{stderr}");
    chmod(&place.queue_dir(), 0o755);
    assert_eq!(pending(Backend::Sqlite, &db), 3);
}

/// redb needs nothing but its file: a writable file in a read-only directory works.
#[test]
fn a_redb_queue_in_a_read_only_directory_works() {
    let place = Place::new();
    let db = place.queue_dir().join("tasks.redb");
    enqueue_numbers(Backend::Redb, &db, 3, 0);
    chmod(&db, 0o666);
    chmod(&place.queue_dir(), 0o555);
    let out = place.run_worker(Backend::Redb, &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    chmod(&place.queue_dir(), 0o755);
    let counts = Backend::Redb.open(&db).counts(None).expect("counts");
    assert_eq!(counts.done, 3);
}

/// A queue file in a directory that does not exist: a configuration error naming the path,
/// and no directory is created.
#[test]
fn a_missing_directory_is_a_clear_error() {
    let root = tempfile::tempdir().expect("temp dir");
    for (name, open) in [
        (
            "tasks.db",
            (|p: &Path| simplepyq::SqliteStore::open(p).map(|_| ())) as fn(&Path) -> _,
        ),
        ("tasks.redb", |p: &Path| {
            simplepyq::RedbStore::open(p).map(|_| ())
        }),
    ] {
        let path = root.path().join("no-such-dir").join(name);
        let err = open(&path).expect_err("no directory");
        assert!(matches!(err, simplepyq::Error::InvalidConfig(_)), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!root.path().join("no-such-dir").exists());
    }
}

/// A directory given as the queue file: both file backends say so, alike (SQLite said the
/// file could not be opened for its permissions, redb "Is a directory (os error 21)").
#[test]
fn a_directory_is_not_a_queue_file_alike_on_both_backends() {
    let root = tempfile::tempdir().expect("temp dir");
    let opens: [fn(&Path) -> simplepyq::Result<()>; 4] = [
        |p| simplepyq::SqliteStore::open(p).map(drop),
        |p| simplepyq::SqliteStore::open_read_only(p).map(drop),
        |p| simplepyq::RedbStore::open(p).map(drop),
        |p| simplepyq::RedbStore::open_read_only(p).map(drop),
    ];
    for open in opens {
        let err = open(root.path()).expect_err("a directory");
        assert!(matches!(err, simplepyq::Error::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}
