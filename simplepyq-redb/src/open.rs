//! Opening a queue file: the checks before anything is written, the upgrades of older
//! formats, and reopening after a failed write.

use std::path::Path;

use parking_lot::RwLock;
use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};
use simplepyq_core::{Error, Result};

use crate::error::{corrupt, db_err, guarded, io_err};
use crate::record;
use crate::storage::{Cap, Failures, FileStorage};
use crate::tables::{FORMAT, FORMAT_1_INDEXES, META, META_FORMAT, META_LAST_ID, Tables};
use crate::{BACKEND, RedbDurability, RedbOptions, RedbStore, to_id};

impl RedbStore {
    /// Opens an existing queue file for reading only, as an inspecting tool should: nothing
    /// is written, not even a format upgrade. Every write fails with [`Error::ReadOnly`].
    ///
    /// Errors, besides those of [`RedbStore::open`]: [`Error::Foreign`] for a file that
    /// holds no queue yet; [`Error::ReadOnly`] for a file that must be written before it can
    /// be read (it was not closed cleanly, or is of format 1): opening it read-write once
    /// (any command that changes the queue, or a worker) repairs or upgrades it.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        guarded(|| Self::open_read_only_in(path))?
    }

    pub(crate) fn open_read_only_in(path: &Path) -> Result<Self> {
        Error::directory_given(path).map_or(Ok(()), Err)?;
        let needs_write = |why: &str| Error::ReadOnly {
            backend: BACKEND,
            message: format!(
                "{} {why}, which writes it: open it read-write once to read it",
                path.display()
            ),
        };
        let reader = match ReadOnlyDatabase::open(path) {
            Ok(reader) => reader,
            Err(redb::DatabaseError::RepairAborted) => {
                return Err(needs_write("was not closed cleanly and must be repaired"));
            }
            Err(e) => return Err(db_err(e)),
        };
        match inspect(&reader)? {
            Some(2..=FORMAT) => {}
            Some(_) => return Err(needs_write("is of format 1 and must be upgraded")),
            None => {
                return Err(Error::Foreign {
                    backend: BACKEND,
                    message: format!("{} holds no simplepyq queue", path.display()),
                });
            }
        }
        Ok(RedbStore {
            db: RwLock::new(None),
            reader: Some(reader),
            path: path.to_path_buf(),
            cap: Cap::new(None),
            failures: Failures::default(),
            durability: redb::Durability::Immediate,
            wakes: simplepyq_core::LocalWakes::default(),
        })
    }

    /// Opens the queue file at `path`, creating it if needed, with default settings.
    ///
    /// Errors, each leaving the file unchanged: [`Error::InUse`] if another process has it
    /// open, [`Error::Foreign`] for a file that is not redb or is another application's
    /// redb database, [`Error::SchemaTooNew`] for a file of a newer simplepyq,
    /// [`Error::Corrupt`] for a damaged one (every page's checksum is checked at open),
    /// [`Error::ReadOnly`] for a file or directory this process may not write.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens the queue file at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self> {
        let path = path.as_ref();
        guarded(|| Self::open_in(path, options))?
    }

    pub(crate) fn open_in(path: &Path, options: RedbOptions) -> Result<Self> {
        Error::directory_given(path).map_or(Ok(()), Err)?;
        let existing = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        if existing {
            // Look read-only first: opening for writing updates redb's header, and a file
            // that is not ours must stay as it was.
            match ReadOnlyDatabase::open(path) {
                Ok(db) => {
                    inspect(&db)?;
                }
                // Not closed cleanly (a crash): redb must repair it, which writes it.
                Err(redb::DatabaseError::RepairAborted) => inspect_repaired_copy(path)?,
                Err(e) => return Err(db_err(e)),
            }
        }
        let failures = Failures::default();
        let cap = Cap::new(options.max_size);
        let db = open_database(path, true, &cap, &failures)?;
        let format = inspect(&db)?;
        let store = RedbStore {
            db: RwLock::new(Some(db)),
            reader: None,
            path: path.to_path_buf(),
            cap,
            failures,
            durability: match options.durability {
                RedbDurability::Immediate => redb::Durability::Immediate,
                RedbDurability::None => redb::Durability::None,
            },
            wakes: simplepyq_core::LocalWakes::default(),
        };
        match format {
            Some(FORMAT) => {}
            Some(2..FORMAT) => store.write(|t| {
                t.meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
                Ok(())
            })?,
            Some(_) => store.upgrade_from_format_1()?,
            None => store.write(|t| {
                t.meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
                t.meta.insert(META_LAST_ID, 0).map_err(db_err)?;
                Ok(())
            })?,
        }
        Ok(store)
    }

    /// Rebuilds the indexes of a format-1 file and rewrites its records, in one transaction.
    pub(crate) fn upgrade_from_format_1(&self) -> Result<()> {
        self.with_db(|db| self.upgrade_in(db))
    }

    pub(crate) fn upgrade_in(&self, db: &Database) -> Result<()> {
        let mut tx = db.begin_write().map_err(db_err)?;
        tx.set_durability(self.durability).map_err(db_err)?;
        for name in FORMAT_1_INDEXES {
            let table: TableDefinition<'_, u64, ()> = TableDefinition::new(name);
            // The typed handle only names the table: delete_table ignores its types.
            tx.delete_table(table).map_err(db_err)?;
        }
        {
            let mut t = Tables::open(&tx)?;
            let mut tasks = Vec::new();
            for entry in t.tasks.iter().map_err(db_err)? {
                let (key, bytes) = entry.map_err(db_err)?;
                let id = to_id(key.value())?;
                tasks.push(
                    record::decode(id, bytes.value())
                        .map_err(|e| corrupt(format!("task {id}: {e}")))?,
                );
            }
            for task in &tasks {
                t.index(task, true)?;
                t.put(task)?;
            }
            t.meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }
}

/// Inspects a file that redb must repair before it can be read (it was not closed cleanly):
/// repairs a copy of it and inspects that, so that a file that is not a simplepyq queue is
/// refused unchanged. It costs a copy of the file, only after a crash.
pub(crate) fn inspect_repaired_copy(path: &Path) -> Result<()> {
    let dir = tempfile::tempdir().map_err(io_err)?;
    let copy = dir.path().join("check.redb");
    std::fs::copy(path, &copy).map_err(io_err)?;
    let db = Database::create(&copy).map_err(db_err)?;
    inspect(&db).map(drop)
}

/// Opens the redb database in the file at `path` (creating the file if `create`).
///
/// The integrity check reads every page, so that a file damaged outside redb gives
/// [`Error::Corrupt`] rather than a panic deep inside redb later.
pub(crate) fn open_database(
    path: &Path,
    create: bool,
    cap: &Cap,
    failures: &Failures,
) -> Result<Database> {
    let file = FileStorage::open(path, create, cap.clone(), failures.clone()).map_err(|io| {
        if let Some(unusable) = Error::unusable_path(path) {
            return unusable;
        }
        match io_err(io) {
            Error::ReadOnly { backend, message } => Error::ReadOnly {
                backend,
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        }
    })?;
    Database::builder()
        .set_check_integrity_on_open(true)
        .create_with_backend(file)
        .map_err(db_err)
}

/// The format of the simplepyq queue in `db`, if it is one this build reads, or `None` if
/// `db` is empty; an error for anything else. Reads only.
pub(crate) fn inspect(db: &impl ReadableDatabase) -> Result<Option<u64>> {
    let read = db.begin_read().map_err(db_err)?;
    match read.open_table(META) {
        Ok(meta) => {
            let format = meta.get(META_FORMAT).map_err(db_err)?.map(|v| v.value());
            return match format {
                Some(f @ 1..=FORMAT) => Ok(Some(f)),
                Some(found) => Err(Error::SchemaTooNew {
                    backend: BACKEND,
                    found: i64::try_from(found).unwrap_or(i64::MAX),
                    supported: FORMAT as i64,
                }),
                None => Err(corrupt("the simplepyq_meta table has no format")),
            };
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(db_err(e)),
    }
    let tables = read.list_tables().map_err(db_err)?.count();
    if tables > 0 {
        return Err(Error::Foreign {
            backend: BACKEND,
            message: format!(
                "the file is a redb database of another application ({tables} tables), not a \
                 simplepyq queue"
            ),
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    use redb::TableHandle;
    use redb::{Database, ReadableDatabase, TableDefinition};
    use simplepyq_core::{
        ClaimStore, Error, InspectStore, ListFilter, NewTask, StoreExt, TaskId, Timestamp,
    };

    use crate::record::status_code;
    use crate::tables::{COUNTS, TASKS};
    use crate::to_key;
    use crate::{RedbOptions, RedbStore};

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    /// Opens `path` expecting an error, and checks the file's bytes did not change.
    pub(crate) fn refused(path: &Path) -> Error {
        let before = std::fs::read(path).expect("read");
        let err = RedbStore::open(path).expect_err("must be refused");
        assert!(
            std::fs::read(path).expect("read") == before,
            "the file changed"
        );
        err
    }

    #[test]
    pub(crate) fn a_file_that_is_not_redb_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "just some text, not a database\n".repeat(300)).expect("write");
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("not a redb database"), "{err}");
    }

    #[test]
    pub(crate) fn a_sqlite_file_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let mut bytes = b"SQLite format 3\0".to_vec();
        bytes.resize(4096, 0);
        std::fs::write(&path, &bytes).expect("write");
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
    }

    #[test]
    pub(crate) fn another_applications_redb_file_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.redb");
        {
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let users: TableDefinition<u64, &str> = TableDefinition::new("users");
                let mut t = tx.open_table(users).expect("table");
                t.insert(1, "ada").expect("insert");
            }
            tx.commit().expect("commit");
        }
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("not a simplepyq queue"), "{err}");
    }

    /// The format a file's meta table names, read with redb alone.
    fn format(path: &Path) -> Option<u64> {
        let db = Database::open(path).expect("open raw");
        let read = db.begin_read().expect("read");
        let meta = read.open_table(META).expect("meta");
        meta.get(META_FORMAT).expect("get").map(|v| v.value())
    }

    /// Names format `f` in a file's meta table, with redb alone.
    fn set_format(path: &Path, f: u64) {
        let db = Database::open(path).expect("open raw");
        let tx = db.begin_write().expect("write");
        tx.open_table(META)
            .expect("meta")
            .insert(META_FORMAT, f)
            .expect("format");
        tx.commit().expect("commit");
    }

    /// A read-only open writes nothing: a format-2 file stays format 2 while its tasks are
    /// read, every write is refused, and a format-1 file (which must be upgraded to be read)
    /// is refused unchanged.
    #[test]
    pub(crate) fn a_read_only_open_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("create");
            store
                .enqueue_one(NewTask::new("c", vec![0x90]), T0)
                .expect("enqueue");
        }
        set_format(&path, 2);
        let before = std::fs::read(&path).expect("read");
        {
            let store = RedbStore::open_read_only(&path).expect("open read-only");
            assert_eq!(store.counts(None).expect("counts").pending, 1);
            assert_eq!(store.list(&ListFilter::new(5)).expect("list").len(), 1);
            let err = store
                .enqueue_one(NewTask::new("c", vec![]), T0)
                .expect_err("read-only");
            assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        }
        assert!(
            std::fs::read(&path).expect("read") == before,
            "the file changed"
        );
        assert_eq!(format(&path), Some(2));
        set_format(&path, 1);
        let before = std::fs::read(&path).expect("read");
        let err = RedbStore::open_read_only(&path).expect_err("format 1 needs an upgrade");
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        assert!(
            std::fs::read(&path).expect("read") == before,
            "the file changed"
        );
    }

    /// A file of an older format whose records this build reads has its version raised
    /// when opened for writing, keeping its tasks; and a file of this build is of a format
    /// newer than 6, the last whose builds ignore rates per key and stuck marks (they
    /// refuse it instead of running a channel past its rate).
    #[test]
    pub(crate) fn older_formats_are_raised_and_rates_per_key_are_past_format_6() {
        use simplepyq_core::{FlowStore, Rate};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("create");
            store
                .enqueue_one(NewTask::new("c", vec![0x90]), T0)
                .expect("enqueue");
            let rate = Rate::new(1, std::time::Duration::from_secs(1));
            store
                .set_rate_per_key("c", Some(rate))
                .expect("rate per key");
        }
        assert!(format(&path).is_some_and(|f| f > 6), "{:?}", format(&path));
        for old in 2..FORMAT {
            set_format(&path, old);
            let store = RedbStore::open(&path).expect("open an older format");
            assert_eq!(
                store.counts(None).expect("counts").pending,
                1,
                "format {old}"
            );
            drop(store);
            assert_eq!(format(&path), Some(FORMAT), "format {old}");
        }
    }

    #[test]
    pub(crate) fn a_newer_format_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("create");
            store
                .write(|t| {
                    t.meta.insert(META_FORMAT, FORMAT + 1).map_err(db_err)?;
                    Ok(())
                })
                .expect("bump");
        }
        match refused(&path) {
            Error::SchemaTooNew {
                found, supported, ..
            } => assert_eq!((found, supported), (FORMAT as i64 + 1, FORMAT as i64)),
            other => panic!("expected SchemaTooNew, got {other}"),
        }
    }

    #[test]
    pub(crate) fn a_second_open_of_a_held_file_is_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        let first = RedbStore::open(&path).expect("create");
        let id = first
            .enqueue_one(NewTask::new("c", vec![1]), T0)
            .expect("enqueue");
        let err = RedbStore::open(&path).expect_err("the file is held");
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        drop(first);
        let again = RedbStore::open(&path).expect("free again");
        assert_eq!(again.get(id).expect("get").map(|t| t.args), Some(vec![1]));
    }

    #[test]
    pub(crate) fn a_format_1_file_is_upgraded_keeping_its_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.redb");
        let pending = NewTask::new("c", vec![1]).to_task(TaskId::new(1), T0);
        let delayed = NewTask::new("c", vec![2])
            .run_at(T0.after(std::time::Duration::from_secs(1)))
            .to_task(TaskId::new(2), T0);
        {
            // The layout format 1 wrote.
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut meta = tx.open_table(META).expect("meta");
                meta.insert(META_FORMAT, 1).expect("format");
                meta.insert(META_LAST_ID, 2).expect("last id");
                let mut tasks = tx.open_table(TASKS).expect("tasks");
                let queued: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("queued");
                let mut queued = tx.open_table(queued).expect("queued");
                let mut counts = tx.open_table(COUNTS).expect("counts");
                for t in [&pending, &delayed] {
                    let v1 = record::tests::encode_format_1(t);
                    tasks.insert(to_key(t.id), v1.as_slice()).expect("task");
                    queued
                        .insert(("c", t.state.run_at.as_millis(), to_key(t.id)), ())
                        .expect("queued");
                    let code = status_code(t.state.status);
                    counts.insert(("c", code), 1).expect("count");
                }
            }
            tx.commit().expect("commit");
        }
        let store = RedbStore::open(&path).expect("upgrade");
        {
            let db = store.database().expect("database");
            let read = db.begin_read().expect("read");
            let meta = read.open_table(META).expect("meta");
            let format = meta.get(META_FORMAT).expect("get").map(|v| v.value());
            assert_eq!(format, Some(FORMAT));
            let tables: Vec<String> = read
                .list_tables()
                .expect("tables")
                .map(|t| t.name().to_owned())
                .collect();
            assert!(!tables.contains(&"queued".to_owned()), "{tables:?}");
        }
        let c = store.counts(Some("c")).expect("counts");
        assert_eq!((c.pending, c.delayed), (1, 1));
        let first = store.claim("c", 5, T0, T0).expect("claim");
        assert_eq!(
            first.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![pending.id]
        );
        let later = T0.after(std::time::Duration::from_secs(1));
        let second = store.claim("c", 5, later, later).expect("claim");
        assert_eq!(second[0].args, vec![2]);
        let next = store
            .enqueue_one(NewTask::new("c", vec![]), T0)
            .expect("enqueue");
        assert_eq!(next, TaskId::new(3), "ids go on after the upgrade");
    }

    #[test]
    pub(crate) fn a_full_file_refuses_writes_keeps_what_it_has_and_goes_on_once_there_is_room() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        let capped = RedbOptions::new().max_size(4 * 1024 * 1024);
        let store = RedbStore::open_with(&path, capped).expect("open");
        let mut stored = Vec::new();
        let err = loop {
            match store.enqueue_one(NewTask::new("c", vec![7; 2_000]), T0) {
                Ok(id) => stored.push(id),
                Err(e) => break e,
            }
            assert!(stored.len() < 10_000, "the size cap did not hold");
        };
        assert!(matches!(err, Error::Full { .. }), "{err}");
        assert!(err.to_string().contains("max_size"), "{err}");
        assert!(stored.len() > 100, "only {} tasks fit", stored.len());
        // redb refuses every call after a failed write until the file is reopened; the store
        // reopens it by itself, and every committed task is there.
        assert_eq!(store.counts(None).expect("counts").total(), stored.len());
        // Every write may need new pages (redb copies on write): whatever fails, fails as full.
        match store.claim("c", 10, T0, T0) {
            Ok(_) | Err(Error::Full { .. }) => {}
            Err(e) => panic!("a claim on a full file: {e}"),
        }
        // Room again (as when the disk is freed), in the same store: every task runs.
        store.cap.set(64 * 1024 * 1024);
        let claimed = store.claim("c", usize::MAX, T0, T0).expect("claim");
        assert_eq!(claimed.len(), stored.len());
        assert!(claimed.iter().all(|t| t.args == vec![7; 2_000]));
        for t in &claimed {
            store.complete(t.claim(), T0).expect("complete");
        }
        store
            .enqueue_one(NewTask::new("c", vec![7; 2_000]), T0)
            .expect("room again");
        drop(store);
        let store = RedbStore::open(&path).expect("reopen without a cap");
        let counts = store.counts(None).expect("counts");
        assert_eq!((counts.done, counts.pending), (stored.len(), 1));
    }

    /// A file cut short, at several lengths: refused at open as damaged (never a store
    /// that misses tasks silently).
    #[test]
    pub(crate) fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            let tasks: Vec<NewTask> = (0..500).map(|_| NewTask::new("c", vec![7; 100])).collect();
            store.enqueue(&tasks, T0).expect("enqueue");
        }
        let good = std::fs::read(&path).expect("read");
        for keep in [good.len() / 10, good.len() / 2, good.len() - 4096] {
            std::fs::write(&path, &good[..keep]).expect("write a cut copy");
            let err = RedbStore::open(&path).expect_err("a cut file must be refused");
            assert!(matches!(err, Error::Corrupt { .. }), "{keep} bytes: {err}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    /// Damaged copies of a queue file (1 to 8 bytes changed at random places, 300 seeds):
    /// each opens and serves calls, or gives a clear error and stays unchanged; none
    /// panics. redb panics on some of these inside; the store turns that into
    /// [`Error::Corrupt`].
    #[test]
    pub(crate) fn a_damaged_file_gives_an_error_never_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            let tasks: Vec<NewTask> = (0..20).map(|i| NewTask::new("c", vec![i; 30])).collect();
            store.enqueue(&tasks, T0).expect("enqueue");
        }
        let good = std::fs::read(&path).expect("read");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut refused = 0;
        for round in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..(1 + round % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = usize::try_from(x % good.len() as u64).expect("in range");
                bytes[at] ^= (x >> 32) as u8 | 1;
            }
            std::fs::write(&path, &bytes).expect("write");
            match RedbStore::open(&path) {
                Ok(store) => {
                    // Served or refused, but no panic.
                    let _ = store.counts(None);
                    let _ = store.list(&ListFilter::new(100));
                    let _ = store.claim("c", 100, T0, T0);
                }
                Err(Error::Corrupt { .. } | Error::Foreign { .. } | Error::SchemaTooNew { .. }) => {
                    refused += 1;
                    assert!(
                        std::fs::read(&path).expect("read") == bytes,
                        "round {round}: a refused file was changed"
                    );
                }
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert!(
            refused > 100,
            "only {refused} of 300 damaged files were noticed"
        );
    }
}
