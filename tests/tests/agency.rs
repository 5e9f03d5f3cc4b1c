//! Two agency cores (a court and a mediation centre), each with its own database, relay and
//! inbox consumer, exchanging a 诉调 referral over RabbitMQ to closure: what each side sees at
//! each step, and the refusals.

use std::sync::atomic::Ordering;
use std::time::Duration;

use duijie_agency::{Agency, CaseView, migrator};
use duijie_domain::AgencyNode;
use duijie_common::inbox::{Consumer, ConsumerStats};
use duijie_common::outbox::Relay;
use duijie_common::server::ApiError;
use duijie_domain::lifecycle::CaseState;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;
use duijie_tests::{TestBus, node, wait_until};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

struct Side {
    agency: Agency,
    pool: sqlx::PgPool,
    consumer: std::sync::Arc<ConsumerStats>,
    /// Cancel to stop the inbox consumer; it ends with `inbox`.
    pause: duijie_common::CancellationToken,
    inbox: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(bus: &TestBus, pool: sqlx::PgPool, me: &AgencyNode) -> Side {
    let relay = Relay::new(pool.clone(), bus.connector.clone(), TestBus::relay_config(), format!("relay-{me}"));
    let agency = Agency::new(pool.clone(), bus.topology.clone(), std::slice::from_ref(me), Some(relay.waker()));
    tokio::spawn(relay.run(bus.shutdown.child_token()));
    let pause = bus.shutdown.child_token();
    let (consumer, inbox) = consume(bus, pool.clone(), me, &agency, pause.clone());
    Side { agency, pool, consumer, pause, inbox }
}

/// Starts `me`'s inbox consumer until `stop` is cancelled.
fn consume(
    bus: &TestBus,
    pool: sqlx::PgPool,
    me: &AgencyNode,
    agency: &Agency,
    stop: duijie_common::CancellationToken,
) -> (std::sync::Arc<ConsumerStats>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    // One consumer per partition of `me`'s kind, counting together, ending together.
    let stats = std::sync::Arc::new(ConsumerStats::default());
    let consumers: Vec<_> = bus
        .topology
        .inbox_queues(me.kind())
        .into_iter()
        .map(|q| {
            Consumer::new(format!("agency-{me}"), q, pool.clone(), bus.connector.clone(), bus.topology.clone(), TestBus::consumer_config(), agency.clone())
                .with_stats(stats.clone())
                .run(stop.clone())
        })
        .collect();
    let all = tokio::spawn(async move {
        for r in futures::future::join_all(consumers).await {
            r?;
        }
        Ok(())
    });
    (stats, all)
}

fn referral(request_id: &str, id_number: &str) -> Referral {
    Referral {
        legal_basis: "《民事诉讼法》第一百二十五条".into(),
        facts: "借款合同纠纷，原告主张被告欠款未还。".into(),
        parties: vec![
            Party {
                party_id: "p1".into(),
                role: PartyRole::Plaintiff as i32,
                name: "张三".into(),
                identity: Some(IdentityDocument { document_type: IdDocumentType::ResidentIdCard as i32, number: id_number.into() }),
                ..Default::default()
            },
            Party { party_id: "p2".into(), role: PartyRole::Defendant as i32, name: "李四".into(), ..Default::default() },
        ],
        amount: Some(Money { currency: "CNY".into(), minor_units: 5_000_000 }),
        // Mediation is voluntary: a referral records the parties' consent.
        consents: vec![
            PartyConsent { party_id: "p1".into(), consented: true, ..Default::default() },
            PartyConsent { party_id: "p2".into(), consented: true, ..Default::default() },
        ],
        clock_policy: Some(ClockPolicy { kind: ClockPolicyKind::CourtOrdinary as i32, ..Default::default() }),
        client_request_id: request_id.into(),
        ..Default::default()
    }
}

async fn state_of(side: &Side, who: &AgencyNode, case: Uuid) -> anyhow::Result<Option<CaseState>> {
    match side.agency.view(who, case).await {
        Ok(v) => Ok(Some(v.state)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

async fn both_at(court: &Side, court_node: &AgencyNode, centre: &Side, centre_node: &AgencyNode, case: Uuid, want: CaseState) -> anyhow::Result<()> {
    wait_until(&format!("both sides at {want}"), WAIT, || async {
        Ok(state_of(court, court_node, case).await? == Some(want) && state_of(centre, centre_node, case).await? == Some(want))
    })
    .await
}

/// A court (431003) and a town mediation committee (431003-102), each with its own database.
async fn court_and_centre() -> anyhow::Result<(TestBus, AgencyNode, Side, AgencyNode, Side)> {
    let mut bus = TestBus::new().await?;
    let court_node = node(AgencyKind::Court, "431003");
    let centre_node = node(AgencyKind::Mediation, "431003-102");
    bus.declare(&[court_node.clone(), centre_node.clone()]).await?;
    let court_db = bus.extra_database(&migrator()).await?;
    let centre_db = bus.extra_database(&migrator()).await?;
    let court = start(&bus, court_db, &court_node);
    let centre = start(&bus, centre_db, &centre_node);
    Ok((bus, court_node, court, centre_node, centre))
}

#[tokio::test]
async fn court_referral_settled_confirmed_performed_followed_up_closed() -> anyhow::Result<()> {
    let (bus, court_node, court, centre_node, centre) = court_and_centre().await?;

    // Bad input is refused naming the field.
    let bad = court.agency.submit_referral(&court_node, &centre_node, "JF-431003-2026-000100", referral("req-bad", "110105194912310021")).await;
    assert!(matches!(&bad, Err(ApiError::InvalidArgument { field, .. }) if field == "parties[0].identity.number"), "{bad:?}");

    let sent = court.agency.submit_referral(&court_node, &centre_node, "JF-431003-2026-000100", referral("req-1", "11010519491231002X")).await?;
    // The reply shows the case as it is by then: the centre may already have taken it.
    assert!(matches!(sent.state, CaseState::Submitted | CaseState::Delivered), "{:?}", sent.state);
    // A retried submit returns the same case.
    let again = court.agency.submit_referral(&court_node, &centre_node, "JF-431003-2026-000100", referral("req-1", "11010519491231002X")).await?;
    assert_eq!(again.case_id, sent.case_id);
    let case = sent.case_id;

    // The centre takes it durably; the court gets delivery evidence.
    both_at(&court, &court_node, &centre, &centre_node, case, CaseState::Delivered).await?;

    // Out of order and out of rights.
    let early = centre.agency.send(&centre_node, case, Payload::Closure(Closure::default())).await;
    assert!(matches!(&early, Err(ApiError::FailedPrecondition(m)) if m.contains("DELIVERED")), "{early:?}");
    let not_mine = court.agency.send(&court_node, case, Payload::Receipt(Receipt::default())).await;
    assert!(matches!(not_mine, Err(ApiError::PermissionDenied(_))), "{not_mine:?}");
    let stranger = node(AgencyKind::Court, "431099");
    assert!(matches!(court.agency.view(&stranger, case).await, Err(ApiError::PermissionDenied(_))));

    let steps: Vec<(bool, Payload, CaseState)> = vec![
        (false, Payload::Receipt(Receipt { signed_by: "王调解员".into(), ..Default::default() }), CaseState::Received),
        (false, Payload::Accept(Accept::default()), CaseState::Accepted),
        (false, Payload::Assignment(Assignment::default()), CaseState::InMediation),
        (
            false,
            Payload::Outcome(Outcome {
                kind: Some(outcome::Kind::Settled(outcome::Settled { confirmation_intended: true, ..Default::default() })),
            }),
            CaseState::Settled,
        ),
        (false, Payload::ConfirmationRequest(ConfirmationRequest::default()), CaseState::ConfirmationRequested),
        (
            true,
            Payload::ConfirmationDecision(ConfirmationDecision { decision: ConfirmationDecisionKind::Accepted as i32, ..Default::default() }),
            CaseState::ConfirmationAccepted,
        ),
        (
            true,
            Payload::ConfirmationDecision(ConfirmationDecision { decision: ConfirmationDecisionKind::Granted as i32, ..Default::default() }),
            CaseState::Confirmed,
        ),
        (false, Payload::Performance(Performance { status: PerformanceStatus::Performed as i32, ..Default::default() }), CaseState::Performed),
        (false, Payload::FollowUp(FollowUp::default()), CaseState::FollowedUp),
        (false, Payload::Closure(Closure::default()), CaseState::Closed),
    ];
    for (by_court, payload, want) in steps {
        let kind = payload.kind();
        let view: CaseView = if by_court {
            court.agency.send(&court_node, case, payload).await?
        } else {
            centre.agency.send(&centre_node, case, payload).await?
        };
        assert_eq!(view.state, want, "after {kind}");
        both_at(&court, &court_node, &centre, &centre_node, case, want).await?;
    }

    let court_view = court.agency.view(&court_node, case).await?;
    let kinds: Vec<MessageKind> = court_view.timeline.iter().map(|t| t.kind).collect();
    assert!(kinds.contains(&MessageKind::DeliveryEvidence) && kinds.contains(&MessageKind::Closure), "{kinds:?}");
    let limit = court_view.deadlines.iter().find(|d| d.limit == TimeLimit::CourtMediationOrdinary);
    assert!(limit.is_some_and(|d| d.met_at.is_some()), "the 15-day limit started at receipt and was met by the outcome: {limit:?}");
    assert_eq!(court.consumer.dead_lettered.load(Ordering::Relaxed) + centre.consumer.dead_lettered.load(Ordering::Relaxed), 0);
    bus.cleanup(&[court_node, centre_node]).await
}

#[tokio::test]
async fn concurrent_retries_of_a_submit_make_one_case_and_bad_steps_are_refused() -> anyhow::Result<()> {
    let (bus, court_node, court, centre_node, centre) = court_and_centre().await?;

    let submits = (0..4).map(|_| {
        court.agency.submit_referral(&court_node, &centre_node, "JF-431003-2026-000200", referral("req-same", "11010519491231002X"))
    });
    let results = futures::future::join_all(submits).await;
    let ids: std::collections::BTreeSet<Uuid> = results.into_iter().map(|r| r.map(|v| v.case_id)).collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 1, "four concurrent retries, one case");
    let case = ids.into_iter().next().ok_or_else(|| anyhow::anyhow!("no case"))?;

    both_at(&court, &court_node, &centre, &centre_node, case, CaseState::Delivered).await?;
    centre.agency.send(&centre_node, case, Payload::Receipt(Receipt::default())).await?;
    let court_ref = AgencyRef { kind: AgencyKind::Court as i32, code: "431003".into() };
    let redirect = centre.agency.send(&centre_node, case, Payload::Redirect(Redirect { to: Some(court_ref), reason: "劳动争议".into() })).await;
    assert!(matches!(&redirect, Err(ApiError::InvalidArgument { field, .. }) if field == "redirect.to"), "{redirect:?}");
    assert_eq!(centre.agency.view(&centre_node, case).await?.state, CaseState::Received, "a refused step changes nothing");
    let extension = centre.agency.send(&centre_node, case, Payload::Accept(Accept::default())).await;
    assert!(extension.is_ok(), "{extension:?}");
    let consent = |id: &str| PartyConsent { party_id: id.into(), consented: true, ..Default::default() };
    let one_side = centre
        .agency
        .send(&centre_node, case, Payload::ExtensionRequest(ExtensionRequest {
            limit: TimeLimit::CourtMediationOrdinary as i32,
            days: 30,
            consents: vec![consent("p1")],
            ..Default::default()
        }))
        .await;
    assert!(matches!(&one_side, Err(ApiError::InvalidArgument { field, message }) if field == "extension.consents" && message.contains("p2")), "{one_side:?}");
    let both = centre
        .agency
        .send(&centre_node, case, Payload::ExtensionRequest(ExtensionRequest {
            limit: TimeLimit::CourtMediationOrdinary as i32,
            days: 30,
            consents: vec![consent("p1"), consent("p2")],
            ..Default::default()
        }))
        .await?;
    assert_eq!(both.state, CaseState::InMediation);
    let too_long = centre
        .agency
        .send(&centre_node, case, Payload::ExtensionRequest(ExtensionRequest { days: 4_000_000_000, ..Default::default() }))
        .await;
    assert!(matches!(&too_long, Err(ApiError::InvalidArgument { field, .. }) if field == "extension.days"), "{too_long:?}");
    bus.cleanup(&[court_node, centre_node]).await
}

/// The court asks to cancel while the centre, not yet aware, accepts the case: the centre's
/// accept reaches the court after its cancel left. Both ends then wait for the cancel's answer
/// from ACCEPTED, and a refused cancel puts both back there: nothing is dead-lettered.
#[tokio::test]
async fn a_cancel_crossing_an_accept_leaves_both_sides_in_agreement() -> anyhow::Result<()> {
    let (bus, court_node, mut court, centre_node, centre) = court_and_centre().await?;
    let case = court.agency.submit_referral(&court_node, &centre_node, "JF-431003-2026-000300", referral("req-cross", "11010519491231002X")).await?.case_id;
    both_at(&court, &court_node, &centre, &centre_node, case, CaseState::Delivered).await?;
    centre.agency.send(&centre_node, case, Payload::Receipt(Receipt { signed_by: "王调解员".into(), ..Default::default() })).await?;
    both_at(&court, &court_node, &centre, &centre_node, case, CaseState::Received).await?;

    // The court's inbox stops for a moment: the centre's accept waits in the queue while the
    // court, still seeing RECEIVED, asks to cancel.
    court.pause.cancel();
    (&mut court.inbox).await??;
    assert_eq!(centre.agency.send(&centre_node, case, Payload::Accept(Accept::default())).await?.state, CaseState::Accepted);
    let cancel = Cancellation { reason: CancellationReason::SettledOutside as i32, ..Default::default() };
    assert_eq!(court.agency.send(&court_node, case, Payload::Cancellation(cancel)).await?.state, CaseState::CancelRequested);
    wait_until("the centre has the cancel request", WAIT, || async { Ok(state_of(&centre, &centre_node, case).await? == Some(CaseState::CancelRequested)) }).await?;
    let (resumed, _) = consume(&bus, court.pool.clone(), &court_node, &court.agency, bus.shutdown.child_token());
    wait_until("the court took the crossed accept", WAIT, || async {
        let t = court.agency.view(&court_node, case).await.map_err(|e| anyhow::anyhow!("{e}"))?.timeline;
        Ok(t.iter().any(|e| e.kind == MessageKind::Accept && e.direction == "in"))
    })
    .await?;
    assert_eq!(state_of(&court, &court_node, case).await?, Some(CaseState::CancelRequested), "still waiting for the answer");

    // The centre refuses the cancel: both sides are back at ACCEPTED, where the centre was.
    let refuse = CancellationConfirmation { confirmed: false, reason: "当事人要求继续调解".into() };
    centre.agency.send(&centre_node, case, Payload::CancellationConfirmation(refuse)).await?;
    both_at(&court, &court_node, &centre, &centre_node, case, CaseState::Accepted).await?;
    let dead = resumed.dead_lettered.load(Ordering::Relaxed) + court.consumer.dead_lettered.load(Ordering::Relaxed) + centre.consumer.dead_lettered.load(Ordering::Relaxed);
    assert_eq!(dead, 0, "no message of the crossing was dead-lettered");
    bus.cleanup(&[court_node, centre_node]).await
}
