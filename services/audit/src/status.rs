//! How far behind the audit store is, told to the agency services' audit gates. The audit service
//! is the one place that knows what it has recorded: its tap consumer keeps the publish time (the
//! relay's AMQP `timestamp`) of the oldest message it holds and has not acked
//! ([`ConsumerStats::holding_since`]), and the tap is consumed in order, so that message is the
//! oldest unrecorded one. Every `audit.status_interval_ms` this task publishes an
//! [`AuditLag`] on `<p>.audit.status` (routing key `audit.lag`). Nothing here reads the tap's
//! messages: with nothing in hand it only asks the broker how many wait (a passive declare).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::CancellationToken;
use duijie_common::amqp::{Connector, Topology};
use duijie_common::backoff::Backoff;
use duijie_common::inbox::ConsumerStats;
use duijie_common::reconnect::run_sessions;
use duijie_common::status::{self, AUDIT_LAG_KEY, AuditLag};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

/// The lag reported: the age of the oldest message in hand (`holding_since`); with none in hand,
/// 0 if the tap is empty, else `None` — the messages waiting there have not reached the consumer
/// (it is not consuming, or has just started), so their age cannot be told from here.
pub fn lag_ms(now: DateTime<Utc>, holding_since: Option<DateTime<Utc>>, tap_waiting: Option<u32>) -> Option<u64> {
    match (holding_since, tap_waiting) {
        (Some(since), _) => Some(u64::try_from((now - since).num_milliseconds()).unwrap_or(0)),
        (None, Some(0)) => Some(0),
        (None, _) => None,
    }
}

/// Publishes the lag of `consumer` (the tap consumer) every `interval` until `shutdown`, on a
/// connection of its own (a session of the shared reconnect loop).
/// Each report is signed by the audit service (`signer`): the gates believe no one else.
pub async fn run(
    connector: Connector,
    topology: Topology,
    consumers: Vec<Arc<ConsumerStats>>,
    interval: Duration,
    signer: Arc<duijie_common::signing::Signer>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let backoff = Backoff::new(Duration::from_millis(100).min(interval), interval.max(Duration::from_secs(1)));
    // This replica's name in its reports: the gates keep the last report of each replica.
    let replica = uuid::Uuid::now_v7().simple().to_string();
    let (connector, topology, consumers, signer, token, replica) = (&connector, &topology, &consumers, &signer, &shutdown, &replica);
    run_sessions("audit status", token, backoff, move |_| session(connector, topology, consumers, interval, signer, replica, token)).await;
    Ok(())
}

async fn session(
    connector: &Connector,
    topology: &Topology,
    consumers: &[Arc<ConsumerStats>],
    interval: Duration,
    signer: &duijie_common::signing::Signer,
    replica: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = connector.connect("audit status").await?;
    topology.ensure_status(&conn).await?;
    let ch = conn.create_channel().await.context("opening the audit status channel")?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                duijie_common::amqp::close(&conn, "shutdown").await;
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        // The oldest message any of this replica's partition consumers holds.
        let holding = consumers.iter().filter_map(|c| c.holding_since()).min();
        let waiting = match holding {
            Some(_) => None,
            None => {
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                let mut waiting = 0u32;
                for q in topology.tap_queues() {
                    let tap = ch.queue_declare(q.as_str().into(), passive, FieldTable::default()).await.with_context(|| format!("looking at the audit tap ({q})"))?;
                    waiting = waiting.saturating_add(tap.message_count());
                }
                Some(waiting)
            }
        };
        let now = Utc::now();
        let recorded = consumers.iter().map(|c| c.applied.load(Ordering::Relaxed)).sum();
        let report = AuditLag { at: now, lag_ms: lag_ms(now, holding, waiting), recorded, replica: replica.to_owned() };
        status::publish_signed(&ch, topology, AUDIT_LAG_KEY, &report, signer, duijie_common::signing::AUDIT_SIGNER).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_age_of_the_oldest_message_in_hand_or_nothing_when_all_is_recorded() {
        let now = Utc::now();
        let since = now - chrono::Duration::milliseconds(7_250);
        assert_eq!(lag_ms(now, Some(since), None), Some(7_250));
        assert_eq!(lag_ms(now, Some(since), Some(30)), Some(7_250), "what waits in the tap is younger");
        assert_eq!(lag_ms(now, None, Some(0)), Some(0));
        assert_eq!(lag_ms(now, None, Some(3)), None, "waiting in the tap, not in hand: cannot tell");
        assert_eq!(lag_ms(now, Some(now + chrono::Duration::seconds(1)), None), Some(0), "a clock ahead of ours is no lag");
    }
}
