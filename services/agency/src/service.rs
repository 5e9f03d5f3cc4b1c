//! Running one agency service: configuration, database migrations, the outbox relay, one inbox
//! consumer per partition of its kind (every agency of the kind in the directory), inbox pruning, the audit gate, and the gRPC server (mTLS,
//! health with the gate as `duijie.audit_gate`, reflection), all under one supervisor with
//! graceful shutdown. The gRPC calls and the bus work have database pools of their own
//! ([`db::ServicePools`]). The five service binaries
//! differ only in their kind and their gRPC routes.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use duijie_common::amqp::{Connector, Topology};
use duijie_common::directory::LiveDirectory;
use duijie_domain::AgencyNode;
use duijie_common::config::BusConfig;
use duijie_common::inbox::{BadSignature, Consumer, ConsumerStats};
use duijie_common::outbox::{Relay, RelayStats};
use duijie_common::server::{self, GrpcConfig};
use duijie_common::{CancellationToken, db, metrics, shutdown};
use duijie_proto::v1::AgencyKind;
use serde::Deserialize;
use tokio::task::JoinSet;
use tonic::service::Routes;

use crate::Agency;

/// An agency service's configuration (`config/<service>/base.yaml`, then `DUIJIE_*`
/// environment variables, e.g. `DUIJIE_DATABASE__PASSWORD`, `DUIJIE_GRPC__LISTEN`).
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    #[serde(flatten)]
    pub bus: BusConfig,
    pub grpc: GrpcConfig,
    /// No longer read: a service acts for every agency of its kind in the directory (issue
    /// #15). Refused when present, so a configuration that still limits a process to some
    /// agencies is not silently taken for one serving them all.
    #[serde(default)]
    pub nodes: Option<Vec<AgencyNode>>,
    /// The deployment's agency directory file ([`duijie_common::directory::Directory`]): a referral or hand-over to an
    /// agency not in it is refused as an unknown agency. Read again when it changes (looked at
    /// every `directory_reload_ms`), so an agency added to it needs no restart.
    pub directory: PathBuf,
    /// How often to look whether the directory file changed (ms, default 5 s).
    #[serde(default = "default_directory_reload", with = "duijie_common::config::duration_ms")]
    pub directory_reload_ms: std::time::Duration,
    /// Pause new referrals while the audit store cannot record.
    #[serde(default)]
    pub audit_gate: crate::gate::GateConfig,
    /// Signed handoffs: the CA(s) whose agencies' signatures are accepted and where the nodes'
    /// certificates and keys are (each node signs what it sends, `duijie_common::signing`).
    pub signing: duijie_common::signing::SigningConfig,
    /// Where the case data keys come from (the audit service, asked with each node's own
    /// certificate): the parties' identity, contact and address are sealed with them.
    pub key_service: duijie_common::sealing::KeyServiceConfig,
}

fn default_directory_reload() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

/// A started service.
pub struct Running {
    /// Where its gRPC server listens.
    pub addr: SocketAddr,
    pub agency: Agency,
    pub relay: std::sync::Arc<RelayStats>,
    pub consumers: Vec<std::sync::Arc<ConsumerStats>>,
    /// Where `/metrics` is served (`metrics.listen`), if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the plaintext health listener is (`grpc.health_listen`), if there is one.
    pub health_addr: Option<SocketAddr>,
    /// Cancel to stop it; `handle` ends once everything drained.
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the service `name` of agency `kind` with `cfg`; `routes` adds its own gRPC services
/// for the agency core. Returns once the database is migrated and the server listens.
pub async fn start(
    name: &'static str,
    kind: AgencyKind,
    cfg: ServiceConfig,
    routes: impl FnOnce(&Agency) -> Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    if cfg.nodes.is_some() {
        anyhow::bail!(
            "nodes: a service now acts for every {} agency in the directory ({}); remove `nodes` from its configuration",
            kind.as_str(),
            cfg.directory.display()
        );
    }
    if cfg.audit_gate.enabled {
        cfg.audit_gate.validate()?;
    }
    anyhow::ensure!(!cfg.directory_reload_ms.is_zero(), "directory_reload_ms must be above 0");
    let directory = LiveDirectory::load(&cfg.directory)?;
    let nodes: Vec<AgencyNode> = directory.current().entries().map(|(n, _)| n.clone()).filter(|n| n.kind() == kind).collect();
    anyhow::ensure!(!nodes.is_empty(), "the directory {} lists no {} agency for this service to act for", cfg.directory.display(), kind.as_str());
    let tls = cfg.grpc.tls.read().context("reading the TLS files")?;
    // Bulkheads: gRPC calls on one pool, the relay, the consumers and the pruner on the other.
    let pools = db::ServicePools::new(&cfg.bus.database)?;
    let mut samplers = metrics::Samplers::default().with(metrics::pools_sampler(pools.clone())).with(metrics::outbox_sampler(pools.bus.clone()));
    let pool = pools.bus;
    crate::migrator().run(&pool).await.context("migrating the service database")?;
    let connector = Connector::new(cfg.bus.amqp.clone());
    let topology = Topology::new(cfg.bus.topology.clone());
    // Each agency signs with its own key, read from signing.keys when first needed (an agency
    // added to the directory later brings its certificate there). Those missing now are named at
    // start: their envelopes would wait in the outbox, unsigned, until the key is there.
    let signer = std::sync::Arc::new(cfg.signing.signer_for_kind(kind, &nodes).context("signing: the agencies' certificates and keys")?);
    let verifier = std::sync::Arc::new(cfg.signing.verifier().context("signing: the CA")?);
    let relay = Relay::new(pool.clone(), connector.clone(), cfg.bus.relay.clone(), format!("{name}-relay")).with_signer(signer);
    let relay_stats = relay.stats();
    samplers = samplers.with(metrics::relay_sampler(relay_stats.clone()));
    let mut agency = Agency::for_kind(pools.api, topology.clone(), kind, Some(relay.waker())).with_directory(directory.clone());
    let gate = cfg.audit_gate.enabled.then(|| crate::gate::AuditGate::new(name, &nodes).with_verifier(verifier.clone()));
    if let Some(g) = &gate {
        agency = agency.with_gate(g.clone());
    }
    let keys = duijie_common::sealing::KeyClient::for_kind(&cfg.key_service, &cfg.signing, kind).context("key_service: the agencies' identities")?;
    agency = agency.with_keys(keys).with_verifier(verifier.clone());
    let listener = tokio::net::TcpListener::bind(cfg.grpc.listen).await.with_context(|| format!("listening on {}", cfg.grpc.listen))?;
    let addr = listener.local_addr()?;

    let mut tasks: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
    let token = shutdown.child_token();
    let agency = agency.with_stopping(token.clone());
    tasks.spawn({
        let t = token.clone();
        async move { ("relay".to_owned(), relay.run(t).await) }
    });
    tasks.spawn({
        let (t, every) = (token.clone(), cfg.directory_reload_ms);
        async move {
            directory.watch(every, t).await;
            ("agency directory".to_owned(), Ok(()))
        }
    });
    // The gate's state is a named service of the gRPC health (`duijie.audit_gate`); without a
    // gate, referrals are always taken and it stays SERVING.
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_service = health_service.max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES);
    let at_start = if gate.is_some() { tonic_health::ServingStatus::NotServing } else { tonic_health::ServingStatus::Serving };
    health.set_service_status(crate::gate::HEALTH_SERVICE, at_start).await;
    let gate_open = gate.as_ref().map(crate::gate::AuditGate::subscribe);
    samplers = samplers.with(metrics::flag_sampler("duijie_audit_gate_open", move || gate_open.as_ref().is_none_or(|rx| rx.borrow().open)));
    if let Some(g) = gate {
        let (h, t) = (health.clone(), token.clone());
        let mirror = g.clone();
        tasks.spawn(async move { ("audit gate health".to_owned(), mirror.mirror_health(h, t).await) });
        let (c, top, gc, t) = (connector.clone(), topology.clone(), cfg.audit_gate.clone(), token.clone());
        tasks.spawn(async move { ("audit gate".to_owned(), g.watch(c, top, gc, t).await) });
    }
    // One consumer per partition of the kind, all under the inbox key `name` (a message is in
    // one partition only); each partition has one active consumer among the replicas.
    let mut consumers = Vec::new();
    for queue in topology.inbox_queues(kind) {
        let consumer = Consumer::new(name, queue.clone(), pool.clone(), connector.clone(), topology.clone(), cfg.bus.consumer.clone(), agency.clone())
            .with_verifier(verifier.clone(), BadSignature::DeadLetter);
        consumers.push(consumer.stats());
        samplers = samplers.with(metrics::consumer_sampler(queue.clone(), consumer.stats()));
        let t = token.clone();
        let task = format!("inbox {queue}");
        tasks.spawn(async move { (task, consumer.run(t).await) });
    }
    // One pruner for the process, however many nodes it serves: their consumers share the
    // database's inbox table.
    tasks.spawn({
        let (pool, t, retention) = (pool.clone(), token.clone(), cfg.bus.consumer.inbox_retention);
        async move {
            db::prune_inbox_periodically(pool, retention, db::INBOX_PRUNE_INTERVAL, t).await;
            ("inbox pruning".to_owned(), Ok(()))
        }
    });
    let (metrics_addr, health_addr) = server::spawn_ops_listeners(&mut tasks, &cfg.bus.metrics, samplers, &cfg.grpc, &health, &token).await?;
    let routes = routes(&agency).add_service(health_service);
    let grace = cfg.grpc.grace_ms;
    tasks.spawn({
        let t = token.clone();
        async move { ("grpc".to_owned(), server::serve_with_health(name, listener, routes, health, &tls, t, grace).await) }
    });
    tracing::info!(service = name, %addr, agencies = nodes.len(), partitions = consumers.len(), "serving");
    let handle = tokio::spawn(shutdown::supervise(tasks, token, grace));
    Ok(Running { addr, agency, relay: relay_stats, consumers, metrics_addr, health_addr, shutdown, handle })
}

/// The whole process of service `name`: telemetry, configuration from `DUIJIE_CONFIG_DIR`
/// (default `config/<name>`), then [`start`] until SIGINT/SIGTERM.
pub async fn main(name: &'static str, kind: AgencyKind, routes: impl FnOnce(&Agency) -> Routes) -> std::process::ExitCode {
    duijie_common::process::run_service(
        name,
        |cfg: ServiceConfig, shutdown| async move {
            let running = start(name, kind, cfg, routes, shutdown).await?;
            Ok((running.addr, running.handle))
        },
        |cfg: ServiceConfig| async move {
            let pool = db::pool(&cfg.bus.database);
            crate::migrator().run(&pool).await.context("migrating the service database")?;
            pool.close().await;
            Ok(())
        },
    )
    .await
}
