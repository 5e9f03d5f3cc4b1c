//! PostgreSQL pool and the embedded bus migrations (outbox and inbox tables).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseConfig;

/// The migrations every service database needs (`migrations/bus`).
pub static BUS_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/bus");

/// A lazily connecting pool: the service starts even when PostgreSQL is momentarily down,
/// and every query waits for a connection at most `acquire_timeout`.
pub fn pool(cfg: &DatabaseConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // A connection that survived a server restart is dead; check before handing it out.
        .test_before_acquire(true)
        .connect_lazy_with(cfg.connect_options())
}

/// Applies the bus migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    BUS_MIGRATOR.run(pool).await.context("running the bus migrations")
}

/// True for errors that say nothing about the data: the connection or the server went away,
/// the pool timed out. Such work is retried; anything else is a verdict on the data.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // Class 08 connection exception, 40 transaction rollback (serialization, deadlock),
            // 53 insufficient resources, 57 operator intervention (admin shutdown, crash recovery).
            db.code().is_some_and(|c| ["08", "40", "53", "57"].iter().any(|p| c.starts_with(p)))
        }
        _ => false,
    }
}
