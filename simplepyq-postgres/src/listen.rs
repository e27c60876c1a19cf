//! Wake-ups across machines: `NOTIFY` after each change that adds work, `LISTEN` on a
//! connection of its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use simplepyq_core::{Wake, Watch};

/// How often the listening thread looks whether it should end.
const TICK: Duration = Duration::from_millis(200);
/// The least time between two `NOTIFY`s of a store. Each is a transaction of its own that
/// takes the server's database-wide notify lock at its commit and wakes every listening
/// queue, and a lone producer's enqueues each sent one (8,442 for 10,000 enqueues); the work
/// enqueued within a gap waits at most this long to be announced.
const NOTIFY_GAP: Duration = Duration::from_millis(1);
/// The longest pause between tries to connect again.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The notification channel of the queue in `schema` (an identifier: at most 63 bytes; a
/// cut name only makes two schemas' wake-ups shared, never lost).
fn topic(schema: &str) -> String {
    let mut name = format!("simplepyq_{schema}");
    name.truncate(63);
    name
}

/// Starts a thread that listens on `topic` and calls `wake` with each notification's
/// payload (a task channel's name); after each (re)connection it calls `wake(None)`, since
/// news may have been missed meanwhile. The thread ends when the watch is dropped.
pub(crate) fn watch(config: postgres::Config, topic: String, wake: Wake) -> Option<Watch> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("simplepyq-listen".into())
        .spawn(move || {
            let mut pause = Duration::from_millis(10);
            while !stopped.load(Ordering::Relaxed) {
                match listen(&config, &topic, &wake, &stopped) {
                    // It was told to end.
                    Ok(()) => return,
                    Err(_) => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                }
            }
        });
    // Without the thread, queues poll: nothing is lost but latency.
    thread
        .ok()
        .map(|_| Watch::new(move || stop.store(true, Ordering::Relaxed)))
}

/// Listens until told to end (`Ok`) or the connection fails.
fn listen(
    config: &postgres::Config,
    topic: &str,
    wake: &Wake,
    stop: &AtomicBool,
) -> Result<(), postgres::Error> {
    let mut client: Client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {topic}"))?;
    wake(None);
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        let mut heard = false;
        {
            let mut notifications = client.notifications();
            let mut iter = notifications.timeout_iter(TICK);
            while let Some(n) = iter.next()? {
                heard = true;
                if n.channel() == topic {
                    wake(Some(n.payload()));
                }
            }
        }
        // The wait ends early, with nothing heard, when the server hung up: a query then
        // fails, and the caller connects again.
        if client.is_closed() || (!heard && started.elapsed() < TICK / 2) {
            client.simple_query("")?;
        }
    }
    Ok(())
}

/// Sends the `NOTIFY`s of a store from a thread of its own, after the changes they announce
/// committed: a notifying transaction holds a database-wide lock from its commit until it
/// ends, so notifying inside the writes would make every enqueue wait for the others'
/// disk flushes. Channels marked while a `NOTIFY` is under way go out together in the next.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// The store's connection settings, with commits that do not wait for the disk: a lost
    /// notification costs only latency.
    config: postgres::Config,
    /// The channel the queues of the store's schema listen on.
    pub(crate) topic: String,
    state: Mutex<Pending>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct Pending {
    channels: BTreeSet<String>,
    started: bool,
    stopped: bool,
}

impl Notifier {
    /// A notifier for the queue in `schema`, connecting with `config`; its thread starts
    /// on first use.
    pub(crate) fn new(config: &postgres::Config, schema: &str) -> Arc<Self> {
        let mut config = config.clone();
        let options = format!(
            "{} -c synchronous_commit=off",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim_start());
        Arc::new(Notifier {
            config,
            topic: topic(schema),
            state: Mutex::new(Pending::default()),
            cv: Condvar::new(),
        })
    }

    /// Marks `channels` as having work: the notifier's thread tells the listening queues.
    pub(crate) fn mark<'a>(self: &Arc<Self>, channels: impl IntoIterator<Item = &'a str>) {
        let mut st = self.state.lock();
        let before = st.channels.len();
        for c in channels {
            if !st.channels.contains(c) {
                st.channels.insert(c.to_owned());
            }
        }
        if st.channels.len() == before || st.stopped {
            return;
        }
        if !st.started {
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("simplepyq-notify".into())
                .spawn(move || me.run());
            // Without the thread, other processes' queues notice work at their next poll.
            st.started = spawned.is_ok();
        }
        self.cv.notify_one();
    }

    fn run(&self) {
        let mut client: Option<Client> = None;
        let mut last: Option<Instant> = None;
        loop {
            let channels = {
                let mut st = self.state.lock();
                while st.channels.is_empty() && !st.stopped {
                    self.cv.wait(&mut st);
                }
                // At most one `NOTIFY` per gap: what is marked meanwhile goes out together.
                // The first after a quiet gap goes at once.
                if let Some(next) = last.map(|at| at + NOTIFY_GAP) {
                    while !st.stopped && Instant::now() < next {
                        self.cv.wait_until(&mut st, next);
                    }
                }
                if st.stopped {
                    return;
                }
                std::mem::take(&mut st.channels)
            };
            last = Some(Instant::now());
            let names: Vec<&str> = channels.iter().map(String::as_str).collect();
            // A failure costs latency only: listeners poll anyway.
            if client.as_ref().is_none_or(Client::is_closed) {
                client = self.config.connect(NoTls).ok();
            }
            if let Some(c) = &mut client
                && c.execute(
                    "SELECT pg_notify($1, c) FROM unnest($2::text[]) AS c",
                    &[&self.topic, &names],
                )
                .is_err()
            {
                client = None;
            }
        }
    }

    /// Ends the thread; what is not sent yet is dropped (wake-ups are hints).
    pub(crate) fn stop(&self) {
        self.state.lock().stopped = true;
        self.cv.notify_all();
    }
}
