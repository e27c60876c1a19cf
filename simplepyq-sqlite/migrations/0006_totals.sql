-- What became of runs, per channel (simplepyq_core::Totals), counted in the transaction that
-- records them. A file made before this version counts from its upgrade on.
CREATE TABLE totals (
    channel    TEXT    PRIMARY KEY,
    done       INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0,
    retried    INTEGER NOT NULL DEFAULT 0,
    lease_lost INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
