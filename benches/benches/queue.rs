//! criterion benchmarks of simplepyq, one harness over every backend.
//!
//! ```text
//! cargo bench -p simplepyq-benches                       # everything (long: 1M backlogs)
//! cargo bench -p simplepyq-benches -- 'drain/sqlite'     # a filter
//! ```
//!
//! - `enqueue/<backend>/1-producer|4-producers`: one `enqueue` call per task.
//! - `enqueue-batch/<backend>`: `enqueue_many` of 100 tasks.
//! - `cycle/<backend>`: the store alone: claim one task, record its success.
//! - `drain/<backend>/<workers>w/<backlog>`: workers with a no-op handler drain 1,000 tasks
//!   from a channel holding `backlog` due tasks (1k, 100k, 1M): the time per task must not
//!   grow with the backlog.
//! - `bare/sqlite-normal|sqlite-full/...`: plain rusqlite inserts and claim cycles, the
//!   limits simplepyq's SQLite figures are compared with.
//! - `postgres/enqueue/1-producer|4-producers|16-producers`, `postgres/enqueue-many-10000`: enqueue on a
//!   throwaway PostgreSQL server (started from the installed binaries).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use simplepyq::{EnqueueOptions, SimplePyQ, Store, SystemClock, TaskError};
use simplepyq_benches::backends::Backend;
use simplepyq_benches::bare;
use simplepyq_benches::{Payload, payload};
use simplepyq_core::{Clock, NewTask, StoreExt};

fn queue(backend: Backend, dir: &std::path::Path) -> Arc<SimplePyQ<Box<dyn Store>>> {
    Arc::new(SimplePyQ::new(backend.open(dir).expect("open the store")))
}

fn enqueue(c: &mut Criterion) {
    let mut group = c.benchmark_group("enqueue");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().expect("temp dir");
        let q = queue(backend, dir.path());
        let mut i = 0;
        group.bench_function(BenchmarkId::new(backend.name(), "1-producer"), |b| {
            b.iter(|| {
                i += 1;
                q.enqueue("bench", &payload(i)).expect("enqueue")
            });
        });
        group.bench_function(BenchmarkId::new(backend.name(), "4-producers"), |b| {
            b.iter_custom(|iters| producers(&q, 4, iters));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("enqueue-batch");
    group.throughput(Throughput::Elements(100));
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().expect("temp dir");
        let q = queue(backend, dir.path());
        let batch: Vec<Payload> = (0..100).map(payload).collect();
        group.bench_function(backend.name(), |b| {
            b.iter(|| {
                q.enqueue_many("bench", &batch, EnqueueOptions::new())
                    .expect("enqueue")
            });
        });
    }
    group.finish();
}

/// The time `n` threads take to enqueue `iters` tasks, one call each.
fn producers(q: &Arc<SimplePyQ<Box<dyn Store>>>, n: u64, iters: u64) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for p in 0..n {
            let q = Arc::clone(q);
            s.spawn(move || {
                for i in (p..iters).step_by(n as usize) {
                    q.enqueue("bench", &payload(i)).expect("enqueue");
                }
            });
        }
    });
    started.elapsed()
}

/// PostgreSQL, on a throwaway server started from the installed binaries: one task per call
/// from 1, 4 and 16 producer threads (concurrent calls are gathered into one statement),
/// and `enqueue_many` of 10,000 tasks (by `COPY`).
fn postgres(c: &mut Criterion) {
    let server = simplepyq_tests::postgres::durable_server();
    let store = simplepyq::PostgresStore::connect(server.conninfo()).expect("connect");
    let q: Arc<SimplePyQ<Box<dyn Store>>> = Arc::new(SimplePyQ::new(Box::new(store)));
    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(1));
    for n in [1, 4, 16] {
        let name = match n {
            1 => "enqueue/1-producer".to_owned(),
            n => format!("enqueue/{n}-producers"),
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| producers(&q, n, iters));
        });
    }
    let batch: Vec<Payload> = (0..10_000).map(payload).collect();
    group.throughput(Throughput::Elements(10_000));
    group.sample_size(10);
    group.bench_function("enqueue-many-10000", |b| {
        b.iter(|| {
            q.enqueue_many("bench", &batch, EnqueueOptions::new())
                .expect("enqueue")
        });
    });
    group.finish();
}

fn cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("cycle");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = backend.open(dir.path()).expect("open");
        group.bench_function(backend.name(), |b| {
            b.iter_custom(|iters| {
                let now = SystemClock.now();
                let tasks: Vec<NewTask> =
                    (0..iters).map(|_| NewTask::new("c", vec![0x90])).collect();
                store.enqueue(&tasks, now).expect("fill");
                let started = Instant::now();
                for _ in 0..iters {
                    let now = SystemClock.now();
                    let t = store
                        .claim("c", 1, now, now.after(Duration::from_secs(30)))
                        .expect("claim");
                    store.complete(t[0].claim(), now).expect("complete");
                }
                started.elapsed()
            });
        });
    }
    group.finish();
}

/// Drains 1,000 tasks per iteration from a channel that holds `backlog` due tasks.
fn drain(c: &mut Criterion) {
    const PER_ITER: u64 = 1_000;
    let mut group = c.benchmark_group("drain");
    group.throughput(Throughput::Elements(PER_ITER));
    group.sample_size(10);
    for backend in Backend::ALL {
        for backlog in [1_000u64, 100_000, 1_000_000] {
            for workers in [1usize, 4] {
                let dir = tempfile::tempdir().expect("temp dir");
                let q = queue(backend, dir.path());
                let fill = |n: u64| {
                    let chunk: Vec<Payload> = (0..n.min(10_000)).map(payload).collect();
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(10_000) as usize;
                        q.enqueue_many("bench", &chunk[..k], EnqueueOptions::new())
                            .expect("fill");
                        left -= k as u64;
                    }
                };
                fill(backlog);
                let done = Arc::new(AtomicU64::new(0));
                let d = Arc::clone(&done);
                q.add_channel(
                    "bench",
                    move |p: Payload| {
                        if p.url.is_empty() {
                            return Err(TaskError::msg("empty"));
                        }
                        d.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    },
                    workers,
                )
                .expect("add");
                let id = BenchmarkId::new(format!("{}/{workers}w", backend.name()), backlog);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            // Keep the backlog where it was (untimed).
                            fill(PER_ITER);
                            let target = done.load(Ordering::Relaxed) + PER_ITER;
                            let started = Instant::now();
                            q.start().expect("start");
                            while done.load(Ordering::Relaxed) < target {
                                std::thread::yield_now();
                            }
                            total += started.elapsed();
                            q.stop();
                        }
                        total
                    });
                });
            }
        }
    }
    group.finish();
}

fn bare_limits(c: &mut Criterion) {
    let mut group = c.benchmark_group("bare");
    for sync in ["NORMAL", "FULL"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = bare::open(&dir.path().join("bare.db"), sync).expect("open");
        let name = format!("sqlite-{}", sync.to_lowercase());
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new(&name, "insert"), |b| {
            b.iter_custom(|iters| {
                let rate = bare::insert_rate(&conn, iters).expect("insert");
                Duration::from_secs_f64(iters as f64 / rate)
            });
        });
        for batch in [1u32, 32] {
            group.bench_function(BenchmarkId::new(&name, format!("cycle-{batch}")), |b| {
                b.iter_custom(|iters| {
                    bare::insert_batch(&mut conn, iters).expect("fill");
                    let rate = bare::claim_delete_rate(&mut conn, batch, iters).expect("cycle");
                    Duration::from_secs_f64(iters as f64 / rate)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, enqueue, cycle, drain, bare_limits, postgres);
criterion_main!(benches);
