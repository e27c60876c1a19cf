//! Measures enqueue and drain throughput, pick-up latency and peak memory.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example throughput -- --backend sqlite|redb|memory --n 20000 \
//!     --workers 4 [--producers 4] [--durability normal|full|none] \
//!     [--enqueue single|batch] [--chunk K] \
//!     [--bare] [--max-running N] [--keys K] [--work-us U] [--result-bytes B]
//! cargo run --release -p simplepyq-benches --example throughput -- --backend postgres [--url URL] \
//!     [--processes 3] [--notify off] ...
//! cargo run --release -p simplepyq-benches --example throughput -- --backend sqlite --remote [--watch off] \
//!     [--idle-cpu 30] [--listener] [--readers 2] [--due-delayed] [--live]
//! ```
//!
//! For PostgreSQL the tool uses the server at `--url` (in a schema of its own, dropped at the
//! end), or starts a throwaway one from the installed binaries, with PostgreSQL's default
//! settings. With `--processes K` (PostgreSQL or SQLite), K-1 more processes of the tool
//! (`--drain-only`) drain beside this one: they start, open the queue and are ready before
//! the enqueues, so that `drain_per_s` times the drain alone, and on PostgreSQL
//! `"connections_max"` is the most sessions the database had during it. Pick-up latency on
//! PostgreSQL is for tasks enqueued through a second store (another pool, as another
//! process would): the wake-up comes by `NOTIFY`.
//!
//! Prints one JSON line:
//! `{"system":"simplepyq-rs","version":…,"backend":…,"n":…,"workers":…,"enqueue_per_s":…,
//! "drain_per_s":…,"durability":…,"producers":…,"enqueue_mode":…,"pickup_latency_ms_p50":…,
//! "pickup_latency_ms_p99":…,"peak_rss_mib":…}`.
//!
//! `enqueue_per_s`: N tasks (payload `{"i": i, "url": "https://example.com/<i>"}`) enqueued
//! into a fresh store, one call at a time (`--enqueue single`, the default) from the
//! producer threads, or in batches of 10,000 (`--enqueue batch`, to fill large backlogs;
//! `--chunk K` sets the batch: one thread's `enqueue_many` of P tasks at a time is what P
//! producers' one-at-a-time enqueues would give if each commit gathered all P at no cost).
//! `drain_per_s`: all N processed by the workers with a handler that only decodes the
//! payload (and with `--work-us U` sleeps U µs, a task that waits on I/O), timed from `start`
//! until the last is done; the tool exits 1 unless exactly N
//! were processed. Pick-up latency: from `enqueue` to the handler's start, for 200 tasks
//! enqueued one by one while the workers are idle; with `--remote` (SQLite), enqueued through
//! a second store on the file, as another process would (`--watch off` turns the queue's
//! watch of the file off, leaving polling). Peak RSS: the process's high-water mark. With
//! `--idle-cpu S`: the CPU time the process spends in S seconds with the queue started and
//! idle, as a percentage of one core (`"idle_cpu_percent"`). With `--listener`, a second
//! queue on the file listens for news of work while the tasks are enqueued. With
//! `--readers K`, K threads read (`counts`, then a page of pending `tasks`) in a loop during
//! the drain (`"reads_per_s"`: both reads, together). With `--due-delayed`, the tasks are
//! enqueued delayed by 1 s; once all are due, one claim of one task is timed
//! (`"first_claim_ms"`), then given back, and the drain begins. With `--live` the workers
//! are started before the enqueues and drain while the producers enqueue: `enqueue_per_s`
//! is then measured beside the drain, and `drain_per_s` is N over the time from the first
//! enqueue until the last task is done.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use simplepyq::{
    EnqueueOptions, PostgresOptions, PostgresStore, SimplePyQ, SqliteOptions, SqliteStore, Store,
    TaskError,
};
use simplepyq_benches::backends::Backend;
use simplepyq_benches::{Payload, payload};
use simplepyq_benches::{bare, bare_pg};

struct Args {
    backend: String,
    n: u64,
    workers: usize,
    producers: u64,
    durability: String,
    batch: bool,
    /// Tasks per `enqueue_many` call with `--enqueue batch`.
    chunk: u64,
    bare: bool,
    url: Option<String>,
    processes: u64,
    /// In a helper process: the schema to drain.
    drain_only: Option<String>,
    /// In a helper process: measure the bare SQLite limits only.
    bare_only: bool,
    /// PostgreSQL: whether enqueues send `NOTIFY`.
    notify: bool,
    /// SQLite: pick-up of tasks another store on the file enqueues.
    remote: bool,
    /// SQLite: whether the queue watches the file for other processes' work.
    watch: bool,
    /// Seconds to measure the CPU time of an idle started queue.
    idle_cpu: u64,
    /// SQLite: a second queue on the file listens while tasks are enqueued (each enqueue
    /// then tells it).
    listener: bool,
    /// Threads reading (`counts`, then a page of `tasks`) in a loop during the drain.
    readers: u64,
    /// The tasks are enqueued delayed by 1 s and drained once all are due.
    due_delayed: bool,
    /// The workers drain while the producers enqueue.
    live: bool,
    /// The channel's limit of running tasks, if any.
    max_running: Option<u32>,
    work_us: u64,
    result_bytes: usize,
    /// Task i gets concurrency key i mod K (the default limit of 1 per key); 0: no keys.
    keys: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        backend: "sqlite".into(),
        n: 20_000,
        workers: 4,
        producers: 1,
        durability: "normal".into(),
        batch: false,
        chunk: 10_000,
        bare: false,
        url: None,
        processes: 1,
        drain_only: None,
        bare_only: false,
        notify: true,
        remote: false,
        watch: true,
        idle_cpu: 0,
        listener: false,
        readers: 0,
        due_delayed: false,
        live: false,
        max_running: None,
        keys: 0,
        work_us: 0,
        result_bytes: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bare-only" {
            args.bare_only = true;
            continue;
        }
        if flag == "--bare" {
            args.bare = true;
            continue;
        }
        if flag == "--remote" {
            args.remote = true;
            continue;
        }
        if flag == "--due-delayed" {
            args.due_delayed = true;
            continue;
        }
        if flag == "--listener" {
            args.listener = true;
            continue;
        }
        if flag == "--live" {
            args.live = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--backend" => args.backend = value.clone(),
            "--n" => args.n = number()?,
            "--workers" => args.workers = usize::try_from(number()?).map_err(|e| e.to_string())?,
            "--producers" => args.producers = number()?.max(1),
            "--durability" => args.durability = value.clone(),
            "--enqueue" => args.batch = value == "batch",
            "--chunk" => args.chunk = number()?.max(1),
            "--url" => args.url = Some(value.clone()),
            "--processes" => args.processes = number()?.max(1),
            "--drain-only" => args.drain_only = Some(value.clone()),
            "--notify" => args.notify = value != "off",
            "--watch" => args.watch = value != "off",
            "--idle-cpu" => args.idle_cpu = number()?,
            "--readers" => args.readers = number()?,
            "--keys" => args.keys = number()?,
            "--work-us" => args.work_us = number()?,
            "--result-bytes" => {
                args.result_bytes = usize::try_from(number()?).map_err(|e| e.to_string())?;
            }
            "--max-running" => {
                args.max_running = Some(u32::try_from(number()?).map_err(|e| e.to_string())?);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.keys > 0 && args.batch {
        return Err("--keys goes with --enqueue single".into());
    }
    if args.live && (args.due_delayed || args.processes > 1 || args.readers > 0) {
        return Err("--live goes with neither --due-delayed, --processes nor --readers".into());
    }
    Ok(args)
}

/// With `--bare`: the bare SQLite limits, measured now by a process of their own (this one's
/// arguments and `--bare-only`): in this process they depended on the allocator's state the
/// queue left (glibc raises its mmap and trim thresholds after large frees: the bare 32-row
/// cycle measured 256-286k/s after one queue's run and 408-439k/s after another's).
fn bare_apart() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .args(std::env::args().skip(1))
        .arg("--bare-only")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// With `--bare-only`: the bare SQLite limits at the same `synchronous` setting, measured
/// now, as extra JSON fields.
fn bare_limits(
    backend: Backend,
    dir: &std::path::Path,
    n: u64,
    result_bytes: usize,
) -> Result<String, String> {
    let sync = match backend {
        Backend::SqliteFull => "FULL",
        _ => "NORMAL",
    };
    let e = |e: rusqlite::Error| e.to_string();
    let mut conn = bare::open(&dir.join("bare.db"), sync).map_err(e)?;
    let insert = bare::insert_rate(&conn, n.min(20_000)).map_err(e)?;
    conn.execute("DELETE FROM jobs", []).map_err(e)?;
    bare::insert_batch(&mut conn, n).map_err(e)?;
    let cycle1 = bare::claim_delete_rate(&mut conn, 1, n.min(20_000)).map_err(e)?;
    conn.execute("DELETE FROM jobs", []).map_err(e)?;
    bare::insert_batch(&mut conn, n).map_err(e)?;
    let cycle32 = bare::claim_delete_rate(&mut conn, 32, n).map_err(e)?;
    // With results: claim and finish 32 rows at a time keeping them, without and with a
    // result of the same size.
    let results = if result_bytes > 0 {
        let mut rates = Vec::new();
        for bytes in [0, result_bytes] {
            conn.execute("DELETE FROM jobs", []).map_err(e)?;
            bare::insert_batch(&mut conn, n).map_err(e)?;
            rates.push(bare::claim_finish_rate(&mut conn, 32, n, bytes).map_err(e)?);
        }
        format!(
            ",\"bare_finish32_per_s\":{:.0},\"bare_finish32_result_per_s\":{:.0}",
            rates[0], rates[1]
        )
    } else {
        String::new()
    };
    Ok(format!(
        ",\"bare_synchronous\":\"{sync}\",\"bare_insert_per_s\":{insert:.0},\
         \"bare_cycle1_per_s\":{cycle1:.0},\"bare_cycle32_per_s\":{cycle32:.0}{results}"
    ))
}

/// The process's CPU time so far (user and system), in the kernel's ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses: utime and stime are the
    // 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(-1.0, |kib| kib / 1024.0)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::from(1)
        }
    }
}

/// A PostgreSQL server for the run: `--url`, or a throwaway cluster.
struct Server {
    conninfo: String,
    notify: bool,
    _cluster: Option<simplepyq_tests::postgres::Server>,
}

impl Server {
    fn get(url: Option<&str>, notify: bool) -> Self {
        match url {
            Some(url) => Server {
                conninfo: url.to_owned(),
                notify,
                _cluster: None,
            },
            None => {
                let cluster = simplepyq_tests::postgres::durable_server();
                Server {
                    conninfo: cluster.conninfo().to_owned(),
                    notify,
                    _cluster: Some(cluster),
                }
            }
        }
    }

    fn store(&self, schema: &str) -> Result<PostgresStore, String> {
        let options = PostgresOptions::new().schema(schema).notify(self.notify);
        PostgresStore::connect_with(&self.conninfo, options).map_err(|e| e.to_string())
    }

    fn drop_schema(&self, schema: &str) {
        if let Ok(mut c) = postgres::Client::connect(&self.conninfo, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// The handler of every benchmark task: decodes the payload, counts it.
fn count_into(
    count: Arc<AtomicU64>,
    pick: Arc<parking_lot_free::Slot>,
    work: Duration,
) -> impl Fn(Payload) -> Result<(), TaskError> + Send + Sync + 'static {
    move |p: Payload| {
        if p.url.is_empty() {
            return Err(TaskError::msg("empty url"));
        }
        count.fetch_add(1, Ordering::Relaxed);
        pick.mark();
        if !work.is_zero() {
            std::thread::sleep(work);
        }
        Ok(())
    }
}

/// A helper process of `--processes`: opens the queue (a PostgreSQL schema, or the SQLite
/// file in folder `target`), says `ready`, waits for `go` on its input, drains, and prints
/// how many it ran.
/// Its start-up (a process, its connections, the schema check) is not timed.
fn drain_only(args: &Args, target: &str) -> Result<(), String> {
    let store: Box<dyn Store> = if args.backend == "postgres" {
        let server = Server::get(args.url.as_deref(), args.notify);
        Box::new(server.store(target)?)
    } else {
        Backend::parse(&args.backend, &args.durability)?
            .open(std::path::Path::new(target))
            .map_err(|e| e.to_string())?
    };
    let q = SimplePyQ::new(store);
    let processed = Arc::new(AtomicU64::new(0));
    let work = Duration::from_micros(args.work_us);
    let handler = count_into(Arc::clone(&processed), Arc::default(), work);
    q.add_channel("bench", handler, args.workers)
        .map_err(|e| e.to_string())?;
    println!("ready");
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .map_err(|e| e.to_string())?;
    q.run_until_complete().map_err(|e| e.to_string())?;
    println!("{}", processed.load(Ordering::Relaxed));
    Ok(())
}

/// The helper processes of `--processes`, started and ready before the enqueues.
struct Helpers {
    children: Vec<(
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
    )>,
}

impl Helpers {
    /// Starts `count` helpers on `target` and waits until each is ready.
    fn start(args: &Args, target: &str, url: Option<&str>, count: u64) -> Result<Self, String> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut children = Vec::new();
        for _ in 0..count {
            let mut helper = std::process::Command::new(&exe);
            helper
                .args(["--drain-only", target, "--backend", &args.backend])
                .args(["--durability", &args.durability])
                .args(["--workers", &args.workers.to_string()])
                .args(["--work-us", &args.work_us.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            if let Some(url) = url {
                helper.args(["--url", url]);
            }
            if !args.notify {
                helper.args(["--notify", "off"]);
            }
            let mut child = helper.spawn().map_err(|e| e.to_string())?;
            let stdout = child.stdout.take().ok_or("a helper has no output")?;
            children.push((child, std::io::BufReader::new(stdout)));
        }
        for (_, out) in &mut children {
            let mut line = String::new();
            out.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim() != "ready" {
                return Err(format!("a helper did not start: {line:?}"));
            }
        }
        Ok(Helpers { children })
    }

    /// Tells every helper to drain.
    fn go(&mut self) -> Result<(), String> {
        use std::io::Write;
        for (child, _) in &mut self.children {
            let input = child.stdin.as_mut().ok_or("a helper has no input")?;
            input.write_all(b"go\n").map_err(|e| e.to_string())?;
            input.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Waits for every helper; the tasks they ran, together.
    fn ran(self) -> Result<u64, String> {
        use std::io::Read;
        let mut done = 0;
        for (mut child, mut out) in self.children {
            let mut count = String::new();
            out.read_to_string(&mut count).map_err(|e| e.to_string())?;
            let status = child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("a helper process failed: {status}"));
            }
            done += count
                .trim()
                .parse::<u64>()
                .map_err(|_| "a helper printed no count")?;
        }
        Ok(done)
    }
}

/// The most connections of the database's sessions seen while `running`, sampled every
/// 10 ms by a connection of its own (not counted).
fn sample_connections(
    conninfo: String,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<i64, String>> {
    std::thread::spawn(move || {
        let mut c =
            postgres::Client::connect(&conninfo, postgres::NoTls).map_err(|e| e.to_string())?;
        let mut most = 0;
        while running.load(Ordering::Relaxed) {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .map_err(|e| e.to_string())?
                .get(0);
            most = most.max(n);
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(most)
    })
}

/// With `--bare` on PostgreSQL: the bare client's limits on the same server, measured now.
fn bare_pg_limits(server: &Server, n: u64) -> Result<String, String> {
    let schema = format!("bare_{}", std::process::id());
    let e = |e: postgres::Error| e.to_string();
    let n = n.min(20_000);
    bare_pg::open(&server.conninfo, &schema).map_err(e)?;
    let insert1 = bare_pg::insert_rate(&server.conninfo, &schema, 1, n)?;
    let cycle32 = bare_pg::claim_delete_rate(&server.conninfo, &schema, 1, 32)?;
    let insert4 = bare_pg::insert_rate(&server.conninfo, &schema, 4, n)?;
    let cycle32x4 = bare_pg::claim_delete_rate(&server.conninfo, &schema, 4, 32)?;
    server.drop_schema(&schema);
    Ok(format!(
        ",\"bare_insert_per_s\":{insert1:.0},\"bare_insert4_per_s\":{insert4:.0},\
         \"bare_cycle32_per_s\":{cycle32:.0},\"bare_cycle32x4_per_s\":{cycle32x4:.0}"
    ))
}

fn run() -> Result<(), String> {
    let args = parse()?;
    if let Some(schema) = &args.drain_only {
        return drain_only(&args, schema);
    }
    let postgres = args.backend == "postgres";
    let backend = if postgres {
        Backend::Memory
    } else {
        Backend::parse(&args.backend, &args.durability)?
    };
    if args.processes > 1 && !postgres && !args.backend.starts_with("sqlite") {
        return Err("--processes needs --backend postgres or sqlite".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if args.bare_only {
        println!(
            "{}",
            bare_limits(backend, dir.path(), args.n, args.result_bytes)?
        );
        return Ok(());
    }
    let server = postgres.then(|| Server::get(args.url.as_deref(), args.notify));
    let schema = format!("bench_{}", std::process::id());
    let sqlite = matches!(backend, Backend::SqliteNormal | Backend::SqliteFull) && !postgres;
    if (args.remote || args.listener || !args.watch) && !sqlite {
        return Err("--remote, --listener and --watch are for --backend sqlite".into());
    }
    let store: Box<dyn Store> = match &server {
        Some(server) => Box::new(server.store(&schema)?),
        None if !args.watch => Box::new(
            SqliteStore::open_with(
                dir.path().join("tasks.db"),
                SqliteOptions::new()
                    .durability(backend.sqlite_durability())
                    .watch_interval(None),
            )
            .map_err(|e| e.to_string())?,
        ),
        None => backend.open(dir.path()).map_err(|e| e.to_string())?,
    };
    let durability = if postgres {
        "postgres"
    } else {
        backend.durability()
    };
    let q = Arc::new(SimplePyQ::new(store));
    let e = |e: simplepyq::Error| e.to_string();

    let listener = if args.listener {
        let other = SimplePyQ::new(backend.open(dir.path()).map_err(|e| e.to_string())?);
        other
            .add_channel("elsewhere", |_: u32| Ok(()), 1)
            .map_err(e)?;
        other.start().map_err(e)?;
        Some(other)
    } else {
        None
    };

    // The drain's handler; with --live the workers start before the enqueues.
    let processed = Arc::new(AtomicU64::new(0));
    let pickups = Arc::new(parking_lot_free::Slot::default());
    let work = Duration::from_micros(args.work_us);
    let handler = count_into(Arc::clone(&processed), Arc::clone(&pickups), work);
    if args.result_bytes > 0 {
        // Each task keeps a result of that many bytes of MessagePack (a string).
        let result = "x".repeat(args.result_bytes.saturating_sub(3));
        let with_result = move |p: Payload, ctx: &simplepyq::TaskContext| {
            ctx.set_result(&result)?;
            handler(p)
        };
        q.add_channel("bench", with_result, args.workers)
            .map_err(e)?;
    } else {
        q.add_channel("bench", handler, args.workers).map_err(e)?;
    }
    if args.max_running.is_some() {
        q.set_max_running("bench", args.max_running).map_err(e)?;
    }
    if args.live {
        q.start().map_err(e)?;
    }

    // With --processes: the helpers start, and are ready, before anything is timed.
    let mut helpers = if args.processes > 1 {
        let target = match &server {
            Some(_) => schema.clone(),
            None => dir.path().display().to_string(),
        };
        let url = server.as_ref().map(|s| s.conninfo.as_str());
        Some(Helpers::start(&args, &target, url, args.processes - 1)?)
    } else {
        None
    };

    // Enqueue.
    let enqueue_started = Instant::now();
    let options = if args.due_delayed {
        EnqueueOptions::new().delay(Duration::from_secs(1))
    } else {
        EnqueueOptions::new()
    };
    if args.batch {
        let mut i = 0;
        while i < args.n {
            let chunk: Vec<Payload> = (i..args.n.min(i + args.chunk)).map(payload).collect();
            q.enqueue_many("bench", &chunk, options.clone())
                .map_err(e)?;
            i += args.chunk;
        }
    } else {
        std::thread::scope(|s| -> Result<(), String> {
            let handles: Vec<_> = (0..args.producers)
                .map(|p| {
                    let q = Arc::clone(&q);
                    let (n, producers, keys) = (args.n, args.producers, args.keys);
                    let options = options.clone();
                    s.spawn(move || -> Result<(), String> {
                        let mut i = p;
                        while i < n {
                            if keys > 0 {
                                let keyed =
                                    options.clone().concurrency_key(format!("k{}", i % keys));
                                q.enqueue_with("bench", &payload(i), keyed)
                            } else {
                                q.enqueue("bench", &payload(i))
                            }
                            .map_err(|e| e.to_string())?;
                            i += producers;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| "a producer panicked".to_string())??;
            }
            Ok(())
        })?;
    }
    let enqueue_s = enqueue_started.elapsed().as_secs_f64();
    drop(listener);
    // With --due-delayed: once all are due, the time of one claim of one task (which
    // promotes due delayed tasks first); it is given back before the drain.
    let first_claim = if args.due_delayed {
        std::thread::sleep(Duration::from_millis(1_100));
        let now = simplepyq::Clock::now(&simplepyq::SystemClock);
        let t0 = Instant::now();
        let claimed = q
            .store()
            .claim("bench", 1, now, now.after(Duration::from_secs(60)))
            .map_err(e)?;
        let ms = t0.elapsed().as_secs_f64() * 1_000.0;
        let claims: Vec<_> = claimed.iter().map(simplepyq::Task::claim).collect();
        q.store().release(&claims, now).map_err(e)?;
        format!(",\"due_delayed\":true,\"first_claim_ms\":{ms:.1}")
    } else {
        String::new()
    };

    // Drain.
    let started = if args.live {
        enqueue_started
    } else {
        Instant::now()
    };
    if let Some(helpers) = &mut helpers {
        helpers.go()?;
    }
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let connections = server
        .as_ref()
        .filter(|_| args.processes > 1)
        .map(|server| sample_connections(server.conninfo.clone(), Arc::clone(&sampling)));
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(args.readers > 0));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..args.readers)
        .map(|_| {
            let (q, reading, reads) = (Arc::clone(&q), Arc::clone(&reading), Arc::clone(&reads));
            std::thread::spawn(move || {
                let page = simplepyq::ListFilter::new(50).status(simplepyq::Status::Pending);
                while reading.load(Ordering::Relaxed) {
                    let ok = q.counts(None).is_ok() && q.tasks(&page).is_ok();
                    reads.fetch_add(u64::from(ok), Ordering::Relaxed);
                }
            })
        })
        .collect();
    if args.live {
        // The workers run: wait for the last task (no progress for 30 s is a failure).
        let mut seen = (0, Instant::now());
        while processed.load(Ordering::Relaxed) < args.n {
            let now = processed.load(Ordering::Relaxed);
            if now != seen.0 {
                seen = (now, Instant::now());
            } else if seen.1.elapsed() > Duration::from_secs(30) {
                return Err(format!("the drain stalled at {now} of {} tasks", args.n));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        q.stop();
    } else {
        q.run_until_complete().map_err(e)?;
    }
    let read_s = started.elapsed().as_secs_f64();
    reading.store(false, Ordering::Relaxed);
    for r in readers {
        r.join().map_err(|_| "a reader panicked")?;
    }
    let reads = if args.readers > 0 {
        format!(
            ",\"readers\":{},\"reads_per_s\":{:.0}",
            args.readers,
            reads.load(Ordering::Relaxed) as f64 / read_s
        )
    } else {
        String::new()
    };
    let mut done = processed.load(Ordering::Relaxed);
    if let Some(helpers) = helpers {
        done += helpers.ran()?;
    }
    let drain_s = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let connections = match connections {
        Some(sampler) => format!(
            ",\"connections_max\":{}",
            sampler.join().map_err(|_| "the sampler panicked")??
        ),
        None => String::new(),
    };
    if done != args.n {
        return Err(format!("processed {done} tasks, expected {}", args.n));
    }

    // Pick-up latency, with idle workers; on PostgreSQL, of work another store adds.
    let remote: Option<SimplePyQ<Box<dyn Store>>> = match &server {
        Some(server) => Some(SimplePyQ::new(Box::new(server.store(&schema)?))),
        None if args.remote => Some(SimplePyQ::new(
            backend.open(dir.path()).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    q.start().map_err(e)?;
    let mut latencies = Vec::with_capacity(200);
    for i in 0..200 {
        std::thread::sleep(Duration::from_millis(2));
        let sent = Instant::now();
        pickups.arm();
        match &remote {
            Some(remote) => remote.enqueue("bench", &payload(args.n + i)).map(drop),
            None => q.enqueue("bench", &payload(args.n + i)).map(drop),
        }
        .map_err(e)?;
        let ran = pickups
            .wait(Duration::from_secs(5))
            .ok_or("a task was not picked up")?;
        latencies.push(ran.duration_since(sent).as_secs_f64() * 1_000.0);
    }
    let pickup_remote = remote.is_some();
    let idle_cpu = if args.idle_cpu > 0 {
        // Settle first: the workers' pauses grow to the poll interval.
        std::thread::sleep(Duration::from_secs(2));
        let before = cpu_ticks();
        std::thread::sleep(Duration::from_secs(args.idle_cpu));
        let ticks = cpu_ticks() - before;
        // Linux counts CPU time in ticks of 10 ms.
        format!(
            ",\"idle_cpu_percent\":{:.2}",
            ticks as f64 / args.idle_cpu as f64
        )
    } else {
        String::new()
    };
    q.stop();
    latencies.sort_by(f64::total_cmp);
    let peak_rss = peak_rss_mib();
    let bare = match (&server, args.bare) {
        (_, false) => String::new(),
        (Some(server), true) => bare_pg_limits(server, args.n)?,
        (None, true) => bare_apart()?,
    };
    if let Some(server) = &server {
        drop(remote);
        drop(q);
        server.drop_schema(&schema);
    }

    println!(
        "{{\"system\":\"simplepyq-rs\",\"version\":\"{}\",\"backend\":\"{}\",\"n\":{},\"workers\":{},\
         \"enqueue_per_s\":{:.0},\"drain_per_s\":{:.0},\"durability\":\"{}\",\"producers\":{},\
         \"enqueue_mode\":\"{}\",\"pickup_latency_ms_p50\":{:.3},\"pickup_latency_ms_p99\":{:.3},\
         \"peak_rss_mib\":{:.1},\"processes\":{},\"pickup_remote\":{},\"watch\":{}{}{}{}{}{}{}{}{}{}}}",
        env!("CARGO_PKG_VERSION"),
        args.backend,
        args.n,
        args.workers,
        args.n as f64 / enqueue_s,
        args.n as f64 / drain_s,
        durability,
        args.producers,
        if args.batch { "batch" } else { "single" },
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        peak_rss,
        args.processes,
        pickup_remote,
        args.watch,
        idle_cpu,
        reads,
        first_claim,
        if args.live { ",\"live\":true" } else { "" },
        if args.keys > 0 {
            format!(",\"keys\":{}", args.keys)
        } else {
            String::new()
        },
        if args.work_us > 0 {
            format!(",\"work_us\":{}", args.work_us)
        } else {
            String::new()
        },
        if args.result_bytes > 0 {
            format!(",\"result_bytes\":{}", args.result_bytes)
        } else {
            String::new()
        },
        bare,
        connections,
    );
    Ok(())
}

/// The time a handler started after `arm`, for the pick-up latency. Unarmed, `mark` is one
/// atomic load, so that it does not slow the drain down.
mod parking_lot_free {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    #[derive(Debug, Default)]
    pub(crate) struct Slot {
        armed: AtomicBool,
        at: Mutex<Option<Instant>>,
        cv: Condvar,
    }

    impl Slot {
        pub(crate) fn arm(&self) {
            *self.at.lock().expect("lock") = None;
            self.armed.store(true, Ordering::SeqCst);
        }

        pub(crate) fn mark(&self) {
            if self.armed.swap(false, Ordering::SeqCst) {
                *self.at.lock().expect("lock") = Some(Instant::now());
                self.cv.notify_all();
            }
        }

        pub(crate) fn wait(&self, timeout: Duration) -> Option<Instant> {
            let at = self.at.lock().expect("lock");
            let (at, _) = self
                .cv
                .wait_timeout_while(at, timeout, |at| at.is_none())
                .expect("lock");
            *at
        }
    }
}
