-- Flow settings of channels, obeyed by every process claiming from the file (FlowStore): a
-- row only for a channel whose settings are not the defaults.
CREATE TABLE simplepyq_channels (
    channel    TEXT    PRIMARY KEY,
    paused      INTEGER NOT NULL DEFAULT 0,
    max_running INTEGER                      -- NULL: no limit
) WITHOUT ROWID;
