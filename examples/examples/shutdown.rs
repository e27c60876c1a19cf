//! A service that stops its queue on SIGTERM or Ctrl-C, with a deadline.
//!
//! ```text
//! cargo run -p simplepyq-examples --example shutdown [-- --demo]
//! ```
//!
//! Workers export reports, each taking a while; on SIGTERM or Ctrl-C the queue stops: no
//! task starts from then on, running ones get 1 s to finish, and those still running then
//! are asked to stop through their context: they put their task back for the next start
//! (a delay of zero uses no retry). Nothing is lost either way. With `--demo` the program
//! sends itself SIGTERM after a second.

use std::time::Duration;

use simplepyq::{SimplePyQ, TaskContext, TaskError};

async fn export(report: u32, ctx: TaskContext) -> Result<(), TaskError> {
    // Report n takes n × 400 ms: the long ones outlive the deadline.
    let work = tokio::time::sleep(Duration::from_millis(400 * u64::from(report)));
    tokio::select! {
        () = work => {
            println!("report {report} exported");
            Ok(())
        }
        () = ctx.cancelled() => {
            println!("report {report}: asked to stop ({:?}), put back", ctx.cancel_reason());
            Err(TaskError::delay(Duration::ZERO))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("service.db"))?;
    let reports = q.add_channel_async("export", export, 4)?;
    for n in 1..=40 {
        reports.enqueue(&n)?;
    }
    q.start()?;

    if std::env::args().any(|a| a == "--demo") {
        let pid = std::process::id().to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C: stopping"),
        _ = term.recv() => println!("SIGTERM: stopping"),
    }

    let report = q.stop_timeout_async(Duration::from_secs(1)).await;
    println!(
        "stopped: {} claimed tasks given back, {} still running at the deadline",
        report.released,
        report.running.len()
    );
    // Handlers asked to stop put their tasks back right after; wait for that before exiting.
    let mut counts = q.counts("export")?;
    for _ in 0..500 {
        if counts.running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        counts = q.counts("export")?;
    }
    println!(
        "done {}, waiting for the next start {} (pending {}, delayed {}), failed {}",
        counts.done,
        counts.pending + counts.delayed,
        counts.pending,
        counts.delayed,
        counts.failed
    );
    assert_eq!(
        counts.failed + counts.running,
        0,
        "nothing failed, nothing left running"
    );
    assert_eq!(
        counts.done + counts.pending + counts.delayed,
        40,
        "nothing lost"
    );
    Ok(())
}
