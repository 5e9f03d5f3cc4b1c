//! Test harness: each test gets its own database (migrated), its own exchange/queue prefix, and
//! real RabbitMQ and PostgreSQL servers (`scripts/deps.sh` brings them up; `scripts/test.sh`
//! exports their addresses). Nothing here is mocked.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use duijie_common::amqp::{Connector, Topology};
use duijie_domain::AgencyNode;
use duijie_common::config::{AmqpConfig, ConsumerConfig, DatabaseConfig, RelayConfig, TopologyConfig};
use duijie_common::envelope::{self, Header};
use duijie_common::inbox::{Consumer, ConsumerStats, HandleError, Handler, Inbound};
use duijie_common::outbox::{self, Relay, RelayStats};
use duijie_common::{CancellationToken, db};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, Channel, Envelope, Referral};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};
use uuid::Uuid;

pub mod broker;
pub mod browser;
pub mod cluster;
pub mod otlp;
pub mod stack;

pub use duijie_common;
pub use duijie_proto;

/// Which pair of servers a test uses: the shared ones, or the fault servers that fault tests
/// restart (a second RabbitMQ node and a second PostgreSQL cluster, see `scripts/deps.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    Main,
    Fault,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

impl Servers {
    fn amqp_url(self) -> String {
        match self {
            Servers::Main => env_or("DUIJIE_AMQP_URL", "amqp://duijie:duijie@127.0.0.1:5672/%2f"),
            Servers::Fault => env_or("DUIJIE_FAULT_AMQP_URL", "amqp://duijie:duijie@127.0.0.1:5673/%2f"),
        }
    }

    fn database_url(self) -> String {
        match self {
            Servers::Main => env_or("DUIJIE_DATABASE_URL", "postgres://duijie:duijie@127.0.0.1:5432/duijie"),
            Servers::Fault => env_or("DUIJIE_FAULT_DATABASE_URL", "postgres://duijie:duijie@127.0.0.1:5433/duijie"),
        }
    }
}

/// One test's slice of the bus: a fresh database, a unique topology prefix, and the tasks it
/// started (stopped when the `TestBus` is dropped).
pub struct TestBus {
    /// Where the database lives (the broker may be elsewhere).
    pub pg_servers: Servers,
    pub prefix: String,
    pub db_name: String,
    pub db_cfg: DatabaseConfig,
    pub pool: PgPool,
    pub amqp_cfg: AmqpConfig,
    pub connector: Connector,
    pub topology: Topology,
    pub shutdown: CancellationToken,
    extra_dbs: Vec<String>,
}

impl Drop for TestBus {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestBus {
    /// A fresh bus slice on the shared servers.
    pub async fn new() -> anyhow::Result<Self> {
        Self::on(Servers::Main, Servers::Main).await
    }

    /// A fresh bus slice with the broker of `amqp` and the database server of `pg`.
    pub async fn on(amqp: Servers, pg: Servers) -> anyhow::Result<Self> {
        duijie_common::telemetry::init_for_tests("duijie-tests");
        let id = Uuid::new_v4().simple().to_string();
        let prefix = format!("t{}", &id[..12]);
        let admin_cfg = DatabaseConfig::from_url(&pg.database_url())?;
        let db_name = format!("duijie_test_{}", &id[..16]);
        let mut admin = PgConnection::connect_with(&admin_cfg.connect_options())
            .await
            .context("connecting to PostgreSQL as the test admin (is scripts/deps.sh up?)")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{db_name}""#))).execute(&mut admin).await.context("creating the test database")?;
        let _ = admin.close().await;
        let db_cfg = DatabaseConfig { database: db_name.clone(), max_connections: 8, ..admin_cfg };
        let pool = db::pool(&db_cfg);
        db::migrate(&pool).await?;
        pool.execute(
            "CREATE TABLE test_applied (message_id UUID NOT NULL, consumer TEXT NOT NULL, kind TEXT NOT NULL,
                                        trace_id TEXT, applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
        )
        .await?;
        let amqp_cfg = AmqpConfig::new(amqp.amqp_url(), format!("test-{prefix}"));
        // Two partitions per kind and for the tap: enough for a case's order across partitions
        // to matter, few enough quorum queues for many tests side by side.
        let topology = Topology::new(TopologyConfig { prefix: prefix.clone(), partitions: 2, tap_partitions: 2, ..Default::default() });
        Ok(Self {
            pg_servers: pg,
            prefix,
            db_name,
            db_cfg,
            pool,
            connector: Connector::new(amqp_cfg.clone()),
            amqp_cfg,
            topology,
            shutdown: CancellationToken::new(),
            extra_dbs: Vec::new(),
        })
    }

    /// Another fresh database on the same server (dropped by `cleanup`), migrated with `migrator`:
    /// one pool of 6 connections.
    pub async fn extra_database(&mut self, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<PgPool> {
        let cfg = self.extra_database_config().await?;
        let pool = db::pool(&DatabaseConfig { max_connections: 6, ..cfg });
        migrator.run(&pool).await?;
        Ok(pool)
    }

    /// Another fresh, empty database on the same server (dropped by `cleanup`): its settings,
    /// for a service of a test stack: 4 connections, 2 for its bus work and 2 for its gRPC
    /// calls (README, "Database connections").
    pub async fn extra_database_config(&mut self) -> anyhow::Result<DatabaseConfig> {
        let name = format!("{}_{}", self.db_name, self.extra_dbs.len() + 1);
        let admin_cfg = DatabaseConfig::from_url(&self.pg_servers.database_url())?;
        let mut admin = PgConnection::connect_with(&admin_cfg.connect_options()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).execute(&mut admin).await?;
        let _ = admin.close().await;
        self.extra_dbs.push(name.clone());
        Ok(DatabaseConfig { database: name, max_connections: 4, bus_connections: 2, ..admin_cfg })
    }

    /// Declares the topology for the kinds of `nodes` (the exchanges, dead queue and tap
    /// always; no kind for none: a message to any agency is then returned by the broker).
    pub async fn declare(&self, nodes: &[AgencyNode]) -> anyhow::Result<()> {
        let conn = self.connector.connect("test declare").await?;
        let ch = conn.create_channel().await?;
        let mut kinds: Vec<duijie_proto::v1::AgencyKind> = nodes.iter().map(AgencyNode::kind).collect();
        kinds.sort_by_key(|k| *k as i32);
        kinds.dedup();
        self.topology.declare_kinds(&ch, &kinds).await?;
        conn.close(200, "done".into()).await?;
        Ok(())
    }

    /// Relay settings for tests: fast polling and retries.
    pub fn relay_config() -> RelayConfig {
        RelayConfig {
            poll_interval: Duration::from_millis(100),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            ..Default::default()
        }
    }

    /// Starts an outbox relay on this test's database.
    pub fn spawn_relay(&self) -> Arc<RelayStats> {
        let relay = Relay::new(self.pool.clone(), self.connector.clone(), Self::relay_config(), format!("{}-relay", self.prefix));
        let stats = relay.stats();
        tokio::spawn(relay.run(self.shutdown.child_token()));
        stats
    }

    /// Starts consumers of the partitions of `node`'s kind named `name`, applying into
    /// `test_applied` (messages whose case code starts with `REJECT` are refused by the handler).
    pub fn spawn_consumer(&self, name: &str, node: &AgencyNode) -> Arc<ConsumerStats> {
        self.spawn_consumer_with(name, node, RecordingHandler, self.shutdown.child_token())
    }

    /// Starts consumers of every partition of `node`'s kind with any handler (one per
    /// partition, counting together), stopped by `token`.
    pub fn spawn_consumer_with<H: Handler + Clone>(&self, name: &str, node: &AgencyNode, handler: H, token: CancellationToken) -> Arc<ConsumerStats> {
        let stats = Arc::new(ConsumerStats::default());
        for queue in self.topology.inbox_queues(node.kind()) {
            let consumer = Consumer::new(name, queue, self.pool.clone(), self.connector.clone(), self.topology.clone(), Self::consumer_config(), handler.clone())
                .with_stats(stats.clone());
            tokio::spawn(consumer.run(token.clone()));
        }
        stats
    }

    /// Consumer settings for tests: early messages held only briefly.
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig { hold_for: Duration::from_secs(3), hold_retry: Duration::from_millis(200), ..Default::default() }
    }

    /// Stages envelopes in one committed transaction.
    pub async fn stage(&self, envs: &mut [Envelope]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        outbox::stage_all(&mut tx, &self.topology, envs).await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many rows of `test_applied` each message has: (distinct messages, total rows).
    pub async fn applied_counts(&self) -> anyhow::Result<(i64, i64)> {
        let row: (i64, i64) = sqlx::query_as("SELECT count(DISTINCT message_id), count(*) FROM test_applied")
            .fetch_one(&self.pool)
            .await?;
        Ok(row)
    }

    /// Message ids applied more than once (must always be empty).
    pub async fn applied_twice(&self) -> anyhow::Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar("SELECT message_id FROM test_applied GROUP BY message_id HAVING count(*) > 1")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Unsent outbox rows (the relay deletes a row once the broker confirmed it).
    pub async fn unsent(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&self.pool).await?)
    }

    /// Publishes `env` signed by whoever must sign it, as a relay would (bypassing the outbox).
    pub async fn publish_signed(&self, env: &Envelope, signer: &duijie_common::signing::Signer) -> anyhow::Result<()> {
        let body = prost::Message::encode_to_vec(env);
        let sig = signer.sign_envelope(&body)?;
        self.publish_with(&env.routing_key()?, &body, &env.message_id, Some(&sig)).await
    }

    /// Publishes raw bytes to the handoff exchange (bypassing the outbox), unsigned, waiting for
    /// the broker's confirm; for tests that need exact control of what is on the queue.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], message_id: &str) -> anyhow::Result<()> {
        self.publish_with(routing_key, body, message_id, None).await
    }

    /// Publishes raw bytes to the handoff exchange with the signature headers `sig` (if any).
    pub async fn publish_with(&self, routing_key: &str, body: &[u8], message_id: &str, sig: Option<&duijie_common::signing::Signature>) -> anyhow::Result<()> {
        let mut headers = lapin::types::FieldTable::default();
        if let Some(sig) = sig {
            sig.write_headers(&mut headers);
        }
        // The case header the relay sets, so the message goes to its case's partition.
        if let Ok(env) = <Envelope as prost::Message>::decode(body) {
            headers.insert(duijie_common::amqp::CASE_HEADER.into(), AMQPValue::LongString(env.case_id.into()));
        }
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let conn = self.connector.connect("test raw publisher").await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirm = ch
            .basic_publish(
                self.topology.handoff_exchange().into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                lapin::BasicProperties::default()
                    .with_message_id(message_id.into())
                    .with_content_type(duijie_proto::ENVELOPE_CONTENT_TYPE.into())
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await?
            .await?;
        anyhow::ensure!(matches!(confirm, lapin::Confirmation::Ack(None)), "raw publish not routed: {confirm:?}");
        conn.close(200, "done".into()).await?;
        Ok(())
    }

    /// Drains the dead-letter queue: (reason header, routing key header, body) per message.
    pub async fn drain_dead(&self) -> anyhow::Result<Vec<DeadMessage>> {
        let conn = self.connector.connect("test dead drain").await?;
        let ch = conn.create_channel().await?;
        let mut out = Vec::new();
        while let Some(m) = ch.basic_get(self.topology.dead_queue().into(), BasicGetOptions::default()).await? {
            let headers = m.delivery.properties.headers().clone().unwrap_or_default();
            let get = |k: &str| match headers.inner().get(k) {
                Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                _ => None,
            };
            out.push(DeadMessage {
                reason: get(duijie_common::amqp::DEAD_REASON),
                original_routing_key: get(duijie_common::amqp::ORIGINAL_ROUTING_KEY),
                message_id: m.delivery.properties.message_id().as_ref().map(|s| s.as_str().to_owned()),
                body: m.delivery.data.clone(),
            });
            m.delivery.ack(BasicAckOptions::default()).await?;
        }
        conn.close(200, "done".into()).await?;
        Ok(out)
    }

    /// Removes this test's queues, exchanges and database (call at the end of a passing test).
    pub async fn cleanup(self, _nodes: &[AgencyNode]) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let conn = self.connector.connect("test cleanup").await?;
        let ch = conn.create_channel().await?;
        self.topology.delete(&ch).await?;
        conn.close(200, "done".into()).await?;
        self.pool.close().await;
        let admin_cfg = DatabaseConfig::from_url(&self.pg_servers.database_url())?;
        let mut admin = PgConnection::connect_with(&admin_cfg.connect_options()).await?;
        for db in std::iter::once(&self.db_name).chain(&self.extra_dbs) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{db}" WITH (FORCE)"#))).execute(&mut admin).await?;
        }
        Ok(())
    }
}

/// A message found in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadMessage {
    pub reason: Option<String>,
    pub original_routing_key: Option<String>,
    pub message_id: Option<String>,
    pub body: Vec<u8>,
}

/// Applies a message by inserting a row into `test_applied` (no uniqueness: a double apply
/// would show as two rows). Refuses case codes starting with `REJECT`.
#[derive(Debug, Clone, Copy)]
pub struct RecordingHandler;

impl Handler for RecordingHandler {
    async fn handle(&self, conn: &mut PgConnection, msg: &Inbound) -> Result<(), HandleError> {
        {
            if msg.envelope.case_code.starts_with("REJECT") {
                return Err(HandleError::Rejected(format!("case {} refused by the test handler", msg.envelope.case_code)));
            }
            let id = Uuid::parse_str(&msg.envelope.message_id).map_err(|e| HandleError::Rejected(e.to_string()))?;
            let trace_id = tracing_trace_id();
            sqlx::query("INSERT INTO test_applied (message_id, consumer, kind, trace_id) VALUES ($1, 'test', $2, $3)")
                .bind(id)
                .bind(msg.envelope.kind().routing_segment())
                .bind(trace_id)
                .execute(conn)
                .await?;
            Ok(())
        }
    }
}

/// The trace id of the current span, as the consumer sees it.
pub fn tracing_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// An agency node, panicking on a bad code (test constants only).
pub fn node(kind: AgencyKind, code: &str) -> AgencyNode {
    #[allow(clippy::expect_used)] // test constants
    AgencyNode::new(kind, code).expect("valid test agency code")
}

/// A referral from `from` to `to` with `facts` as its body.
pub fn referral(from: &AgencyNode, to: &AgencyNode, case_code: &str, facts: String) -> Envelope {
    let header = Header {
        case_id: Uuid::now_v7(),
        case_code: case_code.to_owned(),
        channel: Channel::Court,
        sender: from.clone(),
        recipient: to.clone(),
        causation_id: None,
    };
    envelope::build(&header, Payload::Referral(Referral { facts, legal_basis: "test".into(), ..Default::default() }))
}

/// Waits until `cond` holds, polling every 50 ms, failing after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match cond().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if start.elapsed() >= deadline => return Err(e.context(format!("waiting for {what}"))),
            Err(_) => {}
        }
        if start.elapsed() >= deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a command (server restarts in fault tests), failing with its output if it fails.
pub async fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A signer holding a fresh certificate and key from `ca` for each of `nodes` (and the audit
/// service's, for what the bus sends), as those agencies' services would sign.
pub fn signer_for(ca: &duijie_common::certs::DevCa, nodes: &[AgencyNode]) -> anyhow::Result<duijie_common::signing::Signer> {
    let mut signer = duijie_common::signing::Signer::new();
    for n in nodes {
        let tls = ca.agency(n)?;
        signer.add_pem(&tls.cert, &tls.key)?;
    }
    let (cert, key) = ca.issue(duijie_common::signing::AUDIT_SIGNER, &["localhost"])?;
    signer.add_pem(cert.as_bytes(), key.as_bytes())?;
    Ok(signer)
}

/// Clears the parties' identity, contact and address of the referral `env` carries, for a test
/// that publishes envelopes onto the bus itself: the services seal them before anything leaves,
/// and refuse them in clear on the bus.
pub fn without_party_data(env: &mut Envelope) {
    duijie_common::sealing::strip_party_data(env);
}
