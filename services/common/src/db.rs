//! PostgreSQL pool and the embedded bus migrations (outbox and inbox tables).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
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

/// Which table a housekeeping task prunes.
#[derive(Debug, Clone, Copy)]
pub enum Prune {
    /// Outbox rows sent longer ago than the retention.
    SentOutbox,
    /// Inbox records older than the retention (redeliveries come within minutes; the records
    /// only have to outlive them).
    Inbox,
}

impl Prune {
    fn sql(self) -> &'static str {
        // In slices, so a large backlog does not hold one long transaction.
        match self {
            Prune::SentOutbox => {
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                  WHERE sent_at < now() - make_interval(secs => $1) LIMIT 5000)"
            }
            Prune::Inbox => {
                "DELETE FROM inbox WHERE (consumer, message_id) IN (SELECT consumer, message_id FROM inbox
                  WHERE received_at < now() - make_interval(secs => $1) LIMIT 5000)"
            }
        }
    }
}

/// Deletes what `what` names every `every`, until `shutdown`. Failures (database down) are
/// logged and retried at the next turn.
pub async fn prune_periodically(pool: PgPool, what: Prune, retention: Duration, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match prune_once(&pool, what, retention).await {
            Ok(n) => tracing::debug!(?what, deleted = n, "pruned"),
            Err(e) => tracing::warn!(?what, error = %e, "pruning failed; will retry"),
        }
    }
}

/// Deletes everything `what` names that is older than `retention`; returns how many rows.
/// Unsent outbox rows are never deleted, whatever their age.
pub async fn prune_once(pool: &PgPool, what: Prune, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(what.sql()).bind(retention.as_secs_f64()).execute(pool).await?.rows_affected();
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}
