-- Ids without AUTOINCREMENT, which rewrote its row of sqlite_sequence at every insert: a
-- page more in the WAL at every commit, and a quarter of a lone producer's enqueue time.
-- Ids are still never given twice (lease fencing and every reference to a task rely on
-- it): every id given out is at most the greater of the table's largest id and
-- simplepyq_ids.given_out, which a trigger raises whenever the task with the largest id is
-- deleted; a new task takes one more than both.
--
-- SQLite cannot drop AUTOINCREMENT in place: the tasks table is made anew without it, its
-- rows copied, its indexes and trigger made again.
CREATE TABLE simplepyq_ids (
    given_out INTEGER NOT NULL
);
INSERT INTO simplepyq_ids (given_out)
    SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'simplepyq_tasks'), 0),
               coalesce((SELECT max(id) FROM simplepyq_tasks), 0));
CREATE TABLE simplepyq_tasks_next (
    id              INTEGER PRIMARY KEY,
    channel         TEXT    NOT NULL,
    args            BLOB    NOT NULL,
    status          TEXT    NOT NULL
                    CHECK (status IN ('pending', 'running', 'delayed', 'done', 'failed',
                                      'waiting')),
    retries_left    INTEGER NOT NULL CHECK (retries_left >= 0),
    max_retries     INTEGER NOT NULL CHECK (max_retries >= 0),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    run_at          INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    priority        INTEGER NOT NULL DEFAULT 0,
    unique_key      TEXT,
    lost_runs       INTEGER NOT NULL DEFAULT 0,
    concurrency_key TEXT,
    timeout_ms      INTEGER CHECK (timeout_ms > 0),
    result          BLOB,
    traceparent     TEXT
);
INSERT INTO simplepyq_tasks_next (id, channel, args, status, retries_left, max_retries,
    attempts, run_at, lease_until, last_error, created_at, updated_at, priority, unique_key,
    lost_runs, concurrency_key, timeout_ms, result, traceparent)
SELECT id, channel, args, status, retries_left, max_retries, attempts, run_at, lease_until,
    last_error, created_at, updated_at, priority, unique_key, lost_runs, concurrency_key,
    timeout_ms, result, traceparent
FROM simplepyq_tasks;
DROP TABLE simplepyq_tasks;
ALTER TABLE simplepyq_tasks_next RENAME TO simplepyq_tasks;

CREATE INDEX simplepyq_tasks_channel_leases ON simplepyq_tasks (channel, lease_until)
    WHERE status = 'running';
CREATE INDEX simplepyq_tasks_ready ON simplepyq_tasks (channel, priority DESC, run_at, id)
    WHERE status = 'pending';
CREATE INDEX simplepyq_tasks_delayed ON simplepyq_tasks (channel, run_at, id)
    WHERE status = 'delayed';
CREATE INDEX simplepyq_tasks_failed ON simplepyq_tasks (channel, id) WHERE status = 'failed';
CREATE INDEX simplepyq_tasks_done ON simplepyq_tasks (channel, updated_at) WHERE status = 'done';
CREATE UNIQUE INDEX simplepyq_tasks_unique ON simplepyq_tasks (channel, unique_key)
    WHERE unique_key IS NOT NULL AND status NOT IN ('done', 'failed');
CREATE INDEX simplepyq_tasks_keys ON simplepyq_tasks (channel, status, concurrency_key)
    WHERE concurrency_key IS NOT NULL;
CREATE INDEX simplepyq_tasks_failed_ids ON simplepyq_tasks (id) WHERE status = 'failed';
CREATE INDEX simplepyq_tasks_waiting ON simplepyq_tasks (channel, id) WHERE status = 'waiting';
CREATE TRIGGER simplepyq_tasks_edges AFTER DELETE ON simplepyq_tasks
BEGIN
    DELETE FROM simplepyq_dependencies WHERE child = OLD.id;
END;
-- The task with the largest id is deleted: its id stays given out.
CREATE TRIGGER simplepyq_tasks_given_out AFTER DELETE ON simplepyq_tasks
WHEN OLD.id > (SELECT given_out FROM simplepyq_ids)
    AND NOT EXISTS (SELECT 1 FROM simplepyq_tasks WHERE id > OLD.id)
BEGIN
    UPDATE simplepyq_ids SET given_out = OLD.id;
END;
