-- The queue's tables, in the schema the store was opened with (it is the search path).
-- Times are milliseconds since the Unix epoch, on the database server's clock.

CREATE TABLE simplepyq_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- fillfactor 80 leaves room in each page so that a lease renewal (which changes no indexed
-- column) is a HOT update: no index is touched. A queue table turns over fast, so
-- autovacuum runs after 1% of its rows are dead, without pausing for cost.
CREATE TABLE tasks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel text NOT NULL,
    args bytea NOT NULL,
    created_at bigint NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    unique_key text,
    status text NOT NULL
        CHECK (status IN ('pending', 'delayed', 'running', 'done', 'failed')),
    retries_left bigint NOT NULL,
    max_retries bigint NOT NULL,
    attempts bigint NOT NULL,
    lost_runs bigint NOT NULL DEFAULT 0,
    run_at bigint NOT NULL,
    lease_until bigint,
    last_error text,
    updated_at bigint NOT NULL
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Narrow partial indexes, one per question a worker asks; a task is in at most one of the
-- first four. No index holds lease_until: every renewal would have to rewrite it.
CREATE INDEX tasks_pending ON tasks (channel, priority DESC, run_at, id)
    WHERE status = 'pending';
CREATE INDEX tasks_delayed ON tasks (channel, run_at) WHERE status = 'delayed';
CREATE INDEX tasks_running ON tasks (channel) WHERE status = 'running';
CREATE INDEX tasks_failed ON tasks (channel, id) WHERE status = 'failed';
CREATE INDEX tasks_done ON tasks (updated_at) WHERE status = 'done';
-- At most one unfinished task of a channel has a given unique key.
CREATE UNIQUE INDEX tasks_unique ON tasks (channel, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'delayed', 'running');
