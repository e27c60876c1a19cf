-- Running attempts whose handler ran past its timeout and cannot be stopped
-- (OutcomeStore::mark_stuck), for the dashboards of every process and machine: a mark counts
-- while its attempt is its task's running attempt, and is ignored (then forgotten) after.
CREATE TABLE stuck (
    id bigint PRIMARY KEY,
    attempt bigint NOT NULL,
    since bigint NOT NULL
);
