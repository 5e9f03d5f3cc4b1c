//! RabbitMQ: connecting (the callers own the reconnect loop) and the bus topology, declared by
//! the operator (`duijie-bus declare`) and again, idempotently, by every node at start and after
//! every reconnect where its broker user may ([`Topology::ensure`]): a service's own user (README,
//! "Broker credentials") configures nothing, and relies on the operator's declaration.
//!
//! ```text
//! <p>.handoff (topic) ──<kind>.*.*──▶ <p>.inbox.<kind> (x-consistent-hash on x-duijie-case)
//!                                        ──▶ <p>.inbox.<kind>.p0 … p<P-1>   quorum, single active consumer
//!                     ──<kind>.*.* (each kind), record.#──▶ <p>.audit.tap (x-consistent-hash)
//!                                        ──▶ <p>.audit.tap.p0 … p<T-1>      quorum, single active consumer
//! <p>.dead    (fanout) ──▶ <p>.dead                                          quorum; poison messages with reasons
//! <p>.audit.status (topic) ──audit.lag, gate.<service>──▶ each reader's own exclusive queue
//! ```
//!
//! The number of queues is fixed by the number of partitions (5 × P + T + 1), whatever the
//! number of agencies: the recipient is in the envelope, and a service replica serves every
//! agency of its kind in the directory. A case's messages all hash to one partition (the relay
//! sets `x-duijie-case` to the case id), and a partition has one active consumer at a time, so
//! replicas of a service share the partitions without reordering a case (ARCHITECTURE.md,
//! "Scale-out"). Unknown agencies are refused before staging (the directory); `mandatory` still
//! returns what the broker cannot route (a kind with no partitions: a supervisor, a topology not
//! declared), and the relay keeps it.

use anyhow::Context as _;
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{AmqpConfig, TopologyConfig};

/// Header naming why a message was dead-lettered by a consumer.
pub const DEAD_REASON: &str = "x-duijie-dead-reason";
/// Header naming the consumer that dead-lettered a message.
pub const DEAD_CONSUMER: &str = "x-duijie-dead-consumer";
/// Header keeping the routing key the message originally had.
pub const ORIGINAL_ROUTING_KEY: &str = "x-duijie-original-routing-key";
/// Header naming the queue a consumer dead-lettered a message from (where a replay puts it back).
pub const DEAD_QUEUE: &str = "x-duijie-dead-queue";

/// Opens connections to the broker.
#[derive(Debug, Clone)]
pub struct Connector {
    cfg: AmqpConfig,
    /// The node of `url` + `cluster_urls` the next attempt starts from: the one that last
    /// answered, so a reconnect goes back to a node known to be up.
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// How long one node of a cluster may take to accept a connection before the next is tried
/// (a node stopped with SIGSTOP accepts TCP and never answers).
const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Connector {
    /// A connector for the configured broker.
    pub fn new(cfg: AmqpConfig) -> Self {
        Self { cfg, next: std::sync::Arc::default() }
    }

    /// One connection attempt (no automatic recovery: the caller's loop decides). With
    /// `cluster_urls`, each node is tried once in turn, starting from the last that answered.
    pub async fn connect(&self, purpose: &str) -> anyhow::Result<Connection> {
        let urls: Vec<&SecretString> = std::iter::once(&self.cfg.url).chain(&self.cfg.cluster_urls).collect();
        let start = self.next.load(std::sync::atomic::Ordering::Relaxed) % urls.len();
        let mut last = None;
        for i in 0..urls.len() {
            let n = (start + i) % urls.len();
            let props = ConnectionProperties::default()
                .with_connection_name(format!("{}:{purpose}", self.cfg.connection_name).into());
            let mut uri: lapin::uri::AMQPUri = match urls[n].expose_secret().parse() {
                Ok(uri) => uri,
                // The parser's message may quote the URL, password and all.
                Err(_) => {
                    last = Some(anyhow::anyhow!("broker URL {n} is not an amqp:// or amqps:// URL"));
                    continue;
                }
            };
            if uri.query.heartbeat.is_none() && self.cfg.heartbeat_secs > 0 {
                uri.query.heartbeat = Some(self.cfg.heartbeat_secs);
            }
            let attempt = Connection::connect_uri(uri, props);
            let outcome = if urls.len() == 1 {
                attempt.await.map_err(anyhow::Error::from)
            } else {
                match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await {
                    Ok(r) => r.map_err(anyhow::Error::from),
                    Err(_) => Err(anyhow::anyhow!("no answer within {NODE_CONNECT_TIMEOUT:?}")),
                }
            };
            match outcome {
                Ok(conn) => {
                    self.next.store(n, std::sync::atomic::Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(e) => {
                    if urls.len() > 1 {
                        tracing::debug!(node = n, error = format!("{e:#}"), "broker node not reachable; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| anyhow::anyhow!("no broker URL configured"));
        Err(e.context(format!("connecting to RabbitMQ for {purpose} ({} node(s) tried)", urls.len())))
    }
}

/// How long closing a connection may take: a node that is cut off or healing may never send
/// close-ok, and a session that waits for it would never reconnect.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes `conn`, giving the broker at most [`CLOSE_TIMEOUT`] to answer; the connection is
/// dropped either way.
pub async fn close(conn: &Connection, reason: &str) {
    if tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await.is_err() {
        tracing::debug!(reason, "the broker did not answer the close within {CLOSE_TIMEOUT:?}; dropping the connection");
    }
}

use duijie_proto::v1::AgencyKind;

/// Whether `e` is, somewhere in its chain, the broker refusing the operation to this user
/// (`ACCESS_REFUSED`, 403: the user's permissions do not cover the resource).
pub fn is_access_refused(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<lapin::Error>()).any(|l| matches!(l.kind(), ErrorKind::ProtocolError(p) if p.get_id() == 403))
}

/// The services with a broker user of their own (README, "Broker credentials"); the console
/// speaks no AMQP.
pub const SERVICES: [&str; 6] = ["court", "procuratorate", "police", "petition", "mediation", "audit"];

/// What one broker user may do on the vhost: RabbitMQ's three permission regular expressions
/// (configure: declare and delete; write: publish, and a queue's side of a binding; read:
/// consume, purge, and an exchange's side of a binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Names and arguments of the bus topology for one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    cfg: TopologyConfig,
}

impl Topology {
    /// The topology for `cfg.prefix`.
    pub fn new(cfg: TopologyConfig) -> Self {
        Self { cfg }
    }

    /// The permissions of service `service`'s own broker user (one of [`SERVICES`]), `None` for
    /// another name. The operator declared the topology (`duijie-bus declare`), so a service
    /// configures only the server-named, exclusive queue each status listener makes for itself
    /// (`amq.gen-…`, [`crate::status::listen`]: configure to declare it, write to bind it, read
    /// to consume it). It writes to the exchanges it publishes to: the handoff exchange (its
    /// outbox relay), the dead-letter exchange (its consumer dead-letters what it cannot apply)
    /// and the status exchange (gate or lag reports). It reads its own queues: an agency
    /// service the inboxes of its kind, the audit service the tap; and the status exchange, for
    /// its listener's binding. No service reads the handoff exchange, so none can bind a queue
    /// of its own to it and watch other agencies' messages; none may declare, delete or purge a
    /// queue of the topology.
    pub fn permissions(&self, service: &str) -> Option<Permissions> {
        let p = regex_escape(&self.cfg.prefix);
        let own = "amq[.]gen-.*";
        let status = format!("{p}[.]audit[.]status");
        let reads = match service {
            "audit" => format!("{p}[.]audit[.]tap[.]p[0-9]+"),
            kind if SERVICES.contains(&kind) => format!("{p}[.]inbox[.]{kind}[.]p[0-9]+"),
            _ => return None,
        };
        Some(Permissions {
            configure: format!("^{own}$"),
            write: format!("^({p}[.]handoff|{p}[.]dead|{status}|{own})$"),
            read: format!(r"^({reads}|{status}|{own})$"),
        })
    }

    /// Its settings (names, partitions).
    pub fn config(&self) -> &TopologyConfig {
        &self.cfg
    }

    /// The topic exchange every handoff is published to.
    pub fn handoff_exchange(&self) -> String {
        format!("{}.handoff", self.cfg.prefix)
    }

    /// The fanout exchange poison messages go to.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.cfg.prefix)
    }

    /// The queue holding poison messages.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.cfg.prefix)
    }

    /// The topic exchange of the reports about the audit store: the audit service's lag and
    /// every agency service's gate ([`crate::status`]).
    pub fn status_exchange(&self) -> String {
        format!("{}.audit.status", self.cfg.prefix)
    }

    /// Declares the status exchange (idempotent). Its readers bind queues of their own.
    pub async fn declare_status(&self, ch: &Channel) -> anyhow::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(self.status_exchange().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .context("declaring the audit status exchange")
    }

    /// The consistent-hash exchange the audit tap's partitions are bound to.
    pub fn tap_exchange(&self) -> String {
        format!("{}.audit.tap", self.cfg.prefix)
    }

    /// The audit tap's partition queues, in order.
    pub fn tap_queues(&self) -> Vec<String> {
        (0..self.cfg.tap_partitions).map(|i| format!("{}.audit.tap.p{i}", self.cfg.prefix)).collect()
    }

    /// The consistent-hash exchange of one service kind's inbox partitions.
    pub fn inbox_exchange(&self, kind: AgencyKind) -> String {
        format!("{}.inbox.{}", self.cfg.prefix, kind.as_str())
    }

    /// One service kind's inbox partition queues, in order: every agency of that kind receives
    /// through them (the recipient is in the envelope).
    pub fn inbox_queues(&self, kind: AgencyKind) -> Vec<String> {
        (0..self.cfg.partitions).map(|i| format!("{}.inbox.{}.p{i}", self.cfg.prefix, kind.as_str())).collect()
    }

    /// Every queue of the topology: the dead queue, the tap's partitions, every kind's.
    pub fn queues(&self) -> Vec<String> {
        let mut q = vec![self.dead_queue()];
        q.extend(self.tap_queues());
        for kind in KINDS {
            q.extend(self.inbox_queues(kind));
        }
        q
    }

    /// Every exchange of the topology: handoff, dead letters, status, the tap's and every
    /// kind's partitioning exchange.
    pub fn exchanges(&self) -> Vec<String> {
        let mut x = vec![self.handoff_exchange(), self.dead_exchange(), self.status_exchange(), self.tap_exchange()];
        x.extend(KINDS.iter().map(|k| self.inbox_exchange(*k)));
        x
    }

    /// The binding pattern of one service kind: every message kind to any agency of it.
    pub fn kind_pattern(kind: AgencyKind) -> String {
        format!("{}.*.*", kind.as_str())
    }

    fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(self.cfg.delivery_limit));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.dead_exchange().into()));
        // One consumer at a time per partition: replicas wait their turn, so a case's messages
        // are applied in the order they were routed.
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        if self.cfg.at_least_once_dead_lettering {
            // at-least-once dead-lettering requires reject-publish overflow.
            args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
            args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        }
        args
    }

    /// [`Topology::declare`] on a channel of its own, when this connection's user may configure
    /// the topology (the operator's, the tests'); a service's restricted user may not and gets
    /// `ACCESS_REFUSED`, which is fine: the operator declared it (`duijie-bus declare`), and what
    /// is missing shows in the service's own consume or publish.
    pub async fn ensure(&self, conn: &Connection) -> anyhow::Result<()> {
        // Everything there already (always, for a service on its own user): nothing to declare,
        // and no refusal, which lapin would log as an error at every reconnect.
        if exist(conn, &self.exchanges(), &self.queues()).await {
            return Ok(());
        }
        let ch = conn.create_channel().await.context("opening a channel to declare the topology")?;
        let outcome = self.declare(&ch).await;
        permitted(ch, outcome).await
    }

    /// [`Topology::declare_status`] the same way as [`Topology::ensure`].
    pub async fn ensure_status(&self, conn: &Connection) -> anyhow::Result<()> {
        if exist(conn, &[self.status_exchange()], &[]).await {
            return Ok(());
        }
        let ch = conn.create_channel().await.context("opening a channel to declare the status exchange")?;
        let outcome = self.declare_status(&ch).await;
        permitted(ch, outcome).await
    }

    /// Declares the whole topology: exchanges (also the status exchange), the dead queue, the
    /// tap's partitions, and every service kind's partitions with their bindings. Idempotent;
    /// its size does not depend on the agencies.
    pub async fn declare(&self, ch: &Channel) -> anyhow::Result<()> {
        self.declare_kinds(ch, &KINDS).await
    }

    /// [`Topology::declare`] for some service kinds only: each kind's partitions together with
    /// the tap's binding of that kind, so a kind is either routable to both or returned (the
    /// tests of the return path declare fewer kinds).
    pub async fn declare_kinds(&self, ch: &Channel, kinds: &[AgencyKind]) -> anyhow::Result<()> {
        anyhow::ensure!(self.cfg.partitions > 0 && self.cfg.tap_partitions > 0, "topology: partitions and tap_partitions must be at least 1");
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(self.handoff_exchange().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .context("declaring the handoff exchange")?;
        ch.exchange_declare(self.dead_exchange().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await
            .context("declaring the dead-letter exchange")?;
        self.declare_status(ch).await?;

        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        ch.queue_declare(self.dead_queue().into(), qopts, dead_args).await.context("declaring the dead queue")?;
        bind_queue(ch, &self.dead_queue(), &self.dead_exchange(), "").await?;

        self.declare_partitions(ch, &self.tap_exchange(), &self.tap_queues()).await?;
        // A self-accepted case's messages (sender and recipient the same body) go to the audit
        // store only (Envelope::routing_key).
        let record = format!("{}.#", duijie_proto::RECORD_PREFIX);
        bind_exchange(ch, &self.tap_exchange(), &self.handoff_exchange(), &record).await?;
        for kind in kinds {
            let pattern = Self::kind_pattern(*kind);
            self.declare_partitions(ch, &self.inbox_exchange(*kind), &self.inbox_queues(*kind)).await?;
            bind_exchange(ch, &self.inbox_exchange(*kind), &self.handoff_exchange(), &pattern).await?;
            bind_exchange(ch, &self.tap_exchange(), &self.handoff_exchange(), &pattern).await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the topology (tests and benchmarks clean up so).
    pub async fn delete(&self, ch: &Channel) -> anyhow::Result<()> {
        for q in self.queues() {
            ch.queue_delete(q.as_str().into(), lapin::options::QueueDeleteOptions::default()).await.with_context(|| format!("deleting {q}"))?;
        }
        for e in self.exchanges() {
            ch.exchange_delete(e.as_str().into(), lapin::options::ExchangeDeleteOptions::default()).await.with_context(|| format!("deleting {e}"))?;
        }
        Ok(())
    }

    /// A consistent-hash exchange hashing the case id header onto `queues`, each bound with the
    /// same weight.
    async fn declare_partitions(&self, ch: &Channel, exchange: &str, queues: &[String]) -> anyhow::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let mut args = FieldTable::default();
        args.insert("hash-header".into(), AMQPValue::LongString(CASE_HEADER.into()));
        ch.exchange_declare(exchange.into(), ExchangeKind::Custom("x-consistent-hash".into()), durable, args)
            .await
            .with_context(|| format!("declaring the partitioning exchange {exchange} (is the rabbitmq_consistent_hash_exchange plugin enabled? scripts/deps.sh enables it)"))?;
        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        for q in queues {
            ch.queue_declare(q.as_str().into(), qopts, self.work_queue_args()).await.with_context(|| format!("declaring partition queue {q}"))?;
            // The binding key of a consistent-hash exchange is the queue's weight.
            bind_queue(ch, q, exchange, PARTITION_WEIGHT).await?;
        }
        Ok(())
    }
}

/// The header the relay puts the case id in; the partitioning exchanges hash it, so every
/// message of a case goes to the same partition of each queue set.
pub const CASE_HEADER: &str = "x-duijie-case";

/// Every partition gets the same share of the hash ring.
const PARTITION_WEIGHT: &str = "1";

/// The service kinds that have partitions: everyone a case is handed to. Supervisors read the
/// audit store and receive nothing on the bus.
pub const KINDS: [AgencyKind; 5] = [AgencyKind::Court, AgencyKind::Procuratorate, AgencyKind::Police, AgencyKind::Petition, AgencyKind::Mediation];

async fn bind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
    ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .with_context(|| format!("binding {queue} to {exchange} with {key:?}"))
}

async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) -> anyhow::Result<()> {
    ch.exchange_bind(destination.into(), source.into(), key.into(), ExchangeBindOptions::default(), FieldTable::default())
        .await
        .with_context(|| format!("binding {destination} to {source} with {key:?}"))
}

/// Whether every one of `exchanges` and `queues` exists: passive declarations, which need no
/// permission, on a channel of their own (a missing one closes it).
async fn exist(conn: &Connection, exchanges: &[String], queues: &[String]) -> bool {
    let Ok(ch) = conn.create_channel().await else { return false };
    let found = async {
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        for e in exchanges {
            // A passive declaration checks the name only, not the kind.
            ch.exchange_declare(e.as_str().into(), ExchangeKind::Topic, passive, FieldTable::default()).await?;
        }
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        for q in queues {
            ch.queue_declare(q.as_str().into(), passive, FieldTable::default()).await?;
        }
        Ok::<_, lapin::Error>(())
    }
    .await
    .is_ok();
    if found {
        let _ = ch.close(200, "checked".into()).await;
    }
    found
}

/// A declaration's outcome on its own channel `ch`: refused for lack of permission counts as done.
async fn permitted(ch: Channel, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
    match outcome {
        Ok(()) => {
            let _ = ch.close(200, "declared".into()).await;
            Ok(())
        }
        // The broker closed the channel with the refusal; the connection stays usable.
        Err(e) if is_access_refused(&e) => {
            tracing::debug!(error = format!("{e:#}"), "this broker user may not declare the topology: the operator's declaration is used");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `s` as a regular expression matching it literally. Special characters go into a bracket
/// expression rather than after a backslash, so the patterns pass unchanged through shells and
/// `rabbitmqctl eval`'s Erlang strings.
fn regex_escape(s: &str) -> String {
    s.chars().fold(String::with_capacity(s.len()), |mut out, c| {
        match c {
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => out.push(c),
            '\\' => out.push_str("[\\\\]"),
            '^' => out.push_str("\\^"),
            c => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_user_reads_its_own_queues_and_configures_none_of_the_topology() {
        let t = Topology::new(TopologyConfig { prefix: "duijie".into(), ..Default::default() });
        let court = t.permissions("court");
        assert_eq!(
            court,
            Some(Permissions {
                configure: "^amq[.]gen-.*$".into(),
                write: "^(duijie[.]handoff|duijie[.]dead|duijie[.]audit[.]status|amq[.]gen-.*)$".into(),
                read: "^(duijie[.]inbox[.]court[.]p[0-9]+|duijie[.]audit[.]status|amq[.]gen-.*)$".into(),
            })
        );
        assert!(t.permissions("audit").is_some_and(|p| p.read.contains("duijie[.]audit[.]tap[.]p[0-9]+") && !p.read.contains("inbox")));
        assert_eq!(t.permissions("console"), None);
        assert_eq!(regex_escape("a.b*c"), "a[.]b[*]c");
    }
}
