//! Reliable handoff over real RabbitMQ and PostgreSQL: what is staged, published, applied,
//! skipped and dead-lettered, each asserted on what arrived.

use std::sync::atomic::Ordering;
use std::time::Duration;

use duijie_common::inbox::{self, Applied};
use duijie_common::outbox;
use duijie_proto::v1::AgencyKind;
use duijie_tests::{RecordingHandler, TestBus, node, referral, tracing_trace_id, wait_until};
use futures::StreamExt as _;
use tracing::Instrument as _;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn nodes() -> (duijie_domain::AgencyNode, duijie_domain::AgencyNode) {
    (node(AgencyKind::Court, "431003"), node(AgencyKind::Mediation, "431003-102"))
}

async fn applied_ids(bus: &TestBus) -> anyhow::Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar("SELECT message_id FROM test_applied ORDER BY applied_at").fetch_all(&bus.pool).await?)
}

#[tokio::test]
async fn rolled_back_stage_is_never_published() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    bus.declare(std::slice::from_ref(&centre)).await?;
    let consumer = bus.spawn_consumer("mediation-test", &centre);
    bus.spawn_relay();

    let mut rolled_back = referral(&court, &centre, "JF-431003-2026-000001", "rolled back".into());
    let mut tx = bus.pool.begin().await?;
    outbox::stage(&mut tx, &bus.topology, &mut rolled_back).await?;
    tx.rollback().await?;

    // A later, committed message is the marker: once it arrived, the relay has passed the
    // point where the rolled-back one would have been.
    let mut committed = [referral(&court, &centre, "JF-431003-2026-000002", "committed".into())];
    bus.stage(&mut committed).await?;
    wait_until("the committed referral to be applied", WAIT, || async {
        Ok(consumer.applied.load(Ordering::Relaxed) >= 1)
    })
    .await?;

    let committed_id = Uuid::parse_str(&committed[0].message_id)?;
    assert_eq!(applied_ids(&bus).await?, vec![committed_id], "only the committed referral arrives");
    wait_until("the committed row to leave the outbox", WAIT, || async { Ok(bus.unsent().await? == 0) }).await?;
    let rolled_back_id = Uuid::parse_str(&rolled_back.message_id)?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE message_id = $1").bind(rolled_back_id).fetch_one(&bus.pool).await?;
    assert_eq!(seen, 0, "the rolled-back referral never reached the consumer");
    assert!(bus.drain_dead().await?.is_empty());
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn relay_crash_between_publish_and_mark_republishes_and_consumer_applies_once() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    bus.declare(std::slice::from_ref(&centre)).await?;
    let mut env = [referral(&court, &centre, "JF-431003-2026-000010", "crash me".into())];
    bus.stage(&mut env).await?;

    // The broker acked the publish, but the relay "crashed" before committing the row's deletion.
    let acked = outbox::publish_then_crash(&bus.pool, &bus.connector, 100, None).await?;
    assert_eq!(acked, 1, "the first publish reached the broker");
    assert_eq!(bus.unsent().await?, 1, "a crashed relay leaves the row unsent");

    let consumer = bus.spawn_consumer("mediation-test", &centre);
    let relay = bus.spawn_relay();
    wait_until("the republished copy to be recognised as a duplicate", WAIT, || async {
        Ok(consumer.duplicates.load(Ordering::Relaxed) == 1 && bus.unsent().await? == 0)
    })
    .await?;

    assert_eq!(relay.published.load(Ordering::Relaxed), 1, "the restarted relay published it again");
    assert_eq!(applied_ids(&bus).await?, vec![Uuid::parse_str(&env[0].message_id)?], "applied exactly once");
    assert_eq!(consumer.applied.load(Ordering::Relaxed), 1);
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn consumer_dying_after_commit_before_ack_skips_the_redelivery() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    bus.declare(std::slice::from_ref(&centre)).await?;
    let mut env = [referral(&court, &centre, "JF-431003-2026-000020", "commit then die".into())];
    bus.stage(&mut env).await?;
    bus.spawn_relay();
    wait_until("the referral to be published", WAIT, || async { Ok(bus.unsent().await? == 0) }).await?;

    // A consumer takes the message, applies and commits, then dies without acking.
    {
        let conn = bus.connector.connect("dying consumer").await?;
        let ch = conn.create_channel().await?;
        // From whichever partition of the mediation bodies' inboxes its case hashed to (a
        // consumer on each: quorum queues with a single active consumer refuse basic.get).
        let mut streams = Vec::new();
        for (i, q) in bus.topology.inbox_queues(centre.kind()).into_iter().enumerate() {
            streams.push(ch.basic_consume(q.into(), format!("dying-{i}").into(), Default::default(), Default::default()).await?);
        }
        let got = tokio::time::timeout(WAIT, futures::stream::select_all(streams).next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the referral is in no inbox partition"))??;
        let msg = inbox::decode(&got).map_err(anyhow::Error::msg)?;
        let mut tx = bus.pool.begin().await?;
        let outcome = inbox::apply_one(&mut tx, "mediation-test", &RecordingHandler, &msg).await?;
        assert_eq!(outcome, Applied::Applied);
        tx.commit().await?;
        conn.close(320, "consumer died".into()).await?; // no ack: the broker requeues it
    }

    let consumer = bus.spawn_consumer("mediation-test", &centre);
    wait_until("the redelivery to be skipped", WAIT, || async { Ok(consumer.duplicates.load(Ordering::Relaxed) == 1) })
        .await?;
    assert_eq!(consumer.applied.load(Ordering::Relaxed), 0, "the redelivery was not applied again");
    assert_eq!(applied_ids(&bus).await?, vec![Uuid::parse_str(&env[0].message_id)?]);
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_queue_with_a_reason_and_the_stream_continues() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    bus.declare(std::slice::from_ref(&centre)).await?;
    let consumer = bus.spawn_consumer("mediation-test", &centre);
    bus.spawn_relay();

    // 1. bytes that are not an envelope, published straight to the exchange
    let garbage_id = Uuid::now_v7().to_string();
    bus.publish_raw(&format!("mediation.{}.referral", centre.code()), b"\xff\xff\xff not protobuf", &garbage_id).await?;
    // 2. a valid envelope the handler refuses, 3. and a good one after both
    let mut refused = [referral(&court, &centre, "REJECT-431003-2026-000030", "refused".into())];
    bus.stage(&mut refused).await?;
    let mut good = [referral(&court, &centre, "JF-431003-2026-000031", "fine".into())];
    bus.stage(&mut good).await?;

    wait_until("the good message and both dead letters", WAIT, || async {
        Ok(consumer.applied.load(Ordering::Relaxed) == 1 && consumer.dead_lettered.load(Ordering::Relaxed) == 2)
    })
    .await?;
    assert_eq!(applied_ids(&bus).await?, vec![Uuid::parse_str(&good[0].message_id)?]);

    let mut dead = bus.drain_dead().await?;
    dead.sort_by_key(|d| d.message_id.clone() != Some(garbage_id.clone()));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].message_id.as_deref(), Some(garbage_id.as_str()));
    assert!(dead[0].reason.as_deref().is_some_and(|r| r.contains("undecodable")), "{:?}", dead[0].reason);
    assert_eq!(dead[1].message_id.as_deref(), Some(refused[0].message_id.as_str()));
    assert!(dead[1].reason.as_deref().is_some_and(|r| r.contains("refused by the test handler")), "{:?}", dead[1].reason);
    assert_eq!(dead[1].original_routing_key.as_deref(), Some(format!("mediation.{}.referral", centre.code()).as_str()));
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn unroutable_message_is_not_marked_sent_and_goes_out_once_the_recipient_exists() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    let court = node(AgencyKind::Court, "431003");
    let nowhere = node(AgencyKind::Police, "999999-404");
    bus.declare(&[]).await?; // exchanges exist, but no partition of the recipient's kind
    let relay = bus.spawn_relay();
    let mut env = [referral(&court, &nowhere, "JF-431003-2026-000040", "to nowhere".into())];
    bus.stage(&mut env).await?;

    wait_until("the broker to return the message", WAIT, || async {
        let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM outbox").fetch_one(&bus.pool).await?;
        Ok(attempts >= 1)
    })
    .await?;
    assert!(relay.returned.load(Ordering::Relaxed) >= 1);
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM outbox").fetch_one(&bus.pool).await?;
    assert!(attempts >= 1, "a returned message stays in the outbox, not marked sent");
    assert!(last_error.as_deref().is_some_and(|e| e.contains("NO_ROUTE")), "{last_error:?}");

    // The recipient's queue appears: the retry delivers it, nothing was lost.
    let consumer = bus.spawn_consumer("mediation-nowhere", &nowhere);
    wait_until("the held message to arrive", WAIT, || async { Ok(consumer.applied.load(Ordering::Relaxed) == 1) }).await?;
    // The relay commits a confirmed batch while it goes on (it may still be committing now).
    wait_until("the outbox to be empty", WAIT, || async { Ok(bus.unsent().await? == 0) }).await?;
    assert_eq!(consumer.applied.load(Ordering::Relaxed), 1, "delivered once");
    bus.cleanup(&[nowhere]).await
}

#[tokio::test]
async fn consumer_continues_the_senders_trace() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    bus.declare(std::slice::from_ref(&centre)).await?;
    let consumer = bus.spawn_consumer("mediation-test", &centre);
    bus.spawn_relay();

    let span = tracing::info_span!("court.submit_referral");
    let sender_trace = async {
        let mut env = [referral(&court, &centre, "JF-431003-2026-000050", "traced".into())];
        bus.stage(&mut env).await?;
        anyhow::Ok((tracing_trace_id(), env[0].trace.clone()))
    }
    .instrument(span)
    .await?;
    let (Some(sender_trace_id), Some(env_trace)) = sender_trace else {
        anyhow::bail!("the sender had no trace id: is the OpenTelemetry layer installed?")
    };
    assert!(env_trace.traceparent.contains(&sender_trace_id), "the envelope carries the trace context");

    wait_until("the traced referral to be applied", WAIT, || async { Ok(consumer.applied.load(Ordering::Relaxed) == 1) })
        .await?;
    let consumer_trace: Option<String> = sqlx::query_scalar("SELECT trace_id FROM test_applied").fetch_one(&bus.pool).await?;
    assert_eq!(consumer_trace.as_deref(), Some(sender_trace_id.as_str()), "the consumer's span is in the sender's trace");
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn housekeeping_prunes_only_old_inbox_records() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    let (old, recent) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO inbox (consumer, message_id, routing_key, received_at)
         VALUES ('c', $1, 'k', now() - interval '40 days'), ('c', $2, 'k', now() - interval '1 day')",
    )
    .bind(old)
    .bind(recent)
    .execute(&bus.pool)
    .await?;
    let month = Duration::from_secs(30 * 24 * 3600);
    assert_eq!(duijie_common::db::prune_inbox(&bus.pool, month).await?, 1);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM inbox").fetch_all(&bus.pool).await?;
    assert_eq!(left, vec![recent], "a record younger than the retention still guards against redelivery");
    bus.cleanup(&[]).await
}

#[tokio::test]
async fn returns_are_matched_by_message_id_in_a_mixed_batch() -> anyhow::Result<()> {
    // lapin attaches a basic.return to whichever confirm completes next, so a batch mixing
    // routable and unroutable messages must still keep exactly the unroutable ones.
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    // A kind with no partitions: the broker returns what is addressed to it.
    let nowhere = node(AgencyKind::Supervisor, "999999");
    bus.declare(std::slice::from_ref(&centre)).await?;
    let consumer = bus.spawn_consumer("mediation-test", &centre);
    let mut envs: Vec<_> = (0..600)
        .map(|i| {
            let to = if i % 2 == 0 { &centre } else { &nowhere };
            referral(&court, to, &format!("JF-431003-2026-{i:06}"), "mixed".into())
        })
        .collect();
    bus.stage(&mut envs).await?;
    let relay = bus.spawn_relay();
    wait_until("every routable message applied and every unroutable one returned", Duration::from_secs(60), || async {
        let kept_tried: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE attempts >= 1").fetch_one(&bus.pool).await?;
        Ok(consumer.applied.load(Ordering::Relaxed) == 300 && kept_tried == 300)
    })
    .await?;
    let kept: Vec<String> = sqlx::query_scalar("SELECT routing_key FROM outbox").fetch_all(&bus.pool).await?;
    assert_eq!(kept.len(), 300, "exactly the unroutable rows stay");
    assert!(kept.iter().all(|k| k.starts_with("supervisor.999999.")), "only unroutable rows stay");
    assert_eq!(bus.applied_counts().await?, (300, 300));
    assert!(relay.returned.load(Ordering::Relaxed) >= 300);
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn duplicates_inside_one_batch_and_a_refusal_beside_them_are_handled() -> anyhow::Result<()> {
    use prost::Message as _;
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    bus.declare(std::slice::from_ref(&centre)).await?;
    let key = format!("mediation.{}.referral", centre.code());
    let twice = referral(&court, &centre, "JF-431003-2026-000070", "twice".into());
    let refused = referral(&court, &centre, "REJECT-431003-2026-000071", "refused".into());
    let after = referral(&court, &centre, "JF-431003-2026-000072", "after".into());
    // All on the queue before the consumer starts, so they arrive as one batch.
    for env in [&twice, &twice, &refused, &after] {
        bus.publish_raw(&key, &env.encode_to_vec(), &env.message_id).await?;
    }
    let consumer = bus.spawn_consumer("mediation-test", &centre);
    wait_until("the batch to be processed", WAIT, || async {
        Ok(consumer.applied.load(Ordering::Relaxed) == 2 && consumer.dead_lettered.load(Ordering::Relaxed) == 1)
    })
    .await?;
    assert_eq!(consumer.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(bus.applied_counts().await?, (2, 2), "the doubled message applied once, the one after the refusal applied");
    let dead = bus.drain_dead().await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id.as_deref(), Some(refused.message_id.as_str()));
    bus.cleanup(&[centre]).await
}

#[tokio::test]
async fn a_message_the_database_cannot_store_is_dead_lettered_and_does_not_block_the_queue() -> anyhow::Result<()> {
    use prost::Message as _;
    let bus = TestBus::new().await?;
    let (court, centre) = nodes();
    bus.declare(std::slice::from_ref(&centre)).await?;
    // A routing key with a NUL byte matches the node's binding but PostgreSQL refuses to store it.
    let bad = referral(&court, &centre, "JF-431003-2026-000080", "nul".into());
    bus.publish_raw(&format!("mediation.{}.ref\0x", centre.code()), &bad.encode_to_vec(), &bad.message_id).await?;
    let good = referral(&court, &centre, "JF-431003-2026-000081", "good".into());
    bus.publish_raw(&format!("mediation.{}.referral", centre.code()), &good.encode_to_vec(), &good.message_id).await?;
    let consumer = bus.spawn_consumer("mediation-test", &centre);
    wait_until("the good message to arrive past the bad one", WAIT, || async {
        Ok(consumer.applied.load(Ordering::Relaxed) == 1 && consumer.dead_lettered.load(Ordering::Relaxed) == 1)
    })
    .await?;
    assert_eq!(applied_ids(&bus).await?, vec![Uuid::parse_str(&good.message_id)?]);
    let dead = bus.drain_dead().await?;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.as_deref().is_some_and(|r| r.contains("database refused")), "{:?}", dead[0].reason);
    bus.cleanup(&[centre]).await
}
