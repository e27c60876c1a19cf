-- One partial index per status a query looks for, instead of one index on
-- (channel, status, updated_at) that every change of status rewrote (a delete and an insert
-- in it for each claim and each outcome), and one index of the running tasks' leases
-- instead of two. A pending task now costs its row and `tasks_ready`; a claim and an
-- outcome each move the task from one small index to another.
DROP INDEX tasks_channel_status;
DROP INDEX tasks_leases;

CREATE INDEX tasks_failed ON tasks (channel, id) WHERE status = 'failed';
CREATE INDEX tasks_done ON tasks (channel, updated_at) WHERE status = 'done';
