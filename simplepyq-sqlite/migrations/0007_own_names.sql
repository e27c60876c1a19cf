-- The queue's tables under names of their own, so that a queue can live in an application's
-- database beside the application's tables (its own `tasks`, say), and its schema version
-- in a table of its own: PRAGMA user_version and application_id are left to the
-- application (the migration clears them). Index names are global in a database: they
-- are made anew under the new names.
ALTER TABLE tasks RENAME TO simplepyq_tasks;
ALTER TABLE schedules RENAME TO simplepyq_schedules;
ALTER TABLE totals RENAME TO simplepyq_totals;

DROP INDEX tasks_channel_leases;
DROP INDEX tasks_ready;
DROP INDEX tasks_delayed;
DROP INDEX tasks_failed;
DROP INDEX tasks_done;
DROP INDEX tasks_unique;
CREATE INDEX simplepyq_tasks_channel_leases ON simplepyq_tasks (channel, lease_until)
    WHERE status = 'running';
CREATE INDEX simplepyq_tasks_ready ON simplepyq_tasks (channel, priority DESC, run_at, id)
    WHERE status = 'pending';
CREATE INDEX simplepyq_tasks_delayed ON simplepyq_tasks (channel, run_at, id)
    WHERE status = 'delayed';
CREATE INDEX simplepyq_tasks_failed ON simplepyq_tasks (channel, id) WHERE status = 'failed';
CREATE INDEX simplepyq_tasks_done ON simplepyq_tasks (channel, updated_at) WHERE status = 'done';
CREATE UNIQUE INDEX simplepyq_tasks_unique ON simplepyq_tasks (channel, unique_key)
    WHERE unique_key IS NOT NULL AND status NOT IN ('done', 'failed');

CREATE TABLE simplepyq_schema (
    version    INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL      -- milliseconds since the Unix epoch
);
