//! Putting tasks in and taking them out: the insert (with its unique-key rule) and the
//! claim (due delayed tasks promoted first).

use std::sync::Arc;

use postgres::GenericClient;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use simplepyq_core::{
    ClaimStore, Clock, Error, Flow, KeyLoad, KeyedClaim, NewTask, Rate, RateWindow, Result, Task,
    TaskId, TaskState, Timestamp, Wake, Watch, batch, claim_allowance,
};

use crate::error::{E, R, bad_value};
use crate::flow::flow_from;
use crate::gather::Call;
use crate::pool::Db;
use crate::row::{
    STATE_ALIASES, STATE_ARRAYS, STATE_COLUMNS, StateArrays, UNFINISHED, millis, tasks_from_rows,
};
use crate::{PostgresStore, Resend, Tx, listen, sql};

impl ClaimStore for PostgresStore {
    fn watch(&self, wake: Wake) -> Option<Watch> {
        let topic = self.notifier.as_ref()?.topic.clone();
        listen::watch(self.config.clone(), topic, wake)
    }

    fn clock(&self) -> Option<Arc<dyn Clock>> {
        Some(Arc::new(self.clock.clone()))
    }

    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            t.validate()?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        if tasks.iter().any(|t| !t.after.is_empty()) {
            let keyed = tasks.iter().any(|t| t.unique_key.is_some());
            let ids = self.transaction_with(Resend::IfUnsent, |tx| match keyed {
                true => Self::insert_waiting(tx, tasks, now),
                false => crate::dependency::insert_all(tx, tasks, now),
            })?;
            self.announce(tasks.iter().map(|t| t.channel.as_str()));
            return Ok(ids);
        }
        let repeats = batch::repeated_keys(tasks);
        let firsts: Vec<&NewTask> = tasks
            .iter()
            .zip(&repeats)
            .filter(|(_, r)| r.is_none())
            .map(|(t, _)| t)
            .collect();
        // Inserted twice, a task would run twice: an insert whose connection broke while
        // it was under way is not sent again (the caller learns that its effect is unknown).
        let ids = if firsts.iter().all(|t| t.unique_key.is_none()) {
            if firsts.len() < COPY_FROM {
                // Keyless, so none repeats another: `firsts` is `tasks`.
                let ids = self
                    .gather
                    .enqueue(tasks.to_vec(), now, |round| self.insert_round(round))?;
                self.announce(firsts.iter().map(|t| t.channel.as_str()));
                return Ok(ids);
            }
            self.run_with(Resend::IfUnsent, |c| Self::insert(c, &firsts, now))?
        } else {
            self.transaction_with(Resend::IfUnsent, |tx| {
                Self::insert_or_hold(tx, &firsts, now)
            })?
        };
        self.announce(firsts.iter().map(|t| t.channel.as_str()));
        // Back to every position: a repeated key gets its first task's id.
        let mut firsts_ids = ids.into_iter();
        let mut all: Vec<TaskId> = Vec::with_capacity(tasks.len());
        for repeat in &repeats {
            let id = match repeat {
                Some(first) => all[*first],
                None => firsts_ids
                    .next()
                    .flatten()
                    .ok_or_else(|| Error::from(bad_value("id", "none")))?,
            };
            all.push(id);
        }
        Ok(all)
    }

    fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (now, lease_until) = (millis(now), millis(lease_until));
        let mut tasks = self.run(|c| {
            let mut transaction = None;
            let tasks = claim_with(c, Some(&mut transaction), channel, now, limit, lease_until)?;
            if let Some(tx) = transaction {
                tx.commit()?;
            }
            Ok(tasks)
        })?;
        tasks.sort_unstable_by_key(batch::claim_order);
        Ok(tasks)
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.run(|c| {
            let t: Option<i64> = c.query_one(sql::NEXT_WAKEUP, &[&channel])?.try_get(0)?;
            Ok(t.map(Timestamp::from_millis))
        })
    }
}

/// A claim of up to `limit` of `channel`'s due tasks at `now` (milliseconds), leased until
/// `lease_until`: each statement is `Event::Promote`, then `Event::Claim`, on many rows at
/// once. A claim that must count others' (a channel with a limit, a rate or pending tasks
/// with concurrency keys) is made in a transaction: `c`'s own if `transaction` is `None`
/// (the caller's), else one begun here and left in `transaction` for the caller to commit.
pub(crate) fn claim_with<'a, C: postgres::GenericClient>(
    c: &'a mut Db<'_, C>,
    transaction: Option<&mut Option<postgres::Transaction<'a>>>,
    channel: &str,
    now: i64,
    limit: i64,
    lease_until: i64,
) -> R<Vec<Task>> {
    let promoted = c.query_one(sql::PROMOTE, &[&channel, &now, &PROMOTE_LIMIT])?;
    let (locked, keyed): (Option<bool>, bool) = (promoted.try_get(0)?, promoted.try_get(1)?);
    if !keyed && locked != Some(true) {
        let rows = c.query(sql::CLAIM, &[&channel, &now, &limit, &lease_until])?;
        return tasks_from_rows(&rows);
    }
    let Some(transaction) = transaction else {
        return claim_counting(c, keyed, channel, now, limit, lease_until);
    };
    let tx = transaction.insert(c.client.transaction()?);
    let mut tx = Db {
        client: tx,
        statements: &mut *c.statements,
    };
    claim_counting(&mut tx, keyed, channel, now, limit, lease_until)
}

/// The claim that counts others', in transaction `tx`: of tasks with concurrency keys
/// (`keyed`), or of a limited or rate-limited channel.
fn claim_counting<C: postgres::GenericClient>(
    tx: &mut Db<'_, C>,
    keyed: bool,
    channel: &str,
    now: i64,
    limit: i64,
    lease_until: i64,
) -> R<Vec<Task>> {
    if keyed {
        claim_keyed(tx, channel, now, limit, lease_until)
    } else {
        claim_limited(tx, channel, now, limit, lease_until)
    }
}

/// A claim of a limited or rate-limited channel, in a transaction: claims one at a time,
/// each counting the others'.
fn claim_limited<C: postgres::GenericClient>(
    tx: &mut Db<'_, C>,
    channel: &str,
    now: i64,
    limit: i64,
    lease_until: i64,
) -> R<Vec<Task>> {
    // Read again under the lock: the settings may have changed, or gone.
    let (flow, window) = lock_flow(tx, channel)?;
    let limit = rate_room(&flow, window, now, limit);
    let rows = match flow.max_running.map(i64::from) {
        Some(max) => tx.query(
            sql::CLAIM_LIMITED,
            &[&channel, &now, &limit, &lease_until, &max],
        )?,
        None => tx.query(sql::CLAIM, &[&channel, &now, &limit, &lease_until])?,
    };
    let tasks = tasks_from_rows(&rows)?;
    save_window(tx, channel, &flow, window, now, tasks.len())?;
    Ok(tasks)
}

/// A claim of a channel with pending tasks that have concurrency keys: one claimer of the
/// channel at a time ([`sql::LOCK_KEYED`], and its settings' row as a limited claim locks
/// it), core's [`KeyedClaim`] going through the due pending tasks in claim order, a page
/// at a time, skipping those whose key is busy.
fn claim_keyed<C: postgres::GenericClient>(
    tx: &mut Db<'_, C>,
    channel: &str,
    now: i64,
    limit: i64,
    lease_until: i64,
) -> R<Vec<Task>> {
    tx.execute(sql::LOCK_KEYED, &[&channel])?;
    let (flow, window) = lock_flow(tx, channel)?;
    let limit = rate_room(&flow, window, now, limit);
    let running = match flow.max_running {
        Some(_) => tx
            .query_one(sql::RUNNING, &[&channel])?
            .try_get::<_, i64>(0)?,
        None => 0,
    };
    let running = usize::try_from(running).unwrap_or(usize::MAX);
    let allowance = claim_allowance(&flow, running, usize::try_from(limit).unwrap_or(0));
    let mut claim = KeyedClaim::new(&flow, allowance, Timestamp::from_millis(now));
    let mut chosen: Vec<i64> = Vec::new();
    let mut after: (i32, i64, i64) = (i32::MAX, i64::MIN, i64::MIN);
    while !claim.is_full() {
        let page = tx.query(
            sql::CANDIDATES,
            &[
                &channel,
                &now,
                &after.0,
                &after.1,
                &after.2,
                &CANDIDATES_PAGE,
            ],
        )?;
        let Some(last) = page.last() else { break };
        after = (last.try_get(2)?, last.try_get(3)?, last.try_get(0)?);
        for row in &page {
            let key: Option<String> = row.try_get(1)?;
            let n: Option<i64> = row.try_get(4)?;
            let (start, used): (Option<i64>, Option<i32>) = (row.try_get(5)?, row.try_get(6)?);
            let load = |_: &str| {
                Ok::<_, E>(KeyLoad {
                    running: n.map_or(0, |n| usize::try_from(n).unwrap_or(0)),
                    window: start.map(|start| RateWindow {
                        start: Timestamp::from_millis(start),
                        used: used.map_or(0, |u| u32::try_from(u).unwrap_or(0)),
                    }),
                })
            };
            if claim.take(key.as_deref(), load)? {
                chosen.push(row.try_get(0)?);
            }
        }
        if page.len() < CANDIDATES_PAGE as usize {
            break;
        }
    }
    let tasks = if chosen.is_empty() {
        Vec::new()
    } else {
        tasks_from_rows(&tx.query(sql::CLAIM_IDS, &[&chosen, &now, &lease_until])?)?
    };
    save_window(tx, channel, &flow, window, now, tasks.len())?;
    if let Some(rate) = flow.rate_per_key {
        save_key_windows(tx, channel, rate, now, &claim.windows())?;
    }
    Ok(tasks)
}

/// Saves the windows of starts per key a claim at `now` counted in `channel`
/// ([`KeyedClaim::windows`]), first deleting the channel's windows before the current one
/// of `rate`.
fn save_key_windows<C: postgres::GenericClient>(
    tx: &mut Db<'_, C>,
    channel: &str,
    rate: Rate,
    now: i64,
    windows: &[(String, RateWindow)],
) -> R<()> {
    let current = rate.window_of(Timestamp::from_millis(now)).as_millis();
    tx.execute(sql::FORGET_KEY_WINDOWS, &[&channel, &current])?;
    let (mut keys, mut starts, mut used) = (Vec::new(), Vec::new(), Vec::new());
    for (key, window) in windows {
        keys.push(key);
        starts.push(window.start.as_millis());
        used.push(i32::try_from(window.used).unwrap_or(i32::MAX));
    }
    if !keys.is_empty() {
        tx.execute(sql::SAVE_KEY_WINDOWS, &[&channel, &keys, &starts, &used])?;
    }
    Ok(())
}

/// Locks `channel`'s settings row and reads its settings and its window of starts.
fn lock_flow<C: postgres::GenericClient>(
    tx: &mut Db<'_, C>,
    channel: &str,
) -> R<(Flow, Option<RateWindow>)> {
    let Some(row) = tx.query_opt(sql::LOCK_FLOW_ALL, &[&channel])? else {
        return Ok((Flow::default(), None));
    };
    let start: Option<i64> = row.try_get(7)?;
    let used: i32 = row.try_get(8)?;
    let window = start.map(|start| RateWindow {
        start: Timestamp::from_millis(start),
        used: u32::try_from(used).unwrap_or(0),
    });
    Ok((flow_from(&row, 0)?, window))
}

/// `limit`, no more than the room the channel's rate leaves in its window at `now`.
fn rate_room(flow: &Flow, window: Option<RateWindow>, now: i64, limit: i64) -> i64 {
    match flow.rate {
        Some(rate) => {
            let room = rate.room(window, Timestamp::from_millis(now));
            limit.min(i64::try_from(room).unwrap_or(i64::MAX))
        }
        None => limit,
    }
}

/// Counts `taken` starts at `now` in `channel`'s window, if it has a rate.
fn save_window<C: postgres::GenericClient>(
    tx: &mut Db<'_, C>,
    channel: &str,
    flow: &Flow,
    window: Option<RateWindow>,
    now: i64,
    taken: usize,
) -> R<()> {
    if let Some(rate) = flow.rate.filter(|_| taken > 0) {
        let next = rate.take(window, Timestamp::from_millis(now), taken);
        let used = i32::try_from(next.used).unwrap_or(i32::MAX);
        tx.execute(
            sql::SAVE_WINDOW,
            &[&channel, &next.start.as_millis(), &used],
        )?;
    }
    Ok(())
}

/// The columns a new task's row is written with, in the order of [`RowValues::params`].
const ROW_COLUMNS: &str = "channel, args, created_at, priority, concurrency_key, timeout_ms, \
     traceparent, status, retries_left, max_retries, attempts, run_at, lease_until, \
     last_error, updated_at, lost_runs";

/// What a new task's row holds beside the task's own fields: its time and initial state,
/// as the columns take them.
struct RowValues {
    created_at: i64,
    timeout_ms: Option<i64>,
    status: &'static str,
    retries_left: i64,
    max_retries: i64,
    attempts: i64,
    run_at: i64,
    lease_until: Option<i64>,
    last_error: Option<String>,
    updated_at: i64,
    lost_runs: i64,
}

impl RowValues {
    /// The values of `task` enqueued at `now`.
    fn of(task: &NewTask, now: Timestamp) -> Self {
        let s = task.initial_state(now);
        RowValues {
            created_at: now.as_millis(),
            timeout_ms: task.timeout_ms(),
            status: s.status.as_str(),
            retries_left: i64::from(s.retries_left),
            max_retries: i64::from(s.max_retries),
            attempts: i64::from(s.attempts),
            run_at: millis(s.run_at),
            lease_until: s.lease_until.map(millis),
            last_error: s.last_error,
            updated_at: millis(s.updated_at),
            lost_runs: i64::from(s.lost_runs),
        }
    }

    /// The values of [`ROW_COLUMNS`] for `task`, in order.
    fn params<'a>(&'a self, task: &'a NewTask) -> [&'a (dyn ToSql + Sync); 16] {
        [
            &task.channel,
            &task.args,
            &self.created_at,
            &task.priority,
            &task.concurrency_key,
            &self.timeout_ms,
            &task.traceparent,
            &self.status,
            &self.retries_left,
            &self.max_retries,
            &self.attempts,
            &self.run_at,
            &self.lease_until,
            &self.last_error,
            &self.updated_at,
            &self.lost_runs,
        ]
    }
}

/// How many pending tasks a keyed claim reads at a time.
const CANDIDATES_PAGE: i64 = 256;

impl PostgresStore {
    /// Inserts one task without a unique key: the statement of a single enqueue, simpler
    /// to run than the `unnest` of a batch.
    pub(crate) fn insert_one<C: GenericClient>(
        tx: &mut Db<'_, C>,
        task: &NewTask,
        now: Timestamp,
    ) -> R<TaskId> {
        let row = RowValues::of(task, now);
        let inserted = tx.query_one(
            &format!(
                "INSERT INTO tasks ({ROW_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 RETURNING id"
            ),
            &row.params(task),
        )?;
        Ok(TaskId::new(inserted.try_get(0)?))
    }

    /// Inserts `tasks`, some of which wait for others, one at a time in `tx` (a task may
    /// wait for an earlier one of the call); a task whose key an unfinished task holds gets
    /// that task's id instead, and adds no edge.
    fn insert_waiting(tx: &mut Tx<'_, '_>, tasks: &[NewTask], now: Timestamp) -> R<Vec<TaskId>> {
        let mut ids: Vec<TaskId> = Vec::with_capacity(tasks.len());
        for (position, task) in tasks.iter().enumerate() {
            let keys = [key(&task.channel, &task.unique_key)];
            let held = match task.unique_key {
                Some(_) => holders(tx, &keys)?[0],
                None => None,
            };
            if let Some(id) = held {
                ids.push(id);
                continue;
            }
            let (state, edges) = if task.after.is_empty() {
                (task.initial_state(now), Vec::new())
            } else {
                crate::dependency::start(tx, task, position, &ids, task.initial_state(now))?
            };
            let id = match Self::insert_states(tx, &[task], &[state], now)?[0] {
                Some(id) => {
                    crate::dependency::insert_edges(tx, id, &edges)?;
                    id
                }
                // Taken between the look and the insert: the holder's.
                None => holders(tx, &keys)?[0].ok_or_else(|| bad_value("id", "none"))?,
            };
            ids.push(id);
        }
        Ok(ids)
    }

    /// Inserts `tasks` (none of which repeats an earlier one's key) in `tx`; a task whose
    /// key an unfinished task holds gets that task's id instead. Returns the ids by
    /// position, each `Some`.
    pub(crate) fn insert_or_hold(
        tx: &mut Tx<'_, '_>,
        tasks: &[&NewTask],
        now: Timestamp,
    ) -> R<Vec<Option<TaskId>>> {
        if tasks.iter().all(|t| t.unique_key.is_none()) {
            return Self::insert(tx, tasks, now);
        }
        // A key an unfinished task holds names that task; a task that took the key between
        // the look and the insert is found by the next look.
        let keys: Vec<Key<'_>> = tasks
            .iter()
            .map(|t| key(&t.channel, &t.unique_key))
            .collect();
        let mut ids = holders(tx, &keys)?;
        loop {
            let missing: Vec<usize> = (0..tasks.len()).filter(|&i| ids[i].is_none()).collect();
            if missing.is_empty() {
                return Ok(ids);
            }
            let batch: Vec<&NewTask> = missing.iter().map(|&i| tasks[i]).collect();
            let inserted = Self::insert(tx, &batch, now)?;
            if inserted.iter().any(Option::is_none) {
                let batch_keys: Vec<Key<'_>> = missing.iter().map(|&i| keys[i]).collect();
                let held = holders(tx, &batch_keys)?;
                for ((&i, new), old) in missing.iter().zip(inserted).zip(held) {
                    ids[i] = new.or(old);
                }
            } else {
                for (&i, new) in missing.iter().zip(inserted) {
                    ids[i] = new;
                }
            }
        }
    }

    /// Inserts the keyless tasks of a round of gathered enqueues in one statement, each
    /// call's at its own time; returns each call's ids.
    fn insert_round(&self, round: &[Arc<Call>]) -> Result<Vec<Vec<TaskId>>> {
        let tasks: Vec<&NewTask> = round.iter().flat_map(|c| &c.tasks).collect();
        let ids = match round {
            // A lone caller's, as if it were not gathered.
            [call] => self.run_with(Resend::IfUnsent, |c| Self::insert(c, &tasks, call.now))?,
            _ => {
                let at: Vec<Timestamp> = round
                    .iter()
                    .flat_map(|c| c.tasks.iter().map(|_| c.now))
                    .collect();
                let states: Vec<TaskState> = tasks
                    .iter()
                    .zip(&at)
                    .map(|(t, now)| t.initial_state(*now))
                    .collect();
                self.run_with(Resend::IfUnsent, |c| {
                    Self::insert_states_at(c, &tasks, &states, &at)
                })?
            }
        };
        let mut ids = ids.into_iter();
        round
            .iter()
            .map(|c| {
                (&mut ids)
                    .take(c.tasks.len())
                    .map(|id| id.ok_or_else(|| Error::from(bad_value("id", "none"))))
                    .collect()
            })
            .collect()
    }

    /// Inserts `tasks` (none of which repeats an earlier one's key) in one statement. A
    /// task whose key an unfinished task holds is skipped. Returns the ids of the inserted
    /// tasks by position.
    pub(crate) fn insert<C: GenericClient>(
        tx: &mut Db<'_, C>,
        tasks: &[&NewTask],
        now: Timestamp,
    ) -> R<Vec<Option<TaskId>>> {
        if let [task] = tasks
            && task.unique_key.is_none()
        {
            return Self::insert_one(tx, task, now).map(|id| vec![Some(id)]);
        }
        if tasks.len() >= COPY_FROM && tasks.iter().all(|t| t.unique_key.is_none()) {
            return Self::insert_copied(tx, tasks, now);
        }
        let states: Vec<TaskState> = tasks.iter().map(|t| t.initial_state(now)).collect();
        Self::insert_states(tx, tasks, &states, now)
    }

    /// Inserts `tasks`, none with a unique key, by `COPY`: their ids are drawn first from
    /// the table's sequence (one statement) and given in order, then the rows go in binary, with
    /// no statement of their own to plan or parameters to bind. Returns their ids, each
    /// `Some`.
    fn insert_copied<C: GenericClient>(
        tx: &mut Db<'_, C>,
        tasks: &[&NewTask],
        now: Timestamp,
    ) -> R<Vec<Option<TaskId>>> {
        let n = i64::try_from(tasks.len()).unwrap_or(i64::MAX);
        let mut ids: Vec<i64> = tx.query_one(sql::DRAW_IDS, &[&n])?.try_get(0)?;
        if ids.len() != tasks.len() {
            return Err(bad_value("ids drawn", ids.len()));
        }
        // In enqueue order, whatever order the array gathered them in.
        ids.sort_unstable();
        let sink = tx.client.copy_in(&format!(
            "COPY tasks (id, {ROW_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))?;
        let mut writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
        for (task, id) in tasks.iter().zip(&ids) {
            let row = RowValues::of(task, now);
            let mut values: Vec<&(dyn ToSql + Sync)> = vec![id];
            values.extend(row.params(task));
            writer.write(&values)?;
        }
        writer.finish()?;
        Ok(ids.into_iter().map(|id| Some(TaskId::new(id))).collect())
    }

    /// [`PostgresStore::insert`], each task in its state of `states`.
    pub(crate) fn insert_states<C: GenericClient>(
        tx: &mut Db<'_, C>,
        tasks: &[&NewTask],
        task_states: &[TaskState],
        now: Timestamp,
    ) -> R<Vec<Option<TaskId>>> {
        Self::insert_states_at(tx, tasks, task_states, &vec![now; tasks.len()])
    }

    /// [`PostgresStore::insert_states`], each task created at its time of `created`.
    fn insert_states_at<C: GenericClient>(
        tx: &mut Db<'_, C>,
        tasks: &[&NewTask],
        task_states: &[TaskState],
        created: &[Timestamp],
    ) -> R<Vec<Option<TaskId>>> {
        let mut states = StateArrays::default();
        for s in task_states {
            states.push(TaskId::new(0), s);
        }
        let channels: Vec<&str> = tasks.iter().map(|t| t.channel.as_str()).collect();
        let args: Vec<&[u8]> = tasks.iter().map(|t| t.args.as_slice()).collect();
        let priorities: Vec<i32> = tasks.iter().map(|t| t.priority).collect();
        let keys: Vec<Option<&str>> = tasks.iter().map(|t| t.unique_key.as_deref()).collect();
        let concurrency_keys: Vec<Option<&str>> =
            tasks.iter().map(|t| t.concurrency_key.as_deref()).collect();
        let timeouts: Vec<Option<i64>> = tasks.iter().map(|t| t.timeout_ms()).collect();
        let traceparents: Vec<Option<&str>> =
            tasks.iter().map(|t| t.traceparent.as_deref()).collect();
        let created_at: Vec<i64> = created.iter().map(|t| t.as_millis()).collect();
        let mut params = states.params().to_vec();
        params.extend_from_slice(&[
            &channels,
            &args,
            &priorities,
            &keys,
            &created_at,
            &concurrency_keys,
            &timeouts,
            &traceparents,
        ]);
        let insert = format!(
            "INSERT INTO tasks (channel, args, created_at, priority, unique_key, \
                 concurrency_key, timeout_ms, traceparent, {STATE_COLUMNS}) \
                 SELECT u.channel, u.args, u.created_at, u.priority, u.unique_key, u.concurrency_key, \
                   u.timeout_ms, u.traceparent, u.status, u.retries_left, u.max_retries, \
                   u.attempts, u.run_at, u.lease_until, u.last_error, u.updated_at, u.lost_runs \
                 FROM unnest({STATE_ARRAYS}, $11::text[], $12::bytea[], $13::int[], \
                   $14::text[], $15::bigint[], $16::text[], $17::bigint[], $18::text[]) \
                   WITH ORDINALITY AS u({STATE_ALIASES}, channel, args, priority, unique_key, \
                   created_at, concurrency_key, timeout_ms, traceparent, ord) \
                 ORDER BY u.ord \
                 ON CONFLICT (channel, unique_key) \
                   WHERE unique_key IS NOT NULL AND status IN {UNFINISHED} DO NOTHING \
                 RETURNING id, channel, unique_key"
        );
        let rows = tx.query(&insert, &params)?;
        // Ids are drawn in insertion order; a task without a key is never skipped, so the
        // n-th such id is the n-th such task's.
        let mut inserted: Vec<(i64, String, Option<String>)> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<R<_>>()?;
        inserted.sort_unstable_by_key(|(id, ..)| *id);
        let mut ids = vec![None; tasks.len()];
        let mut keyless = (0..tasks.len()).filter(|&i| tasks[i].unique_key.is_none());
        for (id, channel, key) in inserted {
            let at = match key {
                Some(key) => tasks.iter().position(|t| {
                    t.channel == channel && t.unique_key.as_deref() == Some(key.as_str())
                }),
                None => keyless.next(),
            };
            let at = at.ok_or_else(|| bad_value("id", id))?;
            ids[at] = Some(TaskId::new(id));
        }
        Ok(ids)
    }
}

/// From how many tasks without unique keys an insert goes by `COPY` rather than an `unnest`
/// of arrays (a round trip more: measured faster for 10,000, kept to large batches).
const COPY_FROM: usize = 1_000;

/// The types of the columns a `COPY` of tasks writes: the id, then [`ROW_COLUMNS`].
const COPY_TYPES: [Type; 17] = [
    Type::INT8,
    Type::TEXT,
    Type::BYTEA,
    Type::INT8,
    Type::INT4,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
];

/// [`batch::PROMOTE_PER_CLAIM`], as SQL binds it.
pub(crate) const PROMOTE_LIMIT: i64 = batch::PROMOTE_PER_CLAIM as i64;

/// A task's channel and unique key.
pub(crate) type Key<'a> = (&'a str, Option<&'a str>);

pub(crate) fn key<'a>(channel: &'a str, unique_key: &'a Option<String>) -> Key<'a> {
    (channel, unique_key.as_deref())
}

/// The ids of the unfinished tasks holding `keys`, by position (`None` for a task without
/// a key).
pub(crate) fn holders(tx: &mut Tx<'_, '_>, keys: &[Key<'_>]) -> R<Vec<Option<TaskId>>> {
    let (channels, keys): (Vec<&str>, Vec<Option<&str>>) = keys.iter().copied().unzip();
    let rows = tx.query(
        &format!(
            "SELECT k.ord, t.id FROM unnest($1::text[], $2::text[]) WITH ORDINALITY \
               AS k(channel, unique_key, ord) \
             JOIN tasks t ON t.channel = k.channel AND t.unique_key = k.unique_key \
             WHERE t.status IN {UNFINISHED}"
        ),
        &[&channels, &keys],
    )?;
    let mut ids = vec![None; channels.len()];
    for r in rows {
        let ord: i64 = r.try_get(0)?;
        let at = usize::try_from(ord - 1).map_err(|_| bad_value("ordinality", ord))?;
        if let Some(slot) = ids.get_mut(at) {
            *slot = Some(TaskId::new(r.try_get(1)?));
        }
    }
    Ok(ids)
}
