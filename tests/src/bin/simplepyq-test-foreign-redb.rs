//! `simplepyq-test-foreign-redb PATH`: writes another application's redb file at PATH (a
//! table `users`), prints `ready` and waits, the file open, to be killed: the file is then
//! one redb must repair before anyone can read it.

use std::io::Write;
use std::process::ExitCode;

use redb::{Database, TableDefinition};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: simplepyq-test-foreign-redb PATH");
        return ExitCode::from(1);
    };
    let write = || -> Result<Database, redb::Error> {
        let db = Database::create(&path)?;
        let tx = db.begin_write()?;
        {
            let users: TableDefinition<u64, &str> = TableDefinition::new("users");
            tx.open_table(users)?.insert(1, "ada")?;
        }
        tx.commit()?;
        Ok(db)
    };
    let db = match write() {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    // Killed here, with the database open.
    std::thread::sleep(std::time::Duration::from_secs(600));
    drop(db);
    ExitCode::SUCCESS
}
