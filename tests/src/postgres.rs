//! A real PostgreSQL server for the tests: a throwaway cluster started from the installed
//! binaries, or the server `SIMPLEPYQ_TEST_POSTGRES` names. Each test gets a schema of its
//! own, so tests run in parallel on one server.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use simplepyq::{PostgresOptions, PostgresStore};

use crate::Fixture;

/// The environment variable that names a server to use instead of a throwaway cluster: a
/// connection string whose user may create schemas.
pub const SERVER_VAR: &str = "SIMPLEPYQ_TEST_POSTGRES";

const HOW_TO_GET_ONE: &str = "the PostgreSQL tests need a real server: install PostgreSQL's \
     server binaries (Debian: `apt-get install postgresql`, which the suite runs itself as \
     root; `initdb` and `pg_ctl` are looked for on PATH and in /usr/lib/postgresql/*/bin), or \
     set SIMPLEPYQ_TEST_POSTGRES to the connection string of a server where the tests may \
     create schemas";

/// The server the tests use.
#[derive(Debug)]
pub struct Server {
    conninfo: String,
    /// A `postgres://` URL of the same server, over TCP.
    url: Option<String>,
    /// For a throwaway cluster: how to run its `pg_ctl`.
    cluster: Option<Cluster>,
}

#[derive(Debug)]
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    /// Runs the binaries as `postgres` when the tests run as root (`initdb` refuses root).
    as_postgres: bool,
    /// Stops the cluster and deletes it when this process ends, however it ends: it waits
    /// for its standard input to close.
    _watchdog: Child,
}

/// The shared server, started on first use. Panics, saying how to get one, when there is
/// none: a missing server is a failure, never a skipped test.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var(SERVER_VAR) {
        Ok(conninfo) if !conninfo.is_empty() => Server {
            url: conninfo.starts_with("postgres").then(|| conninfo.clone()),
            conninfo,
            cluster: None,
        },
        _ => start_cluster(&Setup::default()).unwrap_or_else(|e| panic!("{HOW_TO_GET_ONE}: {e}")),
    })
}

/// A cluster of the caller's own, for a test that restarts it; stopped and deleted when
/// dropped. Panics as [`server`] does.
pub fn private_server() -> Server {
    start_cluster(&Setup::default()).unwrap_or_else(|e| panic!("{HOW_TO_GET_ONE}: {e}"))
}

/// A private cluster that also listens on `addresses` and lets clients of the network
/// `clients` (e.g. `10.231.0.0/16`) in without a password: for hosts in network
/// namespaces.
pub fn private_server_on(addresses: &[&str], clients: &str) -> Server {
    let setup = Setup {
        durable: false,
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        clients: Some(clients.to_owned()),
    };
    start_cluster(&setup).unwrap_or_else(|e| panic!("{HOW_TO_GET_ONE}: {e}"))
}

/// A cluster of the caller's own with PostgreSQL's default durability (the test clusters
/// skip `fsync`), for benchmarks.
pub fn durable_server() -> Server {
    let setup = Setup {
        durable: true,
        ..Setup::default()
    };
    start_cluster(&setup).unwrap_or_else(|e| panic!("{HOW_TO_GET_ONE}: {e}"))
}

/// How a throwaway cluster is set up.
#[derive(Debug, Default)]
struct Setup {
    /// PostgreSQL's default durability; the test clusters skip `fsync`.
    durable: bool,
    /// Addresses to listen on besides 127.0.0.1.
    addresses: Vec<String>,
    /// A network whose clients need no password, besides this machine's.
    clients: Option<String>,
}

impl Server {
    /// The connection string of the server's `postgres` database.
    pub fn conninfo(&self) -> &str {
        &self.conninfo
    }

    /// A `postgres://` URL of the server. Panics for a server given by a `key=value`
    /// connection string.
    pub fn url(&self) -> &str {
        self.url
            .as_deref()
            .expect("SIMPLEPYQ_TEST_POSTGRES must be a postgres:// URL for this test")
    }

    /// A plain client, for setting up and looking at what the store wrote.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.conninfo, postgres::NoTls)
            .expect("connect to the test server")
    }

    /// Restarts the server with `pg_ctl restart -m mode` (`fast`, or `immediate`: a crash).
    /// Panics for a server the tests did not start.
    pub fn restart(&self, mode: &str) {
        let cluster = self
            .cluster
            .as_ref()
            .expect("only a throwaway cluster is restarted");
        let data = cluster.data.display().to_string();
        let status = cluster
            .command(
                "pg_ctl",
                &[
                    "restart",
                    "-w",
                    "-m",
                    mode,
                    "-D",
                    &data,
                    "-l",
                    &format!("{data}/../log"),
                ],
            )
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl restart failed");
    }
}

impl Cluster {
    fn command(&self, program: &str, args: &[&str]) -> Command {
        command(&self.bin.join(program), args, self.as_postgres)
    }
}

fn command(program: &Path, args: &[&str], as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// The `psql` client beside the server's binaries (Debian's package has it there), or
/// on PATH.
pub fn psql() -> PathBuf {
    binaries()
        .map(|dir| dir.join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"))
}

/// The directory of `initdb` and `pg_ctl`.
fn binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    let mut candidates: Vec<PathBuf> = installed.collect();
    // The newest version first.
    candidates.sort_by_key(|p| std::cmp::Reverse(p.clone()));
    on_path
        .chain(candidates)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .map(|dir| {
            std::fs::canonicalize(dir.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(dir)
        })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn start_cluster(setup: &Setup) -> Result<Server, String> {
    let bin = match binaries() {
        Some(bin) => bin,
        None => {
            crate::system::install(&["postgresql"])
                .map_err(|e| format!("no initdb and pg_ctl found; {e}"))?;
            binaries().ok_or("no initdb and pg_ctl found, even after installing postgresql")?
        }
    };
    let as_postgres = is_root();
    let dir = tempfile::Builder::new()
        .prefix("simplepyq-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let data = dir.join("data");
    if as_postgres {
        let chown = Command::new("chown")
            .args(["postgres:", &dir.display().to_string()])
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.success() {
            return Err(
                "the user postgres is missing (it runs the server when the tests run as root)"
                    .into(),
            );
        }
    }
    let data_arg = data.display().to_string();
    let init = command(
        &bin.join("initdb"),
        &[
            "-D",
            &data_arg,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ],
        as_postgres,
    )
    .output()
    .map_err(|e| format!("initdb: {e}"))?;
    if !init.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let listen: Vec<&str> = std::iter::once("127.0.0.1")
        .chain(setup.addresses.iter().map(String::as_str))
        .collect();
    let mut conf = format!(
        "\nport = {port}\nlisten_addresses = '{listen}'\nunix_socket_directories = '{dir}'\n\
         max_connections = 500\n",
        listen = listen.join(","),
        dir = dir.display()
    );
    if let Some(clients) = &setup.clients {
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .and_then(|mut f| writeln!(f, "host all all {clients} trust"))
            .map_err(|e| format!("pg_hba.conf: {e}"))?;
    }
    if !setup.durable {
        // A crash of the server process loses nothing without them; only the machine's
        // would, and the cluster does not outlive the tests.
        conf.push_str("fsync = off\nfull_page_writes = off\n");
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| f.write_all(conf.as_bytes()))
        .map_err(|e| format!("postgresql.conf: {e}"))?;
    // Starts the server, then waits for this process to end (its stdin closes) to stop the
    // server and delete the cluster.
    let pg_ctl = bin.join("pg_ctl").display().to_string();
    let script = "\"$1\" start -w -D \"$2\" -l \"$3/log\" >/dev/null && echo ready; read _; \
                  \"$1\" stop -m immediate -D \"$2\" >/dev/null 2>&1; rm -rf \"$3\"";
    let dir_arg = dir.display().to_string();
    let mut watchdog = command(
        Path::new("sh"),
        &["-c", script, "sh", &pg_ctl, &data_arg, &dir_arg],
        as_postgres,
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .map_err(|e| format!("start the server: {e}"))?;
    let mut line = String::new();
    let stdout = watchdog.stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        return Err(format!("the server did not start: {log}"));
    }
    Ok(Server {
        conninfo: format!(
            "host={} port={port} user=postgres dbname=postgres",
            dir.display()
        ),
        url: Some(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
        cluster: Some(Cluster {
            bin,
            data,
            as_postgres,
            _watchdog: watchdog,
        }),
    })
}

/// A schema name no other test of any process uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops its schema when dropped.
#[derive(Debug)]
pub struct DropSchema(pub String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(server().conninfo(), postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
        }
    }
}

/// The options of a test store in `schema`: a small pool.
pub fn options(schema: &str) -> PostgresOptions {
    PostgresOptions::new().schema(schema).pool_size(4)
}

/// A store in a fresh schema of the test server; [`Fixture::reopen`] connects again.
pub fn fixture() -> Fixture {
    let schema = fresh_schema();
    let conninfo = server().conninfo().to_owned();
    let open = {
        let schema = schema.clone();
        move || PostgresStore::connect_with(&conninfo, options(&schema))
    };
    let store = open().expect("connect to the test server");
    Fixture::with_reopen(store, DropSchema(schema), move || {
        open().expect("connect again")
    })
}
