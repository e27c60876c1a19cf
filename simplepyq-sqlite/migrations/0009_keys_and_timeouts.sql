-- Concurrency keys: tasks of a channel with the same key run at most the channel's
-- max_running_per_key at a time, across every process (FlowStore::set_max_running_per_key).
-- The index counts a key's running tasks, and finds whether a channel has keyed tasks
-- pending, in one seek each.
ALTER TABLE simplepyq_tasks ADD COLUMN concurrency_key TEXT;
CREATE INDEX simplepyq_tasks_keys ON simplepyq_tasks (channel, status, concurrency_key)
    WHERE concurrency_key IS NOT NULL;
ALTER TABLE simplepyq_channels ADD COLUMN max_running_per_key INTEGER NOT NULL DEFAULT 1
    CHECK (max_running_per_key > 0);
-- A channel's rate of starts (FlowStore::set_rate: rate_starts per window of rate_per_ms,
-- NULL for none) and its last window (its start, and the starts counted in it).
ALTER TABLE simplepyq_channels ADD COLUMN rate_starts INTEGER CHECK (rate_starts > 0);
ALTER TABLE simplepyq_channels ADD COLUMN rate_per_ms INTEGER CHECK (rate_per_ms > 0);
ALTER TABLE simplepyq_channels ADD COLUMN window_start INTEGER;
ALTER TABLE simplepyq_channels ADD COLUMN window_used INTEGER NOT NULL DEFAULT 0;
-- A task's own timeout of one run, in milliseconds (NULL: its channel's).
ALTER TABLE simplepyq_tasks ADD COLUMN timeout_ms INTEGER CHECK (timeout_ms > 0);
