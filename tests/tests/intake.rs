//! Cases a mediation body takes in itself (自行受理) and judicial confirmation at a named court
//! (司法确认 whichever channel the case came from), end to end over gRPC and the bus: what the
//! registering body, the body it escalated to, the court and the audit store each see.

use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Clerk, Stack, agency_ref, referral, settled};
use tonic::Code;
use tonic_types::StatusExt as _;

fn intake(source: IntakeSource, risk: RiskLevel) -> Intake {
    Intake { source: source as i32, risk_level: risk as i32, received_by: "李接待".into() }
}

fn own_case(request_id: &str, source: IntakeSource) -> Referral {
    Referral { intake: Some(intake(source, RiskLevel::Medium)), ..referral(request_id, ClockPolicyKind::Unspecified) }
}

async fn register(body: &Clerk, code: &str, r: Referral) -> Result<CaseView, tonic::Status> {
    body.mediation().register_case(RegisterCaseRequest { case_code: code.into(), referral: Some(r) }).await.and_then(answered_case)
}

/// Yesterday to a minute from now.
fn today() -> GetStatisticsRequest {
    let now = chrono::Utc::now().timestamp();
    GetStatisticsRequest {
        from: Some(prost_types::Timestamp { seconds: now - 86_400, nanos: 0 }),
        to: Some(prost_types::Timestamp { seconds: now + 60, nanos: 0 }),
        ..Default::default()
    }
}

fn field_of(status: &tonic::Status) -> Vec<String> {
    status.get_error_details().bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default()
}

fn holder(v: &CaseView) -> String {
    v.holder.as_ref().map(|h| format!("{}:{}", h.kind().as_str(), h.code)).unwrap_or_default()
}

fn confirmation(court: Option<&duijie_domain::AgencyNode>, signed_days_ago: Option<i64>) -> ConfirmationRequest {
    ConfirmationRequest {
        agreement: Some(AttachmentDigest { name: "调解协议书.pdf".into(), sha256_hex: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(), ..Default::default() }),
        agreement_signed_at: signed_days_ago.map(|d| prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() - d * 86_400, nanos: 0 }),
        applicant_party_ids: vec!["p1".into(), "p2".into()],
        court: court.map(agency_ref),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_accepted_case_escalates_settles_is_confirmed_by_a_named_court_and_closes() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let village = stack.clerk(&stack::village()).await?;
    let town = stack.clerk(&stack::town()).await?;
    let court = stack.clerk(&stack::court()).await?;

    // Bad input names the field; the court has no mediation desk.
    let r = register(&village, "JF-V-1", Referral { intake: None, ..own_case("walk-in-1", IntakeSource::WalkIn) }).await;
    assert!(matches!(&r, Err(s) if s.code() == Code::InvalidArgument && field_of(s) == ["referral.intake"]), "{r:?}");
    let r = register(&village, "JF-V-1", Referral { intake: Some(intake(IntakeSource::Unspecified, RiskLevel::Low)), ..own_case("walk-in-1", IntakeSource::WalkIn) }).await;
    assert!(matches!(&r, Err(s) if field_of(s) == ["referral.intake.source"]), "{r:?}");
    let r = register(&village, "JF-V-1", referral("walk-in-1", ClockPolicyKind::CourtOrdinary)).await;
    assert!(matches!(&r, Err(s) if s.code() == Code::InvalidArgument), "{r:?}");
    let r = register(&village, "JF-V-1", Referral { clock_policy: Some(ClockPolicy { kind: ClockPolicyKind::CourtOrdinary as i32, ..Default::default() }), ..own_case("walk-in-1", IntakeSource::WalkIn) }).await;
    assert!(matches!(&r, Err(s) if field_of(s) == ["referral.clock_policy.kind"]), "{r:?}");

    // Registered: held and accepted by the village committee from the start, on the people's
    // mediation clock from registration; a retry gives the same case.
    let v = register(&village, "JF-V-1", own_case("walk-in-1", IntakeSource::WalkIn)).await?;
    assert_eq!((v.state.as_str(), v.channel(), holder(&v)), ("ACCEPTED", Channel::SelfIntake, stack::village().to_string()));
    assert_eq!(register(&village, "JF-V-1", own_case("walk-in-1", IntakeSource::WalkIn)).await?.case_id, v.case_id);
    let id = v.case_id.clone();
    assert!(v.deadlines.iter().any(|d| d.limit() == TimeLimit::PeoplesMediation && d.met_at.is_none()), "{:?}", v.deadlines);
    assert!(!v.allowed_next.contains(&(MessageKind::InfoRequest as i32)), "there is no referrer to ask");
    let inbox = village.cases().list_cases(ListCasesRequest { state: "ACCEPTED".into(), ..Default::default() }).await?.into_inner();
    assert!(inbox.cases.iter().any(|c| c.case_id == id), "{inbox:?}");

    // Escalated to the town committee, which the village then follows as the case's registrant.
    village
        .mediation()
        .escalate(EscalateRequest {
            case_id: id.clone(),
            escalation: Some(Escalation {
                from_tier: MediationTier::Village as i32,
                to_tier: MediationTier::Town as i32,
                to_agency: Some(agency_ref(&stack::town())),
                reason: "涉及多户，村级调解不成".into(),
            }),
        })
        .await?;
    let at_town = town.wait_for(&id, "IN_MEDIATION").await?;
    assert_eq!(at_town.channel(), Channel::SelfIntake);
    town.mediation().report_outcome(ReportOutcomeRequest { case_id: id.clone(), outcome: Some(settled(true)) }).await?;
    let at_village = village.wait_for(&id, "SETTLED").await?;
    assert_eq!(holder(&at_village), stack::town().to_string());

    // Judicial confirmation: a court must be named, and within 30 days of the agreement.
    let apply = |c: ConfirmationRequest| RequestConfirmationRequest { case_id: id.clone(), request: Some(c) };
    let unnamed = town.mediation().request_confirmation(apply(confirmation(None, None))).await;
    assert!(matches!(&unnamed, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("confirmation_request.court")), "{unnamed:?}");
    let not_a_court = town.mediation().request_confirmation(apply(confirmation(Some(&stack::centre()), None))).await;
    assert!(matches!(&not_a_court, Err(s) if field_of(s) == ["confirmation_request.court"]), "{not_a_court:?}");
    let late = town.mediation().request_confirmation(apply(confirmation(Some(&stack::court()), Some(40)))).await;
    assert!(matches!(&late, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("within 30 days") && s.message().contains("第三十三条")), "{late:?}");
    town.mediation().request_confirmation(apply(confirmation(Some(&stack::court()), Some(2)))).await?;

    // The court sees the application in its own list and may only decide on it.
    let at_court = court.wait_for(&id, "CONFIRMATION_REQUESTED").await?;
    assert_eq!((holder(&at_court), at_court.court.as_ref().map(|c| c.code.clone())), (stack::town().to_string(), Some(stack::court().code().to_owned())));
    assert_eq!(at_court.allowed_next, vec![MessageKind::ConfirmationDecision as i32]);
    assert!(at_court.deadlines.iter().any(|d| d.limit() == TimeLimit::ConfirmationAcceptance && d.met_at.is_none()), "3 days to accept: {:?}", at_court.deadlines);
    let listed = court.cases().list_cases(ListCasesRequest { state: "CONFIRMATION_REQUESTED".into(), ..Default::default() }).await?.into_inner();
    assert!(listed.cases.iter().any(|c| c.case_id == id), "{listed:?}");
    let supervise = court.referrals().supervise(SuperviseRequest { case_id: id.clone(), notice: Some(SupervisionNotice { instructions: "加快".into(), ..Default::default() }) }).await;
    assert!(matches!(&supervise, Err(s) if s.code() == Code::PermissionDenied), "{supervise:?}");
    village.wait_for(&id, "CONFIRMATION_REQUESTED").await?;
    // The open handoff waits for that court.
    let supervisor = duijie_tests::node(AgencyKind::Supervisor, "431003");
    let mut audit = stack.auditor(&supervisor).await?;
    duijie_tests::wait_until("the open handoff to wait for the court", stack::WAIT, || {
        let mut a = audit.clone();
        let id = id.clone();
        async move {
            let open = a.list_open_handoffs(ListOpenHandoffsRequest::default()).await?.into_inner();
            Ok(open.handoffs.iter().any(|h| {
                h.case_id == id && h.waiting_for == "confirmation_decision" && h.to == Some(agency_ref(&stack::court())) && h.from == Some(agency_ref(&stack::town()))
            }))
        }
    })
    .await?;

    let decide = |decision: ConfirmationDecisionKind, number: &str| DecideConfirmationRequest {
        case_id: id.clone(),
        decision: Some(ConfirmationDecision { decision: decision as i32, document_number: number.into(), ..Default::default() }),
    };
    court.court().decide_confirmation(decide(ConfirmationDecisionKind::Accepted, "")).await?;
    town.wait_for(&id, "CONFIRMATION_ACCEPTED").await?;
    village.wait_for(&id, "CONFIRMATION_ACCEPTED").await?;
    court.court().decide_confirmation(decide(ConfirmationDecisionKind::Granted, "(2026)湘1003民特88号")).await?;
    town.wait_for(&id, "CONFIRMED").await?;
    village.wait_for(&id, "CONFIRMED").await?;

    town.mediation()
        .record_performance(RecordPerformanceRequest { case_id: id.clone(), performance: Some(Performance { status: PerformanceStatus::Performed as i32, ..Default::default() }) })
        .await?;
    town.mediation()
        .close(CloseRequest { case_id: id.clone(), closure: Some(Closure { basis: ClosureBasis::Performed as i32, summary: "案结事了".into(), closed_by: "周主任".into() }) })
        .await?;
    village.wait_for(&id, "CLOSED").await?;
    assert_eq!(court.case(&id).await?.state, "CONFIRMED", "the court's part ended with its ruling");

    // The audit store: one case, closed, with its source; the copies recorded, not applied twice.
    duijie_tests::wait_until("the audit store to see the case closed", stack::WAIT, || {
        let mut a = audit.clone();
        let id = id.clone();
        async move { Ok(a.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await?.into_inner().case.is_some_and(|c| c.state == "CLOSED")) }
    })
    .await?;
    let t = audit.get_timeline(GetTimelineRequest { case_id: id.clone(), ..Default::default() }).await?.into_inner();
    let kinds: Vec<MessageKind> = t.records.iter().map(|r| r.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == MessageKind::ConfirmationRequest).count(), 2, "the application and the village's copy: {kinds:?}");
    assert_eq!(kinds.first(), Some(&MessageKind::Referral));
    assert!(audit.verify(VerifyRequest { case_id: id.clone(), ..Default::default() }).await?.into_inner().ok);
    // The court took part: it reads the case's record in the audit store too.
    let as_court = stack.auditor(&stack::court()).await?.get_timeline(GetTimelineRequest { case_id: id.clone(), ..Default::default() }).await?.into_inner();
    assert_eq!(as_court.records.len(), t.records.len());
    let today = today();
    let f = audit.get_statistics(today).await?.into_inner();
    assert_eq!((f.received, f.received_self_accepted, f.confirmations_requested, f.confirmations_granted, f.closed), (1, 1, 1, 1, 1), "{f:?}");
    let walk_in = f.received_by_intake_source.iter().find(|s| s.source() == IntakeSource::WalkIn).map(|s| s.count);
    assert_eq!(walk_in, Some(1), "{f:?}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_self_accepted_cases_by_source_beside_referred_ones() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let court = stack.clerk(&stack::court()).await?;
    let police = stack.clerk(&stack::police()).await?;
    let petition = stack.clerk(&stack::petition()).await?;

    let mut own = Vec::new();
    for (i, source) in [IntakeSource::WalkIn, IntakeSource::WalkIn, IntakeSource::Hotline148, IntakeSource::GridScreening, IntakeSource::Hotline12345].into_iter().enumerate() {
        own.push(register(&centre, &format!("JF-C-{i}"), own_case(&format!("own-{i}"), source)).await?.case_id);
    }
    let refer = |clerk: &Clerk, code: &str, clock: ClockPolicyKind| {
        let req = SubmitReferralRequest { to: Some(agency_ref(&stack::centre())), case_code: code.into(), referral: Some(referral(code, clock)) };
        let mut client = clerk.referrals();
        async move { client.submit_referral(req).await.and_then(answered_case) }
    };
    refer(&court, "JF-R-1", ClockPolicyKind::CourtOrdinary).await?;
    refer(&court, "JF-R-2", ClockPolicyKind::CourtPreFiling).await?;
    refer(&police, "JF-R-3", ClockPolicyKind::Police).await?;
    refer(&petition, "JF-R-4", ClockPolicyKind::Petition).await?;

    // One of the centre's own cases fails and is closed by the centre (no referrer disposes of it).
    let failed = Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed { reason: FailureReason::PartyRefused as i32, ..Default::default() })) };
    centre.mediation().report_outcome(ReportOutcomeRequest { case_id: own[0].clone(), outcome: Some(failed) }).await?;
    let dispose = centre.referrals().dispose(DisposeRequest { case_id: own[0].clone(), disposition: Some(DispositionNotice::default()) }).await;
    assert!(dispose.is_err(), "a mediation body disposes of nothing");
    let closed = centre
        .mediation()
        .close(CloseRequest { case_id: own[0].clone(), closure: Some(Closure { basis: ClosureBasis::Other as i32, summary: "告知诉讼途径".into(), closed_by: "王明".into() }) })
        .await
        .and_then(answered_case)?;
    assert_eq!(closed.state, "CLOSED");
    // Another stays FAILED: not an open handoff (no one is waiting for a disposition).
    let failed = Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed { reason: FailureReason::PartyRefused as i32, ..Default::default() })) };
    centre.mediation().report_outcome(ReportOutcomeRequest { case_id: own[1].clone(), outcome: Some(failed) }).await?;

    let supervisor = duijie_tests::node(AgencyKind::Supervisor, "431003");
    let mut audit = stack.auditor(&supervisor).await?;
    let today = today();
    duijie_tests::wait_until("the audit store to count every case", stack::WAIT, || {
        let mut a = audit.clone();
        let q = today.clone();
        async move {
            let f = a.get_statistics(q).await?.into_inner();
            Ok(f.received == 9 && f.closed == 1 && f.failed == 2)
        }
    })
    .await?;
    let f = audit.get_statistics(today.clone()).await?.into_inner();
    // Counted by hand: 5 own cases (2 walk-in, one each by 148, 12345 and grid screening), two
    // court referrals, one police, one petition; two failed, one of them closed.
    assert_eq!(
        (f.received, f.received_self_accepted, f.received_court, f.received_police, f.received_petition, f.received_procuratorate),
        (9, 5, 2, 1, 1, 0),
        "{f:?}"
    );
    let by_source: Vec<(IntakeSource, u64)> = f.received_by_intake_source.iter().map(|s| (s.source(), s.count)).collect();
    assert_eq!(
        by_source,
        vec![
            (IntakeSource::WalkIn, 2),
            (IntakeSource::Hotline148, 1),
            (IntakeSource::Hotline12345, 1),
            (IntakeSource::Online, 0),
            (IntakeSource::GridScreening, 1),
            (IntakeSource::DepartmentTransfer, 0),
        ]
    );
    assert_eq!((f.accepted, f.mediated, f.failed, f.closed), (5, 2, 2, 1), "own cases are accepted at registration: {f:?}");
    let self_only = audit.get_statistics(GetStatisticsRequest { channel: Channel::SelfIntake as i32, ..today }).await?.into_inner();
    assert_eq!((self_only.received, self_only.received_self_accepted), (5, 5));
    let open = audit.list_open_handoffs(ListOpenHandoffsRequest::default()).await?.into_inner();
    assert!(!open.handoffs.iter().any(|h| own.contains(&h.case_id)), "own cases wait for no one: {open:?}");
    stack.stop().await
}
