-- A channel's rate of starts per concurrency key (FlowStore::set_rate_per_key:
-- key_rate_starts per window of key_rate_per_ms for each key, NULL for none), and each key's
-- last window (its start, and the starts counted in it). Windows before a claim's current
-- one are deleted by the claim, found by the second index.
ALTER TABLE channels ADD COLUMN key_rate_starts integer CHECK (key_rate_starts > 0);
ALTER TABLE channels ADD COLUMN key_rate_per_ms bigint CHECK (key_rate_per_ms > 0);
CREATE TABLE key_windows (
    channel text NOT NULL,
    key text NOT NULL,
    window_start bigint NOT NULL,
    window_used integer NOT NULL,
    PRIMARY KEY (channel, key)
);
CREATE INDEX key_windows_start ON key_windows (channel, window_start);
