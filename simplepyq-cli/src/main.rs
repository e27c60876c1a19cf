//! `simplepyq`: look into a queue file and manage it from the shell.
//!
//! ```text
//! simplepyq summary tasks.db                    counts per channel and status, and more
//! simplepyq tasks tasks.db --channel C --status failed [--limit N] [--json]
//! simplepyq show tasks.db ID                    one task, arguments decoded to JSON
//! simplepyq requeue-failed tasks.db C [--retries N]
//! simplepyq clear-failed tasks.db C
//! simplepyq remove-channel tasks.db C [--yes]
//! simplepyq purge-done tasks.db [--older-than 7d]
//! simplepyq purge-failed tasks.db [--older-than 30d]
//! simplepyq watch tasks.db [--interval 1s]
//! simplepyq import tasks.db                     a file of the original Python simplepyq 0.1.3
//! simplepyq serve tasks.db [--addr A] [--token T] [--read-only]   a web dashboard, /metrics
//! ```
//!
//! Works on SQLite and redb queue files (told apart by their first bytes), on SQLite files
//! while workers in other processes run, and on PostgreSQL queues: give a
//! `postgres://user@host/db` URL instead of the file (`?schema=NAME` for a queue outside the
//! schema `simplepyq`). Exit codes: 0 done; 1 the queue reported an error
//! (or a confirmation was declined); 2 bad usage; 3 the file is missing, not a simplepyq
//! queue, damaged, of a newer version or not writable by this user; 4 no such task.

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;
use simplepyq::{
    ListFilter, PostgresOptions, PostgresStore, RedbStore, SqliteStore, Status, Store, TaskId,
    Timestamp,
};
use simplepyq_core::{Error, Flow, Rate, StoreExt};

use crate::view::{now, result_json, summary, task_json};

mod prometheus;
mod serve;
mod view;

#[derive(Parser)]
#[command(
    name = "simplepyq",
    version,
    about = "Inspect and manage a simplepyq queue file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `purge-done` and `purge-failed` delete.
#[derive(clap::Args)]
struct Purge {
    /// The queue file.
    file: PathBuf,
    /// Only tasks finished at least this long ago: 30s, 15m, 12h, 7d.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    older_than: Duration,
    /// Only this channel.
    #[arg(long)]
    channel: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Counts per channel and status, the oldest pending task, the next wake-up (`stats`
    /// before).
    #[command(alias = "stats")]
    Summary {
        /// The queue file (SQLite or redb), or a `postgres://` URL.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tasks in id order, by channel and status (`list` before).
    #[command(alias = "list")]
    Tasks {
        /// The queue file.
        file: PathBuf,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Only this status: pending, running, delayed, done or failed.
        #[arg(long)]
        status: Option<Status>,
        /// At most this many tasks.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only tasks after this id (the next page).
        #[arg(long)]
        after: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One task, with its arguments decoded from MessagePack to JSON.
    Show {
        /// The queue file.
        file: PathBuf,
        /// The task's id.
        id: i64,
    },
    /// Queues a channel's failed tasks again.
    RequeueFailed {
        /// The queue file.
        file: PathBuf,
        /// The channel.
        channel: String,
        /// The new retry count; by default each task's original one.
        #[arg(long)]
        retries: Option<u32>,
    },
    /// Deletes a channel's failed tasks.
    ClearFailed {
        /// The queue file.
        file: PathBuf,
        /// The channel.
        channel: String,
    },
    /// Deletes every task of a channel, whatever its status.
    RemoveChannel {
        /// The queue file.
        file: PathBuf,
        /// The channel.
        channel: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Pauses a channel for every process and machine on the queue: no worker starts
    /// another of its tasks (but for claims under way) until `resume`; running tasks
    /// finish, tasks stay queued, enqueueing goes on.
    Pause {
        /// The queue file (SQLite or redb), or a `postgres://` URL.
        file: PathBuf,
        /// The channel.
        channel: String,
    },
    /// Resumes a paused channel: idle workers are woken.
    Resume {
        /// The queue file (SQLite or redb), or a `postgres://` URL.
        file: PathBuf,
        /// The channel.
        channel: String,
    },
    /// Limits how many of a channel's tasks run at once across every process and machine on
    /// the queue; with --per-key, how many of its tasks with the same concurrency key.
    Limit {
        /// The queue file (SQLite or redb), or a `postgres://` URL.
        file: PathBuf,
        /// The channel.
        channel: String,
        /// The most running at once (at least 1), or `none` to remove the limit (with
        /// --per-key: back to the default, 1).
        #[arg(value_parser = parse_limit)]
        max: Limit,
        /// The limit of each concurrency key's running tasks, not the channel's.
        #[arg(long)]
        per_key: bool,
    },
    /// Limits how many of a channel's tasks start per window of time across every process
    /// and machine on the queue (windows from the Unix epoch).
    Rate {
        /// The queue file (SQLite or redb), or a `postgres://` URL.
        file: PathBuf,
        /// The channel.
        channel: String,
        /// The most starts per window (at least 1), or `none` to remove the rate.
        #[arg(value_parser = parse_limit)]
        starts: Limit,
        /// The window: 500ms, 1s, 1m, 1h (with a number of starts).
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        per: Duration,
        /// The rate of each concurrency key's starts, not the channel's.
        #[arg(long)]
        per_key: bool,
    },
    /// Deletes done tasks that finished long enough ago.
    PurgeDone(Purge),
    /// Deletes failed tasks that failed long enough ago (clear-failed deletes them all).
    PurgeFailed(Purge),
    /// Imports a file of the original Python simplepyq (0.1.3) into this version's schema,
    /// after a backup copy beside it. Commands that change a file, and queues that open
    /// it, import it too; the reading commands refuse it until then.
    Import {
        /// The original's `tasks.db`.
        file: PathBuf,
    },
    /// A web dashboard of the queue, with its metrics for Prometheus at /metrics, until
    /// interrupted.
    Serve {
        /// The queue file (SQLite or redb), or a `postgres://` URL.
        file: PathBuf,
        /// The address to listen on; one that is not loopback needs a token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// A secret every request must carry (at least 16 characters).
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// A file holding the token (its first line).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Serve no actions, and open the queue read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// The summary, refreshed until interrupted.
    Watch {
        /// The queue file.
        file: PathBuf,
        /// Time between refreshes: 500ms, 2s, 1m.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        interval: Duration,
        /// Stop after this many refreshes (for scripts).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// A limit of running tasks as the command line takes it.
#[derive(Clone, Copy, Debug)]
struct Limit(Option<u32>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(Limit(None));
    }
    match text.parse::<u32>() {
        Ok(0) | Err(_) => Err(format!(
            "{text:?}: a number of tasks (at least 1), or `none`"
        )),
        Ok(n) => Ok(Limit(Some(n))),
    }
}

/// Why the command failed, with its exit code.
enum Failure {
    /// The queue reported an error, or the user declined.
    Queue(String),
    /// The file is missing or not a usable queue.
    File(String),
    /// No such task.
    NotFound(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::Foreign { .. }
            | Error::SchemaTooNew { .. }
            | Error::Corrupt { .. }
            | Error::ReadOnly { .. } => Failure::File(e.to_string()),
            Error::UnknownChannel(_) => Failure::NotFound(e.to_string()),
            other => Failure::Queue(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Queue(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, message) = match failure {
                Failure::Queue(m) => (1, m),
                Failure::File(m) => (3, m),
                Failure::NotFound(m) => (4, m),
            };
            eprintln!("simplepyq: {message}");
            ExitCode::from(code)
        }
    }
}

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";
const REDB_MAGIC: &[u8] = b"redb\x1a\x0a\xa9\x0d\x0a";

/// Opens an existing queue file to read it only: nothing is written, not even a migration,
/// so that inspecting a file leaves it as the workers that use it expect.
fn open_to_read(path: &Path) -> Result<Box<dyn Store>, Failure> {
    if let Some((url, options)) = postgres_url(path) {
        return Ok(Box::new(PostgresStore::connect_read_only(&url, options)?));
    }
    match kind(path)? {
        Kind::Sqlite => Ok(Box::new(SqliteStore::open_read_only(path)?)),
        Kind::Redb => Ok(Box::new(RedbStore::open_read_only(path)?)),
    }
}

/// Opens an existing queue file to change it (migrating it to this version if needed).
fn open(path: &Path) -> Result<Box<dyn Store>, Failure> {
    if let Some((url, options)) = postgres_url(path) {
        return Ok(Box::new(PostgresStore::connect_with(&url, options)?));
    }
    match kind(path)? {
        Kind::Sqlite => Ok(Box::new(SqliteStore::open(path)?)),
        Kind::Redb => Ok(Box::new(RedbStore::open(path)?)),
    }
}

enum Kind {
    Sqlite,
    Redb,
}

/// A `postgres://` or `postgresql://` URL, with the queue's schema taken out of its
/// `schema=` parameter (the driver knows no such parameter); `None` for a file's path.
fn postgres_url(path: &Path) -> Option<(String, PostgresOptions)> {
    let text = path.to_str()?;
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return None;
    }
    let mut options = PostgresOptions::new().pool_size(2);
    let Some((base, query)) = text.split_once('?') else {
        return Some((text.to_owned(), options));
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("schema=") {
            Some(schema) => options = options.schema(schema),
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Some((url, options))
}

/// What an existing queue file is, by its first bytes; never creates one.
fn kind(path: &Path) -> Result<Kind, Failure> {
    let mut head = [0u8; 16];
    let read = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Failure::File(format!("cannot read {}: {e}", path.display())))?;
    let head = &head[..read];
    if head.starts_with(SQLITE_MAGIC) {
        Ok(Kind::Sqlite)
    } else if head.starts_with(REDB_MAGIC) {
        Ok(Kind::Redb)
    } else {
        Err(Failure::File(format!(
            "{} is not a simplepyq queue (neither a SQLite nor a redb file)",
            path.display()
        )))
    }
}

fn run(command: Command) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Summary { file, json } => {
            let store = open_to_read(&file)?;
            let summary = summary(&*store, now(&*store))?;
            if json {
                writeln!(out, "{summary}")?;
            } else {
                print_summary(&mut out, &summary)?;
            }
        }
        Command::Tasks {
            file,
            channel,
            status,
            limit,
            after,
            json,
        } => {
            let store = open_to_read(&file)?;
            let mut filter = ListFilter::new(limit);
            filter.channel = channel;
            filter.status = status;
            filter.after = after.map(TaskId::new);
            let tasks = store.list(&filter)?;
            if json {
                let all: Vec<Value> = tasks.iter().map(task_json).collect();
                writeln!(out, "{}", Value::Array(all))?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<16} {:<8} {:>8}  {:<12} last error",
                    "id", "channel", "status", "attempts", "run at"
                )?;
                for t in &tasks {
                    writeln!(
                        out,
                        "{:>8}  {:<16} {:<8} {:>8}  {:<12} {}",
                        t.id,
                        t.channel,
                        t.state.status,
                        t.state.attempts,
                        relative(now(&*store), t.state.run_at),
                        t.state.last_error.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        Command::Show { file, id } => {
            let store = open_to_read(&file)?;
            let task = store
                .get(TaskId::new(id))?
                .ok_or_else(|| Failure::NotFound(format!("no task with id {id}")))?;
            let mut value = task_json(&task);
            value["result"] = result_json(store.result(task.id)?);
            let parents: Vec<i64> = store.parents(task.id)?.iter().map(|p| p.get()).collect();
            value["parents"] = serde_json::json!(parents);
            let text =
                serde_json::to_string_pretty(&value).map_err(|e| Failure::Queue(e.to_string()))?;
            writeln!(out, "{text}")?;
        }
        Command::RequeueFailed {
            file,
            channel,
            retries,
        } => {
            let store = open(&file)?;
            let n = store.requeue_failed(Some(&channel), retries, now(&*store))?;
            writeln!(out, "requeued {n} failed task(s) of {channel}")?;
        }
        Command::Import { file } => {
            let original = match kind(&file)? {
                Kind::Sqlite => SqliteStore::is_original(&file)?,
                Kind::Redb => false,
            };
            if !original {
                return Err(Failure::File(format!(
                    "{} is not a file of the original simplepyq: nothing to import",
                    file.display()
                )));
            }
            let backup = SqliteStore::original_backup_path(&file);
            let c = open(&file)?.counts(None)?;
            writeln!(
                out,
                "imported {} task(s): {} pending, {} delayed, {} done, {} failed; \
                 the original file is copied to {}",
                c.total(),
                c.pending,
                c.delayed,
                c.done,
                c.failed,
                backup.display()
            )?;
        }
        Command::Pause { file, channel } => {
            let changed = open(&file)?.pause_known(&channel, true, false)?;
            let was = if changed {
                ""
            } else {
                " (it was paused already)"
            };
            writeln!(out, "paused channel {channel}{was}")?;
        }
        Command::Resume { file, channel } => {
            let changed = open(&file)?.pause_known(&channel, false, false)?;
            let was = if changed { "" } else { " (it was not paused)" };
            writeln!(out, "resumed channel {channel}{was}")?;
        }
        Command::Limit {
            file,
            channel,
            max,
            per_key: true,
        } => {
            let n = max.0.unwrap_or(Flow::default().max_running_per_key);
            let changed = open(&file)?.limit_per_key_known(&channel, n, false)?;
            let was = if changed { "" } else { " (it was so already)" };
            writeln!(
                out,
                "at most {n} task(s) of {channel} with the same concurrency key run at once{was}"
            )?;
        }
        Command::Limit {
            file, channel, max, ..
        } => {
            let changed = open(&file)?.limit_known(&channel, max.0, false)?;
            let was = if changed { "" } else { " (it was so already)" };
            match max.0 {
                Some(n) => writeln!(out, "at most {n} task(s) of {channel} run at once{was}")?,
                None => writeln!(out, "no limit on {channel}{was}")?,
            }
        }
        Command::Rate {
            file,
            channel,
            starts,
            per,
            per_key,
        } => {
            let rate = starts.0.map(|n| Rate::new(n, per));
            let store = open(&file)?;
            let (changed, of) = if per_key {
                let changed = store.rate_per_key_known(&channel, rate, false)?;
                (changed, " with the same concurrency key")
            } else {
                (store.rate_known(&channel, rate, false)?, "")
            };
            let was = if changed { "" } else { " (it was so already)" };
            match starts.0 {
                Some(n) => writeln!(
                    out,
                    "at most {n} task(s) of {channel}{of} start per {per:?}{was}"
                )?,
                None if per_key => writeln!(out, "no rate per key on {channel}{was}")?,
                None => writeln!(out, "no rate on {channel}{was}")?,
            }
        }
        Command::ClearFailed { file, channel } => {
            let n = open(&file)?.clear_failed(Some(&channel))?;
            writeln!(out, "deleted {n} failed task(s) of {channel}")?;
        }
        Command::RemoveChannel { file, channel, yes } => {
            let store = open(&file)?;
            let total = store.counts(Some(&channel))?.total();
            if !yes {
                write!(
                    out,
                    "Remove channel {channel:?} and its {total} task(s)? [y/N] "
                )?;
                out.flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(Failure::Queue("not removed: not confirmed".into()));
                }
            }
            let n = store.remove_channel(&channel, now(&*store))?;
            writeln!(out, "removed channel {channel} and {n} task(s)")?;
        }
        Command::PurgeDone(purge) => {
            let store = open(&purge.file)?;
            let before = now(&*store).before(purge.older_than);
            let n = store.purge_done(purge.channel.as_deref(), before)?;
            writeln!(out, "deleted {n} done task(s)")?;
        }
        Command::PurgeFailed(purge) => {
            let store = open(&purge.file)?;
            let before = now(&*store).before(purge.older_than);
            let n = store.purge_failed(purge.channel.as_deref(), before)?;
            writeln!(out, "deleted {n} failed task(s)")?;
        }
        Command::Serve {
            file,
            addr,
            token,
            token_file,
            read_only,
        } => {
            let token = match token_file {
                Some(path) => Some(read_token(&path)?),
                None => token,
            };
            check_token(addr, token.as_deref());
            let store = if read_only {
                open_to_read(&file)?
            } else {
                open(&file)?
            };
            let options = serve::Options {
                addr,
                token,
                read_only,
            };
            serve::run(store, options, |bound| {
                println!("simplepyq: serving {} on http://{bound}/", file.display());
                let _ = std::io::stdout().flush();
            })?;
        }
        Command::Watch {
            file,
            interval,
            count,
        } => {
            let store = open_to_read(&file)?;
            let mut shown = 0u64;
            loop {
                let summary = summary(&*store, now(&*store))?;
                // Clear the screen and go home, then draw.
                write!(out, "\x1b[2J\x1b[H")?;
                print_summary(&mut out, &summary)?;
                out.flush()?;
                shown += 1;
                if count.is_some_and(|c| shown >= c) {
                    break;
                }
                std::thread::sleep(interval);
            }
        }
    }
    Ok(())
}

fn print_summary(out: &mut impl Write, summary: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<14} next wake-up",
        "channel", "pending", "running", "delayed", "waiting", "done", "failed", "oldest pending"
    )?;
    let now = Timestamp::from_millis(summary["now_ms"].as_i64().unwrap_or(0));
    for c in summary["channels"].as_array().into_iter().flatten() {
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let oldest = c["oldest_pending_age_ms"]
            .as_i64()
            .map_or(String::from("-"), |ms| {
                human(Duration::from_millis(ms.max(0) as u64))
            });
        let wakeup = if c["paused"].as_bool() == Some(true) {
            String::from("paused")
        } else if let Some(max) = c["max_running"].as_u64()
            && n("running") >= max
        {
            format!("full ({max} running)")
        } else {
            c["next_wakeup_ms"]
                .as_i64()
                .map_or(String::from("-"), |ms| {
                    relative(now, Timestamp::from_millis(ms))
                })
        };
        writeln!(
            out,
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<14} {}",
            c["channel"].as_str().unwrap_or(""),
            n("pending"),
            n("running"),
            n("delayed"),
            n("waiting"),
            n("done"),
            n("failed"),
            oldest,
            wakeup
        )?;
    }
    if summary["channels"].as_array().is_none_or(Vec::is_empty) {
        writeln!(out, "(no tasks)")?;
    }
    Ok(())
}

/// The first line of a token file.
fn read_token(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::File(format!("cannot read {}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// Exits with a usage error if `addr` is not loopback and there is no token, or the token
/// is too short to be a secret.
fn check_token(addr: SocketAddr, token: Option<&str>) {
    let problem = match token {
        None if !addr.ip().is_loopback() => {
            format!("{addr} is not a loopback address: serving it needs --token or --token-file")
        }
        // Characters that a URL and a cookie carry as they are: any other would need
        // encoding in `/?token=`, and `;` or `,` would end the cookie early.
        Some(t)
            if t.len() < 16
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')) =>
        {
            "the token must have at least 16 characters, each a letter, a digit, '-', '_', '.' \
             or '~' (they pass in a URL and a cookie as they are)"
                .to_owned()
        }
        _ => return,
    };
    Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, problem)
        .exit()
}

/// `12s ago` or `in 3m 5s`.
fn relative(now: Timestamp, at: Timestamp) -> String {
    if at <= now {
        format!("{} ago", human(at.until(now)))
    } else {
        format!("in {}", human(now.until(at)))
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m {}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// `500ms`, `30s`, `15m`, `12h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: use ms, s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn times_read_as_people_say_them() {
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(relative(now, Timestamp::from_millis(988_000)), "12s ago");
        assert_eq!(relative(now, Timestamp::from_millis(1_185_000)), "in 3m 5s");
        assert_eq!(human(Duration::from_secs(90_000)), "1d 1h");
    }
}
