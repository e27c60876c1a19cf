-- One partial index per status a query looks for, instead of one index on
-- (channel, status, updated_at) that every change of status rewrote (a delete and an insert
-- in it for each claim and each outcome), and one index of the running tasks' leases
-- instead of two. A pending task now costs its row and `tasks_ready`; a claim and an
-- outcome each move the task from one small index to another.
DROP INDEX tasks_channel_status;
DROP INDEX tasks_leases;

CREATE INDEX tasks_failed ON tasks (channel, id) WHERE status = 'failed';
CREATE INDEX tasks_done ON tasks (channel, updated_at) WHERE status = 'done';

-- The unique keys of unfinished tasks, by a condition SQLite tests with two comparisons: a
-- list of three values (`IN ('pending', 'delayed', 'running')`) is built into a temporary
-- table at every insert and every change of status.
DROP INDEX tasks_unique;
CREATE UNIQUE INDEX tasks_unique ON tasks (channel, unique_key)
    WHERE unique_key IS NOT NULL AND status NOT IN ('done', 'failed');
