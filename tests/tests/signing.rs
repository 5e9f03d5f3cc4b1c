//! Signed handoffs (issue #14): what an attacker holding the broker's password can no longer
//! do. Forged envelopes — unsigned, signed by a key from another CA, signed by another agency
//! than the sender, an old envelope replayed — are refused at the centre (dead-lettered with the
//! reason, the case unchanged) and recorded as refused by the audit store, which counts them
//! apart and still verifies; a step the case does not allow, correctly signed, is recorded as
//! refused too. A court whose key is rotated keeps sending, and its old records still verify.

use duijie_common::envelope::{Header, build};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Stack, agency_ref, referral};
use duijie_tests::{node, signer_for, wait_until};
use sqlx::Connection as _;
use uuid::Uuid;

fn today() -> GetStatisticsRequest {
    let now = chrono::Utc::now().timestamp();
    GetStatisticsRequest {
        from: Some(prost_types::Timestamp { seconds: now - 86_400, nanos: 0 }),
        to: Some(prost_types::Timestamp { seconds: now + 3_600, nanos: 0 }),
        ..Default::default()
    }
}

async fn submit(court: &stack::Clerk, code: &str) -> anyhow::Result<String> {
    court.submit(&stack::centre(), code, referral(code, ClockPolicyKind::CourtPreFiling)).await
}

fn header(case_id: &str, code: &str, sender: &duijie_domain::AgencyNode) -> anyhow::Result<Header> {
    Ok(stack::to_centre(Uuid::parse_str(case_id)?, code, sender))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_envelopes_are_refused_at_the_centre_and_flagged_in_the_audit_store() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (court, centre) = (stack.clerk(&stack::court()).await?, stack.clerk(&stack::centre()).await?);
    let supervisor = node(AgencyKind::Supervisor, "431003");
    let mut audit = stack.auditor(&supervisor).await?;
    let code = "JF-431003-2026-SIG001";
    let id = submit(&court, code).await?;
    let before = centre.wait_for(&id, "DELIVERED").await?;
    // The court's referral and the centre's signed receipt of it reach the audit store.
    wait_until("the referral and its delivery evidence in the audit store", stack::WAIT, || {
        let mut a = audit.clone();
        let id = id.clone();
        async move {
            let t = a.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await?.into_inner();
            Ok(t.records.iter().any(|r| r.kind() == MessageKind::DeliveryEvidence))
        }
    })
    .await?;
    let figures_before = audit.get_statistics(today()).await?.into_inner();

    // 1. Unsigned: a cancellation "from the court" published with the broker's password.
    let cancel = Payload::Cancellation(Cancellation { explanation: "伪造的撤回".into(), ..Default::default() });
    let unsigned = build(&header(&id, code, &stack::court())?, cancel.clone());
    stack.bus.publish_raw(&unsigned.routing_key()?, &prost::Message::encode_to_vec(&unsigned), &unsigned.message_id).await?;
    // 2. The court's name on a key from another CA.
    let rogue = duijie_common::certs::DevCa::generate("rogue CA")?;
    let rogue_court = build(&header(&id, code, &stack::court())?, cancel.clone());
    stack.bus.publish_signed(&rogue_court, &signer_for(&rogue, &[stack::court()])?).await?;
    // 3. A real agency's key (the police station's), claiming to be the court.
    let police_key = signer_for(stack.ca(), &[stack::police()])?;
    let as_court = build(&header(&id, code, &stack::court())?, cancel.clone());
    let bytes = prost::Message::encode_to_vec(&as_court);
    let police_sig = police_key.sign(&stack::police().to_string(), &bytes)?;
    stack.bus.publish_with(&as_court.routing_key()?, &bytes, &as_court.message_id, Some(&police_sig)).await?;
    // 4. A referral "from" a court for a case nobody referred, unsigned.
    let ghost_id = Uuid::now_v7().to_string();
    let ghost = build(
        &header(&ghost_id, "JF-421000-2026-GHOST", &node(AgencyKind::Court, "421000"))?,
        Payload::Referral(referral("ghost", ClockPolicyKind::CourtPreFiling)),
    );
    stack.bus.publish_raw(&ghost.routing_key()?, &prost::Message::encode_to_vec(&ghost), &ghost.message_id).await?;
    // 5. The court's own referral replayed, signature and all: a duplicate, dropped.
    let audit_db = stack.database("audit")?;
    let mut db = sqlx::PgConnection::connect_with(&audit_db.connect_options()).await?;
    let (envelope, signature, cert): (Vec<u8>, Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT envelope, signature, signer_cert FROM audit_log WHERE case_id = $1 AND kind = 'referral'")
            .bind(Uuid::parse_str(&id)?)
            .fetch_one(&mut db)
            .await?;
    let original: Envelope = prost::Message::decode(envelope.as_slice())?;
    let sig = duijie_common::signing::Signature { signature, cert };
    stack.bus.publish_with(&original.routing_key()?, &envelope, &original.message_id, Some(&sig)).await?;

    // The centre dead-letters the three forgeries and the ghost, each with its reason.
    let dead = dead_letters(&stack, 4).await?;
    let reason_of = |message_id: &str| dead.iter().find(|d| d.message_id.as_deref() == Some(message_id)).and_then(|d| d.reason.clone()).unwrap_or_default();
    assert!(reason_of(&unsigned.message_id).contains("unsigned"), "{dead:?}");
    assert!(reason_of(&rogue_court.message_id).contains("untrusted signer certificate"), "{dead:?}");
    assert!(reason_of(&as_court.message_id).contains("signed by police:431003-01, but only court:431003 may sign"), "{dead:?}");
    assert!(reason_of(&ghost.message_id).contains("unsigned"), "{dead:?}");

    // The audit store records all four as refused for their signature, and nothing changed.
    wait_until("the forgeries in the audit store", stack::WAIT, || {
        let mut a = audit.clone();
        async move { Ok(a.get_statistics(today()).await?.into_inner().signature_refusals >= figures_before.signature_refusals + 4) }
    })
    .await?;
    let timeline = audit.get_timeline(GetTimelineRequest { case_id: id.clone(), ..Default::default() }).await?.into_inner();
    let record = |mid: &str| timeline.records.iter().find(|r| r.message_id == mid).cloned().unwrap_or_default();
    for forged in [&unsigned, &rogue_court, &as_court] {
        let r = record(&forged.message_id);
        assert!(r.refused.starts_with("signature: "), "{r:?}");
        assert_eq!(r.state_after, "DELIVERED", "a refused message leaves the case where it was");
        assert!(r.signer.is_empty(), "{r:?}");
    }
    assert_eq!(timeline.case.as_ref().map(|c| c.state.as_str()), Some("DELIVERED"));
    assert_eq!(timeline.records.iter().filter(|r| r.message_id == original.message_id).count(), 1, "the replay is not recorded again");
    // Who signed what: the referral by the court, its delivery evidence by the centre.
    let signer_of = |kind: MessageKind| timeline.records.iter().find(|r| r.kind() == kind && r.refused.is_empty()).map(|r| r.signer.clone());
    assert_eq!(signer_of(MessageKind::Referral).as_deref(), Some("court:431003"));
    assert_eq!(signer_of(MessageKind::DeliveryEvidence).as_deref(), Some("mediation:431003"));
    // The ghost case is in the log (flagged) but is no case: not counted, not at the centre.
    let ghost_record: Option<String> = sqlx::query_scalar("SELECT refused FROM audit_log WHERE message_id = $1")
        .bind(Uuid::parse_str(&ghost.message_id)?)
        .fetch_optional(&mut db)
        .await?
        .flatten();
    assert!(ghost_record.is_some_and(|r| r.contains("unsigned")));
    let figures = audit.get_statistics(today()).await?.into_inner();
    assert_eq!(figures.received, figures_before.received, "a forged referral is not a case received");
    assert_eq!(figures.signature_refusals, figures_before.signature_refusals + 4, "{figures:?}");
    assert!(figures.refused_messages >= figures_before.refused_messages + 3, "{figures:?}");
    assert_eq!(centre.case(&ghost_id).await.map_err(|s| s.code()).err(), Some(tonic::Code::NotFound));
    // The centre's case is as it was: no cancel request, nothing from the forgeries.
    let after = centre.case(&id).await?;
    assert_eq!(after.state, "DELIVERED");
    assert_eq!(after.timeline.len(), before.timeline.len(), "{:?}", after.timeline);
    assert_eq!(court.case(&id).await?.state, "DELIVERED");

    // Signed, but not the signer's to say: the police station "hands on" the court's case to
    // the town committee, and the court claims its own referral was delivered to itself.
    let mut hand_on = build(
        &Header { recipient: stack::town(), ..header(&id, code, &stack::police())? },
        Payload::Referral(referral("hand-on", ClockPolicyKind::CourtPreFiling)),
    );
    duijie_tests::without_party_data(&mut hand_on);
    stack.bus.publish_signed(&hand_on, &police_key).await?;
    let own_evidence = build(
        &Header { sender: node(AgencyKind::Bus, "431003"), ..header(&id, code, &stack::court())? },
        Payload::DeliveryEvidence(DeliveryEvidence {
            evidence_type: EvidenceType::Delivered as i32,
            message_id: original.message_id.clone(),
            message_kind: MessageKind::Referral as i32,
            delivered_to: Some(agency_ref(&stack::court())),
            ..Default::default()
        }),
    );
    stack.bus.publish_signed(&own_evidence, &signer_for(stack.ca(), &[stack::court()])?).await?;
    let mut refused_for = Vec::new();
    for mid in [&hand_on.message_id, &own_evidence.message_id] {
        refused_for.push(wait_until_recorded(&mut audit, &id, mid).await?);
    }
    assert!(refused_for[0].refused.contains("only the holder hands a case on"), "{:?}", refused_for[0]);
    assert!(!refused_for[1].refused.is_empty() && refused_for[1].signer == "court:431003", "{:?}", refused_for[1]);
    assert_eq!(
        audit.get_timeline(GetTimelineRequest { case_id: id.clone(), ..Default::default() }).await?.into_inner().case.map(|c| c.state),
        Some("DELIVERED".to_owned())
    );

    // The log verifies, every signature checked again; nothing is unsigned but the forgeries.
    let verified = audit.verify(VerifyRequest::default()).await?.into_inner();
    assert!(verified.ok, "{verified:?}");
    assert!(verified.signatures_checked >= 3, "{verified:?}");
    assert_eq!(verified.unsigned_records, 2, "the two unsigned forgeries: {verified:?}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctly_signed_step_the_case_does_not_allow_is_recorded_as_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (court, centre) = (stack.clerk(&stack::court()).await?, stack.clerk(&stack::centre()).await?);
    let mut audit = stack.auditor(&node(AgencyKind::Supervisor, "431003")).await?;
    let code = "JF-431003-2026-SIG002";
    let id = submit(&court, code).await?;
    centre.wait_for(&id, "DELIVERED").await?;
    let before = audit.get_statistics(today()).await?.into_inner();
    // The court's own key signs a confirmation ruling for a case nobody applied to confirm
    // (as a court service with a bug, or an insider, would).
    let ruling = build(
        &header(&id, code, &stack::court())?,
        Payload::ConfirmationDecision(ConfirmationDecision { decision: ConfirmationDecisionKind::Granted as i32, ..Default::default() }),
    );
    stack.bus.publish_signed(&ruling, &signer_for(stack.ca(), &[stack::court()])?).await?;
    let dead = dead_letters(&stack, 1).await?;
    assert!(dead[0].reason.as_deref().is_some_and(|r| !r.contains("signature")), "{dead:?}");
    let record = wait_until_recorded(&mut audit, &id, &ruling.message_id).await?;
    assert!(!record.refused.is_empty() && !record.refused.starts_with("signature"), "{record:?}");
    assert_eq!(record.signer, "court:431003", "signed, and still refused: {record:?}");
    assert_eq!(record.state_after, "DELIVERED");
    let after = audit.get_statistics(today()).await?.into_inner();
    assert_eq!(after.confirmations_granted, before.confirmations_granted, "a refused ruling confirms nothing");
    assert_eq!(after.refused_messages, before.refused_messages + 1);
    assert_eq!(after.signature_refusals, before.signature_refusals);
    assert!(audit.verify(VerifyRequest::default()).await?.into_inner().ok);
    stack.stop().await
}

async fn wait_until_recorded(
    audit: &mut duijie_proto::v1::audit_service_client::AuditServiceClient<tonic::transport::Channel>,
    case_id: &str,
    message_id: &str,
) -> anyhow::Result<AuditRecord> {
    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait_until("the message in the audit store", stack::WAIT, || {
        let mut a = audit.clone();
        let (case_id, message_id, found) = (case_id.to_owned(), message_id.to_owned(), found.clone());
        async move {
            let t = a.get_timeline(GetTimelineRequest { case_id, ..Default::default() }).await?.into_inner();
            let r = t.records.into_iter().find(|r| r.message_id == message_id);
            let seen = r.is_some();
            if let (Some(r), Ok(mut f)) = (r, found.lock()) {
                *f = Some(r);
            }
            Ok(seen)
        }
    })
    .await?;
    found.lock().ok().and_then(|mut f| f.take()).ok_or_else(|| anyhow::anyhow!("not recorded"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_from_then_on_and_old_signatures_still_verify() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let first = submit(&court, "JF-431003-2026-ROT001").await?;
    centre.wait_for(&first, "DELIVERED").await?;
    // The court gets a new certificate and key from the same CA; its service restarts with it.
    let keys = stack.signing().keys;
    let tls = stack.ca().agency(&stack::court())?;
    std::fs::write(keys.join("court-431003.pem"), &tls.cert)?;
    std::fs::write(keys.join("court-431003-key.pem"), &tls.key)?;
    stack.restart_service(AgencyKind::Court).await?;
    let court = stack.clerk(&stack::court()).await?;
    // The restarted service takes referrals once its audit gate has seen the audit store.
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    let second = loop {
        match submit(&court, "JF-431003-2026-ROT002").await {
            Ok(id) => break id,
            Err(e) if tokio::time::Instant::now() < deadline && e.downcast_ref::<tonic::Status>().is_some_and(|s| s.code() == tonic::Code::Unavailable) => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    centre.wait_for(&second, "DELIVERED").await?;
    // Both referrals are recorded as the court's, under two different certificates.
    let audit_db = stack.database("audit")?;
    let mut db = sqlx::PgConnection::connect_with(&audit_db.connect_options()).await?;
    let ids = vec![Uuid::parse_str(&first)?, Uuid::parse_str(&second)?];
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    let certs: Vec<Vec<u8>> = loop {
        let certs: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT signer_cert FROM audit_log WHERE case_id = ANY($1) AND kind = 'referral' AND signer = 'court:431003'")
                .bind(&ids)
                .fetch_all(&mut db)
                .await?;
        if certs.len() == 2 {
            break certs;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "both referrals recorded as the court's: {} of 2", certs.len());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(certs[0], certs[1], "the second referral is signed with the new key");
    let mut audit = stack.auditor(&node(AgencyKind::Supervisor, "431003")).await?;
    let verified = audit.verify(VerifyRequest::default()).await?.into_inner();
    assert!(verified.ok && verified.unsigned_records == 0, "{verified:?}");
    stack.stop().await
}

/// Takes messages off the stack's dead-letter queue until there are `n` (or the wait ends).
async fn dead_letters(stack: &Stack, n: usize) -> anyhow::Result<Vec<duijie_tests::DeadMessage>> {
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    let mut dead = Vec::new();
    loop {
        dead.extend(stack.bus.drain_dead().await?);
        if dead.len() >= n {
            return Ok(dead);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{n} dead letters expected, {} arrived: {dead:?}", dead.len());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_on_case_must_prove_its_referrer() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let mut audit = stack.auditor(&node(AgencyKind::Supervisor, "431003")).await?;
    // The town committee, with its own good key, "hands on" a case the court never referred.
    let ghost_id = Uuid::now_v7().to_string();
    let mut forged = referral("ghost-hand-on", ClockPolicyKind::CourtPreFiling);
    forged.forwarded = Some(ForwardedCase {
        original_referrer: Some(agency_ref(&stack::court())),
        forwarded_by: Some(agency_ref(&stack::town())),
        reason: MessageKind::Redirect as i32,
        ..Default::default()
    });
    let mut env = build(&Header { sender: stack::town(), ..header(&ghost_id, "JF-431003-2026-SIG009", &stack::town())? }, Payload::Referral(forged));
    duijie_tests::without_party_data(&mut env);
    stack.bus.publish_signed(&env, &signer_for(stack.ca(), &[stack::town()])?).await?;
    let dead = dead_letters(&stack, 1).await?;
    assert!(dead[0].reason.as_deref().is_some_and(|r| r.contains("does not prove its referrer court:431003")), "{dead:?}");
    assert_eq!(centre.case(&ghost_id).await.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::NotFound));
    let record = wait_until_recorded(&mut audit, &ghost_id, &env.message_id).await?;
    assert!(record.refused.contains("never seen referred"), "{record:?}");
    assert_eq!(record.signer, "mediation:431003-102", "who forged it is on record");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_believe_only_lag_reports_the_audit_service_signed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // Any service may publish on the status exchange: forged reports of an hour's lag, unsigned
    // and signed by an agency, would close every gate if believed.
    let conn = stack.bus.connector.connect("forged lag reports").await?;
    let ch = conn.create_channel().await?;
    let court_key = signer_for(stack.ca(), &[stack::court()])?;
    let forged = duijie_common::status::AuditLag { at: chrono::Utc::now(), lag_ms: Some(3_600_000), recorded: 0, replica: String::new() };
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        duijie_common::status::publish(&ch, &stack.bus.topology, duijie_common::status::AUDIT_LAG_KEY, &forged).await?;
        duijie_common::status::publish_signed(&ch, &stack.bus.topology, duijie_common::status::AUDIT_LAG_KEY, &forged, &court_key, "court:431003").await?;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for kind in [AgencyKind::Court, AgencyKind::Mediation] {
        assert!(stack.service(kind)?.agency.gate_open(), "{kind:?}'s gate believed a forged report");
    }
    let court = stack.clerk(&stack::court()).await?;
    submit(&court, "JF-431003-2026-SIG010").await?;
    let _ = conn.close(200, "done".into()).await;
    stack.stop().await
}
