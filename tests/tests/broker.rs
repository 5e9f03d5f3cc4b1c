//! Least privilege on the broker: each service's own user (the permissions scripts/run.sh gives
//! the local stack's, `Topology::permissions`) against real RabbitMQ. What it may not do is
//! refused by the broker (`ACCESS_REFUSED`); what it must do still works, and a stack whose
//! services all run on their own users delivers a referral end to end.

use duijie_common::amqp::{Connector, is_access_refused};
use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::TestBus;
use duijie_tests::broker::ServiceUsers;
use duijie_tests::stack::{self, Stack, demo_nodes};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ExchangeKind};
use secrecy::ExposeSecret as _;

/// Whether the operation's outcome is the broker's refusal for lack of permission.
fn refused<T>(outcome: Result<T, lapin::Error>) -> bool {
    match outcome {
        Ok(_) => false,
        Err(e) => {
            let e = anyhow::Error::new(e);
            is_access_refused(&e) || format!("{e:#}").contains("ACCESS_REFUSED")
        }
    }
}

/// Publishes one message on a confirm channel: `Ok` when the broker acked it.
async fn publish(conn: &Connection, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), b"not an envelope", BasicProperties::default()).await?;
    confirm.await?;
    // A refused publish closes the channel asynchronously; a closed channel after the confirm
    // means the broker did not take it.
    ch.basic_qos(1, Default::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_user_reads_only_its_own_queues_writes_only_its_exchanges_and_configures_nothing() -> anyhow::Result<()> {
    let bus = TestBus::new().await?;
    bus.declare(&demo_nodes()).await?;
    let users = ServiceUsers::create(&bus.topology, &bus.prefix, bus.amqp_cfg.url.expose_secret()).await?;
    let t = &bus.topology;
    // A partition of the courts' inboxes, and one of the mediation bodies' (the centre's).
    let (court_inbox, centre_inbox) = (t.inbox_queues(stack::court().kind())[0].clone(), t.inbox_queues(stack::centre().kind())[0].clone());
    let tap = t.tap_queues()[0].clone();
    let court = Connector::new(users.amqp("court")?).connect("broker test court").await?;
    let audit = Connector::new(users.amqp("audit")?).connect("broker test audit").await?;
    let none = FieldTable::default;

    // What the court service must do still works: consume its own inbox, look at the tap
    // (passive declare, its audit gate), publish a handoff, listen on a queue of its own.
    let ch = court.create_channel().await?;
    let consumer = ch.basic_consume(court_inbox.clone().into(), "own".into(), BasicConsumeOptions::default(), none()).await;
    assert!(consumer.is_ok(), "the court consumes its own inbox: {:?}", consumer.err());
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    assert!(ch.queue_declare(tap.clone().into(), passive, none()).await.is_ok(), "the court looks at the tap");
    publish(&court, &t.handoff_exchange(), "mediation.431003.referral").await?;
    let own = ch.queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, none()).await?;
    ch.queue_bind(own.name().clone(), t.status_exchange().into(), "audit.lag".into(), QueueBindOptions::default(), none()).await?;
    ch.close(200, "done".into()).await?;

    // Another agency's inbox and the tap: neither consumed, read, nor purged.
    for queue in [centre_inbox.as_str(), &tap.clone(), &t.dead_queue()] {
        let ch = court.create_channel().await?;
        assert!(refused(ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), none()).await), "court consumes {queue}");
        let ch = court.create_channel().await?;
        assert!(refused(ch.basic_get(queue.into(), BasicGetOptions::default()).await), "court gets from {queue}");
        let ch = court.create_channel().await?;
        assert!(refused(ch.queue_purge(queue.into(), QueuePurgeOptions::default()).await), "court purges {queue}");
    }
    // Nor watched through a queue of its own bound to the handoff exchange.
    let ch = court.create_channel().await?;
    let own = ch.queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, none()).await?;
    assert!(
        refused(ch.queue_bind(own.name().clone(), t.handoff_exchange().into(), "#".into(), QueueBindOptions::default(), none()).await),
        "court binds a queue of its own to every handoff"
    );

    // No queue or exchange declared, redeclared or deleted, its own inbox included.
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let cases = [
        ("declares a queue", court.create_channel().await?.queue_declare(format!("{}.court-made", bus.prefix).into(), durable, none()).await.map(drop)),
        ("redeclares its inbox", court.create_channel().await?.queue_declare(court_inbox.clone().into(), durable, none()).await.map(drop)),
        ("deletes its inbox", court.create_channel().await?.queue_delete(court_inbox.clone().into(), QueueDeleteOptions::default()).await.map(drop)),
        ("deletes the centre's inbox", court.create_channel().await?.queue_delete(centre_inbox.clone().into(), QueueDeleteOptions::default()).await.map(drop)),
        (
            "declares an exchange",
            court
                .create_channel()
                .await?
                .exchange_declare(format!("{}.court-made", bus.prefix).into(), ExchangeKind::Fanout, ExchangeDeclareOptions::default(), none())
                .await,
        ),
        ("deletes the handoff exchange", court.create_channel().await?.exchange_delete(t.handoff_exchange().into(), ExchangeDeleteOptions::default()).await),
    ];
    for (what, outcome) in cases {
        assert!(refused(outcome), "court {what}");
    }

    // No publishing outside its exchanges: the default exchange (straight into a queue) and
    // another topic exchange are refused.
    assert!(refused(publish(&court, "", &centre_inbox).await), "court publishes straight into the centre's inbox");
    assert!(refused(publish(&court, "amq.topic", "mediation.431003.referral").await), "court publishes to amq.topic");

    // The audit service's user reads the tap and no inbox.
    let ch = audit.create_channel().await?;
    assert!(ch.basic_consume(tap.clone().into(), "tap".into(), BasicConsumeOptions::default(), none()).await.is_ok(), "audit consumes the tap");
    let ch = audit.create_channel().await?;
    assert!(refused(ch.basic_consume(court_inbox.clone().into(), "".into(), BasicConsumeOptions::default(), none()).await), "audit consumes an inbox");

    // The queues are all still there.
    let admin = bus.connector.connect("broker test check").await?;
    for q in [&court_inbox, &centre_inbox, &tap.clone()] {
        assert!(admin.create_channel().await?.queue_declare(q.clone().into(), passive, none()).await.is_ok(), "{q} still exists");
    }
    let _ = admin.close(200, "done".into()).await;
    let _ = court.close(200, "done".into()).await;
    let _ = audit.close(200, "done".into()).await;
    users.delete().await?;
    bus.cleanup(&demo_nodes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_on_the_services_own_users_delivers_a_referral_end_to_end() -> anyhow::Result<()> {
    // The gates open only once each service listened on the status exchange with its user: the
    // start itself proves that much.
    let stack = Stack::start_restricted().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let id = court
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(stack::agency_ref(&stack::centre())),
            case_code: "JF-431003-2026-K0001".into(),
            referral: Some(stack::referral("broker-restricted", ClockPolicyKind::CourtOrdinary)),
        })
        .await
        .and_then(answered_case)?
        .case_id;
    centre.wait_for(&id, "DELIVERED").await?;
    centre
        .mediation()
        .sign_for(SignForRequest { case_id: id.clone(), receipt: Some(Receipt { signed_by: "王明".into(), ..Default::default() }) })
        .await?;
    court.wait_for(&id, "RECEIVED").await?;
    let auditor = stack.auditor(&stack::court()).await?;
    duijie_tests::wait_until("the audit store to record the receipt", stack::WAIT, || {
        let mut a = auditor.clone();
        let id = id.clone();
        async move {
            Ok(a.get_timeline(GetTimelineRequest { case_id: id, case_code: String::new() })
                .await
                .is_ok_and(|t| t.into_inner().case.is_some_and(|c| c.state == "RECEIVED")))
        }
    })
    .await?;

    // And they did it as themselves: the broker lists their connections under their users.
    let out = tokio::process::Command::new("rabbitmqctl").args(["-q", "list_connections", "user"]).output().await?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let users = stack.users.as_ref().ok_or_else(|| anyhow::anyhow!("no service users"))?;
    for service in duijie_common::amqp::SERVICES {
        let user = users.user(service).unwrap_or_default();
        assert!(listed.lines().any(|l| l.trim() == user), "{service} connects as {user}: {listed}");
    }
    stack.stop().await
}
