-- Priorities and unique keys. Pending tasks are due; delayed ones are promoted to pending
-- when their run-at comes, so that claims walk one index in priority order.
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN unique_key TEXT;

DROP INDEX tasks_queued;

-- Claims: the next pending task of a channel by priority, run-at, id is O(log n).
CREATE INDEX tasks_ready ON tasks (channel, priority DESC, run_at, id)
    WHERE status = 'pending';

-- Promotion, and a channel's next run-at.
CREATE INDEX tasks_delayed ON tasks (channel, run_at, id) WHERE status = 'delayed';

-- At most one unfinished task per channel and unique key.
CREATE UNIQUE INDEX tasks_unique ON tasks (channel, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'delayed', 'running');
