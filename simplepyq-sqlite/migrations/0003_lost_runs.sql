-- Lost runs: a run whose lease expired before its outcome was recorded uses no retry; it is
-- counted here, and the run past the queue's bound fails the task.
ALTER TABLE tasks ADD COLUMN lost_runs INTEGER NOT NULL DEFAULT 0;
