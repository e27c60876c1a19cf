-- A done task's result: what its handler gave when it succeeded (MessagePack; NULL for
-- none), written in the same write as `done` (InspectStore::result reads it).
ALTER TABLE simplepyq_tasks ADD COLUMN result BLOB;
