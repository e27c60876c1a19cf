-- Concurrency keys: tasks of a channel with the same key run at most the channel's
-- max_running_per_key at a time, across every process and machine
-- (FlowStore::set_max_running_per_key). The index counts a key's running tasks, and finds
-- whether a channel has keyed tasks pending, in one probe each.
ALTER TABLE tasks ADD COLUMN concurrency_key text;
CREATE INDEX tasks_keys ON tasks (channel, status, concurrency_key)
    WHERE concurrency_key IS NOT NULL;
ALTER TABLE channels ADD COLUMN max_running_per_key integer NOT NULL DEFAULT 1
    CHECK (max_running_per_key > 0);
-- A channel's rate of starts (FlowStore::set_rate: rate_starts per window of rate_per_ms,
-- NULL for none) and its last window (its start, and the starts counted in it).
ALTER TABLE channels ADD COLUMN rate_starts integer CHECK (rate_starts > 0);
ALTER TABLE channels ADD COLUMN rate_per_ms bigint CHECK (rate_per_ms > 0);
ALTER TABLE channels ADD COLUMN window_start bigint;
ALTER TABLE channels ADD COLUMN window_used integer NOT NULL DEFAULT 0;
-- A task's own timeout of one run, in milliseconds (NULL: its channel's).
ALTER TABLE tasks ADD COLUMN timeout_ms bigint CHECK (timeout_ms > 0);

-- The enqueue functions of 0004 with a concurrency key and a timeout (last parameters, by
-- default none): made anew, as a function's parameters cannot change in place.
DROP FUNCTION enqueue(text, jsonb, integer, integer, text, timestamptz);
DROP FUNCTION enqueue_msgpack(text, bytea, bigint, integer, text, bigint, bigint);

-- Adds a task whose arguments are MessagePack already, by the rule of the store's enqueue
-- (ClaimStore::enqueue): pending if due at `now`, else delayed; a unique key that an
-- unfinished task of the channel holds returns that task's id and adds nothing. `now` and
-- `run_at` are milliseconds since the Unix epoch (NULL: the server's clock). Returns the
-- task's id, and wakes the queue's workers once the caller's transaction commits.
CREATE FUNCTION enqueue_msgpack(channel text, args bytea, retries bigint DEFAULT 0,
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
            WHERE unique_key IS NOT NULL AND status IN ('pending', 'delayed', 'running')
            DO NOTHING
        RETURNING t.id INTO found_id;
        IF found_id IS NOT NULL THEN
            PERFORM pg_notify(left('simplepyq_' || current_schema(), 63), enqueue_msgpack.channel);
            RETURN found_id;
        END IF;
        SELECT t.id INTO found_id FROM tasks AS t
            WHERE t.channel = enqueue_msgpack.channel
              AND t.unique_key = enqueue_msgpack.unique_key
              AND t.status IN ('pending', 'delayed', 'running');
        IF found_id IS NOT NULL THEN
            RETURN found_id;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'simplepyq: the unique key % of channel % changed hands too often',
        quote_literal(enqueue_msgpack.unique_key), quote_literal(enqueue_msgpack.channel)
        USING ERRCODE = 'serialization_failure';
END
$$;

-- Adds a task with JSON arguments (see msgpack): the function for SQL callers.
--   SELECT simplepyq.enqueue('mail', '{"to": "a@example.com"}');
--   SELECT simplepyq.enqueue('mail', '["a@example.com", 3]', retries => 2,
--                            run_at => now() + interval '5 minutes', unique_key => 'a');
--   SELECT simplepyq.enqueue('charge', '[42]', concurrency_key => 'customer-7',
--                            timeout => interval '30 seconds');
CREATE FUNCTION enqueue(channel text, args jsonb, retries integer DEFAULT 0,
                        priority integer DEFAULT 0, unique_key text DEFAULT NULL,
                        run_at timestamptz DEFAULT NULL, concurrency_key text DEFAULT NULL,
                        timeout interval DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $$
    SELECT enqueue_msgpack($1, msgpack($2), $3, $4, $5,
                           floor(extract(epoch FROM $6) * 1000)::bigint, NULL, $7,
                           ceil(extract(epoch FROM $8) * 1000)::bigint)
$$;
