-- The trace context of the code that enqueued a task: a W3C traceparent (NULL for none),
-- read by the handler's span in whichever process runs it (simplepyq_core::trace).
ALTER TABLE simplepyq_tasks ADD COLUMN traceparent TEXT;
