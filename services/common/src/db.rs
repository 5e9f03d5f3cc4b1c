//! PostgreSQL pools and the embedded bus migrations (outbox and inbox tables).
//!
//! A service keeps two pools, bulkheads between its two kinds of work ([`ServicePools`]): its
//! gRPC calls use one ([`ApiPool`]), its bus work (relay, consumers, pruning) the other, so a
//! flood of calls cannot take the connections that deliver messages.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseConfig;

/// The migrations every service database needs (`migrations/bus`).
pub static BUS_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/bus");

/// A lazily connecting pool of `max_connections`, for a tool or a test that needs one pool:
/// the process starts even when PostgreSQL is momentarily down, and every query waits for a
/// connection at most `acquire_timeout_ms`.
pub fn pool(cfg: &DatabaseConfig) -> PgPool {
    sized(cfg, cfg.max_connections)
}

fn sized(cfg: &DatabaseConfig, connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(cfg.acquire_timeout_ms)
        // A connection that survived a server restart is dead; check before handing it out.
        .test_before_acquire(true)
        .connect_lazy_with(cfg.connect_options())
}

/// A service's two pools, together `max_connections`: `bus` (`bus_connections`) for the outbox
/// relay, the inbox consumers and pruning (and the audit service's watcher and retention), and
/// `api` (the rest) for its gRPC calls. However many calls wait, the bus keeps its connections,
/// so messages are delivered under any client load.
#[derive(Debug, Clone)]
pub struct ServicePools {
    /// The gRPC calls' pool: `max_connections - bus_connections`, busy after `busy_after_ms`.
    pub api: ApiPool,
    /// The bus work's pool: `bus_connections`.
    pub bus: PgPool,
}

impl ServicePools {
    /// Both pools of `cfg`, lazily connecting; refuses a split that leaves either side without
    /// a connection.
    pub fn new(cfg: &DatabaseConfig) -> anyhow::Result<Self> {
        let (calls, bus) = cfg.pool_sizes()?;
        tracing::info!(database = %cfg.database, calls, bus, "database pools");
        Ok(Self { api: ApiPool::new(sized(cfg, calls)).busy_after(cfg.busy_after_ms), bus: sized(cfg, bus) })
    }
}

/// A gRPC call got no database connection because every one of its pool's connections stayed
/// in use by other calls for the whole wait: the service is busy, the database is not down.
/// The caller should retry in a moment (`UNAVAILABLE`, see `server::ApiError`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the service is busy: all {connections} database connections for calls stayed in use for {waited:?}")]
pub struct Busy {
    /// Connections of the calls' pool.
    pub connections: u32,
    /// How long the call waited.
    pub waited: Duration,
}

/// The gRPC calls' side of the database: a pool of their own behind as many slots as it has
/// connections. A call takes a slot, then a connection, and gives both back together.
///
/// * **No call holds a connection while it waits for another**, so calls cannot deadlock the
///   pool (each holding one connection, all waiting for a second): code on a request path holds
///   one [`ApiConn`] or [`ApiTx`] at a time, and takes a second only through
///   [`acquire_if_free`](Self::acquire_if_free), which never waits for another call.
/// * **Why a call got no connection is known.** Waiting `busy_after` for a slot means every
///   connection was in use by other calls: [`Busy`]. A call holding a slot has a connection of
///   the pool reserved for it (idle, or one the pool may open), so failing to get it then means
///   the database cannot be reached: an outage ([`is_outage`]). sqlx alone answers both with
///   `PoolTimedOut` (a refused connect is retried until the same deadline).
#[derive(Debug, Clone)]
pub struct ApiPool {
    pool: PgPool,
    slots: Arc<Semaphore>,
    connections: u32,
    wait: Duration,
}

impl ApiPool {
    /// Calls on `pool`, which nothing else should use: as many slots as it has connections,
    /// busy after waiting its `acquire_timeout` for one (see [`busy_after`](Self::busy_after)).
    pub fn new(pool: PgPool) -> Self {
        let connections = pool.options().get_max_connections();
        let wait = pool.options().get_acquire_timeout();
        Self { slots: Arc::new(Semaphore::new(connections as usize)), pool, connections, wait }
    }

    /// Busy after waiting `wait` for a slot.
    #[must_use]
    pub fn busy_after(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How many connections (and slots) the calls have.
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// A slot, waiting at most the pool's acquire timeout; [`Busy`] after that.
    async fn slot(&self) -> anyhow::Result<OwnedSemaphorePermit> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(slot);
        }
        metrics::counter!("duijie_db_pool_waits_total", "pool" => "api").increment(1);
        match tokio::time::timeout(self.wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            // The semaphore is never closed; say so rather than panic if that ever changes.
            Ok(Err(closed)) => Err(anyhow::Error::new(closed).context("the calls' connection slots are closed")),
            Err(_) => {
                metrics::counter!("duijie_db_pool_busy_total", "pool" => "api").increment(1);
                Err(Busy { connections: self.connections, waited: self.wait }.into())
            }
        }
    }

    /// The pool behind the slots (for its size and idle connections).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn connect(&self, slot: OwnedSemaphorePermit) -> anyhow::Result<ApiConn> {
        let conn = self.pool.acquire().await.context("connecting to the database")?;
        Ok(ApiConn { conn, _slot: slot })
    }

    /// A connection for one call; [`Busy`] if every connection stayed in use by other calls for
    /// the whole wait.
    pub async fn acquire(&self) -> anyhow::Result<ApiConn> {
        let slot = self.slot().await?;
        self.connect(slot).await
    }

    /// A second connection for a call that already holds one, only if a slot is free now:
    /// `None` when every other connection is in use (do the work on the first one instead).
    pub async fn acquire_if_free(&self) -> anyhow::Result<Option<ApiConn>> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => self.connect(slot).await.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// A transaction for one call; [`Busy`] as for [`acquire`](Self::acquire).
    pub async fn begin(&self) -> anyhow::Result<ApiTx> {
        let slot = self.slot().await?;
        let tx = self.pool.begin().await.context("beginning a transaction")?;
        Ok(ApiTx { tx, _slot: slot })
    }
}

impl From<PgPool> for ApiPool {
    fn from(pool: PgPool) -> Self {
        Self::new(pool)
    }
}

/// A call's connection and its slot, given back together when dropped.
#[derive(Debug)]
pub struct ApiConn {
    conn: PoolConnection<Postgres>,
    _slot: OwnedSemaphorePermit,
}

impl Deref for ApiConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for ApiConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A call's transaction and its slot; dropped without [`commit`](Self::commit), it rolls back.
#[derive(Debug)]
pub struct ApiTx {
    tx: Transaction<'static, Postgres>,
    _slot: OwnedSemaphorePermit,
}

impl ApiTx {
    /// Commits, then gives the connection and the slot back.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Deref for ApiTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for ApiTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
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
/// is wrong): a gRPC caller should retry later (`UNAVAILABLE`). `PoolTimedOut` is an outage
/// here because a call meets it only holding an [`ApiPool`] slot, when the pool could not
/// connect for the whole wait; a call that found every connection in use gets [`Busy`] instead.
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
