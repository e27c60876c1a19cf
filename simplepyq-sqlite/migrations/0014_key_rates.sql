-- A channel's rate of starts per concurrency key (FlowStore::set_rate_per_key:
-- key_rate_starts per window of key_rate_per_ms for each key, NULL for none), and each key's
-- last window (its start, and the starts counted in it). Windows before a claim's current
-- one are deleted by the claim, found by the second index.
ALTER TABLE simplepyq_channels ADD COLUMN key_rate_starts INTEGER CHECK (key_rate_starts > 0);
ALTER TABLE simplepyq_channels ADD COLUMN key_rate_per_ms INTEGER CHECK (key_rate_per_ms > 0);
CREATE TABLE simplepyq_key_windows (
    channel      TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    window_used  INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE INDEX simplepyq_key_windows_start ON simplepyq_key_windows (channel, window_start);
