//! Running the audit service: migrations and partitions, the tap consumer and its lag reports,
//! the deadline notices and their relay, retention, and the gRPC server, under one supervisor.
//! The gRPC calls and the bus work have database pools of their own ([`db::ServicePools`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use duijie_common::amqp::{Connector, Topology};
use duijie_common::config::{self, BusConfig};
use duijie_common::inbox::{Consumer, ConsumerStats};
use duijie_common::outbox::Relay;
use duijie_common::server::{self, GrpcConfig};
use duijie_common::{CancellationToken, db, metrics, shutdown};
use serde::Deserialize;
use sqlx::PgPool;
use tokio::task::JoinSet;

use crate::store::AuditStore;

/// The audit service's configuration (`config/audit/base.yaml`, then `DUIJIE_*` variables).
#[derive(Debug, Clone, Deserialize)]
pub struct AuditServiceConfig {
    #[serde(flatten)]
    pub bus: BusConfig,
    pub grpc: GrpcConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Signed handoffs: the CA(s) whose agencies' signatures the store accepts, and the audit
    /// service's own key (`service-audit.pem` in `keys`), which signs the deadline notices and
    /// the anchors.
    pub signing: duijie_common::signing::SigningConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    /// How long the log is kept (days); at least 180 (Cybersecurity Law art. 21: six months).
    pub retention_days: u32,
    /// How often running limits are checked for notices (ms).
    #[serde(with = "config::duration_ms")]
    pub deadline_scan_ms: Duration,
    /// A DeadlineWarning goes out this long before a limit falls due (ms).
    #[serde(with = "config::duration_ms")]
    pub warn_before_ms: Duration,
    /// How many hash chains new cases are spread over (at least 1). Each chain has its own
    /// head, so writers appending different chains do not wait for each other. It may grow at
    /// any time (cases already in the log stay on their chain); it should not shrink, since the
    /// chains beyond it would then take no new cases.
    pub chains: u32,
    /// How often a tree head over the chains' heads is recorded and signed with the audit
    /// service's key (an anchor for the witnesses), if the log moved (ms).
    #[serde(with = "config::duration_ms")]
    pub tree_head_ms: Duration,
    /// How often the audit service tells the agency services' audit gates how far behind it is
    /// (ms, default 1 s; they ignore a report older than their `audit_gate.status_stale_ms`).
    #[serde(with = "config::duration_ms")]
    pub status_interval_ms: Duration,
    /// The parties' lookup by case code (`audit.lookup`): who may ask, the access-code secret
    /// (`DUIJIE_AUDIT__LOOKUP__ACCESS_CODE_SECRET`), the rate limits.
    pub lookup: crate::lookup::LookupConfig,
    /// The case data keys' custody (`audit.keys`): the master key, from the environment.
    pub keys: crate::keys::KeysConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 183,
            deadline_scan_ms: Duration::from_secs(60),
            warn_before_ms: Duration::from_secs(24 * 3600),
            chains: 1,
            tree_head_ms: Duration::from_secs(600),
            status_interval_ms: Duration::from_secs(1),
            lookup: crate::lookup::LookupConfig::default(),
            keys: crate::keys::KeysConfig::default(),
        }
    }
}

/// The shortest retention the law allows (six months).
pub const MIN_RETENTION_DAYS: u32 = 180;

/// A started audit service.
pub struct Running {
    pub addr: std::net::SocketAddr,
    /// The service's bus pool (consumer, relay, watcher), also for tests' direct queries.
    pub pool: PgPool,
    /// One per partition of the tap.
    pub consumers: Vec<std::sync::Arc<ConsumerStats>>,
    /// Where `/metrics` is served (`metrics.listen`), if it is.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the plaintext health listener is (`grpc.health_listen`), if there is one.
    pub health_addr: Option<std::net::SocketAddr>,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Creates the coming months' partitions and drops those past retention, leaving a checkpoint
/// per chain (the chain's last dropped record's sequence number and hash) so verification
/// continues from there. Recording times never go back along a chain, so a dropped month is a
/// prefix of every chain.
pub async fn maintain_partitions(pool: &PgPool, retention_days: u32) -> anyhow::Result<()> {
    sqlx::query("SELECT audit_ensure_partitions(2)").execute(pool).await.context("creating partitions")?;
    let old: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT c.relname::text, to_timestamp(substring(c.relname from 'audit_log_(\\d{4}_\\d{2})'), 'YYYY_MM') + interval '1 month'
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relname = 'audit_log' AND c.relname ~ '^audit_log_\\d{4}_\\d{2}$'",
    )
    .fetch_all(pool)
    .await
    .context("listing partitions")?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
    for (name, ends) in old {
        if ends > cutoff {
            continue;
        }
        let mut tx = pool.begin().await?;
        let last: Vec<(i32, i64, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT ON (chain) chain, seq, hash FROM \"{name}\" ORDER BY chain, seq DESC"
        )))
        .fetch_all(&mut *tx)
        .await?;
        for (chain, seq, hash) in last {
            sqlx::query("INSERT INTO audit_checkpoints (chain, seq, hash, dropped) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(chain)
                .bind(seq)
                .bind(hash)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER TABLE audit_log DETACH PARTITION \"{name}\"; DROP TABLE \"{name}\"")))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("dropping partition {name}"))?;
        tx.commit().await?;
        tracing::info!(partition = %name, "dropped past retention");
    }
    Ok(())
}

/// Starts the audit service with `cfg`.
pub async fn start(cfg: AuditServiceConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    if cfg.audit.retention_days < MIN_RETENTION_DAYS {
        anyhow::bail!("audit.retention_days: {} is below the legal minimum of {MIN_RETENTION_DAYS} days", cfg.audit.retention_days);
    }
    anyhow::ensure!(!cfg.audit.status_interval_ms.is_zero(), "audit.status_interval_ms must be above 0");
    let l = &cfg.audit.lookup;
    anyhow::ensure!(
        l.address_attempts > 0 && l.case_failures > 0 && !l.address_window_ms.is_zero() && !l.case_window_ms.is_zero(),
        "audit.lookup: the attempts and windows must be above 0"
    );
    if l.access_code_secret.is_none() {
        tracing::info!("audit.lookup.access_code_secret not set: parties' access codes are neither issued nor accepted");
    }
    let tls = cfg.grpc.tls.read().context("reading the TLS files")?;
    let master = cfg.audit.keys.master()?;
    // Bulkheads: gRPC calls on one pool; the tap consumer, the relay, the deadline notices,
    // retention and pruning on the other.
    let pools = db::ServicePools::new(&cfg.bus.database)?;
    let mut samplers = metrics::Samplers::default().with(metrics::pools_sampler(pools.clone())).with(metrics::outbox_sampler(pools.bus.clone()));
    let pool = pools.bus;
    crate::migrator().run(&pool).await.context("migrating the audit database")?;
    maintain_partitions(&pool, cfg.audit.retention_days).await?;
    let mut conn = pool.acquire().await.context("connecting to the audit database")?;
    crate::store::ensure_chains(&mut conn, cfg.audit.chains).await.context("creating the chains' heads")?;
    drop(conn);
    let connector = Connector::new(cfg.bus.amqp.clone());
    let topology = Topology::new(cfg.bus.topology.clone());
    let signer = Arc::new(cfg.signing.signer_for_service("audit").context("signing: the audit service's certificate and key")?);
    anyhow::ensure!(signer.has(duijie_common::signing::AUDIT_SIGNER), "signing: service-audit.pem must name {}", duijie_common::signing::AUDIT_SIGNER);
    let verifier = Arc::new(cfg.signing.verifier().context("signing: the CA")?);
    let relay = Relay::new(pool.clone(), connector.clone(), cfg.bus.relay.clone(), "audit-relay").with_signer(signer.clone());
    let waker = relay.waker();
    // One consumer per partition of the tap, all under the inbox key "audit" (a message is in
    // one partition only); each partition has one active consumer among the replicas.
    let store = AuditStore::default().with_chains(cfg.audit.chains);
    let consumers: Vec<Consumer<AuditStore>> = topology
        .tap_queues()
        .into_iter()
        .map(|q| {
            Consumer::new("audit", q, pool.clone(), connector.clone(), topology.clone(), cfg.bus.consumer.clone(), store.clone())
                // Refused signatures are recorded as refused, not dead-lettered: the log shows the forgery.
                .with_verifier(verifier.clone(), duijie_common::inbox::BadSignature::Deliver)
        })
        .collect();
    let consumer_stats: Vec<_> = consumers.iter().map(Consumer::stats).collect();
    samplers = samplers.with(metrics::relay_sampler(relay.stats()));
    for (queue, stats) in topology.tap_queues().into_iter().zip(&consumer_stats) {
        samplers = samplers.with(metrics::consumer_sampler(queue, stats.clone()));
    }
    samplers = samplers.with(audit_sampler(consumer_stats.clone()));
    let listener = tokio::net::TcpListener::bind(cfg.grpc.listen).await.with_context(|| format!("listening on {}", cfg.grpc.listen))?;
    let addr = listener.local_addr()?;
    let token = shutdown.child_token();
    let mut tasks: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
    let t = token.clone();
    tasks.spawn(async move { ("relay".to_owned(), relay.run(t).await) });
    for consumer in consumers {
        let t = token.clone();
        tasks.spawn(async move { ("tap consumer".to_owned(), consumer.run(t).await) });
    }
    let (c, top, stats, every, s, t) = (connector, topology.clone(), consumer_stats.clone(), cfg.audit.status_interval_ms, signer.clone(), token.clone());
    tasks.spawn(async move { ("lag reports".to_owned(), crate::status::run(c, top, stats, every, s, t).await) });
    let (p, top, t, a) = (pool.clone(), topology.clone(), token.clone(), cfg.audit.clone());
    tasks.spawn(async move { ("deadline notices".to_owned(), crate::watch::run(p, top, waker, a.warn_before_ms, a.deadline_scan_ms, t).await) });
    let (p, t, days) = (pool.clone(), token.clone(), cfg.audit.retention_days);
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = t.cancelled() => return ("retention".to_owned(), Ok(())),
                () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            if let Err(e) = maintain_partitions(&p, days).await {
                tracing::warn!(error = format!("{e:#}"), "partition maintenance failed; retrying in an hour");
            }
        }
    });
    let (p, t, every, s) = (pool.clone(), token.clone(), cfg.audit.tree_head_ms, signer.clone());
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = t.cancelled() => return ("tree heads".to_owned(), Ok(())),
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = crate::tree::record(&p, &s).await {
                tracing::warn!(error = format!("{e:#}"), "cannot record a tree head; retrying at the next interval");
            }
        }
    });
    let (p, t, retention) = (pool.clone(), token.clone(), cfg.bus.consumer.inbox_retention);
    tasks.spawn(async move {
        db::prune_inbox_periodically(p, retention, db::INBOX_PRUNE_INTERVAL, t).await;
        ("inbox pruning".to_owned(), Ok(()))
    });
    let routes = tonic::service::Routes::new(crate::api::AuditApi::server_anchored(
        pools.api,
        cfg.audit.lookup.clone(),
        Some(verifier.clone()),
        Some(signer.clone()),
        Some(master),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_service = health_service.max_decoding_message_size(server::MAX_REQUEST_BYTES);
    let (metrics_addr, health_addr) = server::spawn_ops_listeners(&mut tasks, &cfg.bus.metrics, samplers, &cfg.grpc, &health, &token).await?;
    let routes = routes.add_service(health_service);
    let (t, grace) = (token.clone(), cfg.grpc.grace_ms);
    tasks.spawn(async move { ("grpc".to_owned(), server::serve_with_health("audit", listener, routes, health, &tls, t, grace).await) });
    tracing::info!(%addr, "audit serving");
    let handle = tokio::spawn(shutdown::supervise(tasks, token, grace));
    Ok(Running { addr, pool, consumers: consumer_stats, metrics_addr, health_addr, shutdown, handle })
}

/// The audit store's own figures: records appended (every tap message recorded, refused ones
/// included) and the age of the oldest tap message in hand.
fn audit_sampler(consumers: Vec<Arc<ConsumerStats>>) -> metrics::Sampler {
    Arc::new(move || {
        let appended: u64 = consumers.iter().map(|c| c.applied.load(std::sync::atomic::Ordering::Relaxed)).sum();
        let now = chrono::Utc::now();
        let lag = consumers.iter().filter_map(|c| c.holding_since()).map(|since| (now - since).num_milliseconds().max(0)).max().unwrap_or(0);
        Box::pin(async move {
            ::metrics::counter!("duijie_audit_appended_total").absolute(appended);
            #[allow(clippy::cast_precision_loss)] // milliseconds of lag: far below 2^52
            ::metrics::gauge!("duijie_audit_lag_seconds").set(lag as f64 / 1000.0);
        })
    })
}

/// The whole `duijie-audit` process (configuration from `DUIJIE_CONFIG_DIR`, default
/// `config/audit`).
pub async fn main() -> std::process::ExitCode {
    duijie_common::process::run_service(
        "audit",
        |cfg: AuditServiceConfig, shutdown| async move {
            let running = start(cfg, shutdown).await?;
            Ok((running.addr, running.handle))
        },
        |cfg: AuditServiceConfig| async move {
            let pool = db::pool(&cfg.bus.database);
            crate::migrator().run(&pool).await.context("migrating the audit database")?;
            maintain_partitions(&pool, cfg.audit.retention_days).await?;
            pool.close().await;
            Ok(())
        },
    )
    .await
}
