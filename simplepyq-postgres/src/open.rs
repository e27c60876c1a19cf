//! Connecting: the pool, the schema and its migrations, the server's clock, the listener.

use std::str::FromStr;
use std::time::Duration;

use simplepyq_core::{Error, Result};

use crate::error::{self, E};
use crate::pool::Manager;
use crate::{PostgresOptions, PostgresStore, ServerClock, listen, off_runtime, schema};

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or a `key=value` connection
    /// string) with default options, creating or migrating the queue's schema.
    ///
    /// Errors, each changing nothing: [`Error::Foreign`] if the schema has a `tasks` table
    /// that is not a queue's, [`Error::SchemaTooNew`] for a schema of a newer simplepyq,
    /// [`Error::Unavailable`] when the server cannot be reached (with the driver's reason),
    /// and [`Error::InvalidConfig`] for a connection string or schema name that is not one.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default())
    }

    /// Connects to an existing queue to read it only, as an inspecting tool should: nothing
    /// is created or migrated, and every session is read-only, so each write fails with
    /// [`Error::ReadOnly`]. Errors as [`PostgresStore::connect`], and [`Error::Foreign`]
    /// when the schema holds no queue.
    pub fn connect_read_only(url: &str, options: PostgresOptions) -> Result<Self> {
        Self::open(url, options, true)
    }

    /// Connects to the database at `url` with `options`.
    pub fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        Self::open(url, options, false)
    }

    pub(crate) fn open(url: &str, options: PostgresOptions, read_only: bool) -> Result<Self> {
        off_runtime(move || Self::open_here(url, options, read_only))
    }

    pub(crate) fn open_here(url: &str, options: PostgresOptions, read_only: bool) -> Result<Self> {
        schema::check_name(&options.schema)?;
        if options.pool_size == 0 {
            return Err(Error::InvalidConfig(
                "the pool size must be at least 1".into(),
            ));
        }
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| Error::InvalidConfig(format!("the PostgreSQL connection string: {e}")))?;
        let mut session = config.get_options().unwrap_or_default().to_owned();
        session.push_str(&format!(
            " -c search_path={} -c statement_timeout={}",
            options.schema,
            options.statement_timeout.as_millis()
        ));
        if read_only {
            session.push_str(" -c default_transaction_read_only=on");
        }
        config.options(session.trim_start());
        if config.get_application_name().is_none() {
            config.application_name("simplepyq");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        // A link that is cut leaves a request waiting for an answer that never comes: the
        // kernel gives the connection up once data stays unacknowledged this long.
        config.tcp_user_timeout(options.connect_timeout);
        config.keepalives_idle(Duration::from_secs(5));
        let manager = Manager {
            config: config.clone(),
        };
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(options.connect_timeout)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        let mut conn = pool.get().map_err(|e| Error::from(E::from(e)))?;
        if read_only {
            let version = schema::version(&mut conn.client, &options.schema)?;
            if version == 0 {
                return Err(Error::Foreign {
                    backend: error::BACKEND,
                    message: format!("the schema {} holds no simplepyq queue", options.schema),
                });
            }
            if version < schema::latest() {
                return Err(Error::ReadOnly {
                    backend: error::BACKEND,
                    message: format!(
                        "the schema {} is of version {version} and this build reads version \
                         {}: connect once without read-only (any worker does) to migrate it",
                        options.schema,
                        schema::latest()
                    ),
                });
            }
        } else {
            schema::migrate(&mut conn.client, &options.schema)?;
        }
        let clock = ServerClock::measure_system(&mut conn.client)?;
        drop(conn);
        Ok(PostgresStore {
            pool: Some(pool),
            notifier: options
                .notify
                .then(|| listen::Notifier::new(&config, &options.schema)),
            config,
            schema: options.schema,
            clock,
            gather: crate::gather::Gather::default(),
        })
    }
}
