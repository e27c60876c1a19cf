-- The task table. Times are milliseconds since the Unix epoch.
CREATE TABLE tasks (
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
    updated_at   INTEGER NOT NULL
);

-- Claims walk this index in order: the next due task of a channel is O(log n).
CREATE INDEX tasks_queued ON tasks (channel, run_at, id)
    WHERE status IN ('pending', 'delayed');

-- Lease recovery across channels, and a channel's next lease expiry.
CREATE INDEX tasks_leases ON tasks (lease_until) WHERE status = 'running';
CREATE INDEX tasks_channel_leases ON tasks (channel, lease_until) WHERE status = 'running';

-- Counts, clear_failed, requeue_failed, remove_channel and purges by channel and status.
CREATE INDEX tasks_channel_status ON tasks (channel, status, updated_at);
