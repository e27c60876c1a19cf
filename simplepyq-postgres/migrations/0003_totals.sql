-- What became of runs, per channel (simplepyq_core::Totals), counted by the statement that
-- records them. A channel has up to 16 rows: each connection adds to the one of its server
-- process (pg_backend_pid() % 16), so that workers of many processes and machines do not
-- queue on one row lock; reads sum them. A schema made before this version counts from its
-- upgrade on.
CREATE TABLE totals (
    channel    text     NOT NULL,
    shard      smallint NOT NULL,
    done       bigint   NOT NULL DEFAULT 0,
    failed     bigint   NOT NULL DEFAULT 0,
    retried    bigint   NOT NULL DEFAULT 0,
    lease_lost bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, shard)
);
