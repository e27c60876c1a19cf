-- Running attempts whose handler ran past its timeout and cannot be stopped
-- (OutcomeStore::mark_stuck), for the dashboards of every process: a mark counts while its
-- attempt is its task's running attempt, and is ignored (then forgotten) after.
CREATE TABLE simplepyq_stuck (
    id INTEGER PRIMARY KEY,
    attempt INTEGER NOT NULL,
    since INTEGER NOT NULL
);
