//! The transactional outbox: [`stage`] writes an envelope in the caller's transaction; the
//! [`Relay`] publishes staged rows with publisher confirms and `mandatory`, and marks a row sent
//! only after the broker acked it without returning it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use duijie_proto::ENVELOPE_CONTENT_TYPE;
use duijie_proto::v1::{Envelope, TraceContext};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use prost::Message as _;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::{Connector, Topology};
use crate::backoff::{Backoff, retry_delay};
use crate::config::RelayConfig;
use crate::trace::W3cContext;

/// PostgreSQL notification channel that wakes the relay when rows are staged.
pub const NOTIFY_CHANNEL: &str = "duijie_outbox";

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
    let w3c = match &env.trace {
        Some(t) if !t.traceparent.is_empty() => W3cContext {
            traceparent: Some(t.traceparent.clone()),
            tracestate: Some(t.tracestate.clone()).filter(|s| !s.is_empty()),
        },
        _ => {
            let cur = W3cContext::current();
            env.trace = Some(TraceContext {
                traceparent: cur.traceparent.clone().unwrap_or_default(),
                tracestate: cur.tracestate.clone().unwrap_or_default(),
            });
            cur
        }
    };
    env.check()?;
    let routing_key = env.routing_key()?;
    // check() verified both ids are UUIDs.
    let message_id = Uuid::parse_str(&env.message_id).map_err(|_| sqlx::Error::Protocol("message_id".into()))?;
    let case_id = Uuid::parse_str(&env.case_id).map_err(|_| sqlx::Error::Protocol("case_id".into()))?;
    let kind = env.kind().routing_segment();
    let inserted = sqlx::query(
        "INSERT INTO outbox (message_id, case_id, kind, exchange, routing_key, payload, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(message_id)
    .bind(case_id)
    .bind(kind)
    .bind(topology.handoff_exchange())
    .bind(&routing_key)
    .bind(env.encode_to_vec())
    .bind(&w3c.traceparent)
    .bind(&w3c.tracestate)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    // Delivered at commit; identical notifications in one transaction are folded into one.
    sqlx::query("SELECT pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(&mut *conn).await?;
    Ok(inserted)
}

/// Counters a relay keeps; read them to see what it did.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Rows published and acked by the broker, marked sent.
    pub published: AtomicU64,
    /// Publishes the broker returned as unroutable (no queue for the recipient).
    pub returned: AtomicU64,
    /// Publishes the broker refused (nack).
    pub nacked: AtomicU64,
    /// Times the relay lost its broker connection or database and started over.
    pub restarts: AtomicU64,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    message_id: Uuid,
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
    /// Rows marked sent.
    pub sent: usize,
    /// Rows returned or nacked, left unsent with a retry time.
    pub failed: usize,
}

enum RelayError {
    Amqp(anyhow::Error),
    Db(anyhow::Error),
}

/// Publishes staged outbox rows. Run one or more per service database; rows are claimed with
/// `FOR UPDATE SKIP LOCKED`, so several relays never publish the same row concurrently.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    connector: Connector,
    cfg: RelayConfig,
    name: String,
    stats: Arc<RelayStats>,
}

impl Relay {
    /// A relay publishing the outbox of `pool`.
    pub fn new(pool: PgPool, connector: Connector, cfg: RelayConfig, name: impl Into<String>) -> Self {
        Self { pool, connector, cfg, name: name.into(), stats: Arc::default() }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`: reconnects to the broker and waits out database outages itself.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.pool.clone(), wake.clone(), shutdown.clone()));
        let mut backoff = Backoff::reconnect();
        while !shutdown.is_cancelled() {
            match self.session(&wake, &shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(e) => {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(relay = %self.name, error = format!("{e:#}"), "outbox relay lost the broker; reconnecting");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        listener.abort();
        Ok(())
    }

    /// One broker connection's lifetime. Database errors are waited out on the same channel.
    async fn session(&self, wake: &Notify, shutdown: &CancellationToken, backoff: &mut Backoff) -> anyhow::Result<()> {
        let conn = self.connector.connect(&format!("relay {}", self.name)).await?;
        let ch = conn.create_channel().await.context("opening the relay channel")?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
        tracing::info!(relay = %self.name, "outbox relay connected");
        backoff.reset();
        let mut db_backoff = Backoff::reconnect();
        loop {
            if shutdown.is_cancelled() {
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            }
            match self.relay_batch(&ch).await {
                Ok(outcome) => {
                    db_backoff.reset();
                    // A full batch means there is probably more: go again at once.
                    if outcome.claimed as i64 >= self.cfg.batch_size {
                        continue;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = wake.notified() => {}
                        () = tokio::time::sleep(self.cfg.poll_interval) => {}
                    }
                }
                Err(RelayError::Amqp(e)) => return Err(e),
                Err(RelayError::Db(e)) => {
                    tracing::warn!(relay = %self.name, error = format!("{e:#}"), "outbox relay cannot reach its database; retrying");
                    if !db_backoff.wait(shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn relay_batch(&self, ch: &Channel) -> Result<BatchOutcome, RelayError> {
        let db = |e: sqlx::Error, what: &'static str| RelayError::Db(anyhow::Error::new(e).context(what));
        let mut tx = self.pool.begin().await.map_err(|e| db(e, "beginning the relay transaction"))?;
        let rows = claim(&mut tx, self.cfg.batch_size).await.map_err(|e| db(e, "claiming outbox rows"))?;
        if rows.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let results = publish(ch, &rows).await.map_err(RelayError::Amqp)?;
        let outcome = self.record(&mut tx, &rows, &results).await.map_err(|e| db(e, "recording the publish outcome"))?;
        tx.commit().await.map_err(|e| db(e, "committing the relay transaction"))?;
        Ok(outcome)
    }

    async fn record(&self, tx: &mut PgConnection, rows: &[OutboxRow], results: &[Published]) -> Result<BatchOutcome, sqlx::Error> {
        let mut sent = Vec::with_capacity(rows.len());
        let mut failed_ids = Vec::new();
        let mut failed_errors = Vec::new();
        let mut failed_delays = Vec::new();
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
                Published::Nacked => {
                    self.stats.nacked.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(relay = %self.name, message_id = %row.message_id, "broker nacked a publish; it stays unsent");
                    failed_ids.push(row.id);
                    failed_errors.push("nacked by broker".to_owned());
                    failed_delays.push(self.retry_secs(row.attempts));
                }
            }
        }
        if !sent.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = ANY($1)")
                .bind(&sent)
                .execute(&mut *tx)
                .await?;
            self.stats.published.fetch_add(sent.len() as u64, Ordering::Relaxed);
        }
        if !failed_ids.is_empty() {
            sqlx::query(
                "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.err,
                        next_attempt_at = now() + make_interval(secs => f.delay)
                 FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS f(id, err, delay)
                 WHERE o.id = f.id",
            )
            .bind(&failed_ids)
            .bind(&failed_errors)
            .bind(&failed_delays)
            .execute(&mut *tx)
            .await?;
        }
        Ok(BatchOutcome { claimed: rows.len(), sent: sent.len(), failed: failed_ids.len() })
    }

    fn retry_secs(&self, attempts: i32) -> f64 {
        retry_delay(self.cfg.retry_base, self.cfg.retry_max, u32::try_from(attempts).unwrap_or(0)).as_secs_f64()
    }
}

/// Claims up to `limit` unsent rows that are due, oldest first, locking them for this transaction.
async fn claim(tx: &mut PgConnection, limit: i64) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as::<_, OutboxRow>(
        "SELECT id, message_id, kind, exchange, routing_key, payload, traceparent, tracestate, attempts
         FROM outbox
         WHERE sent_at IS NULL AND next_attempt_at <= now()
         ORDER BY id
         LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

enum Published {
    Acked,
    Returned { code: u16, text: String },
    Nacked,
}

/// Publishes every row (pipelined), then waits for every confirm.
async fn publish(ch: &Channel, rows: &[OutboxRow]) -> anyhow::Result<Vec<Published>> {
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let mut headers = FieldTable::default();
        W3cContext { traceparent: row.traceparent.clone(), tracestate: row.tracestate.clone() }.write_headers(&mut headers);
        headers.insert("x-duijie-kind".into(), AMQPValue::LongString(row.kind.clone().into()));
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
            .await
            .context("publishing an outbox row")?;
        confirms.push(confirm);
    }
    let mut results = Vec::with_capacity(rows.len());
    for confirm in confirms {
        let res = match confirm.await.context("waiting for a publisher confirm")? {
            Confirmation::Ack(None) => Published::Acked,
            Confirmation::Ack(Some(ret)) => {
                Published::Returned { code: ret.reply_code, text: ret.reply_text.as_str().to_owned() }
            }
            Confirmation::Nack(_) => Published::Nacked,
            Confirmation::NotRequested => anyhow::bail!("channel is not in confirm mode"),
        };
        results.push(res);
    }
    Ok(results)
}

/// Wakes the relay on `NOTIFY duijie_outbox`; reconnects by itself after database restarts.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Backoff::reconnect();
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "outbox listener cannot connect; relay falls back to polling");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::debug!(error = %e, "outbox LISTEN failed");
            if !backoff.wait(&shutdown).await {
                return;
            }
            continue;
        }
        backoff.reset();
        // After (re)connecting, notifications sent meanwhile are lost: wake once to look.
        wake.notify_one();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => {
                        while listener.next_buffered().is_some() {}
                        wake.notify_one();
                    }
                    Ok(None) => { wake.notify_one(); } // connection lost; try_recv reconnects next time
                    Err(e) => {
                        tracing::debug!(error = %e, "outbox listener lost its connection");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fault-injection and benchmark support: claims and publishes one batch but never marks it
/// sent, rolling back as a relay that crashed between publish and commit would.
#[doc(hidden)]
pub async fn publish_then_crash(pool: &PgPool, connector: &Connector, limit: i64) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = claim(&mut tx, limit).await?;
    let conn = connector.connect("crashing relay").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let results = publish(&ch, &rows).await?;
    let acked = results.iter().filter(|r| matches!(r, Published::Acked)).count();
    drop(tx); // rolled back: the rows stay unsent
    let _ = conn.close(200, "crash".into()).await;
    Ok(acked)
}
