//! RabbitMQ: connecting (the callers own the reconnect loop) and the bus topology, declared
//! idempotently by every node at start and after every reconnect.
//!
//! ```text
//! <p>.handoff  (topic)  ──<kind>.<code>.*──▶ <p>.inbox.<kind>.<code>   (quorum; one per agency node)
//!                       ──<kind>.<code>.*──▶ <p>.audit.tap             (quorum; a copy of every handoff)
//!                       ──record.#─────────▶ <p>.audit.tap             (a body's messages to itself: recorded only)
//! <p>.dead     (fanout) ──────────────────▶ <p>.dead                   (quorum; poison messages with reasons)
//! <p>.audit.status (topic) ──audit.lag, gate.<service>──▶ each reader's own exclusive queue
//! ```
//!
//! The tap is bound with each agency's pattern rather than `#` so that `mandatory` still
//! means something: a message for an agency that has no queue is returned to the relay
//! instead of silently landing in the tap only (see ARCHITECTURE.md).

use anyhow::Context as _;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::ExposeSecret as _;

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
}

impl Connector {
    /// A connector for the configured broker.
    pub fn new(cfg: AmqpConfig) -> Self {
        Self { cfg }
    }

    /// One connection attempt (no automatic recovery: the caller's loop decides).
    pub async fn connect(&self, purpose: &str) -> anyhow::Result<Connection> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("{}:{purpose}", self.cfg.connection_name).into());
        Connection::connect(self.cfg.url.expose_secret(), props)
            .await
            .with_context(|| format!("connecting to RabbitMQ for {purpose}"))
    }
}

use duijie_domain::AgencyNode;

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

    /// The audit tap queue.
    pub fn tap_queue(&self) -> String {
        format!("{}.audit.tap", self.cfg.prefix)
    }

    /// The inbox queue of an agency node.
    pub fn inbox_queue(&self, node: &AgencyNode) -> String {
        format!("{}.inbox.{}.{}", self.cfg.prefix, node.kind().as_str(), node.code())
    }

    /// The binding pattern of an agency node: every message kind addressed to it.
    pub fn node_pattern(node: &AgencyNode) -> String {
        format!("{}.{}.*", node.kind().as_str(), node.code())
    }

    fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(self.cfg.delivery_limit));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.dead_exchange().into()));
        if self.cfg.at_least_once_dead_lettering {
            // at-least-once dead-lettering requires reject-publish overflow.
            args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
            args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        }
        args
    }

    /// Declares exchanges (also the status exchange), the dead queue, the tap, and the inbox
    /// queue of each node with its bindings (to its own queue and to the tap). Idempotent.
    pub async fn declare(&self, ch: &Channel, nodes: &[AgencyNode]) -> anyhow::Result<()> {
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
        ch.queue_bind(
            self.dead_queue().into(),
            self.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the dead queue")?;

        ch.queue_declare(self.tap_queue().into(), qopts, self.work_queue_args())
            .await
            .context("declaring the audit tap queue")?;
        // A self-accepted case's messages (sender and recipient the same body) go to the audit
        // store only (Envelope::routing_key).
        let record = format!("{}.#", duijie_proto::RECORD_PREFIX);
        ch.queue_bind(
            self.tap_queue().into(),
            self.handoff_exchange().into(),
            record.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the audit tap to the records")?;

        for node in nodes {
            let queue = self.inbox_queue(node);
            let pattern = Self::node_pattern(node);
            ch.queue_declare(queue.clone().into(), qopts, self.work_queue_args())
                .await
                .with_context(|| format!("declaring inbox queue {queue}"))?;
            for q in [queue.as_str(), &self.tap_queue()] {
                ch.queue_bind(
                    q.into(),
                    self.handoff_exchange().into(),
                    pattern.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {q} to {pattern}"))?;
            }
        }
        Ok(())
    }
}
