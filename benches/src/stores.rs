//! The stores of the process-level examples, by name: a SQLite or redb file in a folder, or
//! a schema on a throwaway PostgreSQL server started from the installed binaries.

use std::path::Path;

use simplepyq::{PostgresOptions, PostgresStore, RedbStore, SqliteStore, Store};

/// Opens stores of one backend, `sqlite`, `redb` or `postgres`.
#[derive(Debug)]
pub struct Stores {
    backend: String,
    server: Option<simplepyq_tests::postgres::Server>,
}

impl Stores {
    /// Stores of `backend`; for PostgreSQL, a throwaway server is started now.
    pub fn new(backend: &str) -> Result<Self, String> {
        if !matches!(backend, "sqlite" | "redb" | "postgres") {
            return Err(format!(
                "--backend is sqlite, redb or postgres, not {backend}"
            ));
        }
        Ok(Stores {
            backend: backend.to_owned(),
            server: (backend == "postgres").then(simplepyq_tests::postgres::durable_server),
        })
    }

    /// A store on the queue file in `dir` (SQLite, redb), or on schema `schema` of the
    /// server: opened again with the same arguments, another connection to the same queue.
    pub fn open(&self, dir: &Path, schema: &str) -> Result<Box<dyn Store>, String> {
        let opened: simplepyq::Result<Box<dyn Store>> = match &self.server {
            Some(server) => {
                let options = PostgresOptions::new().schema(schema);
                PostgresStore::connect_with(server.conninfo(), options)
                    .map(|s| Box::new(s) as Box<dyn Store>)
            }
            None if self.backend == "redb" => {
                RedbStore::open(dir.join("tasks.redb")).map(|s| Box::new(s) as Box<dyn Store>)
            }
            None => SqliteStore::open(dir.join("tasks.db")).map(|s| Box::new(s) as Box<dyn Store>),
        };
        opened.map_err(|e| e.to_string())
    }
}
