-- Tasks that wait for others (NewTask::after): a status of their own, 'waiting', and one
-- edge per parent, unsatisfied until the parent is done (simplepyq_core::dependency).
--
-- SQLite cannot change a CHECK constraint in place: the tasks table is made anew with
-- 'waiting' allowed, its rows copied, and its indexes made again. The sequence of ids is
-- carried over, so that the ids of deleted tasks never come back.
CREATE TABLE simplepyq_tasks_next (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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
    result          BLOB
);
INSERT INTO simplepyq_tasks_next (id, channel, args, status, retries_left, max_retries,
    attempts, run_at, lease_until, last_error, created_at, updated_at, priority, unique_key,
    lost_runs, concurrency_key, timeout_ms, result)
SELECT id, channel, args, status, retries_left, max_retries, attempts, run_at, lease_until,
    last_error, created_at, updated_at, priority, unique_key, lost_runs, concurrency_key,
    timeout_ms, result
FROM simplepyq_tasks;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'simplepyq_tasks_next', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'simplepyq_tasks_next');
UPDATE sqlite_sequence SET seq = max(seq,
        (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'simplepyq_tasks'))
    WHERE name = 'simplepyq_tasks_next';
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
-- Failed tasks in id order, for requeue_failed of every channel (a parent before the
-- tasks that wait for it).
CREATE INDEX simplepyq_tasks_failed_ids ON simplepyq_tasks (id) WHERE status = 'failed';
-- Waiting tasks, counted and listed by channel.
CREATE INDEX simplepyq_tasks_waiting ON simplepyq_tasks (channel, id) WHERE status = 'waiting';

-- One row per parent of a task: satisfied once the parent is done. Found by child (a
-- task's parents), by parent (the children a parent's end settles), and by child among the
-- unsatisfied ones (whether any is left: one seek, however many parents are done). A
-- task's edges go with it.
CREATE TABLE simplepyq_dependencies (
    child     INTEGER NOT NULL,
    parent    INTEGER NOT NULL,
    satisfied INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (child, parent)
) WITHOUT ROWID;
CREATE INDEX simplepyq_dependencies_parent ON simplepyq_dependencies (parent);
CREATE INDEX simplepyq_dependencies_left ON simplepyq_dependencies (child) WHERE satisfied = 0;
CREATE TRIGGER simplepyq_tasks_edges AFTER DELETE ON simplepyq_tasks
BEGIN
    DELETE FROM simplepyq_dependencies WHERE child = OLD.id;
END;
