-- Periodic tasks: each schedule's last firing (milliseconds since the Unix epoch). A firing
-- is recorded, and its task inserted, in one transaction only if it is later than this.
CREATE TABLE schedules (
    name       text   PRIMARY KEY,
    last_fired bigint NOT NULL
);
