//! Small enqueues made at once by threads of one process, gathered into one statement and
//! one commit.
//!
//! Each enqueue is a commit that waits for the server's WAL flush. The server shares a flush
//! among the commits of concurrent connections, but each commit still costs its own round
//! trip and transaction, and on a small server the producers, the server and its flushes
//! share the same cores. Here a caller that finds no round under way leads one: it takes
//! every call waiting (after a wait of at most [`MAX_GATHER`] for as many as the last round
//! took), inserts all their tasks in one statement, answers each caller, and hands the lead
//! to the first caller that arrived meanwhile. A lone caller leads its own round at once, as
//! if it were not gathered.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use simplepyq_core::{Error, NewTask, Result, TaskId, Timestamp};

/// One caller's enqueue, waiting for its round.
pub(crate) struct Call {
    pub(crate) tasks: Vec<NewTask>,
    pub(crate) now: Timestamp,
    /// Set by the round's leader, under [`Gather`]'s lock.
    answer: Mutex<Option<Result<Vec<TaskId>>>>,
    /// Woken when the answer is set, or when this caller is to lead the next round.
    woken: Condvar,
}

/// The longest a round's leader waits for as many calls as the last round took. Callers
/// answered by one round come back one after another: without the wait, the first back went
/// alone and the others together behind it (4 producers: 4,228 rounds for 10,200 calls,
/// against 2,788 with it).
const MAX_GATHER: Duration = Duration::from_micros(50);

#[derive(Default)]
struct State {
    /// A round is under way. One at a time, so that callers who come meanwhile go together
    /// in the next: 16 producer threads enqueued 14-24k tasks/s (8-9k each alone); with up
    /// to 4 rounds at once (each caller alone until 4 ran), 10-15k/s (BENCHMARKS.md).
    leading: bool,
    /// The calls waiting for the next round, in arrival order.
    waiting: Vec<Arc<Call>>,
    /// How many calls the last round took.
    last: usize,
}

/// The calls of one store waiting to be gathered.
#[derive(Default)]
pub(crate) struct Gather {
    state: Mutex<State>,
}

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather").finish_non_exhaustive()
    }
}

impl Gather {
    /// Enqueues `tasks` at `now` in a round with whatever other calls wait: `insert` writes
    /// one round's calls (all or none) and gives each its ids, in order. A round that fails
    /// for anything but an unreachable server (which may have stored it) is tried again a
    /// call at a time, so that a call fails only for what fails it alone.
    pub(crate) fn enqueue(
        &self,
        tasks: Vec<NewTask>,
        now: Timestamp,
        insert: impl Fn(&[Arc<Call>]) -> Result<Vec<Vec<TaskId>>>,
    ) -> Result<Vec<TaskId>> {
        let call = Arc::new(Call {
            tasks,
            now,
            answer: Mutex::new(None),
            woken: Condvar::new(),
        });
        let mut st = self.state.lock();
        st.waiting.push(Arc::clone(&call));
        loop {
            if let Some(answer) = call.answer.lock().take() {
                return answer;
            }
            if st.leading {
                call.woken.wait(&mut st);
                continue;
            }
            st.leading = true;
            // Producers answered by one round come back one after another: the first back
            // waits a little for as many as the last round had.
            let until = Instant::now() + MAX_GATHER;
            while st.waiting.len() < st.last && Instant::now() < until {
                MutexGuard::unlocked(&mut st, std::thread::yield_now);
            }
            let round = std::mem::take(&mut st.waiting);
            st.last = round.len();
            drop(st);
            let result = catch_unwind(AssertUnwindSafe(|| answers(&round, &insert)));
            st = self.state.lock();
            let panic = match result {
                Ok(answers) => {
                    for (c, answer) in round.iter().zip(answers) {
                        *c.answer.lock() = Some(answer);
                    }
                    None
                }
                Err(panic) => {
                    let e = failure("an enqueue gathered with this one panicked".into());
                    for c in &round {
                        *c.answer.lock() = Some(Err(copy(&e)));
                    }
                    Some(panic)
                }
            };
            for c in &round {
                c.woken.notify_one();
            }
            st.leading = false;
            if let Some(next) = st.waiting.first() {
                next.woken.notify_one();
            }
            if let Some(panic) = panic {
                drop(st);
                resume_unwind(panic);
            }
        }
    }
}

/// The answer of each call of `round`: by one `insert` of them all, or, if that failed but
/// surely stored nothing, by one `insert` each.
fn answers(
    round: &[Arc<Call>],
    insert: &impl Fn(&[Arc<Call>]) -> Result<Vec<Vec<TaskId>>>,
) -> Vec<Result<Vec<TaskId>>> {
    let every = |e: &Error| round.iter().map(|_| Err(copy(e))).collect();
    let gathered = match insert(round) {
        Ok(ids) if ids.len() == round.len() => return ids.into_iter().map(Ok).collect(),
        // Stored, but not answered as asked: not tried again.
        Ok(ids) => {
            let e = failure(format!(
                "{} answers for {} enqueues",
                ids.len(),
                round.len()
            ));
            return every(&e);
        }
        Err(e) => e,
    };
    if round.len() == 1 || gathered.is_retryable() {
        return every(&gathered);
    }
    round
        .iter()
        .map(|c| {
            let mut ids = insert(std::slice::from_ref(c))?;
            ids.pop()
                .ok_or_else(|| failure("no answer for an enqueue".into()))
        })
        .collect()
}

fn failure(message: String) -> Error {
    Error::Backend {
        backend: crate::error::BACKEND,
        source: message.into(),
    }
}

/// An error with the same meaning, for another caller.
fn copy(e: &Error) -> Error {
    e.try_clone().unwrap_or_else(|| failure(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::time::Duration;

    use parking_lot::Mutex;
    use simplepyq_core::{Error, NewTask, Result, TaskId, Timestamp};

    use super::{Call, Gather};

    /// A fake insert: gives ids in round order, notes each round's size, sleeps a while (a
    /// commit), and fails a round holding a task of channel `bad` (as a statement that
    /// stored nothing) or `down` (as an unreachable server).
    struct Server {
        next: AtomicI64,
        rounds: Mutex<Vec<usize>>,
        /// While set, rounds wait before they insert.
        hold: AtomicBool,
    }

    impl Server {
        fn new() -> Self {
            Server {
                next: AtomicI64::new(1),
                rounds: Mutex::new(Vec::new()),
                hold: AtomicBool::new(false),
            }
        }

        fn insert(&self, round: &[Arc<Call>]) -> Result<Vec<Vec<TaskId>>> {
            self.rounds.lock().push(round.len());
            while self.hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(2));
            let all = || round.iter().flat_map(|c| &c.tasks);
            if all().any(|t| t.channel == "down") {
                return Err(Error::Unavailable {
                    backend: "test",
                    message: "down".into(),
                });
            }
            if all().any(|t| t.channel == "bad") {
                return Err(Error::InvalidConfig("bad".into()));
            }
            Ok(round
                .iter()
                .map(|c| {
                    c.tasks
                        .iter()
                        .map(|_| TaskId::new(self.next.fetch_add(1, Ordering::SeqCst)))
                        .collect()
                })
                .collect())
        }
    }

    fn tasks(channel: &str, n: usize) -> Vec<NewTask> {
        vec![NewTask::new(channel, vec![1]); n]
    }

    /// Callers beyond the rounds under way are gathered, and each gets as many ids as it
    /// gave tasks, none given to two callers, in one round's order.
    #[test]
    fn many_callers_are_gathered_and_each_gets_its_own_ids() {
        let (gather, server) = (Gather::default(), Server::new());
        let got = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for thread in 0..16 {
                let (gather, server, got) = (&gather, &server, &got);
                s.spawn(move || {
                    for i in 0..20 {
                        let n = 1 + (thread + i) % 3;
                        let ids = gather
                            .enqueue(tasks("a", n), Timestamp::from_millis(0), |r| {
                                server.insert(r)
                            })
                            .expect("enqueue");
                        assert_eq!(ids.len(), n);
                        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
                        got.lock().extend(ids);
                    }
                });
            }
        });
        let mut got = got.into_inner();
        let all = got.len();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), all, "an id given twice");
        let rounds = server.rounds.into_inner();
        assert_eq!(rounds.iter().sum::<usize>(), 16 * 20);
        assert!(rounds.iter().any(|&n| n > 1), "never gathered: {rounds:?}");
        assert!(rounds.len() < 16 * 20);
    }

    /// A lone caller's round holds its call alone.
    #[test]
    fn a_lone_caller_goes_alone() {
        let (gather, server) = (Gather::default(), Server::new());
        for _ in 0..5 {
            gather
                .enqueue(tasks("a", 2), Timestamp::from_millis(0), |r| {
                    server.insert(r)
                })
                .expect("enqueue");
        }
        assert_eq!(server.rounds.into_inner(), vec![1; 5]);
    }

    /// A round that fails for one call's tasks is tried again a call at a time: only that
    /// call fails. A round the server may have stored (unreachable) is not tried again:
    /// every call of it learns so. One caller holds the round under way until 6 others,
    /// the failing one among them, wait to be gathered into one round.
    #[test]
    fn a_failed_round_fails_only_the_call_that_fails_alone() {
        for (channel, alone) in [("bad", true), ("down", false)] {
            let (gather, server) = (Gather::default(), Server::new());
            server.hold.store(true, Ordering::SeqCst);
            let results = Mutex::new(Vec::new());
            let until = |done: &dyn Fn(&super::State) -> bool| {
                while !done(&gather.state.lock()) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            std::thread::scope(|s| {
                let call = |ch: &'static str| {
                    let (gather, server, results) = (&gather, &server, &results);
                    s.spawn(move || {
                        let r = gather.enqueue(tasks(ch, 1), Timestamp::from_millis(0), |r| {
                            server.insert(r)
                        });
                        results.lock().push((ch, r));
                    });
                };
                call("a");
                until(&|st| st.leading);
                for thread in 0..6 {
                    call(if thread == 3 { channel } else { "a" });
                }
                until(&|st| st.waiting.len() == 6);
                server.hold.store(false, Ordering::SeqCst);
            });
            let rounds = server.rounds.into_inner();
            assert!(rounds.contains(&6), "{channel}: {rounds:?}");
            let mut failed = 0;
            for (ch, r) in results.into_inner() {
                match (ch, r) {
                    ("a", Ok(ids)) => assert_eq!(ids.len(), 1),
                    ("a", Err(e)) => {
                        assert!(!alone && e.is_retryable(), "{channel}: {e}");
                        failed += 1;
                    }
                    (_, Err(e)) => assert_eq!(e.is_retryable(), !alone, "{e}"),
                    (_, Ok(_)) => panic!("{channel}: the failing call succeeded"),
                }
            }
            // Tried alone, the others of the failing call's round are stored; unreachable,
            // each of them learns that their round may not have been.
            assert_eq!(failed, if alone { 0 } else { 5 }, "{channel}");
        }
    }

    /// A panic in a round's insert fails that round's calls with an error, leaves the
    /// leader's thread panicking, and the next calls go on.
    #[test]
    fn a_panicking_round_fails_its_calls_and_the_next_go_on() {
        let gather = Gather::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gather.enqueue(tasks("a", 1), Timestamp::from_millis(0), |_| {
                panic!("insert")
            })
        }));
        assert!(panicked.is_err());
        let server = Server::new();
        let ids = gather
            .enqueue(tasks("a", 1), Timestamp::from_millis(0), |r| {
                server.insert(r)
            })
            .expect("enqueue after a panic");
        assert_eq!(ids.len(), 1);
    }

    /// What a call of the model's callers holds: its tasks' channel says how the fake server
    /// answers a round holding it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        /// Stored when its round is.
        Fine,
        /// Refused by the statement: its round stores nothing.
        Bad,
        /// The server stores its round, then becomes unreachable before it answers.
        StoredUnanswered,
        /// The server becomes unreachable before it stores the round.
        Lost,
    }

    impl Kind {
        fn channel(self) -> &'static str {
            match self {
                Kind::Fine => "fine",
                Kind::Bad => "bad",
                Kind::StoredUnanswered => "stored",
                Kind::Lost => "lost",
            }
        }
    }

    /// A caller's call in the model: its kind, its number of tasks, how long the server
    /// takes over a round it leads off, and how long the caller pauses before it.
    type ModelCall = (Kind, usize, u64, u64);

    /// The fake server of the model: stores tasks by their tag (caller, call, task), notes
    /// the tags of each round's calls.
    #[derive(Default)]
    struct Model {
        next: AtomicI64,
        stored: Mutex<Vec<(Vec<u8>, TaskId)>>,
        rounds: Mutex<Vec<Vec<Vec<u8>>>>,
    }

    impl Model {
        fn insert(&self, round: &[Arc<Call>]) -> Result<Vec<Vec<TaskId>>> {
            let tags = round
                .iter()
                .map(|c| c.tasks[0].args[..2].to_vec())
                .collect();
            self.rounds.lock().push(tags);
            let pause = u64::from(round[0].tasks[0].args[3]);
            std::thread::sleep(Duration::from_micros(pause * 10));
            let has = |ch: &str| round.iter().flat_map(|c| &c.tasks).any(|t| t.channel == ch);
            let unreachable = || Error::Unavailable {
                backend: "test",
                message: "unreachable".into(),
            };
            if has(Kind::Bad.channel()) {
                return Err(Error::InvalidConfig("refused".into()));
            }
            if has(Kind::Lost.channel()) {
                return Err(unreachable());
            }
            let mut stored = self.stored.lock();
            let ids: Vec<Vec<TaskId>> = round
                .iter()
                .map(|c| {
                    c.tasks
                        .iter()
                        .map(|t| {
                            let id = TaskId::new(self.next.fetch_add(1, Ordering::SeqCst));
                            stored.push((t.args.clone(), id));
                            id
                        })
                        .collect()
                })
                .collect();
            if has(Kind::StoredUnanswered.channel()) {
                return Err(unreachable());
            }
            Ok(ids)
        }
    }

    fn model_call() -> impl proptest::strategy::Strategy<Value = ModelCall> {
        use proptest::prelude::*;
        let kind = prop_oneof![
            6 => Just(Kind::Fine),
            1 => Just(Kind::Bad),
            1 => Just(Kind::StoredUnanswered),
            1 => Just(Kind::Lost),
        ];
        (kind, 1usize..4, 0u64..30, 0u64..30)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// The gather's rule, whatever the callers, their timing and the server's failures:
        /// every call is answered; a call answered with ids had its tasks stored once under
        /// them; a call refused for its own tasks stored nothing; a call gathered with a
        /// round the server may have stored learns that (a retryable error) and its tasks
        /// are stored at most once; a call fails only for its own tasks or for such a round.
        #[test]
        fn every_call_is_answered_for_its_own_tasks_and_stored_at_most_once(
            callers in proptest::collection::vec(
                proptest::collection::vec(model_call(), 1..6), 1..7),
        ) {
            let (gather, model) = (Gather::default(), Model::default());
            let results = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for (who, calls) in callers.iter().enumerate() {
                    let (gather, model, results) = (&gather, &model, &results);
                    s.spawn(move || {
                        for (n, &(kind, len, round_pause, pause)) in calls.iter().enumerate() {
                            std::thread::sleep(Duration::from_micros(pause * 10));
                            let tasks = (0..len)
                                .map(|t| {
                                    let tag = vec![who as u8, n as u8, t as u8, round_pause as u8];
                                    NewTask::new(kind.channel(), tag)
                                })
                                .collect();
                            let r = gather.enqueue(tasks, Timestamp::from_millis(0), |r| {
                                model.insert(r)
                            });
                            results.lock().push(((who as u8, n as u8), kind, len, r));
                        }
                    });
                }
            });
            let stored = model.stored.into_inner();
            let rounds = model.rounds.into_inner();
            let results = results.into_inner();
            proptest::prop_assert_eq!(
                results.len(),
                callers.iter().map(Vec::len).sum::<usize>()
            );
            let mut ids: Vec<TaskId> = stored.iter().map(|(_, id)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            proptest::prop_assert_eq!(ids.len(), stored.len(), "an id given twice");
            let kind_of = |tag: &[u8]| {
                results
                    .iter()
                    .find(|(who, ..)| [who.0, who.1] == tag[..2])
                    .map(|r| r.1)
            };
            for ((who, n), kind, len, r) in &results {
                let tag = [*who, *n];
                let mine: Vec<(u8, TaskId)> = stored
                    .iter()
                    .filter(|(args, _)| args[..2] == tag)
                    .map(|(args, id)| (args[2], *id))
                    .collect();
                // Stored at most once: each task's tag at most once.
                let mut tasks: Vec<u8> = mine.iter().map(|m| m.0).collect();
                tasks.sort_unstable();
                tasks.dedup();
                proptest::prop_assert_eq!(tasks.len(), mine.len(), "stored twice: {:?}", tag);
                // A round the server may have stored, gathered with this call.
                let with_unknown = rounds.iter().any(|round| {
                    round.iter().any(|t| t[..] == tag)
                        && round.iter().any(|t| {
                            matches!(
                                kind_of(t),
                                Some(Kind::StoredUnanswered | Kind::Lost)
                            )
                        })
                });
                match r {
                    Ok(got) => {
                        proptest::prop_assert_eq!(*kind, Kind::Fine);
                        let stored_ids: Vec<TaskId> = mine.iter().map(|m| m.1).collect();
                        proptest::prop_assert_eq!(got, &stored_ids);
                        proptest::prop_assert_eq!(got.len(), *len);
                    }
                    Err(e) if e.is_retryable() => {
                        proptest::prop_assert!(
                            with_unknown,
                            "{:?} ({:?}) unreachable, gathered with no such round", tag, kind
                        );
                    }
                    Err(e) => {
                        proptest::prop_assert_eq!(*kind, Kind::Bad, "{:?}: {}", tag, e);
                        proptest::prop_assert!(mine.is_empty(), "refused, yet stored");
                    }
                }
            }
        }
    }
}
