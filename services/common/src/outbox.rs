//! The transactional outbox: [`stage`] writes an envelope in the caller's transaction; the
//! [`Relay`] publishes staged rows with publisher confirms and `mandatory`, and marks a row sent
//! only after the broker acked it without returning it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use duijie_proto::ENVELOPE_CONTENT_TYPE;
use duijie_proto::v1::{Envelope, TraceContext};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::amqp::{Connector, Topology};
use crate::backoff::{Backoff, retry_delay};
use crate::config::RelayConfig;
use crate::reconnect::run_counted_sessions;
use crate::signing::Signer;
use crate::trace::W3cContext;

/// Why an envelope could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The envelope breaks the contract (missing payload, bad ids, …).
    #[error("invalid envelope: {0}")]
    Invalid(#[from] duijie_proto::ContractError),
    /// The database refused or could not be reached.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Stages `env` for publishing, in the caller's transaction: it is published if and only if that
/// transaction commits. Fills in the trace context of the current span when the envelope has none.
/// Staging an envelope whose `message_id` is already staged does nothing (returns `false`).
pub async fn stage(conn: &mut PgConnection, topology: &Topology, env: &mut Envelope) -> Result<bool, StageError> {
    Ok(stage_all(conn, topology, std::slice::from_mut(env)).await? == 1)
}

/// Stages several envelopes with one statement (see [`stage`]); returns how many were new.
/// Nothing is staged if any envelope breaks the contract.
pub async fn stage_all(conn: &mut PgConnection, topology: &Topology, envs: &mut [Envelope]) -> Result<u64, StageError> {
    if envs.is_empty() {
        return Ok(0);
    }
    let current = W3cContext::current();
    let n = envs.len();
    let (mut message_ids, mut case_ids, mut kinds) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut routing_keys, mut payloads) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut traceparents, mut tracestates) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for env in envs.iter_mut() {
        let w3c = match &env.trace {
            Some(t) if !t.traceparent.is_empty() => W3cContext {
                traceparent: Some(t.traceparent.clone()),
                tracestate: Some(t.tracestate.clone()).filter(|s| !s.is_empty()),
            },
            _ => {
                env.trace = Some(TraceContext {
                    traceparent: current.traceparent.clone().unwrap_or_default(),
                    tracestate: current.tracestate.clone().unwrap_or_default(),
                });
                current.clone()
            }
        };
        env.check()?;
        routing_keys.push(env.routing_key()?);
        message_ids.push(parse_uuid("message_id", &env.message_id)?);
        case_ids.push(parse_uuid("case_id", &env.case_id)?);
        kinds.push(env.kind().routing_segment());
        payloads.push(env.encode_to_vec());
        traceparents.push(w3c.traceparent);
        tracestates.push(w3c.tracestate);
    }
    let inserted = sqlx::query(
        "INSERT INTO outbox (message_id, case_id, kind, exchange, routing_key, payload, traceparent, tracestate)
         SELECT m, c, k, $4, r, p, tp, ts
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $5::text[], $6::bytea[], $7::text[], $8::text[])
              WITH ORDINALITY AS e(m, c, k, r, p, tp, ts, ord)
         ORDER BY ord
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&message_ids)
    .bind(&case_ids)
    .bind(&kinds)
    .bind(topology.handoff_exchange())
    .bind(&routing_keys)
    .bind(&payloads)
    .bind(&traceparents)
    .bind(&tracestates)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted)
}

fn parse_uuid(field: &'static str, value: &str) -> Result<Uuid, StageError> {
    Uuid::parse_str(value)
        .map_err(|_| StageError::Invalid(duijie_proto::ContractError::InvalidUuid { field, value: value.to_owned() }))
}

/// Counters a relay keeps; read them to see what it did.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Rows published and acked by the broker, deleted from the outbox.
    pub published: AtomicU64,
    /// Publishes the broker returned as unroutable (no queue for the recipient).
    pub returned: AtomicU64,
    /// Publishes the broker refused (nack).
    pub nacked: AtomicU64,
    /// Rows it could not sign (no key for their sender): left unsent, retried.
    pub unsigned: AtomicU64,
    /// Times the relay lost its broker connection or database and started over.
    pub restarts: AtomicU64,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    message_id: Uuid,
    case_id: Uuid,
    kind: String,
    exchange: String,
    routing_key: String,
    payload: Vec<u8>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    attempts: i32,
}

/// What happened to one claimed batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows confirmed and deleted.
    pub sent: usize,
    /// Rows returned or nacked, left unsent with a retry time.
    pub failed: usize,
    /// When the first of those falls due, from the commit on.
    pub retry_in: Option<std::time::Duration>,
}

enum RelayError {
    Amqp(anyhow::Error),
    Db(anyhow::Error),
}

/// Publishes staged outbox rows. Run one or more per service database; rows are claimed with
/// `FOR UPDATE SKIP LOCKED`, so several relays never publish the same row concurrently.
///
/// The relay is woken through its [`RelayWaker`] by code in the same process that just committed
/// a staged envelope, and looks again at once while it finds rows. Idle, it looks only every
/// `poll_interval` (1 s by default), for rows nobody woke it for: staged by another process on
/// the same database, or left by a relay that crashed. A row the broker returned or refused is
/// looked at again when its retry falls due. So an idle service costs one indexed query per
/// interval instead of fifty a second, and an in-process stage still goes out at once.
///
/// It does not use LISTEN/NOTIFY on purpose: PostgreSQL serialises the commits of all
/// transactions that issued a NOTIFY behind one lock (held across the WAL flush), which caps the
/// whole database at one notifying commit per flush and made staging latency explode at 1,000
/// commits/s.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    connector: Connector,
    cfg: RelayConfig,
    name: String,
    stats: Arc<RelayStats>,
    wake: Arc<Notify>,
    signer: Option<Arc<Signer>>,
}

/// Wakes a relay in the same process (after committing a transaction that staged envelopes).
#[derive(Clone, Debug)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    /// Makes the relay look at the outbox now instead of at its next poll.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

impl Relay {
    /// A relay publishing the outbox of `pool`.
    pub fn new(pool: PgPool, connector: Connector, cfg: RelayConfig, name: impl Into<String>) -> Self {
        Self { pool, connector, cfg, name: name.into(), stats: Arc::default(), wake: Arc::new(Notify::new()), signer: None }
    }

    /// Signs every envelope as its sender ([`crate::signing`]) before publishing it. Without a
    /// signer the relay publishes unsigned envelopes, which the agency services and the audit
    /// store refuse: only bare transport tests run so.
    #[must_use]
    pub fn with_signer(mut self, signer: Arc<Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// A handle that wakes this relay.
    pub fn waker(&self) -> RelayWaker {
        RelayWaker(self.wake.clone())
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`: reconnects to the broker ([`run_counted_sessions`]) and waits out database
    /// outages itself.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (relay, token) = (&self, &shutdown);
        run_counted_sessions(&format!("outbox relay {}", self.name), token, Backoff::reconnect(), &relay.stats.restarts, move |_| relay.session(token)).await;
        Ok(())
    }

    /// One broker connection's lifetime. Database errors are waited out on the same channel.
    ///
    /// One batch at a time: lapin hands a `basic.return` to whichever confirm completes next,
    /// not to the publish it belongs to, so returns are matched to rows by message id — which
    /// is only unambiguous while no other batch is in flight on the channel. (A pipelined
    /// version lost unroutable messages this way; see ARCHITECTURE.md.)
    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = self.connector.connect(&format!("relay {}", self.name)).await?;
        let ch = conn.create_channel().await.context("opening the relay channel")?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
        tracing::info!(relay = %self.name, "outbox relay connected");
        let mut db_backoff = Backoff::reconnect();
        // The commit of the previous batch, running while the next one is claimed and published.
        // Its confirms were all resolved before, so returns are still attributed unambiguously.
        let mut committing: Option<tokio::task::JoinHandle<Result<BatchOutcome, RelayError>>> = None;
        // When the earliest row this relay left unsent (returned or nacked) falls due.
        let mut retry_due: Option<tokio::time::Instant> = None;
        loop {
            let claiming = tokio::time::Instant::now();
            // On shutdown the batch in flight is dropped: its transaction rolls back and the
            // rows are published again by the next relay (the inbox drops the copies).
            let step = tokio::select! {
                () = shutdown.cancelled() => None,
                r = self.publish_batch(&ch) => Some(r),
            };
            let previous = match committing.take() {
                Some(h) => h.await.unwrap_or_else(|e| Err(RelayError::Db(anyhow::anyhow!("relay commit task failed: {e}")))),
                None => Ok(BatchOutcome::default()),
            };
            if let Ok(outcome) = &previous {
                retry_due = earliest(retry_due, outcome.retry_in);
            }
            let step = match (step, previous) {
                (None, _) => {
                    crate::amqp::close(&conn, "shutdown").await;
                    return Ok(());
                }
                (Some(Err(e)), _) | (Some(Ok(_)), Err(e)) => Err(e),
                (Some(Ok(published)), Ok(_)) => Ok(published),
            };
            match step {
                Ok(None) => {
                    db_backoff.reset();
                    // A retry that fell due before this claim began was in it.
                    retry_due = retry_due.filter(|due| *due > claiming);
                    self.idle(retry_due, shutdown).await;
                }
                Ok(Some(batch)) => {
                    // Commit this batch while claiming and publishing the next: the commit is
                    // off the path of the messages that follow. Its confirms are all in, so the
                    // next batch's returns are still attributed unambiguously, and the next
                    // claim skips the rows it still holds (SKIP LOCKED).
                    db_backoff.reset();
                    let full = i64::try_from(batch.rows.len()).unwrap_or(i64::MAX) >= self.cfg.batch_size;
                    let deferred = batch.deferred > 0;
                    let relay = self.clone();
                    committing = Some(tokio::spawn(async move { relay.finish(batch).await }));
                    // Rows behind a row in flight (this process's previous batch, or another
                    // replica's): they go once that lands, in a moment.
                    if deferred {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(DEFERRED_PAUSE) => {}
                        }
                        continue;
                    }
                    // A batch that was not full took every row there was: claim again when
                    // woken (a commit that staged more wakes the relay, and a wake during this
                    // batch is kept) or at the next poll, not at once for nothing. Under load
                    // most batches are small, and an empty claim is three statements.
                    if !full {
                        self.idle(retry_due, shutdown).await;
                    }
                }
                Err(RelayError::Amqp(e)) => return Err(e),
                Err(RelayError::Db(e)) => {
                    tracing::warn!(relay = %self.name, error = format!("{e:#}"), "outbox relay cannot use its database; retrying");
                    if !db_backoff.wait(shutdown).await {
                        crate::amqp::close(&conn, "shutdown").await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits for a wake (a commit in this process staged rows; one that came meanwhile is kept),
    /// the earliest unsent row falling due, the idle poll, or shutdown, whichever comes first.
    async fn idle(&self, retry_due: Option<tokio::time::Instant>, shutdown: &CancellationToken) {
        let poll = self.cfg.poll_interval;
        let next_look = retry_due.map_or(poll, |due| due.saturating_duration_since(tokio::time::Instant::now()).min(poll));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.wake.notified() => {}
            () = tokio::time::sleep(next_look) => {}
        }
    }

    /// Claims a batch, publishes it and waits for every confirm (at most `confirm_timeout`).
    /// `None` when there was nothing to publish.
    async fn publish_batch(&self, ch: &Channel) -> Result<Option<ConfirmedBatch>, RelayError> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "beginning the relay transaction"))?;
        let (rows, deferred) = claim(&mut tx, self.cfg.batch_size).await.map_err(|e| db_error(e, "claiming outbox rows"))?;
        if rows.is_empty() && deferred == 0 {
            return Ok(None);
        }
        let published = std::time::Instant::now();
        let confirms = start_publish(ch, &rows, self.signer.as_deref()).await.map_err(RelayError::Amqp)?;
        let results = tokio::time::timeout(self.cfg.confirm_timeout, await_confirms(&rows, confirms))
            .await
            .map_err(|_| RelayError::Amqp(anyhow::anyhow!("no publisher confirms within {:?}", self.cfg.confirm_timeout)))?
            .map_err(RelayError::Amqp)?;
        if !rows.is_empty() {
            metrics::histogram!("duijie_relay_confirm_seconds").record(published.elapsed().as_secs_f64());
        }
        Ok(Some(ConfirmedBatch { tx, rows, results, deferred }))
    }

    /// Records a confirmed batch's outcome and commits.
    async fn finish(&self, batch: ConfirmedBatch) -> Result<BatchOutcome, RelayError> {
        let ConfirmedBatch { mut tx, rows, results, .. } = batch;
        let outcome = self.record(&mut tx, &rows, &results).await.map_err(|e| db_error(e, "recording the publish outcome"))?;
        tx.commit().await.map_err(|e| db_error(e, "committing the relay transaction"))?;
        tracing::debug!(relay = %self.name, claimed = outcome.claimed, sent = outcome.sent, failed = outcome.failed, "relayed a batch");
        Ok(outcome)
    }

    async fn record(&self, tx: &mut PgConnection, rows: &[OutboxRow], results: &[Published]) -> Result<BatchOutcome, sqlx::Error> {
        let mut sent = Vec::with_capacity(rows.len());
        let mut failed_ids = Vec::new();
        let mut failed_errors = Vec::new();
        let mut failed_delays: Vec<f64> = Vec::new();
        for (row, res) in rows.iter().zip(results) {
            match res {
                Published::Acked => sent.push(row.id),
                Published::Returned { code, text } => {
                    self.stats.returned.fetch_add(1, Ordering::Relaxed);
                    // Loud on purpose: a referral addressed to an agency that has no queue is a
                    // handoff going nowhere; it stays in the outbox and is retried with backoff.
                    tracing::error!(relay = %self.name, message_id = %row.message_id, routing_key = %row.routing_key,
                        reply_code = code, reply_text = %text, attempts = row.attempts + 1,
                        "broker returned an unroutable message; it stays unsent");
                    failed_ids.push(row.id);
                    failed_errors.push(format!("returned by broker: {code} {text} (routing key {})", row.routing_key));
                    failed_delays.push(self.retry_secs(row.attempts));
                }
                Published::Unsigned(reason) => {
                    self.stats.unsigned.fetch_add(1, Ordering::Relaxed);
                    // Never published unsigned: every receiver would refuse it. A missing key is
                    // a deployment error (the process was not given its node's certificate).
                    tracing::error!(relay = %self.name, message_id = %row.message_id, reason = %reason, "cannot sign a message; it stays unsent");
                    failed_ids.push(row.id);
                    failed_errors.push(format!("not signed: {reason}"));
                    failed_delays.push(self.retry_secs(row.attempts));
                }
                Published::Nacked => {
                    self.stats.nacked.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(relay = %self.name, message_id = %row.message_id, "broker nacked a publish; it stays unsent");
                    failed_ids.push(row.id);
                    failed_errors.push("nacked by broker".to_owned());
                    failed_delays.push(self.retry_secs(row.attempts));
                }
            }
        }
        // Not waiting for the WAL flush is safe here: a crash that loses this commit leaves the
        // rows in place, they are published again and the inboxes drop the copies — as after a
        // crash before the commit. It spares the bus one of its three flushes per message.
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
        if !sent.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&sent)
                .execute(&mut *tx)
                .await?;
            self.stats.published.fetch_add(sent.len() as u64, Ordering::Relaxed);
        }
        if !failed_ids.is_empty() {
            sqlx::query(
                "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.err,
                        next_attempt_at = clock_timestamp() + make_interval(secs => f.delay)
                 FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS f(id, err, delay)
                 WHERE o.id = f.id",
            )
            .bind(&failed_ids)
            .bind(&failed_errors)
            .bind(&failed_delays)
            .execute(&mut *tx)
            .await?;
        }
        let retry_in = failed_delays.iter().copied().reduce(f64::min).map(std::time::Duration::from_secs_f64);
        Ok(BatchOutcome { claimed: rows.len(), sent: sent.len(), failed: failed_ids.len(), retry_in })
    }

    fn retry_secs(&self, attempts: i32) -> f64 {
        retry_delay(self.cfg.retry_base, self.cfg.retry_max, u32::try_from(attempts).unwrap_or(0)).as_secs_f64()
    }
}

/// The earlier of a known due time and one `retry_in` from now.
fn earliest(due: Option<tokio::time::Instant>, retry_in: Option<std::time::Duration>) -> Option<tokio::time::Instant> {
    let new = retry_in.map(|d| tokio::time::Instant::now() + d);
    match (due, new) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How long the relay waits before claiming rows again that it left behind an earlier row of
/// their case still in flight.
const DEFERRED_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Claims up to `limit` unsent rows that are due, oldest first, locking them for this transaction.
/// `clock_timestamp()`, not `now()`: a row staged by a transaction that began after this one
/// (its `next_attempt_at` defaults to *its* start time) is due too; with `now()` it would wait
/// for the next poll, its notification already spent.
///
/// A case's messages go out in the order they were staged: a row whose case has an earlier row
/// waiting for a retry is not claimed, and a claimed row whose case has an earlier row outside
/// this claim (held by another relay replica, or in the previous batch whose commit is still
/// running) is left for a moment, locked but unpublished until this transaction ends. Returns
/// the rows to publish and how many were left so.
async fn claim(tx: &mut PgConnection, limit: i64) -> Result<(Vec<OutboxRow>, usize), sqlx::Error> {
    let rows = sqlx::query_as::<_, OutboxRow>(
        "SELECT id, message_id, case_id, kind, exchange, routing_key, payload, traceparent, tracestate, attempts
         FROM outbox
         WHERE next_attempt_at <= clock_timestamp()
           AND NOT EXISTS (SELECT 1 FROM outbox e
                           WHERE e.case_id = outbox.case_id AND e.id < outbox.id AND e.next_attempt_at > clock_timestamp())
         ORDER BY id
         LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok((rows, 0));
    }
    let mut first_claimed: std::collections::HashMap<Uuid, i64> = std::collections::HashMap::new();
    for r in &rows {
        first_claimed.entry(r.case_id).or_insert(r.id);
    }
    let cases: Vec<Uuid> = first_claimed.keys().copied().collect();
    // Locked rows are still seen by a plain read (and rows of a commit in flight until it lands).
    let firsts: Vec<(Uuid, i64)> = sqlx::query_as("SELECT case_id, min(id) FROM outbox WHERE case_id = ANY($1) GROUP BY case_id")
        .bind(&cases)
        .fetch_all(&mut *tx)
        .await?;
    let blocked: std::collections::HashSet<Uuid> =
        firsts.into_iter().filter(|(case, first)| first_claimed.get(case).is_some_and(|claimed| first < claimed)).map(|(case, _)| case).collect();
    if blocked.is_empty() {
        return Ok((rows, 0));
    }
    let total = rows.len();
    let rows: Vec<OutboxRow> = rows.into_iter().filter(|r| !blocked.contains(&r.case_id)).collect();
    let deferred = total - rows.len();
    Ok((rows, deferred))
}

enum Published {
    Acked,
    Unsigned(String),
    Returned { code: u16, text: String },
    Nacked,
}

/// Publishes every row without waiting for the confirms, each signed by its sender when the
/// relay has a signer; a row that cannot be signed is not published (`Err` with the reason).
async fn start_publish(ch: &Channel, rows: &[OutboxRow], signer: Option<&Signer>) -> anyhow::Result<Vec<Result<PublisherConfirm, String>>> {
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let mut headers = FieldTable::default();
        if let Some(signer) = signer {
            match signer.sign_envelope(&row.payload) {
                Ok(sig) => sig.write_headers(&mut headers),
                Err(e) => {
                    confirms.push(Err(format!("{e:#}")));
                    continue;
                }
            }
        }
        // The consumers continue the trace from this publish, itself a child of the staging span.
        let span = publish_span(row);
        W3cContext::of(&span).write_headers(&mut headers);
        headers.insert("x-duijie-kind".into(), AMQPValue::LongString(row.kind.clone().into()));
        // What the partitioning exchanges hash: every message of a case to the same partition.
        headers.insert(crate::amqp::CASE_HEADER.into(), AMQPValue::LongString(row.case_id.to_string().into()));
        let props = BasicProperties::default()
            .with_content_type(ENVELOPE_CONTENT_TYPE.into())
            .with_message_id(row.message_id.to_string().into())
            .with_type(row.kind.clone().into())
            .with_delivery_mode(2) // persistent
            .with_timestamp(chrono::Utc::now().timestamp().try_into().unwrap_or(0))
            .with_headers(headers);
        let confirm = ch
            .basic_publish(
                row.exchange.clone().into(),
                row.routing_key.clone().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &row.payload,
                props,
            )
            .instrument(span)
            .await
            .context("publishing an outbox row")?;
        confirms.push(Ok(confirm));
    }
    Ok(confirms)
}

/// The span `relay.publish` of one row: handing it to the broker (its confirm is awaited with
/// the batch's), in the trace of the transaction that staged it.
fn publish_span(row: &OutboxRow) -> tracing::Span {
    let span = tracing::info_span!("relay.publish", otel.kind = "producer", case_id = %row.case_id, message_id = %row.message_id,
        kind = %row.kind, routing_key = %row.routing_key, attempt = row.attempts + 1);
    W3cContext { traceparent: row.traceparent.clone(), tracestate: row.tracestate.clone() }.set_as_parent_of(&span);
    span
}

/// Waits for every confirm of a batch and says, per row, what became of it. A returned message
/// is recognised by its message id, whichever confirm lapin attached the return to.
async fn await_confirms(rows: &[OutboxRow], confirms: Vec<Result<PublisherConfirm, String>>) -> anyhow::Result<Vec<Published>> {
    let mut nacked = vec![false; rows.len()];
    let mut unsigned: Vec<Option<String>> = vec![None; rows.len()];
    let mut returned: std::collections::HashMap<String, (u16, String)> = std::collections::HashMap::new();
    for (i, confirm) in confirms.into_iter().enumerate() {
        let confirm = match confirm {
            Ok(c) => c,
            Err(reason) => {
                if let Some(u) = unsigned.get_mut(i) {
                    *u = Some(reason);
                }
                continue;
            }
        };
        let (is_nack, ret) = match confirm.await.context("waiting for a publisher confirm")? {
            Confirmation::Ack(ret) => (false, ret),
            Confirmation::Nack(ret) => (true, ret),
            Confirmation::NotRequested => anyhow::bail!("channel is not in confirm mode"),
        };
        if let Some(nack) = nacked.get_mut(i) {
            *nack = is_nack;
        }
        if let Some(ret) = ret {
            let id = ret
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .ok_or_else(|| anyhow::anyhow!("the broker returned a message without a message id"))?;
            returned.insert(id, (ret.reply_code, ret.reply_text.as_str().to_owned()));
        }
    }
    let results = rows
        .iter()
        .zip(nacked)
        .zip(unsigned)
        .map(|((row, nack), unsigned)| match (unsigned, returned.remove(&row.message_id.to_string())) {
            (Some(reason), _) => Published::Unsigned(reason),
            (None, Some((code, text))) => Published::Returned { code, text },
            (None, None) if nack => Published::Nacked,
            (None, None) => Published::Acked,
        })
        .collect();
    // Every return must belong to this batch; anything else means the channel is not what we
    // think it is, and deleting rows would be a guess.
    anyhow::ensure!(returned.is_empty(), "returns for messages outside the batch: {:?}", returned.keys().collect::<Vec<_>>());
    Ok(results)
}

/// A published batch whose confirms are all in; its transaction still holds the row locks.
struct ConfirmedBatch {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    rows: Vec<OutboxRow>,
    results: Vec<Published>,
    /// Rows claimed but left for later, behind an earlier row of their case ([`claim`]).
    deferred: usize,
}

fn db_error(e: sqlx::Error, what: &'static str) -> RelayError {
    RelayError::Db(anyhow::Error::new(e).context(what))
}


/// Fault-injection and benchmark support: claims and publishes one batch but never marks it
/// sent, rolling back as a relay that crashed between publish and commit would.
#[doc(hidden)]
pub async fn publish_then_crash(pool: &PgPool, connector: &Connector, limit: i64, signer: Option<&Signer>) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let (rows, _) = claim(&mut tx, limit).await?;
    let conn = connector.connect("crashing relay").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirms = start_publish(&ch, &rows, signer).await?;
    let results = await_confirms(&rows, confirms).await?;
    let acked = results.iter().filter(|r| matches!(r, Published::Acked)).count();
    drop(tx); // rolled back: the rows stay unsent
    let _ = conn.close(200, "crash".into()).await;
    Ok(acked)
}
