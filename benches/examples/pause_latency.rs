//! Measures pause-to-quiet: how long after a pause commits the last handler of the paused
//! channel starts. One queue drains a channel (tasks of `--work-ms`, `--workers` workers);
//! another store on the same queue (another connection, as the command line or another
//! process) pauses the channel, `--rounds` times, resuming it between rounds. The queue
//! learns of the pause only through the store, as a queue in another process would.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example pause_latency -- --backend sqlite|postgres \
//!     [--rounds 20] [--work-ms 5] [--workers 4]
//! ```
//!
//! Prints one JSON line: the p50 and the most of the time from the pause's commit (its call
//! returned) to the last start after it (0 when none started after it), the most starts
//! after a commit, and the p50 of the pause call itself.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simplepyq::{FlowStore, SimplePyQ};
use simplepyq_benches::stores::Stores;

struct Args {
    backend: String,
    rounds: u32,
    work_ms: u64,
    workers: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        backend: "sqlite".into(),
        rounds: 20,
        work_ms: 5,
        workers: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--backend" => args.backend = value.clone(),
            "--rounds" => args.rounds = u32::try_from(number()?).map_err(|e| e.to_string())?,
            "--work-ms" => args.work_ms = number()?,
            "--workers" => args.workers = usize::try_from(number()?).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match parse().and_then(|args| run(&args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pause_latency: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let stores = Stores::new(&args.backend)?;
    let open = || stores.open(dir.path(), "pause_latency");
    let e = |e: simplepyq::Error| e.to_string();
    let q = SimplePyQ::new(open()?);
    let admin = open()?;
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s = Arc::clone(&starts);
    let work = Duration::from_millis(args.work_ms);
    q.add_channel(
        "work",
        move |_: u32| {
            if let Ok(mut starts) = s.lock() {
                starts.push(Instant::now());
            }
            std::thread::sleep(work);
            Ok(())
        },
        args.workers,
    )
    .map_err(e)?;
    // More than the rounds can drain.
    let per_round = 400 / args.work_ms.max(1) * args.workers as u64 + 100;
    let n = u32::try_from(per_round * u64::from(args.rounds)).map_err(|e| e.to_string())?;
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(10_000) {
        q.enqueue_many("work", chunk, simplepyq::EnqueueOptions::new())
            .map_err(e)?;
    }
    q.start().map_err(e)?;
    let (mut quiet_ms, mut call_ms, mut most_after) = (Vec::new(), Vec::new(), 0usize);
    for _ in 0..args.rounds {
        std::thread::sleep(Duration::from_millis(150));
        let asked = Instant::now();
        admin.set_paused("work", true).map_err(e)?;
        let committed = Instant::now();
        call_ms.push((committed - asked).as_secs_f64() * 1_000.0);
        std::thread::sleep(Duration::from_millis(200));
        let after: Vec<Instant> = starts
            .lock()
            .map_err(|e| e.to_string())?
            .iter()
            .copied()
            .filter(|t| *t > committed)
            .collect();
        most_after = most_after.max(after.len());
        let last = after
            .iter()
            .max()
            .map_or(Duration::ZERO, |t| *t - committed);
        quiet_ms.push(last.as_secs_f64() * 1_000.0);
        admin.set_paused("work", false).map_err(e)?;
    }
    q.stop();
    quiet_ms.sort_by(f64::total_cmp);
    call_ms.sort_by(f64::total_cmp);
    Ok(format!(
        "{{\"backend\":\"{}\",\"rounds\":{},\"work_ms\":{},\"workers\":{},\
         \"quiet_after_pause_ms_p50\":{:.2},\"quiet_after_pause_ms_max\":{:.2},\
         \"most_starts_after_pause\":{most_after},\"pause_call_ms_p50\":{:.2}}}",
        args.backend,
        args.rounds,
        args.work_ms,
        args.workers,
        quiet_ms[quiet_ms.len() / 2],
        quiet_ms[quiet_ms.len() - 1],
        call_ms[call_ms.len() / 2],
    ))
}
