//! Putting tasks in and taking them out: the insert (with its unique-key rule) and the
//! claim (due delayed tasks promoted first).

use rusqlite::params;
use rusqlite::{OptionalExtension, Transaction};
use simplepyq_core::transition::{Event, apply};
use simplepyq_core::{
    ClaimStore, CountedWindows, Flow, KeyLoad, KeyedClaim, NewTask, Result, Task, TaskId,
    Timestamp, Wake, Watch, batch, claim_allowance,
};

use crate::error::R;
use crate::flow::{
    ALLOWANCE, FREE_AT, KEY_FREE, KEY_RATE_FREE, NOT_PAUSED, OPEN, flow_of, key_free_at,
    key_window, save_key_windows, save_window,
};
use crate::row::{
    COLUMNS, STATE_COLUMNS, bind_state, ids, save_state, select_tasks, task_from_row, transition,
};
use crate::writer::Caller;
use crate::{SqliteStore, dependency, watch};

impl ClaimStore for SqliteStore {
    fn watch(&self, wake: Wake) -> Option<Watch> {
        let local = self.wakes.watch(std::sync::Arc::clone(&wake));
        let others = self
            .watch_interval
            .and_then(|every| watch::watch(&self.path, every, wake, &self.announcer));
        Watch::both(Some(local), others)
    }

    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            t.validate()?;
        }
        let channels = channels_of(tasks);
        let tasks = tasks.to_vec();
        let most = self.enqueue_pages;
        let ids = self.write_as(Caller::Producer, move |tx| {
            let ids = insert_tasks(tx, &tasks, now)?;
            if let Some(most) = most {
                within(tx, most)?;
            }
            Ok(ids)
        })?;
        self.announcer.announce(channels.iter().map(String::as_str));
        Ok(ids)
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
        // Look before taking the write lock: idle workers poll without blocking writers. Due
        // delayed tasks are promoted unless the channel is paused, though it may be full.
        let due = self.read(|conn| {
            let mut stmt = conn.prepare_cached(&due_sql())?;
            Ok(stmt.query_row(params![channel, now.as_millis()], |r| r.get::<_, bool>(0))?)
        })?;
        if !due {
            return Ok(Vec::new());
        }
        let channel = channel.to_owned();
        self.write(move |tx| claim_in(tx, &channel, limit, now, lease_until))
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&next_wakeup_sql())?;
            let t: Option<i64> = stmt.query_row(params![channel, i64::MIN], |r| r.get(0))?;
            Ok(t.map(Timestamp::from_millis))
        })
    }
}

/// Whether channel ?1 has a task a claim at ?2 would take or promote: a due pending task
/// its flow lets start, or a due delayed one (promoted unless the channel is paused, though
/// it may be full).
pub(crate) fn due_sql() -> String {
    format!(
        "SELECT ({OPEN} AND EXISTS (SELECT 1 FROM simplepyq_tasks p WHERE {READY} \
           AND {KEY_FREE} AND {KEY_RATE_FREE})) OR ({NOT_PAUSED} \
           AND EXISTS (SELECT 1 FROM simplepyq_tasks WHERE {DUE_DELAYED}))"
    )
}

/// When channel ?1 next has work (?2 is `i64::MIN`, for [`KEY_RATE_FREE`]). A paused or
/// full channel's queued tasks are not due, nor pending tasks whose concurrency keys are
/// busy; none before a used-up window of starts ends (the channel's, or a key's).
pub(crate) fn next_wakeup_sql() -> String {
    let key_free_at = key_free_at();
    format!(
        "SELECT min(t) FROM ( \
           SELECT * FROM (SELECT max(run_at, coalesce({FREE_AT}, run_at)) AS t \
             FROM simplepyq_tasks p \
             WHERE channel = ?1 AND status = 'pending' AND {OPEN} AND {KEY_FREE} \
             AND {KEY_RATE_FREE} \
             LIMIT 1) \
           UNION ALL \
           SELECT max(m, coalesce({FREE_AT}, m)) FROM (SELECT {key_free_at} AS m \
             WHERE {OPEN}) \
           UNION ALL \
           SELECT max(m, coalesce({FREE_AT}, m)) FROM (SELECT min(run_at) AS m \
             FROM simplepyq_tasks \
             WHERE channel = ?1 AND status = 'delayed' AND {OPEN}) \
           UNION ALL \
           SELECT min(lease_until) FROM simplepyq_tasks \
             WHERE channel = ?1 AND status = 'running')"
    )
}

/// A claim of up to `limit` of `channel`'s due tasks at `now`, leased until `lease_until`,
/// in the writer's transaction `tx` (see [`ClaimStore::claim`]).
pub(crate) fn claim_in(
    tx: &Transaction<'_>,
    channel: &str,
    limit: usize,
    now: Timestamp,
    lease_until: Timestamp,
) -> R<Vec<Task>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let event = Event::Claim { now, lease_until };
    // Under the write lock, in each statement (where SQLite looks once, the channel
    // being a parameter): a pause committed before this claim holds.
    let promote = ids(
        tx,
        &format!(
            "SELECT id FROM simplepyq_tasks WHERE {DUE_DELAYED} AND {NOT_PAUSED} \
                 ORDER BY run_at, id LIMIT ?3"
        ),
        params![channel, now.as_millis(), PROMOTE_LIMIT],
    )?;
    for id in promote {
        transition(tx, id, &Event::Promote { now })?;
    }
    // A rate of starts: no more than its window's room, counted under the writer.
    let (flow, window) = flow_of(tx, channel)?;
    let limit = match flow.rate {
        Some(rate) => limit.min(i64::try_from(rate.room(window, now)).unwrap_or(i64::MAX)),
        None => limit,
    };
    let mut tasks = if keyed_pending(tx, channel)? {
        let (tasks, windows) = claim_keyed(tx, channel, &flow, now, limit)?;
        if let Some(rate) = flow.rate_per_key {
            save_key_windows(tx, channel, rate, now, &windows)?;
        }
        tasks
    } else {
        select_tasks(tx, &claim_sql(), params![channel, now.as_millis(), limit])?
    };
    for t in &mut tasks {
        t.state = apply(&t.state, &event).map_err(|r| r.into_error(t.id))?;
        save_state(tx, t.id, &t.state)?;
    }
    if let Some(rate) = flow.rate.filter(|_| !tasks.is_empty()) {
        save_window(tx, channel, rate.take(window, now, tasks.len()))?;
    }
    Ok(tasks)
}

/// The claim's query: up to ?3 due pending tasks of channel ?1 at ?2, in claim order, none
/// while the channel is paused and no more than its limit of running tasks leaves room for
/// (counted in the claim's own write transaction: claims of every process are one at a
/// time).
pub(crate) fn claim_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM simplepyq_tasks WHERE {READY} \
         ORDER BY priority DESC, run_at, id LIMIT {ALLOWANCE}"
    )
}

/// Whether channel `channel` has pending tasks with a concurrency key: a claim of those
/// looks at each candidate's key ([`claim_keyed`]), a claim of others takes the first.
fn keyed_pending(tx: &Transaction<'_>, channel: &str) -> R<bool> {
    let mut stmt = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM simplepyq_tasks WHERE channel = ?1 \
           AND status = 'pending' AND concurrency_key IS NOT NULL)",
    )?;
    Ok(stmt.query_row([channel], |r| r.get(0))?)
}

/// The claim's tasks when some have concurrency keys: core's [`KeyedClaim`] goes through
/// the due pending tasks in claim order, skipping those whose key is busy, up to what the
/// channel's flow settings allow a claim of up to `limit` ([`claim_allowance`]).
fn claim_keyed(
    tx: &Transaction<'_>,
    channel: &str,
    flow: &Flow,
    now: Timestamp,
    limit: i64,
) -> R<(Vec<Task>, CountedWindows)> {
    let running = match flow.max_running {
        Some(_) => count(tx, RUNNING, params![channel])?,
        None => 0,
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut claim = KeyedClaim::new(flow, claim_allowance(flow, running, limit), now);
    let mut candidates = tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM simplepyq_tasks WHERE {READY} ORDER BY priority DESC, run_at, id"
    ))?;
    let mut rows = candidates.query(params![channel, now.as_millis()])?;
    let mut tasks = Vec::new();
    while !claim.is_full() {
        let Some(row) = rows.next()? else { break };
        let key: Option<String> = row.get(simplepyq_core::row::CONCURRENCY_KEY_COLUMN)?;
        let load = |key: &str| -> R<KeyLoad> {
            Ok(KeyLoad {
                running: count(tx, RUNNING_WITH_KEY, params![channel, key])?,
                window: match flow.rate_per_key {
                    Some(_) => key_window(tx, channel, key)?,
                    None => None,
                },
            })
        };
        if claim.take(key.as_deref(), load)? {
            tasks.push(task_from_row(row)?);
        }
    }
    let windows = claim.windows();
    Ok((tasks, windows))
}

/// The running tasks of channel ?1.
const RUNNING: &str =
    "SELECT count(*) FROM simplepyq_tasks WHERE channel = ?1 AND status = 'running'";

/// The running tasks of channel ?1 with concurrency key ?2.
const RUNNING_WITH_KEY: &str = "SELECT count(*) FROM simplepyq_tasks \
     WHERE channel = ?1 AND status = 'running' AND concurrency_key = ?2";

/// The count `sql` selects.
fn count(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> R<usize> {
    let n: i64 = tx.prepare_cached(sql)?.query_row(params, |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// [`batch::PROMOTE_PER_CLAIM`], as SQL binds it.
pub(crate) const PROMOTE_LIMIT: i64 = batch::PROMOTE_PER_CLAIM as i64;

/// Pending tasks of channel ?1 due by ?2 (pending tasks are due unless clocks disagree).
pub(crate) const READY: &str = "channel = ?1 AND status = 'pending' AND run_at <= ?2";

/// Delayed tasks of channel ?1 whose run-at has come by ?2.
pub(crate) const DUE_DELAYED: &str = "channel = ?1 AND status = 'delayed' AND run_at <= ?2";

/// The unfinished task of channel ?1 holding unique key ?2, in `tasks_unique` (whose
/// condition the query repeats word for word: SQLite uses a partial index only then).
pub(crate) const KEY_HOLDER: &str = "SELECT id FROM simplepyq_tasks WHERE channel = ?1 AND unique_key = ?2 \
     AND unique_key IS NOT NULL AND status NOT IN ('done', 'failed')";

/// The channels of `tasks`, each once: what an enqueue announces (not a name per task).
pub(crate) fn channels_of(tasks: &[NewTask]) -> Vec<String> {
    let mut channels: Vec<&str> = tasks.iter().map(|t| t.channel.as_str()).collect();
    channels.sort_unstable();
    channels.dedup();
    channels.into_iter().map(str::to_owned).collect()
}

/// Inserts tasks in `tx`; a task whose unique key an unfinished task of its channel holds
/// gets that task's id instead.
pub(crate) fn insert_tasks(
    tx: &Transaction<'_>,
    tasks: &[NewTask],
    now: Timestamp,
) -> R<Vec<TaskId>> {
    insert_tasks_taking(tx, tasks, now).map(|(ids, _)| ids)
}

/// [`insert_tasks`], also returning the last id it took for a task it inserted (none when
/// unfinished tasks hold every task's unique key).
pub(crate) fn insert_tasks_taking(
    tx: &Transaction<'_>,
    tasks: &[NewTask],
    now: Timestamp,
) -> R<(Vec<TaskId>, Option<i64>)> {
    let mut insert = tx.prepare_cached(&insert_sql())?;
    let mut existing = tx.prepare_cached(KEY_HOLDER)?;
    let mut ids = Vec::with_capacity(tasks.len());
    let mut taken = None;
    // The next id, read once: the transaction holds the write lock, so no one else takes
    // ids meanwhile.
    let mut next = None;
    for (position, t) in tasks.iter().enumerate() {
        if let Some(key) = &t.unique_key {
            let found: Option<i64> = existing
                .query_row(params![t.channel, key], |r| r.get(0))
                .optional()?;
            if let Some(id) = found {
                ids.push(TaskId::new(id));
                continue;
            }
        }
        insert.raw_bind_parameter(1, &t.channel)?;
        insert.raw_bind_parameter(2, &t.args)?;
        insert.raw_bind_parameter(3, now.as_millis())?;
        insert.raw_bind_parameter(4, t.priority)?;
        insert.raw_bind_parameter(5, &t.unique_key)?;
        insert.raw_bind_parameter(6, &t.concurrency_key)?;
        insert.raw_bind_parameter(7, t.timeout_ms())?;
        insert.raw_bind_parameter(8, &t.traceparent)?;
        let (state, edges) = if t.after.is_empty() {
            (t.initial_state(now), Vec::new())
        } else {
            dependency::start(tx, t, position, &ids, t.initial_state(now))?
        };
        bind_state(&mut insert, 9, &state)?;
        let id = match next {
            Some(id) => id,
            None => tx.prepare_cached(NEXT_ID)?.query_row([], |r| r.get(0))?,
        };
        insert.raw_bind_parameter(18, id)?;
        insert.raw_execute()?;
        next = Some(id + 1);
        dependency::insert_edges(tx, TaskId::new(id), &edges)?;
        taken = Some(id);
        ids.push(TaskId::new(id));
    }
    Ok((ids, taken))
}

/// The most pages an enqueue may leave a file capped at `cap` pages with: an eighth of the
/// cap (at least 8 pages) stays for claims and outcomes, which write into pages that exist
/// but may split one (a row that grows by its lease, an index of done tasks that grows with
/// each), so that a queue full of tasks still runs them.
pub(crate) fn enqueue_pages(cap: i64) -> i64 {
    (cap - (cap / 8).max(8)).max(1)
}

/// Refuses a transaction that leaves the file with more than `most` pages, as SQLite refuses
/// one past its cap (`Error::Full`, rolled back by the caller).
pub(crate) fn within(tx: &Transaction<'_>, most: i64) -> R<()> {
    let pages: i64 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages > most {
        return Err(simplepyq_core::Error::Full {
            backend: crate::error::BACKEND,
            message: format!(
                "database or disk is full: enqueues stop at {most} pages, short of the \
                 file's cap, to leave room for claims and outcomes"
            ),
        }
        .into());
    }
    Ok(())
}

/// The last id given out: the greater of the largest id in the table and the largest
/// deleted while it was the largest (`simplepyq_ids`, migration 0015). A new task takes
/// one more, so no id is given twice.
macro_rules! last_id {
    () => {
        "max(coalesce((SELECT max(id) FROM simplepyq_tasks), 0), \
         coalesce((SELECT given_out FROM simplepyq_ids), 0))"
    };
}

/// Reads the last id given out.
pub(crate) const LAST_ID: &str = concat!("SELECT ", last_id!());

/// Reads the next id to give out (an enqueue's first, once per write).
const NEXT_ID: &str = concat!("SELECT ", last_id!(), " + 1");

/// Inserts a task: ?1 channel, ?2 args, ?3 created at, ?4 priority, ?5 unique key, ?6
/// concurrency key, ?7 timeout in milliseconds, ?8 traceparent, ?9..?17 the values of
/// [`STATE_COLUMNS`], ?18 its id ([`NEXT_ID`] and on).
pub(crate) fn insert_sql() -> String {
    format!(
        "INSERT INTO simplepyq_tasks (channel, args, created_at, priority, unique_key, \
           concurrency_key, timeout_ms, traceparent, {STATE_COLUMNS}, id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
           ?18)"
    )
}
