//! Hosts cut off from the PostgreSQL server: worker processes in network namespaces of
//! their own (veth pairs to this machine's root namespace, which runs the server), one of
//! them cut off mid-drain. Traffic stays in this machine's own namespaces. Needs root (CI
//! runs as root), and fails, saying so, without it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simplepyq::{PostgresStore, SystemClock};
use simplepyq_core::prelude::*;
use simplepyq_core::{Clock, NewTask};
use simplepyq_tests::postgres;

use crate::processes::{WORKER, timed_runs};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host: a network namespace joined to this machine by a veth pair, `10.231.N.2` inside,
/// `10.231.N.1` outside. Deleted when dropped.
struct Host {
    netns: String,
    outside: String,
}

impl Host {
    fn new(n: u8) -> Host {
        let tag = std::process::id() % 100_000;
        let (netns, outside, inside) = (
            format!("spq{tag}h{n}"),
            format!("spq{tag}o{n}"),
            format!("spq{tag}i{n}"),
        );
        ip(&["netns", "add", &netns]);
        let host = Host {
            netns: netns.clone(),
            outside: outside.clone(),
        };
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &netns]);
        ip(&["addr", "add", &format!("10.231.{n}.1/24"), "dev", &outside]);
        ip(&["link", "set", &outside, "up"]);
        let inner = |args: &[&str]| {
            let mut all = vec!["-n", netns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inner(&["addr", "add", &format!("10.231.{n}.2/24"), "dev", &inside]);
        inner(&["link", "set", &inside, "up"]);
        inner(&["link", "set", "lo", "up"]);
        host
    }

    /// Cuts the link (`false`) or joins it again (`true`).
    fn link(&self, up: bool) {
        ip(&["link", "set", &self.outside, if up { "up" } else { "down" }]);
    }

    /// Starts a worker process on this host.
    fn worker(&self, url: &str, schema: &str, log: &std::path::Path, lease_ms: u64) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, WORKER, "postgres", schema])
            .arg(log)
            .args(["4", "20", &lease_ms.to_string()])
            .env(postgres::SERVER_VAR, url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a worker in the namespace")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// The `lease_lost` and `recovered` a worker printed, and its exit status.
fn finish(child: Child) -> (u64, u64) {
    let out = child.wait_with_output().expect("wait for the worker");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 2: it met storage errors (the cut) and finished anyway.
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "worker failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("lease_lost"))
        .expect("the worker's stats");
    let numbers: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// The most a handler may start after its task was claimed, on a loaded machine: a lease
/// runs from the claim, the log has the handler's start.
const CLAIM_TO_START_MS: i64 = 500;

/// Two hosts drain one queue; one is cut off from the server for two and a half leases
/// mid-drain and then joins again. Its leases lapse and the other host takes its tasks
/// over; when its link comes back, its late outcomes are refused (`LeaseLost`) and change
/// nothing. Every task ends done (`retries = 0`), and a task that ran twice ran again only
/// after the first run's lease had expired (its start, plus the lease, less what may pass
/// between a claim and its handler's start on a loaded machine).
#[test]
fn a_host_cut_off_mid_drain_delays_its_tasks_only() {
    const N: u32 = 2_000;
    const LEASE_MS: u64 = 2_000;
    assert!(
        postgres::is_root(),
        "this test makes network namespaces: run it as root (CI does)"
    );
    let (cut, kept) = (Host::new(1), Host::new(2));
    let server = postgres::private_server_on(&["10.231.1.1", "10.231.2.1"], "10.231.0.0/16");
    let port = server
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .expect("port")
        .to_owned();
    let url_via = |n: u8| format!("postgres://postgres@10.231.{n}.1:{port}/postgres");
    let schema = "cut";
    let store =
        PostgresStore::connect_with(server.conninfo(), postgres::options(schema)).expect("connect");
    let tasks: Vec<NewTask> = (0..N)
        .map(|i| NewTask::new("work", rmp_serde::to_vec_named(&i).expect("encode")))
        .collect();
    store.enqueue(&tasks, SystemClock.now()).expect("enqueue");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("runs.log");
    let doomed = cut.worker(&url_via(1), schema, &log, LEASE_MS);
    let survivor = kept.worker(&url_via(2), schema, &log, LEASE_MS);
    let deadline = Instant::now() + Duration::from_secs(60);
    while timed_runs(&log).len() < N as usize / 4 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    cut.link(false);
    let cut_at = Instant::now();
    std::thread::sleep(Duration::from_millis(5 * LEASE_MS / 2));
    assert!(
        timed_runs(&log).len() < N as usize,
        "the drain ended while the host was cut off: the test tests nothing"
    );
    cut.link(true);
    eprintln!("cut off for {:?}", cut_at.elapsed());
    let (lost_cut, _) = finish(doomed);
    let (_, recovered_kept) = finish(survivor);

    let c = store.counts(None).expect("counts");
    assert_eq!(
        (c.done, c.failed, c.total()),
        (N as usize, 0, N as usize),
        "{c:?}"
    );
    let mut starts: HashMap<u32, Vec<i64>> = HashMap::new();
    for (_, n, ms) in timed_runs(&log) {
        starts.entry(n).or_default().push(ms);
    }
    assert_eq!(starts.len(), N as usize, "some task never ran");
    let mut again = 0;
    for (n, runs) in &mut starts {
        runs.sort_unstable();
        for pair in runs.windows(2) {
            again += 1;
            assert!(
                pair[1] - pair[0] >= LEASE_MS as i64 - CLAIM_TO_START_MS,
                "task {n} ran again {} ms after a run whose lease was live",
                pair[1] - pair[0]
            );
        }
    }
    eprintln!(
        "{again} runs again, {recovered_kept} leases recovered by the kept host, \
         {lost_cut} late outcomes of the cut host refused"
    );
    assert!(recovered_kept > 0, "the kept host took nothing over");
    assert!(lost_cut > 0, "no late outcome of the cut host was refused");
}
