-- Tasks that wait for others (NewTask::after): a status of their own, 'waiting', and one
-- edge per parent, unsatisfied until the parent is done (simplepyq_core::dependency).
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'delayed', 'running', 'done', 'failed', 'waiting'));
CREATE INDEX tasks_waiting ON tasks (channel, id) WHERE status = 'waiting';
-- Failed tasks in id order, for requeue_failed of every channel (a parent before the tasks
-- that wait for it).
CREATE INDEX tasks_failed_ids ON tasks (id) WHERE status = 'failed';
-- A waiting task holds its unique key as the other unfinished ones do.
DROP INDEX tasks_unique;
CREATE UNIQUE INDEX tasks_unique ON tasks (channel, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'delayed', 'running', 'waiting');

-- Set (under the parent's row lock) by the enqueue of a task that waits for it: an outcome
-- of a task without it settles nothing and costs nothing more. An outcome reads it from
-- the row it writes, so that a child enqueued meanwhile is never missed.
ALTER TABLE tasks ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;

-- One row per parent of a task: satisfied once the parent is done. Found by child (a
-- task's parents), by parent (the children a parent's end settles), and by child among the
-- unsatisfied ones (whether any is left: one probe, however many parents are done). A
-- task's edges go with it.
CREATE TABLE dependencies (
    child bigint NOT NULL,
    parent bigint NOT NULL,
    satisfied boolean NOT NULL DEFAULT false,
    PRIMARY KEY (child, parent)
);
CREATE INDEX dependencies_parent ON dependencies (parent);
CREATE INDEX dependencies_left ON dependencies (child) WHERE NOT satisfied;
-- A deleted task's edges go with it: a trigger on deletes only, once per statement with the
-- deleted rows (a purge of thousands of tasks is one more statement), not a foreign key,
-- whose triggers would also run at every update of a task (each claim, outcome and lease
-- renewal).
CREATE FUNCTION delete_edges() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    DELETE FROM dependencies d USING gone WHERE d.child = gone.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_edges AFTER DELETE ON tasks REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION delete_edges();

-- The enqueue function of 0006, with waiting tasks holding unique keys.
-- Adds a task whose arguments are MessagePack already, by the rule of the store's enqueue
-- (ClaimStore::enqueue): pending if due at `now`, else delayed; a unique key that an
-- unfinished task of the channel holds returns that task's id and adds nothing. `now` and
-- `run_at` are milliseconds since the Unix epoch (NULL: the server's clock). Returns the
-- task's id, and wakes the queue's workers once the caller's transaction commits.
CREATE OR REPLACE FUNCTION enqueue_msgpack(channel text, args bytea, retries bigint DEFAULT 0,
                                priority integer DEFAULT 0, unique_key text DEFAULT NULL,
                                run_at bigint DEFAULT NULL, now bigint DEFAULT NULL,
                                concurrency_key text DEFAULT NULL,
                                timeout_ms bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    at_now bigint := coalesce(enqueue_msgpack.now, clock_millis());
    due bigint := coalesce(enqueue_msgpack.run_at, at_now);
    found_id bigint;
BEGIN
    -- The rule of simplepyq_core::validate_channel.
    IF enqueue_msgpack.channel IS NULL OR enqueue_msgpack.channel = '' THEN
        RAISE EXCEPTION 'simplepyq: invalid channel name: it is empty'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF octet_length(enqueue_msgpack.channel) > 255 THEN
        RAISE EXCEPTION 'simplepyq: invalid channel name: it is longer than 255 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF enqueue_msgpack.channel ~ '[\u0001-\u001f\u007f-\u009f]' THEN
        RAISE EXCEPTION 'simplepyq: invalid channel name %: it contains a control character',
            quote_literal(enqueue_msgpack.channel)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The rule of simplepyq_core::validate_concurrency_key.
    IF enqueue_msgpack.concurrency_key = '' THEN
        RAISE EXCEPTION 'simplepyq: invalid concurrency key '''': it is empty (a task without a key has none)'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF octet_length(enqueue_msgpack.concurrency_key) > 255 THEN
        RAISE EXCEPTION 'simplepyq: invalid concurrency key: it is longer than 255 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue_msgpack.timeout_ms <= 0 THEN
        RAISE EXCEPTION 'simplepyq: a timeout must be at least 1 ms, not % ms',
            enqueue_msgpack.timeout_ms
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF enqueue_msgpack.args IS NULL THEN
        RAISE EXCEPTION 'simplepyq: the arguments are NULL (for no arguments pass ''null''::jsonb)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF enqueue_msgpack.retries IS NULL OR enqueue_msgpack.retries NOT BETWEEN 0 AND 4294967295 THEN
        RAISE EXCEPTION 'simplepyq: retries must be from 0 to 4294967295, not %',
            coalesce(enqueue_msgpack.retries::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A key taken between the insert and the look is found by the next round; a caller's
    -- snapshot that cannot see its holder fails with a serialization error instead.
    FOR tries IN 1..10 LOOP
        INSERT INTO tasks AS t (channel, args, created_at, priority, unique_key,
                               concurrency_key, timeout_ms, status, retries_left, max_retries,
                               attempts, lost_runs, run_at, lease_until, last_error, updated_at)
        VALUES (enqueue_msgpack.channel, enqueue_msgpack.args, at_now,
                coalesce(enqueue_msgpack.priority, 0), enqueue_msgpack.unique_key,
                enqueue_msgpack.concurrency_key, enqueue_msgpack.timeout_ms,
                CASE WHEN due > at_now THEN 'delayed' ELSE 'pending' END,
                enqueue_msgpack.retries, enqueue_msgpack.retries, 0, 0, due, NULL, NULL, at_now)
        ON CONFLICT (channel, unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('pending', 'delayed', 'running', 'waiting')
            DO NOTHING
        RETURNING t.id INTO found_id;
        IF found_id IS NOT NULL THEN
            PERFORM pg_notify(left('simplepyq_' || current_schema(), 63), enqueue_msgpack.channel);
            RETURN found_id;
        END IF;
        SELECT t.id INTO found_id FROM tasks AS t
            WHERE t.channel = enqueue_msgpack.channel
              AND t.unique_key = enqueue_msgpack.unique_key
              AND t.status IN ('pending', 'delayed', 'running', 'waiting');
        IF found_id IS NOT NULL THEN
            RETURN found_id;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'simplepyq: the unique key % of channel % changed hands too often',
        quote_literal(enqueue_msgpack.unique_key), quote_literal(enqueue_msgpack.channel)
        USING ERRCODE = 'serialization_failure';
END
$$;
