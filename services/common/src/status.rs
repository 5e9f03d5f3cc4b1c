//! Reports about the audit store on `<p>.audit.status` (a topic exchange declared by
//! [`Topology`]), small JSON messages that are never persisted:
//!
//! * `audit.lag` — the audit service, every `audit.status_interval_ms` (1 s): how old the oldest
//!   message it has not recorded is ([`AuditLag`]). The agency services' audit gates read it
//!   through a queue of their own ([`listen`]), so nobody has to look inside the tap.
//! * `gate.<service>` — every agency service's audit gate, at each look at the tap: open or
//!   closed and why ([`GateReport`]); `duijie-bus status` listens for them.
//!
//! A reader that missed a report waits for the next one; a reader that hears none for a while
//! treats the sender as silent, never as fine.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::amqp::Topology;
use crate::signing::{Signature, Signer, Verifier};

/// Routing key of the audit service's lag reports.
pub const AUDIT_LAG_KEY: &str = "audit.lag";

/// Routing key pattern of every gate's reports.
pub const GATE_KEYS: &str = "gate.*";

/// Routing key of service `service`'s gate reports.
pub fn gate_key(service: &str) -> String {
    format!("gate.{service}")
}

/// How far behind the audit store is, as the audit service sees its own tap consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLag {
    /// When it was measured (the audit service's clock).
    pub at: DateTime<Utc>,
    /// Age of the oldest message of the tap that is not recorded yet, in milliseconds (from the
    /// AMQP `timestamp` the relay set when it published it, which has whole seconds, so this
    /// errs up to a second on the high side); 0 when everything delivered is recorded and the tap
    /// is empty; `None` when the audit service cannot tell (its consumer holds nothing while the
    /// tap holds messages: it is not consuming, or has just started to).
    pub lag_ms: Option<u64>,
    /// Messages the audit service recorded since it started.
    pub recorded: u64,
    /// Which replica of the audit service reports (each reports for the partitions it consumes;
    /// the gates take the furthest behind). Empty from a report of before replicas.
    #[serde(default)]
    pub replica: String,
}

/// One agency service's audit gate, as it last decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReport {
    /// The service (`court`, `mediation`, …).
    pub service: String,
    /// The agency nodes it serves, `kind:code`.
    pub nodes: Vec<String>,
    /// Whether it takes new referrals.
    pub open: bool,
    /// Why it is closed (empty while open).
    pub reason: String,
    /// When it last opened or closed.
    pub since: DateTime<Utc>,
    /// How often it closed since the service started.
    pub closings: u64,
    /// Consumers of the tap at the last look (`None`: the tap could not be seen).
    pub consumers: Option<u32>,
    /// Messages waiting in the tap at the last look.
    pub backlog: Option<u32>,
    /// The audit service's last fresh lag report, ms (`None`: none, or it could not tell).
    pub lag_ms: Option<u64>,
    /// When this report was made (the agency service's clock).
    pub at: DateTime<Utc>,
}

/// Publishes `report` with routing key `key` on the status exchange (no confirm: a lost report
/// is replaced by the next one).
pub async fn publish<T: Serialize>(ch: &Channel, topology: &Topology, key: &str, report: &T) -> anyhow::Result<()> {
    let body = serde_json::to_vec(report).context("encoding a status report")?;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_timestamp(Utc::now().timestamp().try_into().unwrap_or(0));
    ch.basic_publish(topology.status_exchange().into(), key.into(), BasicPublishOptions::default(), &body, props)
        .await
        .with_context(|| format!("publishing a status report ({key})"))?;
    Ok(())
}

/// Decodes a report; `None` for anything else (a reader skips what it does not understand).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

/// What a status report's signature covers (after this context): its JSON body.
const STATUS_CONTEXT: &[u8] = b"duijie.status.v1\0";

/// [`publish`], signed as `name` with `signer` (the audit service's lag reports, which open and
/// close every agency's gate: any service may write to the status exchange, so the gates believe
/// only what the audit service signed).
pub async fn publish_signed<T: Serialize>(ch: &Channel, topology: &Topology, key: &str, report: &T, signer: &Signer, name: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec(report).context("encoding a status report")?;
    let mut headers = FieldTable::default();
    signer.sign_bytes(name, STATUS_CONTEXT, &body)?.write_headers(&mut headers);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_timestamp(Utc::now().timestamp().try_into().unwrap_or(0))
        .with_headers(headers);
    ch.basic_publish(topology.status_exchange().into(), key.into(), BasicPublishOptions::default(), &body, props)
        .await
        .with_context(|| format!("publishing a status report ({key})"))?;
    Ok(())
}

/// Decodes a report signed by `expected` (checked with `verifier` now); `None` for an unsigned
/// or otherwise signed one, which the reader ignores.
pub fn decode_signed<T: DeserializeOwned>(delivery: &lapin::message::Delivery, verifier: &Verifier, expected: &str) -> Option<T> {
    let sig = Signature::from_headers(delivery.properties.headers().as_ref())?;
    match verifier.verify_bytes(STATUS_CONTEXT, &delivery.data, &sig, Utc::now()) {
        Ok(signer) if signer == expected => decode(&delivery.data),
        Ok(signer) => {
            tracing::warn!(%signer, "ignored a status report signed by someone else than {expected}");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignored a status report whose signature does not verify");
            None
        }
    }
}

/// A queue of the caller's own (server-named, exclusive, deleted with its connection, keeping at
/// most the 16 newest reports) bound to the status exchange with `pattern`, consumed without
/// acks. The exchange is declared first where the broker user may
/// ([`Topology::ensure_status`]), so the listener may start before the audit service.
pub async fn listen(conn: &lapin::Connection, ch: &Channel, topology: &Topology, pattern: &str, consumer_tag: &str) -> anyhow::Result<lapin::Consumer> {
    topology.ensure_status(conn).await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(16));
    let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), opts, args).await.context("declaring a status queue")?;
    ch.queue_bind(queue.name().clone(), topology.status_exchange().into(), pattern.into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .context("binding a status queue")?;
    ch.basic_consume(
        queue.name().clone(),
        consumer_tag.into(),
        BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .context("consuming status reports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_strangers_are_skipped() {
        let lag = AuditLag { at: Utc::now(), lag_ms: Some(1500), recorded: 7, replica: String::new() };
        let body = serde_json::to_vec(&lag).unwrap_or_default();
        assert_eq!(decode::<AuditLag>(&body), Some(lag));
        assert_eq!(decode::<AuditLag>(b"not json"), None);
        assert_eq!(gate_key("court"), "gate.court");
    }
}
