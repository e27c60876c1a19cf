-- The trace context of the code that enqueued a task: a W3C traceparent (NULL for none),
-- read by the handler's span in whichever process runs it (simplepyq_core::trace).
ALTER TABLE tasks ADD COLUMN traceparent text
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');

-- The enqueue functions of 0006 and 0008 with a trace context (a last parameter, by default
-- none): made anew, as a function's parameters cannot change in place.
DROP FUNCTION enqueue(text, jsonb, integer, integer, text, timestamptz, text, interval);
DROP FUNCTION enqueue_msgpack(text, bytea, bigint, integer, text, bigint, bigint, text, bigint);

-- Adds a task whose arguments are MessagePack already, by the rule of the store's enqueue
-- (ClaimStore::enqueue): pending if due at `now`, else delayed; a unique key that an
-- unfinished task of the channel holds returns that task's id and adds nothing. `now` and
-- `run_at` are milliseconds since the Unix epoch (NULL: the server's clock). Returns the
-- task's id, and wakes the queue's workers once the caller's transaction commits.
CREATE FUNCTION enqueue_msgpack(channel text, args bytea, retries bigint DEFAULT 0,
                                priority integer DEFAULT 0, unique_key text DEFAULT NULL,
                                run_at bigint DEFAULT NULL, now bigint DEFAULT NULL,
                                concurrency_key text DEFAULT NULL,
                                timeout_ms bigint DEFAULT NULL,
                                traceparent text DEFAULT NULL)
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
    -- The rule of simplepyq_core::trace::validate_traceparent.
    IF enqueue_msgpack.traceparent !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       OR substr(enqueue_msgpack.traceparent, 4, 32) = repeat('0', 32)
       OR substr(enqueue_msgpack.traceparent, 37, 16) = repeat('0', 16) THEN
        RAISE EXCEPTION 'simplepyq: invalid traceparent %: expected 00-<32 hex>-<16 hex>-<2 hex>, lower case, with ids not all zeros',
            quote_literal(left(enqueue_msgpack.traceparent, 64))
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
                               concurrency_key, timeout_ms, traceparent, status, retries_left,
                               max_retries, attempts, lost_runs, run_at, lease_until,
                               last_error, updated_at)
        VALUES (enqueue_msgpack.channel, enqueue_msgpack.args, at_now,
                coalesce(enqueue_msgpack.priority, 0), enqueue_msgpack.unique_key,
                enqueue_msgpack.concurrency_key, enqueue_msgpack.timeout_ms,
                enqueue_msgpack.traceparent,
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

-- Adds a task with JSON arguments (see msgpack): the function for SQL callers.
--   SELECT simplepyq.enqueue('mail', '{"to": "a@example.com"}');
--   SELECT simplepyq.enqueue('mail', '["a@example.com", 3]', retries => 2,
--                            run_at => now() + interval '5 minutes', unique_key => 'a');
--   SELECT simplepyq.enqueue('charge', '[42]', concurrency_key => 'customer-7',
--                            timeout => interval '30 seconds');
--   SELECT simplepyq.enqueue('mail', '[]',
--            traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
CREATE FUNCTION enqueue(channel text, args jsonb, retries integer DEFAULT 0,
                        priority integer DEFAULT 0, unique_key text DEFAULT NULL,
                        run_at timestamptz DEFAULT NULL, concurrency_key text DEFAULT NULL,
                        timeout interval DEFAULT NULL, traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $$
    SELECT enqueue_msgpack($1, msgpack($2), $3, $4, $5,
                           floor(extract(epoch FROM $6) * 1000)::bigint, NULL, $7,
                           ceil(extract(epoch FROM $8) * 1000)::bigint, $9)
$$;
