//! Restarts of RabbitMQ and PostgreSQL in the middle of a stream of 1,000 messages: all arrive,
//! each is applied once. These tests restart the *fault* servers (a second RabbitMQ node and a
//! second PostgreSQL cluster, started by `scripts/deps.sh --fault`) so the tests running beside
//! them on the shared servers are not disturbed; nextest runs them one at a time
//! (`.config/nextest.toml`, group `fault-servers`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use duijie_common::inbox::ConsumerStats;
use duijie_common::outbox::RelayStats;
use duijie_proto::v1::AgencyKind;
use duijie_tests::{Servers, TestBus, node, referral, run_cmd, wait_until};

const TOTAL: usize = 1_000;
const PER_TX: usize = 10;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// Stages TOTAL referrals, PER_TX per transaction, 40 ms apart (about 5 s in all) so the
/// restart lands in the middle of the stream. A transaction that fails (database restarting) is retried with the same
/// envelopes: staging is idempotent on message id, so a commit whose reply was lost is not doubled.
async fn produce(bus: &TestBus) -> anyhow::Result<()> {
    let court = node(AgencyKind::Court, "431003");
    let centre = node(AgencyKind::Mediation, "431003-102");
    for batch in 0..TOTAL / PER_TX {
        let mut envs: Vec<_> = (0..PER_TX)
            .map(|i| referral(&court, &centre, &format!("JF-431003-2026-{:06}", batch * PER_TX + i), "x".repeat(512)))
            .collect();
        let mut attempts = 0;
        while let Err(e) = bus.stage(&mut envs).await {
            attempts += 1;
            anyhow::ensure!(attempts < 200, "staging kept failing: {e:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    Ok(())
}

async fn applied(bus: &TestBus) -> anyhow::Result<i64> {
    Ok(bus.applied_counts().await?.0)
}

async fn assert_all_arrived_once(bus: &TestBus, consumer: &Arc<ConsumerStats>, relay: &Arc<RelayStats>) -> anyhow::Result<()> {
    wait_until("all 1,000 messages to be applied", Duration::from_secs(120), || async {
        Ok(applied(bus).await? == TOTAL as i64 && bus.unsent().await? == 0)
    })
    .await?;
    let (distinct, rows) = bus.applied_counts().await?;
    assert_eq!((distinct, rows), (TOTAL as i64, TOTAL as i64), "every message applied exactly once");
    assert!(bus.applied_twice().await?.is_empty());
    assert!(bus.drain_dead().await?.is_empty(), "nothing was dead-lettered");
    eprintln!(
        "applied {} duplicates skipped {} consumer restarts {} relay restarts {} published {}",
        consumer.applied.load(Ordering::Relaxed),
        consumer.duplicates.load(Ordering::Relaxed),
        consumer.restarts.load(Ordering::Relaxed),
        relay.restarts.load(Ordering::Relaxed),
        relay.published.load(Ordering::Relaxed),
    );
    Ok(())
}

#[tokio::test]
async fn thousand_messages_survive_a_rabbitmq_restart() -> anyhow::Result<()> {
    let bus = TestBus::on(Servers::Fault, Servers::Main).await?;
    let centre = node(AgencyKind::Mediation, "431003-102");
    bus.declare(std::slice::from_ref(&centre)).await?;
    let consumer = bus.spawn_consumer("mediation-fault", &centre);
    let relay = bus.spawn_relay();

    let rabbit_node = env_or("DUIJIE_FAULT_RABBIT_NODE", "duijie-fault@localhost");
    let restart = async {
        wait_until("a third of the stream to arrive", Duration::from_secs(60), || async { Ok(applied(&bus).await? >= 300) })
            .await?;
        let at_restart = applied(&bus).await?;
        run_cmd("rabbitmqctl", &["-n", &rabbit_node, "stop_app"]).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        run_cmd("rabbitmqctl", &["-n", &rabbit_node, "start_app"]).await?;
        anyhow::Ok(at_restart)
    };
    let (produced, restarted) = tokio::join!(produce(&bus), restart);
    produced?;
    let at_restart = restarted?;
    assert!(at_restart < TOTAL as i64 / 2, "the broker went down in the middle of the stream ({at_restart} applied)");

    assert_all_arrived_once(&bus, &consumer, &relay).await?;
    assert!(consumer.restarts.load(Ordering::Relaxed) >= 1, "the consumer saw the broker go away");
    assert!(relay.restarts.load(Ordering::Relaxed) >= 1, "the relay saw the broker go away");
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn thousand_messages_survive_a_postgresql_restart() -> anyhow::Result<()> {
    let bus = TestBus::on(Servers::Main, Servers::Fault).await?;
    let centre = node(AgencyKind::Mediation, "431003-102");
    bus.declare(std::slice::from_ref(&centre)).await?;
    let consumer = bus.spawn_consumer("mediation-fault", &centre);
    let relay = bus.spawn_relay();

    let cluster = env_or("DUIJIE_FAULT_PG_CLUSTER", "15/fault");
    let (version, name) = cluster.split_once('/').ok_or_else(|| anyhow::anyhow!("DUIJIE_FAULT_PG_CLUSTER is <version>/<name>"))?;
    let restart = async {
        wait_until("a third of the stream to arrive", Duration::from_secs(60), || async { Ok(applied(&bus).await? >= 300) })
            .await?;
        let started_before: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT pg_postmaster_start_time()").fetch_one(&bus.pool).await?;
        let at_restart = applied(&bus).await?;
        run_cmd("pg_ctlcluster", &[version, name, "restart", "-m", "fast"]).await?;
        anyhow::Ok((started_before, at_restart))
    };
    let (produced, restarted) = tokio::join!(produce(&bus), restart);
    produced?;
    let (started_before, at_restart) = restarted?;
    assert!(at_restart < TOTAL as i64 / 2, "PostgreSQL went down in the middle of the stream ({at_restart} applied)");
    let started_after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()").fetch_one(&bus.pool).await?;
    assert!(started_after > started_before, "PostgreSQL really restarted");

    assert_all_arrived_once(&bus, &consumer, &relay).await?;
    bus.cleanup(&[centre]).await
}
