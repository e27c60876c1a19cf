//! The settings of a [`PostgresStore`](crate::PostgresStore)(crate::PostgresStore).

use std::time::Duration;

/// Settings of a [`PostgresStore`](crate::PostgresStore).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The most connections the store opens (8 by default). Workers share them: one is
    /// taken for each statement, never while a handler runs.
    pub pool_size: u32,
    /// The schema that holds the queue's tables (`simplepyq` by default). Queues in
    /// different schemas of one database are independent.
    pub schema: String,
    /// How long one statement may run on the server before it is cancelled (30 s by
    /// default); the call then fails with [`Error::Busy`](simplepyq_core::Error::Busy) and
    /// changes nothing.
    pub statement_timeout: Duration,
    /// How long to wait for a connection (10 s by default), and how long the network may
    /// stay silent under a request before the connection is given up.
    pub connect_timeout: Duration,
    /// Whether adding work notifies the queues of other processes (`NOTIFY`), so that an
    /// idle worker anywhere starts it within milliseconds instead of at its next poll (on
    /// by default). Each notifying transaction takes a database-wide lock for a moment at
    /// commit; see BENCHMARKS.md for what that costs at high enqueue rates.
    pub notify: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            schema: "simplepyq".to_owned(),
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            notify: true,
        }
    }
}

impl PostgresOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the most connections the store opens.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets the schema of the queue's tables.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets how long one statement may run.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets how long to wait for a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets whether adding work notifies other processes' queues.
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }
}
