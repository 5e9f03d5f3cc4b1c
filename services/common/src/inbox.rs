//! The inbox consumer: applies each delivered envelope and records `(consumer, message_id)` in
//! the same transaction, then acks. A duplicate is acked and skipped; a message that cannot be
//! decoded or applied is published to the dead-letter exchange with the reason and acked, and the
//! consumer keeps going. Database outages are waited out with the deliveries held (not requeued,
//! so they do not burn the queue's delivery limit); broker outages end the session and the loop
//! reconnects.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use duijie_proto::ContractError;
use duijie_proto::v1::Envelope;
use futures::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use sqlx::{Acquire as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::amqp::{Connector, DEAD_CONSUMER, DEAD_QUEUE, DEAD_REASON, ORIGINAL_ROUTING_KEY, Topology};
use crate::backoff::Backoff;
use crate::config::ConsumerConfig;
use crate::db::is_transient;
use crate::reconnect::run_counted_sessions;
use crate::signing::{Signature, Verifier};
use crate::trace::W3cContext;

/// How long dead-lettering waits for the broker's confirm before giving up on the connection.
const DEAD_LETTER_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A decoded message as the handler sees it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The envelope, already checked against the contract.
    pub envelope: Envelope,
    /// The routing key it arrived with.
    pub routing_key: String,
    /// Whether the broker flagged it as a redelivery.
    pub redelivered: bool,
    /// The sender's trace context (also the parent of the span the handler runs in).
    pub trace: W3cContext,
    /// The envelope's bytes exactly as delivered (what its signature covers).
    pub bytes: Vec<u8>,
    /// The signature it carried, if any.
    pub signature: Option<Signature>,
    /// Who signed it, once the consumer's verifier accepted the signature.
    pub signer: Option<String>,
    /// Why the consumer's verifier refused the signature, for a consumer that records refused
    /// messages ([`BadSignature::Deliver`], the audit store) instead of dead-lettering them.
    pub signature_refused: Option<String>,
}

/// What a consumer with a verifier does with a message whose signature it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSignature {
    /// Dead-letter it with the reason: it never reaches the handler (the agency services).
    DeadLetter,
    /// Hand it to the handler with [`Inbound::signature_refused`] set (the audit store, which
    /// records it as refused).
    Deliver,
}

/// Why a handler did not apply a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be applied (refused by the rules, inconsistent data): it goes to
    /// the dead-letter queue with this reason.
    #[error("{0}")]
    Rejected(String),
    /// The message cannot be applied *yet*: its case's state does not allow it now, or the case
    /// or its recipient is not known here yet. It is held (`inbox_held`) and tried again for
    /// `consumer.hold_for`, then dead-lettered with this reason (a crossing message, or one
    /// overtaken by a retry, is applied once what it waited for has arrived).
    #[error("{0}")]
    Early(String),
    /// Applying failed for a reason unrelated to the message (database down): retried.
    #[error(transparent)]
    Transient(anyhow::Error),
}

impl From<sqlx::Error> for HandleError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) { Self::Transient(e.into()) } else { Self::Rejected(format!("database refused: {e}")) }
    }
}

/// A new message of a batch, with the span it is applied in (its parent is the sender's trace
/// context).
#[derive(Debug)]
pub struct Batched<'a> {
    /// The message.
    pub msg: &'a Inbound,
    /// The span `inbox.apply` of the message.
    pub span: tracing::Span,
}

/// What a service does with a message, inside the inbox transaction. Its effects commit
/// together with the inbox record, or not at all.
pub trait Handler: Send + Sync + 'static {
    /// Applies `msg` using `conn` (an open transaction).
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, msg: &'a Inbound) -> impl Future<Output = Result<(), HandleError>> + Send + 'a;

    /// Applies the new messages of a batch, in delivery order, using `conn` (an open
    /// transaction), e.g. in a few set-based statements. By default, [`Handler::handle`] for each
    /// in its own span. A refusal (`Rejected`) refuses the batch: the consumer rolls it back and
    /// redoes it with [`Handler::handle`] message by message, each in a savepoint, so only the
    /// refused message is left out.
    fn handle_batch<'a>(&'a self, conn: &'a mut PgConnection, batch: &'a [Batched<'a>]) -> impl Future<Output = Result<(), HandleError>> + Send + 'a {
        async move {
            for b in batch {
                self.handle(&mut *conn, b.msg).instrument(b.span.clone()).await?;
            }
            Ok(())
        }
    }

    /// Runs first in every transaction the consumer applies messages in, before anything is
    /// written: e.g. to take, in a fixed order, the locks the handler will need (a handler that
    /// must see its writes ordered by transaction id needs them before the inbox row gives the
    /// transaction one). `msgs` are the messages the transaction may apply. By default nothing.
    fn prepare<'a>(&'a self, _conn: &'a mut PgConnection, _msgs: &'a [&'a Inbound]) -> impl Future<Output = Result<(), HandleError>> + Send + 'a {
        async { Ok(()) }
    }

    /// Called for each applied message once its transaction has committed (e.g. to wake
    /// watchers or take measurements). Must not fail; the message is already applied.
    fn committed(&self, _msg: &Inbound) {}
}

/// Counters a consumer keeps; read them to see what it did.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages applied and committed.
    pub applied: AtomicU64,
    /// Redeliveries recognised by the inbox and skipped.
    pub duplicates: AtomicU64,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Sessions restarted after losing the broker.
    pub restarts: AtomicU64,
    /// Messages whose signature was missing, bad or not the sender's.
    pub bad_signatures: AtomicU64,
    /// Messages held because they arrived before their case's state allowed them.
    pub held: AtomicU64,
    /// Held messages applied later.
    pub released: AtomicU64,
    /// Held messages that never applied within `hold_for` (dead-lettered).
    pub expired: AtomicU64,
    /// Publish time (AMQP `timestamp`, seconds since the epoch) of the oldest delivery taken and
    /// not yet acked; 0 once the consumer waits for the broker with nothing in hand. A session
    /// that ends holding a batch leaves it set: those messages come again. How the audit service
    /// tells how far behind it is ([`ConsumerStats::holding_since`]).
    pub oldest_held: AtomicU64,
}

impl ConsumerStats {
    /// Since when (publish time, whole seconds) the oldest message in hand has waited; `None`
    /// while the consumer holds nothing.
    pub fn holding_since(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.oldest_held.load(Ordering::Relaxed) {
            0 => None,
            s => chrono::DateTime::from_timestamp(i64::try_from(s).ok()?, 0),
        }
    }
}

/// Result of applying one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied and recorded.
    Applied,
    /// Already in the inbox: skipped.
    Duplicate,
    /// Refused by the handler: to be dead-lettered with this reason.
    Rejected(String),
    /// Not applicable yet: to be held and tried again ([`HandleError::Early`]).
    Held(String),
}

/// Applies one message in its own savepoint of `conn`: records it in the inbox and runs the
/// handler; a duplicate or a rejection leaves no trace. Transient errors abort the whole batch.
pub async fn apply_one<H: Handler>(conn: &mut PgConnection, consumer: &str, handler: &H, msg: &Inbound) -> Result<Applied, HandleError> {
    let message_id = message_uuid(msg)?;
    let mut sp = conn.begin().await?;
    let new = sqlx::query("INSERT INTO inbox (consumer, message_id, routing_key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(consumer)
        .bind(message_id)
        .bind(&msg.routing_key)
        .execute(&mut *sp)
        .await?
        .rows_affected()
        == 1;
    if !new {
        sp.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    match run_handler(&mut sp, consumer, handler, msg, message_id).await {
        Ok(()) => {
            sp.commit().await?;
            Ok(Applied::Applied)
        }
        Err(HandleError::Rejected(reason)) => {
            sp.rollback().await?;
            Ok(Applied::Rejected(reason))
        }
        Err(HandleError::Early(reason)) => {
            sp.rollback().await?;
            Ok(Applied::Held(reason))
        }
        Err(e @ HandleError::Transient(_)) => Err(e),
    }
}

fn message_uuid(msg: &Inbound) -> Result<Uuid, HandleError> {
    Uuid::parse_str(&msg.envelope.message_id).map_err(|_| HandleError::Rejected("message_id is not a UUID".into()))
}

/// The span a message is applied in: it continues the sender's trace.
fn apply_span(consumer: &str, msg: &Inbound, message_id: Uuid) -> tracing::Span {
    let span = tracing::info_span!("inbox.apply", consumer, message_id = %message_id, kind = msg.envelope.kind().routing_segment(), case_id = %msg.envelope.case_id);
    msg.trace.set_as_parent_of(&span);
    span
}

/// Runs the handler in a span that continues the sender's trace.
async fn run_handler<H: Handler>(conn: &mut PgConnection, consumer: &str, handler: &H, msg: &Inbound, message_id: Uuid) -> Result<(), HandleError> {
    handler.handle(conn, msg).instrument(apply_span(consumer, msg, message_id)).await
}

/// Runs the handler on the new messages of a batch, in a span `inbox.apply_batch` that follows
/// from each message's span (so each sender's trace links to the batch that applied it).
async fn run_batch<H: Handler>(conn: &mut PgConnection, consumer: &str, handler: &H, new: &[(&Inbound, Uuid)]) -> Result<(), HandleError> {
    if new.is_empty() {
        return Ok(());
    }
    let batch: Vec<Batched<'_>> = new.iter().map(|(msg, id)| Batched { msg, span: apply_span(consumer, msg, *id) }).collect();
    let span = tracing::info_span!("inbox.apply_batch", consumer, messages = batch.len());
    for b in &batch {
        span.follows_from(&b.span);
    }
    handler.handle_batch(conn, &batch).instrument(span).await
}

/// Applies a batch in `conn` without savepoints: one statement records every message in the
/// inbox, then the handler takes the new ones as one batch ([`Handler::handle_batch`]). Returns
/// `None` if the handler refuses the batch or the database refuses its data: the caller rolls
/// back and redoes the batch message by message, so only the culprit is left out.
async fn apply_batch_fast<H: Handler>(conn: &mut PgConnection, consumer: &str, handler: &H, decoded: &[Result<Inbound, String>]) -> Result<Option<Vec<Applied>>, HandleError> {
    let mut ids = Vec::with_capacity(decoded.len());
    let mut keys = Vec::with_capacity(decoded.len());
    for msg in decoded.iter().flatten() {
        let Ok(id) = message_uuid(msg) else { return Ok(None) };
        ids.push(id);
        keys.push(msg.routing_key.clone());
    }
    let new_ids: Result<Vec<Uuid>, sqlx::Error> = sqlx::query_scalar(
        "INSERT INTO inbox (consumer, message_id, routing_key)
         SELECT $1, m.id, m.key FROM unnest($2::uuid[], $3::text[]) AS m(id, key)
         ON CONFLICT DO NOTHING
         RETURNING message_id",
    )
    .bind(consumer)
    .bind(&ids)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await;
    let new_ids: HashSet<Uuid> = match new_ids {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) if is_transient(&e) => return Err(HandleError::Transient(e.into())),
        Err(_) => return Ok(None), // e.g. a routing key PostgreSQL cannot store: find the culprit
    };
    let mut first_seen = HashSet::with_capacity(new_ids.len());
    let mut outcomes = Vec::with_capacity(decoded.len());
    let mut new = Vec::with_capacity(new_ids.len());
    for d in decoded {
        let outcome = match d {
            Err(reason) => Applied::Rejected(reason.clone()),
            Ok(msg) => {
                let Ok(id) = message_uuid(msg) else { return Ok(None) };
                // The same id twice in one batch: only its first occurrence is new.
                if new_ids.contains(&id) && first_seen.insert(id) {
                    new.push((msg, id));
                    Applied::Applied
                } else {
                    Applied::Duplicate
                }
            }
        };
        outcomes.push(outcome);
    }
    match run_batch(conn, consumer, handler, &new).await {
        Ok(()) => Ok(Some(outcomes)),
        Err(HandleError::Rejected(_) | HandleError::Early(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A refusal is an outcome (dead-letter it); a transient error is an error (hold the batch).
fn refusal_as_outcome(r: Result<Applied, HandleError>) -> anyhow::Result<Applied> {
    match r {
        Ok(o) => Ok(o),
        Err(HandleError::Rejected(reason)) => Ok(Applied::Rejected(reason)),
        Err(HandleError::Early(reason)) => Ok(Applied::Held(reason)),
        Err(HandleError::Transient(e)) => Err(e.context("applying a message")),
    }
}

/// The routing key the message was first published with: a dead letter replayed onto its queue
/// (through the default exchange) keeps it in a header.
fn original_routing_key(delivery: &Delivery) -> String {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ORIGINAL_ROUTING_KEY))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned())
}

/// Decodes a delivery into an [`Inbound`], or says why it is poison.
pub fn decode(delivery: &Delivery) -> Result<Inbound, String> {
    let envelope = decode_envelope(delivery.data.as_slice())?;
    Ok(Inbound {
        envelope,
        routing_key: original_routing_key(delivery),
        redelivered: delivery.redelivered,
        trace: W3cContext::from_headers(delivery.properties.headers().as_ref()),
        bytes: delivery.data.clone(),
        signature: Signature::from_headers(delivery.properties.headers().as_ref()),
        signer: None,
        signature_refused: None,
    })
}

/// The envelope in a delivery's body, checked against the whole contract (header, payload
/// bounds: [`duijie_proto::limits`]), or the dead-letter reason. Bodies larger than
/// [`duijie_proto::limits::MAX_ENVELOPE_BYTES`] are refused before decoding.
pub fn decode_envelope(body: &[u8]) -> Result<Envelope, String> {
    Envelope::decode_checked(body).map_err(|e| match e {
        ContractError::Decode(e) => format!("undecodable envelope: {e}"),
        e => format!("envelope breaks the contract: {e}"),
    })
}

/// Consumes one partition queue (a service kind's inbox partition, or one of the audit tap's)
/// into a handler.
pub struct Consumer<H> {
    name: String,
    queue: String,
    pool: PgPool,
    connector: Connector,
    topology: Topology,
    cfg: ConsumerConfig,
    handler: Arc<H>,
    stats: Arc<ConsumerStats>,
    verifier: Option<(Arc<Verifier>, BadSignature)>,
    /// Whether this partition may have held messages (set when it holds one, and by each
    /// periodic look): while it has none, a batch costs no look at `inbox_held`.
    may_hold: std::sync::atomic::AtomicBool,
}

impl<H: Handler> Consumer<H> {
    /// A consumer named `name` (the inbox key: keep it stable across restarts and replicas, and
    /// the same for every partition of a service: a message goes to one of them) reading `queue`.
    /// It (re)declares the topology on connect where its broker user may.
    pub fn new(
        name: impl Into<String>,
        queue: impl Into<String>,
        pool: PgPool,
        connector: Connector,
        topology: Topology,
        cfg: ConsumerConfig,
        handler: H,
    ) -> Self {
        Self {
            name: name.into(),
            queue: queue.into(),
            pool,
            connector,
            topology,
            cfg,
            handler: Arc::new(handler),
            stats: Arc::default(),
            verifier: None,
            // A replica taking the partition over may inherit held rows: the first look says.
            may_hold: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Checks every message's signature before the handler sees it ([`crate::signing`]);
    /// `policy` says what becomes of one it refuses. Without a verifier messages are taken as
    /// they come: only bare transport tests run so.
    #[must_use]
    pub fn with_verifier(mut self, verifier: Arc<Verifier>, policy: BadSignature) -> Self {
        self.verifier = Some((verifier, policy));
        self
    }

    /// The signature check of one decoded message (see [`Consumer::with_verifier`]).
    fn check_signature(&self, mut msg: Inbound) -> Result<Inbound, String> {
        let Some((verifier, policy)) = &self.verifier else { return Ok(msg) };
        match verifier.verify_envelope(&msg.envelope, &msg.bytes, msg.signature.as_ref(), chrono::Utc::now()) {
            Ok(signer) => {
                msg.signer = Some(signer);
                Ok(msg)
            }
            Err(e) => {
                self.stats.bad_signatures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(consumer = %self.name, message_id = %msg.envelope.message_id, error = %e, "refused a message's signature");
                match policy {
                    BadSignature::DeadLetter => Err(format!("signature refused: {e}")),
                    BadSignature::Deliver => {
                        msg.signature_refused = Some(e.to_string());
                        Ok(msg)
                    }
                }
            }
        }
    }

    /// Counts into `stats` (shared by the consumers of several partitions, to read them as
    /// one; `oldest_held` then means nothing: the audit service keeps one per partition).
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<ConsumerStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`, reconnecting after broker restarts ([`run_counted_sessions`]). It does not
    /// prune the inbox: the table is shared by every consumer on the database, so the process
    /// runs one [`crate::db::prune_inbox_periodically`] for all of them.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (consumer, token) = (&self, &shutdown);
        run_counted_sessions(&format!("consumer {}", self.name), token, Backoff::reconnect(), &consumer.stats.restarts, move |_| consumer.session(token)).await;
        Ok(())
    }

    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = self.connector.connect(&format!("consumer {}", self.name)).await?;
        // A node that is healing from a partition may take a declare or a consume and never
        // answer while its heartbeats go on: bounded, the session starts over instead of
        // leaving the partition without a consumer.
        let setup = async {
            self.topology.ensure(&conn).await?;
            let ch = conn.create_channel().await.context("opening the consumer channel")?;
            ch.basic_qos(self.cfg.prefetch, BasicQosOptions::default()).await.context("setting prefetch")?;
            // Dead-lettering publishes with confirms on a channel of its own, so that confirm
            // mode does not interfere with the consuming channel.
            let dead_ch = conn.create_channel().await.context("opening the dead-letter channel")?;
            dead_ch.confirm_select(ConfirmSelectOptions::default()).await.context("enabling confirms")?;
            let deliveries = ch
                .basic_consume(self.queue.clone().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .with_context(|| format!("consuming {} (declared by `duijie-bus declare`?)", self.queue))?;
            anyhow::Ok((ch, dead_ch, deliveries))
        };
        let (ch, dead_ch, mut deliveries) = match tokio::time::timeout(SESSION_SETUP_TIMEOUT, setup).await {
            Ok(r) => r?,
            Err(_) => {
                crate::amqp::close(&conn, "setting up took too long").await;
                anyhow::bail!("setting up the consumer of {} took over {SESSION_SETUP_TIMEOUT:?}", self.queue)
            }
        };
        tracing::info!(consumer = %self.name, queue = %self.queue, "consumer connected");
        let outcome = self.consume(&ch, &dead_ch, &mut deliveries, shutdown).await;
        // Closed before the consumer is dropped, whether it stopped or failed: a lapin consumer
        // dropped while its channel is open sends basic.cancel from lapin's own task, and a
        // connection closed right after makes the broker's cancel-ok an unexpected frame.
        let reason = if outcome.is_ok() { "shutdown" } else { "restarting after an error" };
        crate::amqp::close(&conn, reason).await;
        drop(deliveries);
        outcome
    }

    /// Takes batches from `deliveries` and applies them until shutdown (`Ok`) or a broker error.
    async fn consume(&self, ch: &Channel, dead_ch: &Channel, deliveries: &mut lapin::Consumer, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut next_retry = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= next_retry {
                self.retry_held(dead_ch, None).await?;
                next_retry = tokio::time::Instant::now() + self.cfg.hold_retry;
            }
            let first = match deliveries.next().now_or_never() {
                Some(d) => d,
                None => {
                    // Nothing buffered: everything delivered so far is acked. (Cleared here, not
                    // at the ack, so that between two batches the next one never reads as none.)
                    self.stats.oldest_held.store(0, Ordering::Relaxed);
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        d = deliveries.next() => d,
                        () = tokio::time::sleep_until(next_retry) => continue,
                    }
                }
            };
            let Some(first) = first else { anyhow::bail!("the broker ended the consumer") };
            let mut batch = vec![first.context("receiving a delivery")?];
            // Take whatever else is already here, without waiting: batching amortises the commit.
            while batch.len() < self.cfg.batch_max {
                match deliveries.next().now_or_never() {
                    Some(Some(d)) => batch.push(d.context("receiving a delivery")?),
                    Some(None) => anyhow::bail!("the broker ended the consumer"),
                    None => break,
                }
            }
            let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
            let oldest = batch.iter().map(|d| d.properties.timestamp().unwrap_or(now)).min().unwrap_or(now);
            self.stats.oldest_held.store(oldest.max(1), Ordering::Relaxed);
            if !self.process(ch, dead_ch, batch, shutdown).await? {
                return Ok(());
            }
        }
    }

    /// Applies a batch in one transaction, dead-letters the poison in it, then acks it all.
    /// Returns `false` if shutdown came while waiting for the database (the batch is then left
    /// unacked and the broker redelivers it to the next consumer).
    async fn process(&self, ch: &Channel, dead_ch: &Channel, batch: Vec<Delivery>, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let started = std::time::Instant::now();
        let redelivered = batch.iter().filter(|d| d.redelivered).count();
        if redelivered > 0 {
            metrics::counter!("duijie_consumer_redeliveries_total", "queue" => self.queue.clone()).increment(redelivered as u64);
        }
        let decoded: Vec<Result<Inbound, String>> = batch.iter().map(|d| decode(d).and_then(|m| self.check_signature(m))).collect();
        let mut db_backoff = Backoff::reconnect();
        let outcomes = loop {
            match self.apply_batch(&decoded).await {
                Ok(o) => break o,
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = format!("{e:#}"), "cannot apply a batch (database unavailable?); holding it and retrying");
                    if !db_backoff.wait(shutdown).await {
                        return Ok(false);
                    }
                }
            }
        };
        let held: Vec<(&Inbound, &str)> = outcomes
            .iter()
            .zip(&decoded)
            .filter_map(|(o, d)| match (o, d) {
                (Applied::Held(reason), Ok(msg)) => Some((msg, reason.as_str())),
                _ => None,
            })
            .collect();
        if !held.is_empty() {
            let mut db_backoff = Backoff::reconnect();
            while let Err(e) = self.hold(&held).await {
                tracing::warn!(consumer = %self.name, error = format!("{e:#}"), "cannot hold early messages (database unavailable?); retrying");
                if !db_backoff.wait(shutdown).await {
                    return Ok(false);
                }
            }
        }
        let mut touched = Vec::new();
        for ((delivery, outcome), decoded) in batch.iter().zip(&outcomes).zip(&decoded) {
            match outcome {
                Applied::Applied => {
                    self.stats.applied.fetch_add(1, Ordering::Relaxed);
                    if let Ok(msg) = decoded {
                        self.handler.committed(msg);
                        touched.extend(Uuid::parse_str(&msg.envelope.case_id).ok());
                    }
                }
                Applied::Held(reason) => {
                    self.stats.held.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(consumer = %self.name, routing_key = %delivery.routing_key, reason = %reason, "message arrived before its case allows it: held and tried again");
                }
                Applied::Duplicate => {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(consumer = %self.name, message_id = ?delivery.properties.message_id(), "duplicate delivery skipped");
                }
                Applied::Rejected(reason) => {
                    tracing::error!(consumer = %self.name, routing_key = %delivery.routing_key, reason = %reason, "poison message sent to the dead-letter queue");
                    self.dead_letter(dead_ch, delivery, reason).await?;
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    // Unreadable: not an envelope, or its signature fails; refused: the handler's no.
                    let why = if decoded.is_err() { "unreadable" } else { "refused" };
                    metrics::counter!("duijie_dead_letters_total", "reason" => why).increment(1);
                }
            }
        }
        if let Some(last) = batch.last() {
            ch.basic_ack(last.delivery_tag, BasicAckOptions { multiple: true }).await.context("acking a batch")?;
        }
        // What this batch applied may be what a held message of the same case waited for.
        if !touched.is_empty() {
            self.retry_held(dead_ch, Some(&touched)).await?;
        }
        metrics::histogram!("duijie_consumer_apply_seconds", "queue" => self.queue.clone()).record(started.elapsed().as_secs_f64());
        tracing::debug!(consumer = %self.name, batch = batch.len(), ms = started.elapsed().as_secs_f64() * 1e3, "applied a batch");
        Ok(true)
    }

    /// Applies a batch; an `Err` is transient (the batch is held and retried). The fast path
    /// records the whole batch in the inbox in one statement and hands its new messages to the
    /// handler as one batch, in one transaction; if the handler or the database refuses
    /// something, the batch is redone with a savepoint per message ([`Handler::handle`]); if even
    /// the commit is refused (a deferred constraint), each message gets a transaction of its own.
    /// A message refused on its own is dead-lettered; the others are applied.
    async fn apply_batch(&self, decoded: &[Result<Inbound, String>]) -> anyhow::Result<Vec<Applied>> {
        let handler = self.handler.as_ref();
        let msgs: Vec<&Inbound> = decoded.iter().flatten().collect();
        let prepared = async |tx: &mut PgConnection, msgs: &[&Inbound]| match handler.prepare(tx, msgs).await {
            Ok(()) => Ok(()),
            Err(HandleError::Transient(e)) => Err(e.context("preparing a batch")),
            Err(HandleError::Rejected(r) | HandleError::Early(r)) => Err(anyhow::anyhow!("the handler could not prepare a batch: {r}")),
        };
        let mut tx = self.pool.begin().await.context("beginning the inbox transaction")?;
        prepared(&mut tx, &msgs).await?;
        match apply_batch_fast(&mut tx, &self.name, handler, decoded).await {
            Ok(Some(outcomes)) => match tx.commit().await {
                Ok(()) => return Ok(outcomes),
                Err(e) if is_transient(&e) => return Err(anyhow::Error::new(e).context("committing a batch")),
                Err(_) => {}
            },
            Ok(None) | Err(HandleError::Rejected(_) | HandleError::Early(_)) => tx.rollback().await.context("rolling back the fast path")?,
            Err(HandleError::Transient(e)) => return Err(e.context("applying a batch")),
        }

        let mut tx = self.pool.begin().await.context("beginning the inbox transaction")?;
        prepared(&mut tx, &msgs).await?;
        let mut outcomes = Vec::with_capacity(decoded.len());
        for d in decoded {
            outcomes.push(match d {
                Err(reason) => Applied::Rejected(reason.clone()),
                Ok(msg) => refusal_as_outcome(apply_one(&mut tx, &self.name, handler, msg).await)?,
            });
        }
        match tx.commit().await {
            Ok(()) => return Ok(outcomes),
            Err(e) if is_transient(&e) => return Err(anyhow::Error::new(e).context("committing a batch")),
            Err(e) => tracing::warn!(consumer = %self.name, error = %e, "the database refused a batch at commit; applying its messages one by one"),
        }

        let mut outcomes = Vec::with_capacity(decoded.len());
        for d in decoded {
            outcomes.push(match d {
                Err(reason) => Applied::Rejected(reason.clone()),
                Ok(msg) => {
                    let mut tx = self.pool.begin().await.context("beginning a message transaction")?;
                    prepared(&mut tx, &[msg]).await?;
                    match refusal_as_outcome(apply_one(&mut tx, &self.name, handler, msg).await)? {
                        Applied::Applied => match tx.commit().await {
                            Ok(()) => Applied::Applied,
                            Err(e) if is_transient(&e) => return Err(anyhow::Error::new(e).context("committing a message")),
                            Err(e) => Applied::Rejected(format!("database refused at commit: {e}")),
                        },
                        other => other,
                    }
                }
            });
        }
        Ok(outcomes)
    }

    /// Keeps early messages in `inbox_held` (a copy already held stays as it is).
    async fn hold(&self, held: &[(&Inbound, &str)]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await.context("beginning the hold transaction")?;
        for (msg, reason) in held {
            let id = Uuid::parse_str(&msg.envelope.message_id).context("a held message's id")?;
            let case = Uuid::parse_str(&msg.envelope.case_id).context("a held message's case id")?;
            sqlx::query(
                "INSERT INTO inbox_held (consumer, message_id, queue, case_id, routing_key, body, signature, signer_cert, signer,
                                         traceparent, tracestate, reason, next_try_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now() + $13 * interval '1 millisecond')
                 ON CONFLICT (consumer, message_id) DO NOTHING",
            )
            .bind(&self.name)
            .bind(id)
            .bind(&self.queue)
            .bind(case)
            .bind(&msg.routing_key)
            .bind(&msg.bytes)
            .bind(msg.signature.as_ref().map(|s| s.signature.clone()))
            .bind(msg.signature.as_ref().map(|s| s.cert.clone()))
            .bind(msg.signer.as_deref())
            .bind(msg.trace.traceparent.as_deref())
            .bind(msg.trace.tracestate.as_deref())
            .bind(*reason)
            .bind(i64::try_from(self.cfg.hold_retry.as_millis()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .context("holding an early message")?;
        }
        tx.commit().await.context("committing held messages")?;
        self.may_hold.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Tries this partition's held messages again: those of `cases` (just moved by a batch), or
    /// every one whose retry is due. Applied ones leave the hold; ones refused for good, or still
    /// early after `hold_for`, are dead-lettered with the reason before the hold forgets them.
    /// Rounds repeat while something applied (one held message may be what another waits for).
    /// A database problem is logged and left for the next look; a broker problem ends the session.
    async fn retry_held(&self, dead_ch: &Channel, cases: Option<&[Uuid]>) -> anyhow::Result<()> {
        if cases.is_some() && !self.may_hold.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.retry_rounds(dead_ch, cases).await?;
        if cases.is_none() {
            // The periodic look also says whether anything is held here at all (due or not).
            let any: Result<bool, sqlx::Error> = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox_held WHERE consumer = $1 AND queue = $2)")
                .bind(&self.name)
                .bind(&self.queue)
                .fetch_one(&self.pool)
                .await;
            // Unknown: keep looking after every batch.
            self.may_hold.store(any.unwrap_or(true), Ordering::Relaxed);
        }
        Ok(())
    }

    /// The rounds of [`Consumer::retry_held`].
    async fn retry_rounds(&self, dead_ch: &Channel, cases: Option<&[Uuid]>) -> anyhow::Result<()> {
        for _ in 0..16 {
            match self.retry_round(dead_ch, cases).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(RetryError::Db(e)) => {
                    tracing::warn!(consumer = %self.name, error = format!("{e:#}"), "cannot try held messages again now");
                    return Ok(());
                }
                Err(RetryError::Amqp(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// One round of [`Consumer::retry_held`]; returns how many held messages applied.
    async fn retry_round(&self, dead_ch: &Channel, cases: Option<&[Uuid]>) -> Result<usize, RetryError> {
        let db = |e: sqlx::Error| RetryError::Db(e.into());
        let mut tx = self.pool.begin().await.map_err(db)?;
        let rows: Vec<HeldRow> = sqlx::query_as(
            "SELECT message_id, routing_key, body, signature, signer_cert, signer, traceparent, tracestate,
                    held_at + $4 * interval '1 millisecond' <= now() AS expired, attempts
             FROM inbox_held
             WHERE consumer = $1 AND queue = $2 AND (case_id = ANY($3) OR ($3 IS NULL AND next_try_at <= now()))
             ORDER BY held_at, message_id
             LIMIT 128
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&self.name)
        .bind(&self.queue)
        .bind(cases)
        .bind(i64::try_from(self.cfg.hold_for.as_millis()).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let msgs: Vec<Result<Inbound, String>> = rows.iter().map(HeldRow::inbound).collect();
        let ok: Vec<&Inbound> = msgs.iter().flatten().collect();
        self.handler.prepare(&mut tx, &ok).await.map_err(|e| RetryError::Db(anyhow::anyhow!("preparing held messages: {e}")))?;
        let (mut applied, mut gone, mut dead) = (Vec::new(), Vec::new(), Vec::new());
        let mut again = Vec::new();
        for (row, msg) in rows.iter().zip(&msgs) {
            let outcome = match msg {
                Err(reason) => Applied::Rejected(reason.clone()),
                Ok(m) => match apply_one(&mut tx, &self.name, self.handler.as_ref(), m).await {
                    Ok(o) => o,
                    Err(HandleError::Transient(e)) => return Err(RetryError::Db(e)),
                    Err(HandleError::Rejected(r)) => Applied::Rejected(r),
                    Err(HandleError::Early(r)) => Applied::Held(r),
                },
            };
            match outcome {
                Applied::Applied => {
                    applied.push(msg);
                    gone.push(row.message_id);
                }
                Applied::Duplicate => gone.push(row.message_id),
                Applied::Rejected(reason) => {
                    dead.push((row, reason));
                    gone.push(row.message_id);
                }
                Applied::Held(reason) if row.expired => {
                    dead.push((row, format!("held for {} s and still not applicable: {reason}", self.cfg.hold_for.as_secs())));
                    gone.push(row.message_id);
                }
                Applied::Held(reason) => again.push((row.message_id, reason, row.attempts)),
            }
        }
        sqlx::query("DELETE FROM inbox_held WHERE consumer = $1 AND message_id = ANY($2)")
            .bind(&self.name)
            .bind(&gone)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for (id, reason, attempts) in &again {
            // Backoff from hold_retry, doubling, at most a tenth of hold_for.
            let delay = self.cfg.hold_retry.saturating_mul(1u32 << (*attempts).clamp(0, 10)).min(self.cfg.hold_for / 10).max(self.cfg.hold_retry);
            sqlx::query(
                "UPDATE inbox_held SET attempts = attempts + 1, reason = $3, next_try_at = now() + $4 * interval '1 millisecond'
                 WHERE consumer = $1 AND message_id = $2",
            )
            .bind(&self.name)
            .bind(id)
            .bind(reason)
            .bind(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        // Dead letters first: if the commit is lost they are published again with the next try
        // (a duplicate dead letter), never forgotten.
        for (row, reason) in &dead {
            tracing::error!(consumer = %self.name, routing_key = %row.routing_key, reason = %reason, "held message sent to the dead-letter queue");
            self.publish_dead(dead_ch, row.properties(), &row.routing_key, &row.body, reason).await.map_err(RetryError::Amqp)?;
        }
        tx.commit().await.map_err(db)?;
        self.stats.expired.fetch_add(u64::try_from(dead.len()).unwrap_or(0), Ordering::Relaxed);
        if !dead.is_empty() {
            metrics::counter!("duijie_dead_letters_total", "reason" => "expired").increment(dead.len() as u64);
        }
        self.stats.dead_lettered.fetch_add(u64::try_from(dead.len()).unwrap_or(0), Ordering::Relaxed);
        for m in applied.iter().copied().flatten() {
            self.stats.applied.fetch_add(1, Ordering::Relaxed);
            self.stats.released.fetch_add(1, Ordering::Relaxed);
            tracing::info!(consumer = %self.name, message_id = %m.envelope.message_id, "a held message applied");
            self.handler.committed(m);
        }
        Ok(applied.len())
    }

    async fn dead_letter(&self, dead_ch: &Channel, delivery: &Delivery, reason: &str) -> anyhow::Result<()> {
        self.publish_dead(dead_ch, delivery.properties.clone(), &original_routing_key(delivery), &delivery.data, reason).await
    }

    /// Publishes a dead letter with its reason, with confirms.
    async fn publish_dead(&self, dead_ch: &Channel, props: BasicProperties, routing_key: &str, body: &[u8], reason: &str) -> anyhow::Result<()> {
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(DEAD_REASON.into(), AMQPValue::LongString(reason.to_owned().into()));
        headers.insert(DEAD_CONSUMER.into(), AMQPValue::LongString(self.name.clone().into()));
        headers.insert(ORIGINAL_ROUTING_KEY.into(), AMQPValue::LongString(routing_key.to_owned().into()));
        headers.insert(DEAD_QUEUE.into(), AMQPValue::LongString(self.queue.clone().into()));
        let props: BasicProperties = props.with_headers(headers).with_delivery_mode(2);
        let confirm = dead_ch
            .basic_publish(
                self.topology.dead_exchange().into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                props,
            )
            .await
            .context("publishing to the dead-letter exchange")?;
        let confirm = tokio::time::timeout(DEAD_LETTER_CONFIRM_TIMEOUT, confirm)
            .await
            .context("no confirm for a dead-lettered message")?
            .context("waiting for the dead-letter confirm")?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            other => anyhow::bail!("dead-letter exchange did not take the message: {other:?}"),
        }
    }
}

enum RetryError {
    Db(anyhow::Error),
    Amqp(anyhow::Error),
}

/// How long connecting a consumer's channels and subscribing may take.
const SESSION_SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A held message as stored ([`Consumer::hold`]).
#[derive(sqlx::FromRow)]
struct HeldRow {
    message_id: Uuid,
    routing_key: String,
    body: Vec<u8>,
    signature: Option<Vec<u8>>,
    signer_cert: Option<Vec<u8>>,
    signer: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    expired: bool,
    attempts: i32,
}

impl HeldRow {
    /// The message again, as the consumer took it (its signature was checked then).
    fn inbound(&self) -> Result<Inbound, String> {
        Ok(Inbound {
            envelope: decode_envelope(&self.body)?,
            routing_key: self.routing_key.clone(),
            redelivered: true,
            trace: W3cContext { traceparent: self.traceparent.clone(), tracestate: self.tracestate.clone() },
            bytes: self.body.clone(),
            signature: match (&self.signature, &self.signer_cert) {
                (Some(signature), Some(cert)) => Some(Signature { signature: signature.clone(), cert: cert.clone() }),
                _ => None,
            },
            signer: self.signer.clone(),
            signature_refused: None,
        })
    }

    /// The AMQP properties a dead letter of it carries (the signature and trace headers).
    fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let (Some(signature), Some(cert)) = (&self.signature, &self.signer_cert) {
            Signature { signature: signature.clone(), cert: cert.clone() }.write_headers(&mut headers);
        }
        W3cContext { traceparent: self.traceparent.clone(), tracestate: self.tracestate.clone() }.write_headers(&mut headers);
        BasicProperties::default()
            .with_content_type(duijie_proto::ENVELOPE_CONTENT_TYPE.into())
            .with_message_id(self.message_id.to_string().into())
            .with_headers(headers)
    }
}
