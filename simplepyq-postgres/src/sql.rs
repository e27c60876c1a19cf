//! The statements that change many rows at once, public to be read and `EXPLAIN`ed.
//!
//! Each of `PROMOTE`, `CLAIM` and `EXTEND` does what [`simplepyq_core::transition::apply`]
//! does for its event, for every row it touches (the tests compare them): a claim is then
//! one statement, and a lease renewal of all of a process's claims another. Every other
//! change is computed by `apply` itself and written back.

/// `Event::Promote` at $2 for up to $3 due delayed tasks of channel $1, earliest run-at
/// (then id) first, unless the channel is paused. Rows another claimer is promoting are
/// skipped, never waited for. Returns whether the channel has a limit of running tasks or a
/// rate of starts (NULL for no settings)
/// and whether it has pending tasks with a concurrency key (those it promoted count: the
/// statement's other parts see the table as it was before), which decide how the claim
/// that follows is made.
pub const PROMOTE: &str = "WITH promoted AS (UPDATE tasks SET status = 'pending', updated_at = $2 \
     WHERE id = ANY (ARRAY ( \
       SELECT id FROM tasks \
       WHERE channel = $1 AND status = 'delayed' AND run_at <= $2 \
       AND NOT EXISTS (SELECT 1 FROM channels WHERE channel = $1 AND paused) \
       ORDER BY run_at, id \
       LIMIT $3 \
       FOR UPDATE SKIP LOCKED)) \
     RETURNING concurrency_key) \
     SELECT (SELECT max_running IS NOT NULL OR rate_starts IS NOT NULL FROM channels \
       WHERE channel = $1), \
       EXISTS (SELECT 1 FROM tasks WHERE channel = $1 AND status = 'pending' \
         AND concurrency_key IS NOT NULL) \
       OR EXISTS (SELECT 1 FROM promoted WHERE concurrency_key IS NOT NULL)";

/// A claim: `Event::Claim` at $2, leased until $4, of up to `$limit` due pending tasks of
/// channel $1 without a concurrency key in claim order, unless the channel is paused.
/// (Tasks with a key are claimed only by [`CLAIM_IDS`], one claimer at a time.)
macro_rules! claim {
    ($limit:literal) => {
        concat!(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM tasks \
               WHERE channel = $1 AND status = 'pending' AND run_at <= $2 \
               AND concurrency_key IS NULL \
               AND NOT EXISTS (SELECT 1 FROM channels WHERE channel = $1 AND paused) \
               ORDER BY priority DESC, run_at, id \
               LIMIT ",
            $limit,
            " FOR UPDATE SKIP LOCKED) \
             UPDATE tasks t SET status = 'running', attempts = t.attempts + 1, \
               lease_until = $4, updated_at = $2 \
             WHERE t.id = ANY (ARRAY (SELECT id FROM due)) \
             RETURNING t.id, t.channel, t.args, t.created_at, t.priority, t.unique_key, \
               t.concurrency_key, t.timeout_ms, t.traceparent, t.status, t.retries_left, t.max_retries, t.attempts, t.run_at, t.lease_until, \
               t.last_error, t.updated_at, t.lost_runs"
        )
    };
}

/// `Event::Claim` at $2, leased until $4, of up to $3 due pending tasks of channel $1 in
/// claim order, unless the channel is paused. Rows another claimer locked are skipped,
/// never waited for. The update finds its rows by id in an array: a join with the CTE
/// would, in the generic plan a prepared statement gets, be a hash join over a scan of the
/// whole table.
pub const CLAIM: &str = claim!("$3");

/// [`CLAIM`] of a channel with a limit of $5 running tasks: no more than the room the
/// limit leaves. Run after [`LOCK_FLOW_ALL`] in one transaction, so that claims of a limited
/// channel are made one at a time and each counts the others' committed claims.
pub const CLAIM_LIMITED: &str = claim!(
    "greatest(0, least($3, $5::bigint - (SELECT count(*) FROM tasks \
       WHERE channel = $1 AND status = 'running')))"
);

/// Draws $1 task ids from the table's sequence as one array (a row per id cost more than
/// drawing them). The sequence is looked up once: as a subquery the planner folds in,
/// `pg_get_serial_sequence` ran for every id, 24 of the 27 ms that 10,000 ids took.
pub const DRAW_IDS: &str = "WITH q AS MATERIALIZED \
       (SELECT pg_get_serial_sequence('tasks', 'id')::regclass AS s) \
     SELECT array_agg(nextval(q.s)) FROM q, generate_series(1, $1::bigint)";

/// Makes the claims of channel $1's tasks with concurrency keys one at a time, across every
/// process, until the transaction ends: each counts the running tasks of the others.
pub const LOCK_KEYED: &str = "SELECT pg_advisory_xact_lock(hashtextextended('simplepyq keys ' || current_schema() \
       || ' ' || $1, 0))";

/// Locks channel $1's settings and reads them all, then its window of starts (no row: the
/// defaults).
pub const LOCK_FLOW_ALL: &str = "SELECT paused, max_running, max_running_per_key, rate_starts, \
       rate_per_ms, key_rate_starts, key_rate_per_ms, window_start, window_used FROM channels \
     WHERE channel = $1 FOR UPDATE";

/// Saves channel $1's window of starts: its start $2, the starts counted $3.
pub const SAVE_WINDOW: &str =
    "UPDATE channels SET window_start = $2, window_used = $3 WHERE channel = $1";

/// Channel $1's running tasks.
pub const RUNNING: &str = "SELECT count(*) FROM tasks WHERE channel = $1 AND status = 'running'";

/// A page of channel $1's pending tasks due by $2 in claim order, after the position
/// ($3 priority, $4 run-at, $5 id) of the last one read (first page: past the top), up to
/// $6: ids, concurrency keys, how many tasks of each one's key run (NULL for none or no
/// key), counted once per key of the page, and its key's last window of starts (its start
/// and count, NULL for none).
pub const CANDIDATES: &str = "WITH page AS MATERIALIZED ( \
       SELECT id, concurrency_key, priority, run_at FROM tasks \
       WHERE channel = $1 AND status = 'pending' AND run_at <= $2 \
       AND (priority < $3 OR (priority = $3 AND (run_at, id) > ($4, $5))) \
       ORDER BY priority DESC, run_at, id LIMIT $6), \
     busy AS (SELECT concurrency_key, count(*) AS n FROM tasks \
       WHERE channel = $1 AND status = 'running' \
       AND concurrency_key = ANY (ARRAY (SELECT concurrency_key FROM page)) \
       GROUP BY concurrency_key) \
     SELECT p.id, p.concurrency_key, p.priority, p.run_at, b.n, w.window_start, w.window_used \
     FROM page p LEFT JOIN busy b ON b.concurrency_key = p.concurrency_key \
     LEFT JOIN key_windows w ON w.channel = $1 AND w.key = p.concurrency_key \
     ORDER BY p.priority DESC, p.run_at, p.id";

/// Deletes channel $1's windows of starts per key that began before $2 (the current one's
/// start).
pub const FORGET_KEY_WINDOWS: &str =
    "DELETE FROM key_windows WHERE channel = $1 AND window_start < $2";

/// Saves channel $1's windows of starts of keys $2: their starts $3, the starts counted $4.
pub const SAVE_KEY_WINDOWS: &str = "INSERT INTO key_windows AS w (channel, key, window_start, \
       window_used) \
     SELECT $1, k, s, u FROM unnest($2::text[], $3::bigint[], $4::int[]) AS u(k, s, u) \
     ON CONFLICT (channel, key) DO UPDATE SET window_start = excluded.window_start, \
       window_used = excluded.window_used";

/// `Event::Claim` at $2, leased until $3, of the tasks with ids $1 still pending (a task
/// without a key may have been claimed meanwhile by [`CLAIM`]).
pub const CLAIM_IDS: &str = "UPDATE tasks t SET status = 'running', attempts = t.attempts + 1, \
       lease_until = $3, updated_at = $2 \
     WHERE t.id = ANY ($1) AND t.status = 'pending' \
     RETURNING t.id, t.channel, t.args, t.created_at, t.priority, t.unique_key, \
       t.concurrency_key, t.timeout_ms, t.traceparent, t.status, t.retries_left, t.max_retries, t.attempts, t.run_at, \
       t.lease_until, t.last_error, t.updated_at, t.lost_runs";

/// `Event::Extend` to $3 of the claims (ids $1, attempts $2) still held. It first
/// locks the rows it can without waiting (the array is built before the update runs)
/// and renews only those: a row locked elsewhere is being finished or recovered, and a
/// renewal skipped once is made at the next one. Never waiting, it cannot deadlock with
/// the statements that record outcomes, which do wait.
pub const EXTEND: &str = "UPDATE tasks t \
     SET lease_until = greatest(t.lease_until, $3) \
     FROM unnest($1::bigint[], $2::bigint[]) AS c(id, attempt) \
     WHERE t.id = c.id AND t.status = 'running' AND t.attempts = c.attempt \
     AND t.id = ANY (ARRAY (SELECT id FROM tasks WHERE id = ANY ($1) \
       FOR UPDATE SKIP LOCKED))";

/// Reads the states of the tasks with ids $1, and whether others wait for them.
pub const READ_STATES: &str = "SELECT id, status, retries_left, max_retries, attempts, \
     run_at, lease_until, last_error, updated_at, lost_runs, has_dependents FROM tasks \
     WHERE id = ANY ($1)";

/// [`READ_STATES`], locking the rows in id order: an outcome that settles dependents.
pub const LOCK_STATES: &str = "SELECT id, status, retries_left, max_retries, attempts, \
     run_at, lease_until, last_error, updated_at, lost_runs, has_dependents FROM tasks \
     WHERE id = ANY ($1) ORDER BY id FOR UPDATE";

/// Adds to the totals of channels: ends every statement that does so. Each connection adds
/// to its channel's row of shard `pg_backend_pid() % 128` (reads sum a channel's rows), so
/// that finishing transactions of many processes seldom wait on one row lock until the
/// other's commit: with 16 shards (migration 0003's comment), 32 processes of 4 workers
/// spent most of a drain waiting so (BENCHMARKS.md, "A fleet on one server"). A channel
/// has a row per shard a connection of it used: at most 128, and no more than the
/// connections that finished its tasks.
macro_rules! add_totals {
    ($rows:literal) => {
        concat!(
            "INSERT INTO totals AS s (channel, shard, done, failed, retried, lease_lost) ",
            $rows,
            " ON CONFLICT (channel, shard) DO UPDATE SET done = s.done + excluded.done, \
             failed = s.failed + excluded.failed, retried = s.retried + excluded.retried, \
             lease_lost = s.lease_lost + excluded.lease_lost"
        )
    };
}

/// Writes the states of `StateArrays` ($1..$10) to the tasks whose claims (attempts $11)
/// still hold, adds what each written one counts (done, failed, retried and lease-lost
/// arrays $12..$15) to its channel's totals, and returns the ids written. Rows of
/// totals are locked in channel order, after every task row: two finishing
/// statements cannot wait on each other. With $17, a task others wait for is not written
/// (its outcome settles them, in a transaction): the condition is checked on the row as
/// the update finds it, after any enqueue of a child that held its lock.
pub const FINISH: &str = concat!(
    "WITH saved AS (UPDATE tasks t SET status = u.status, \
     retries_left = u.retries_left, max_retries = u.max_retries, attempts = u.attempts, \
     run_at = u.run_at, lease_until = u.lease_until, last_error = u.last_error, \
     updated_at = u.updated_at, lost_runs = u.lost_runs, result = u.result \
     FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
       $6::bigint[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], \
       $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bytea[]) \
       AS u(id, status, retries_left, max_retries, attempts, run_at, lease_until, \
       last_error, updated_at, lost_runs, held, done, failed, retried, lease_lost, result) \
     WHERE t.id = u.id AND t.status = 'running' AND t.attempts = u.held \
     AND NOT ($17 AND t.has_dependents) \
     RETURNING t.id, t.channel, u.done, u.failed, u.retried, u.lease_lost), \
     counted AS (",
    add_totals!(
        "SELECT channel, pg_backend_pid() % 128, sum(done)::bigint, sum(failed)::bigint, \
         sum(retried)::bigint, sum(lease_lost)::bigint FROM saved GROUP BY channel \
         HAVING sum(done + failed + retried + lease_lost) > 0 ORDER BY channel"
    ),
    ") SELECT id FROM saved"
);

/// Adds totals (channels $1, done, failed, retried and lease-lost arrays $2..$5) to
/// their channels' totals, in channel order.
pub const ADD_TOTALS: &str = add_totals!(
    "SELECT c, pg_backend_pid() % 128, d, f, r, l FROM unnest($1::text[], $2::bigint[], \
     $3::bigint[], $4::bigint[], $5::bigint[]) AS u(c, d, f, r, l) ORDER BY c"
);

/// Every channel's totals, in name order.
pub const TOTALS: &str = "SELECT channel, sum(done)::bigint, sum(failed)::bigint, \
     sum(retried)::bigint, sum(lease_lost)::bigint FROM totals GROUP BY channel \
     ORDER BY channel";

/// Whether a lease expired by $1.
pub const ANY_EXPIRED: &str = "SELECT EXISTS (SELECT 1 FROM tasks \
     WHERE status = 'running' AND lease_until <= $1)";

/// Locks the running tasks whose lease expired by $1 and reads their channels and
/// states.
pub const LOCK_EXPIRED: &str = "SELECT id, channel, status, retries_left, max_retries, \
     attempts, run_at, lease_until, last_error, updated_at, lost_runs FROM tasks \
     WHERE status = 'running' AND lease_until <= $1 ORDER BY id FOR UPDATE SKIP LOCKED";

/// When channel $1's next start is allowed if its window of starts is used up (its end), else
/// NULL (core's `Rate::free_at`; `greatest` passes over a NULL).
macro_rules! free_at {
    () => {
        "(SELECT window_start + rate_per_ms FROM channels \
           WHERE channel = $1 AND window_used >= rate_starts)"
    };
}

/// Channel $1 is neither paused nor at its limit of running tasks: its queued tasks are due.
macro_rules! open {
    () => {
        "NOT EXISTS (SELECT 1 FROM channels f WHERE f.channel = $1 AND (f.paused \
           OR f.max_running <= (SELECT count(*) FROM tasks \
             WHERE channel = $1 AND status = 'running')))"
    };
}

/// The pending task `p` of channel $1 may start as far as its concurrency key's running
/// tasks go (core's `KeyedClaim` for one task).
macro_rules! key_free {
    () => {
        "(p.concurrency_key IS NULL OR (SELECT count(*) FROM tasks r \
           WHERE r.channel = $1 AND r.status = 'running' \
           AND r.concurrency_key = p.concurrency_key) < coalesce((SELECT max_running_per_key \
           FROM channels WHERE channel = $1), 1))"
    };
}

/// The earliest time something is due in channel $1: of a paused or full channel, only a
/// lease expiry; pending tasks whose concurrency keys are busy are not due, nor those
/// whose keys' windows of starts are used up before those windows end (core's
/// `KeyedWake`).
pub const NEXT_WAKEUP: &str = concat!(
    "SELECT least( \
     (SELECT greatest(p.run_at, ",
    free_at!(),
    ") FROM tasks p WHERE p.channel = $1 AND p.status = 'pending' AND ",
    open!(),
    " AND ",
    key_free!(),
    " AND (p.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM key_windows w \
       JOIN channels c ON c.channel = w.channel WHERE w.channel = $1 \
       AND w.key = p.concurrency_key AND w.window_used >= c.key_rate_starts)) \
     LIMIT 1), \
     (SELECT CASE WHEN count(*) > 0 THEN greatest(min(w.window_start + c.key_rate_per_ms), ",
    free_at!(),
    ") END FROM key_windows w JOIN channels c ON c.channel = w.channel \
       WHERE w.channel = $1 AND w.window_used >= c.key_rate_starts AND ",
    open!(),
    " AND EXISTS (SELECT 1 FROM tasks p WHERE p.channel = $1 AND p.status = 'pending' \
         AND p.concurrency_key = w.key AND ",
    key_free!(),
    ")), \
     (SELECT CASE WHEN min(run_at) IS NOT NULL THEN greatest(min(run_at), ",
    free_at!(),
    ") END FROM tasks WHERE channel = $1 AND status = 'delayed' AND ",
    open!(),
    "), \
     (SELECT min(lease_until) FROM tasks WHERE channel = $1 AND status = 'running'))"
);

/// Whether the mark `s` of table `stuck` counts: its attempt is its task's running attempt
/// (`simplepyq_core::Claim::holds`).
macro_rules! stuck_counts {
    () => {
        "EXISTS (SELECT 1 FROM tasks t WHERE t.id = s.id AND t.status = 'running' \
         AND t.attempts = s.attempt)"
    };
}

/// Forgets the marks that count no more.
pub const FORGET_STUCK: &str = concat!("DELETE FROM stuck s WHERE NOT ", stuck_counts!());

/// Marks attempt $2 of task $1 stuck since $3, if it is the task's running attempt.
pub const MARK_STUCK: &str = "INSERT INTO stuck (id, attempt, since) \
     SELECT id, attempts, $3 FROM tasks WHERE id = $1 AND status = 'running' AND attempts = $2 \
     ON CONFLICT (id) DO UPDATE SET attempt = excluded.attempt, since = excluded.since";

/// The marks that count, of channel $1 (NULL: every channel), in id order.
pub const STUCK: &str = concat!(
    "SELECT s.id, t.channel, s.attempt, s.since FROM stuck s JOIN tasks t ON t.id = s.id \
     WHERE ",
    stuck_counts!(),
    " AND ($1::text IS NULL OR t.channel = $1) ORDER BY s.id"
);
