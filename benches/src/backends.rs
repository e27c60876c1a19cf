//! The backends under test, by name.

use std::path::Path;

use simplepyq::{
    Durability, MemoryStore, RedbDurability, RedbOptions, RedbStore, SqliteOptions, SqliteStore,
    Store,
};

/// A backend with its durability setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `MemoryStore`.
    Memory,
    /// `SqliteStore`, WAL with `synchronous=NORMAL`.
    SqliteNormal,
    /// `SqliteStore`, WAL with `synchronous=FULL`.
    SqliteFull,
    /// `RedbStore` with `Durability::Immediate` (its default).
    Redb,
    /// `RedbStore` with `Durability::None`.
    RedbNoSync,
}

impl Backend {
    /// Every backend, in the order reports list them.
    pub const ALL: [Backend; 5] = [
        Backend::Memory,
        Backend::SqliteNormal,
        Backend::SqliteFull,
        Backend::Redb,
        Backend::RedbNoSync,
    ];

    /// The backend named by `--backend` and `--durability` of the throughput tool:
    /// `normal` (each backend's default: SQLite `synchronous=NORMAL`, redb `Immediate`),
    /// `full` (SQLite `synchronous=FULL`, redb `Immediate`) or `none` (redb without sync).
    pub fn parse(backend: &str, durability: &str) -> Result<Self, String> {
        Ok(match (backend, durability) {
            ("memory", _) => Backend::Memory,
            ("sqlite", "normal") => Backend::SqliteNormal,
            ("sqlite", "full") => Backend::SqliteFull,
            ("redb", "normal" | "full") => Backend::Redb,
            ("redb", "none") => Backend::RedbNoSync,
            ("sqlite" | "redb", other) => {
                return Err(format!(
                    "--durability {other} does not fit --backend {backend}"
                ));
            }
            (other, _) => return Err(format!("--backend is sqlite, redb or memory, not {other}")),
        })
    }

    /// A short name for benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::SqliteNormal => "sqlite-normal",
            Backend::SqliteFull => "sqlite-full",
            Backend::Redb => "redb",
            Backend::RedbNoSync => "redb-nosync",
        }
    }

    /// The durability, as the throughput tool reports it.
    pub fn durability(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::SqliteNormal => "wal,synchronous=NORMAL",
            Backend::SqliteFull => "wal,synchronous=FULL",
            Backend::Redb => "redb,durability=immediate",
            Backend::RedbNoSync => "redb,durability=none",
        }
    }

    /// The SQLite durability of a SQLite backend (`Normal` for the others).
    pub fn sqlite_durability(self) -> Durability {
        match self {
            Backend::SqliteFull => Durability::Full,
            _ => Durability::Normal,
        }
    }

    /// A fresh store in `dir`.
    pub fn open(self, dir: &Path) -> simplepyq::Result<Box<dyn Store>> {
        let sqlite =
            |d| SqliteStore::open_with(dir.join("tasks.db"), SqliteOptions::new().durability(d));
        let redb =
            |d| RedbStore::open_with(dir.join("tasks.redb"), RedbOptions::new().durability(d));
        Ok(match self {
            Backend::Memory => Box::new(MemoryStore::new()),
            Backend::SqliteNormal => Box::new(sqlite(Durability::Normal)?),
            Backend::SqliteFull => Box::new(sqlite(Durability::Full)?),
            Backend::Redb => Box::new(redb(RedbDurability::Immediate)?),
            Backend::RedbNoSync => Box::new(redb(RedbDurability::None)?),
        })
    }
}
