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
    // A service database also carries the service's own migrations (agency, audit): they are
    // not the bus's to know, so they are left alone rather than reported as missing.
    let mut migrator = sqlx::migrate::Migrator::with_migrations(BUS_MIGRATOR.iter().cloned().collect());
    migrator.set_ignore_missing(true);
    migrator.run(pool).await.context("running the bus migrations")
}

/// False only for errors that are a verdict on the data (the statement will fail the same way
/// however often it is retried): SQLSTATE classes 22 (data exception) and 23 (integrity
/// constraint), and values that cannot be encoded or decoded. Everything else — connections,
/// pool timeouts, lock timeouts, disk or system errors, crash recovery — is retried, because
/// dead-lettering a valid referral is worse than waiting.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => !db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => false,
        _ => true,
    }
}

/// The database is unreachable, restarting or out of resources (as opposed to a statement that
/// is wrong): a gRPC caller should retry later (`UNAVAILABLE`).
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        // 08 connection exception, 53 insufficient resources, 57P admin shutdown / crash shutdown /
        // cannot connect now, 40001/40P01 serialization failure / deadlock.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c == "40001" || c == "40P01"),
        _ => false,
    }
}

/// How often a service prunes its inbox.
pub const INBOX_PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Deletes inbox records older than `retention` every `every`, until `shutdown`. The records
/// only have to outlive redeliveries (minutes), so a retention of days is generous. Failures
/// (database down) are logged and retried at the next turn. It prunes the records of every
/// consumer on the database: run one per service process (database), not one per consumer.
pub async fn prune_inbox_periodically(pool: PgPool, retention: Duration, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match prune_inbox(&pool, retention).await {
            Ok(n) => tracing::debug!(deleted = n, "pruned the inbox"),
            Err(e) => tracing::warn!(error = %e, "pruning the inbox failed; will retry"),
        }
    }
}

/// Deletes inbox records older than `retention`, in slices of 5,000 so a large backlog does not
/// hold one long transaction; returns how many.
pub async fn prune_inbox(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    const SLICE: u64 = 5000;
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM inbox WHERE (consumer, message_id) IN (SELECT consumer, message_id FROM inbox
              WHERE received_at < now() - make_interval(secs => $1) LIMIT 5000)",
        )
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < SLICE {
            return Ok(total);
        }
    }
}
