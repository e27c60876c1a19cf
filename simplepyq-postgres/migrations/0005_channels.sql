-- Flow settings of channels, obeyed by every process and machine claiming from the schema
-- (FlowStore): a row only for a channel whose settings are not the defaults.
CREATE TABLE channels (
    channel text PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    max_running integer CHECK (max_running > 0)  -- NULL: no limit
);
