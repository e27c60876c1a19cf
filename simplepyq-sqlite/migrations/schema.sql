-- The queue's tables as migrations 0001 to 0007 leave them, made at once in a new file or
-- beside an application's own tables (schema::tests compares the two). Names start with
-- simplepyq_: nothing of the application's is touched. Times are milliseconds since the
-- Unix epoch.
CREATE TABLE simplepyq_tasks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT, -- AUTOINCREMENT: ids are never reused
    channel      TEXT    NOT NULL,
    args         BLOB    NOT NULL,                  -- MessagePack
    status       TEXT    NOT NULL
                 CHECK (status IN ('pending', 'running', 'delayed', 'done', 'failed')),
    retries_left INTEGER NOT NULL CHECK (retries_left >= 0),
    max_retries  INTEGER NOT NULL CHECK (max_retries >= 0),
    attempts     INTEGER NOT NULL CHECK (attempts >= 0),
    run_at       INTEGER NOT NULL,
    lease_until  INTEGER,                           -- set while running
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    unique_key   TEXT,
    lost_runs    INTEGER NOT NULL DEFAULT 0
);
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

CREATE TABLE simplepyq_schedules (
    name       TEXT    PRIMARY KEY,
    last_fired INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE simplepyq_totals (
    channel    TEXT    PRIMARY KEY,
    done       INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0,
    retried    INTEGER NOT NULL DEFAULT 0,
    lease_lost INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE simplepyq_schema (
    version    INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL      -- milliseconds since the Unix epoch
);
