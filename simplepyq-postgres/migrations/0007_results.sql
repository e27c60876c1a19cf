-- A done task's result: what its handler gave when it succeeded (MessagePack; NULL for
-- none), written in the same statement as `done` (InspectStore::result reads it).
ALTER TABLE tasks ADD COLUMN result bytea;
