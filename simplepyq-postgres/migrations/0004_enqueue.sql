-- Enqueueing from SQL, in the caller's own transaction: psql, triggers, and clients in any
-- language (SELECT simplepyq.enqueue('mail', '{"to": "a@example.com"}')). The task commits
-- with the caller's transaction, or rolls back with it; its NOTIFY is delivered at the
-- commit. Each function runs with the search path of this migration: the queue's schema.

-- MessagePack, the format of tasks.args, of a JSON value: null, booleans, strings, arrays
-- and objects (maps) as themselves; a number as an integer when it is whole and fits 64
-- bits, else as a 64-bit float. Rust handlers decode it as they decode what a Rust
-- producer wrote (a JSON array into a tuple, an object into a struct), Python handlers get
-- the same value back.
CREATE FUNCTION msgpack(value jsonb) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path FROM CURRENT
AS $$
DECLARE
    n numeric;
    whole bigint;
    body bytea;
    len bigint;
BEGIN
    CASE jsonb_typeof(value)
    WHEN 'null' THEN
        RETURN '\xc0'::bytea;
    WHEN 'boolean' THEN
        RETURN CASE WHEN value::boolean THEN '\xc3'::bytea ELSE '\xc2'::bytea END;
    WHEN 'number' THEN
        n := value::numeric;
        IF n = trunc(n) AND n BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
            whole := n::bigint;
            IF whole BETWEEN -32 AND 127 THEN
                -- A fixint: the value's low byte.
                RETURN substring(int8send(whole) FROM 8);
            END IF;
            RETURN '\xd3'::bytea || int8send(whole);
        END IF;
        RETURN '\xcb'::bytea || float8send(n::float8);
    WHEN 'string' THEN
        body := convert_to(value #>> '{}', 'UTF8');
        RETURN msgpack_header(octet_length(body), 160, 31, 217, 218, 219) || body;
    WHEN 'array' THEN
        SELECT coalesce(string_agg(msgpack(e), ''::bytea ORDER BY i), ''::bytea), count(*)
            INTO body, len
            FROM jsonb_array_elements(value) WITH ORDINALITY AS a(e, i);
        RETURN msgpack_header(len, 144, 15, NULL, 220, 221) || body;
    ELSE
        SELECT coalesce(string_agg(msgpack(to_jsonb(k)) || msgpack(v), ''::bytea), ''::bytea),
               count(*)
            INTO body, len
            FROM jsonb_each(value) AS o(k, v);
        RETURN msgpack_header(len, 128, 15, NULL, 222, 223) || body;
    END CASE;
END
$$;

-- The head of a MessagePack string, array or map of n items: the fix form (fix + n) up to
-- fix_max, else the 8-bit (if the type has one), 16-bit or 32-bit length form.
CREATE FUNCTION msgpack_header(n bigint, fix integer, fix_max integer, m8 integer,
                               m16 integer, m32 integer) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN n <= fix_max THEN substring(int4send(fix + n::integer) FROM 4)
        WHEN m8 IS NOT NULL AND n < 256 THEN
            substring(int4send(m8) FROM 4) || substring(int4send(n::integer) FROM 4)
        WHEN n < 65536 THEN
            substring(int4send(m16) FROM 4) || substring(int4send(n::integer) FROM 3)
        ELSE substring(int4send(m32) FROM 4) || int4send(n::integer)
    END
$$;

-- Milliseconds since the Unix epoch by the server's clock: the store's time.
CREATE FUNCTION clock_millis() RETURNS bigint
LANGUAGE sql VOLATILE
AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Adds a task whose arguments are MessagePack already, by the rule of the store's enqueue
-- (ClaimStore::enqueue): pending if due at `now`, else delayed; a unique key that an
-- unfinished task of the channel holds returns that task's id and adds nothing. `now` and
-- `run_at` are milliseconds since the Unix epoch (NULL: the server's clock). Returns the
-- task's id, and wakes the queue's workers once the caller's transaction commits.
CREATE FUNCTION enqueue_msgpack(channel text, args bytea, retries bigint DEFAULT 0,
                                priority integer DEFAULT 0, unique_key text DEFAULT NULL,
                                run_at bigint DEFAULT NULL, now bigint DEFAULT NULL)
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
        INSERT INTO tasks AS t (channel, args, created_at, priority, unique_key, status,
                               retries_left, max_retries, attempts, lost_runs, run_at,
                               lease_until, last_error, updated_at)
        VALUES (enqueue_msgpack.channel, enqueue_msgpack.args, at_now,
                coalesce(enqueue_msgpack.priority, 0), enqueue_msgpack.unique_key,
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
CREATE FUNCTION enqueue(channel text, args jsonb, retries integer DEFAULT 0,
                        priority integer DEFAULT 0, unique_key text DEFAULT NULL,
                        run_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $$
    SELECT enqueue_msgpack($1, msgpack($2), $3, $4, $5,
                           floor(extract(epoch FROM $6) * 1000)::bigint, NULL)
$$;
