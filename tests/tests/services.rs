//! The five agency services end to end over gRPC (mTLS) and the bus: a full run to closure for
//! every channel, checking what each agency sees at each step, and the refusals a clerk meets.

use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Clerk, Stack, agency_ref, referral, settled};
use tonic::Code;
use tonic_types::StatusExt as _;

type Mutation = fn(&mut SubmitReferralRequest);

fn kinds(v: &CaseView) -> Vec<MessageKind> {
    v.timeline.iter().map(|t| t.kind()).collect()
}

fn count(v: &CaseView, kind: MessageKind) -> usize {
    v.timeline.iter().filter(|t| t.kind() == kind).count()
}

fn holder(v: &CaseView) -> String {
    v.holder.as_ref().map(|h| format!("{}:{}", h.kind().as_str(), h.code)).unwrap_or_default()
}

fn id_number(v: &CaseView, party: usize) -> String {
    v.referral
        .as_ref()
        .and_then(|r| r.parties.get(party))
        .and_then(|p| p.identity.as_ref())
        .map(|i| i.number.clone())
        .unwrap_or_default()
}

fn field_of(status: &tonic::Status) -> Vec<String> {
    status.get_error_details().bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default()
}

/// The audit store's timeline of the case, read by its referrer, holds every message the
/// referrer sent or received, each delivered (evidence recorded), on an unbroken chain; the
/// supervisor of the district verifies it. Returns the recorded kinds in order.
async fn audit_agrees(stack: &Stack, referrer: &Clerk, id: &str, final_state: &str) -> anyhow::Result<Vec<MessageKind>> {
    let supervisor = duijie_tests::node(AgencyKind::Supervisor, "431003");
    let mut as_supervisor = stack.auditor(&supervisor).await?;
    duijie_tests::wait_until(&format!("the audit store to see case {id} as {final_state}"), stack::WAIT, || {
        let mut a = as_supervisor.clone();
        let id = id.to_owned();
        async move {
            let t = a.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await?.into_inner();
            Ok(t.case.is_some_and(|c| c.state == final_state))
        }
    })
    .await?;
    // Evidence for the last messages may still be on its way.
    duijie_tests::wait_until("every message's delivery evidence in the audit store", stack::WAIT, || {
        let mut a = as_supervisor.clone();
        let id = id.to_owned();
        async move {
            let t = a.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await?.into_inner();
            Ok(t.records.iter().all(|r| {
                matches!(r.kind(), MessageKind::DeliveryEvidence | MessageKind::DeadlineWarning | MessageKind::DeadlineBreached)
                    || r.delivered_at.is_some()
            }))
        }
    })
    .await?;
    let supervised = as_supervisor.get_timeline(GetTimelineRequest { case_id: id.to_owned(), ..Default::default() }).await?.into_inner();
    let own = stack.auditor(&referrer.who).await?.get_timeline(GetTimelineRequest { case_id: id.to_owned(), ..Default::default() }).await?.into_inner();
    assert!(
        supervised.records.iter().all(|r| own.records.iter().any(|o| o.message_id == r.message_id && o.hash_hex == r.hash_hex)),
        "the referrer reads the same records as the supervisor"
    );
    let recorded: Vec<&str> = own.records.iter().map(|r| r.message_id.as_str()).collect();
    let seen = referrer.case(id).await?;
    for e in seen.timeline.iter().filter(|e| e.direction != "prior") {
        assert!(recorded.contains(&e.message_id.as_str()), "{:?} {} is not in the audit store", e.kind(), e.message_id);
    }
    let case_seqs: Vec<u32> = own.records.iter().map(|r| r.case_seq).collect();
    assert_eq!(case_seqs, (1..=own.records.len() as u32).collect::<Vec<_>>(), "one unbroken chain per case");
    let verified = as_supervisor.verify(VerifyRequest { case_id: id.to_owned(), ..Default::default() }).await?.into_inner();
    assert!(verified.ok, "{verified:?}");
    Ok(own.records.iter().map(|r| r.kind()).collect())
}

async fn submit(clerk: &Clerk, to: &duijie_domain::AgencyNode, code: &str, r: Referral) -> anyhow::Result<String> {
    let view = clerk
        .referrals()
        .submit_referral(SubmitReferralRequest { to: Some(agency_ref(to)), case_code: code.into(), referral: Some(r) })
        .await
        .and_then(answered_case)?;
    // The answer is read after the commit: the delivery evidence may already be back.
    assert!(["SUBMITTED", "DELIVERED"].contains(&view.state.as_str()), "{view:?}");
    assert_eq!(view.timeline.first().map(|t| t.kind()), Some(MessageKind::Referral));
    Ok(view.case_id)
}

/// The centre signs for and accepts the case once it arrived; both sides see ACCEPTED.
async fn sign_and_accept(referrer: &Clerk, centre: &Clerk, id: &str) -> anyhow::Result<()> {
    centre.wait_for(id, "DELIVERED").await?;
    centre
        .mediation()
        .sign_for(SignForRequest { case_id: id.into(), receipt: Some(Receipt { signed_by: "王明".into(), signer_position: "收案员".into(), ..Default::default() }) })
        .await?;
    referrer.wait_for(id, "RECEIVED").await?;
    centre.mediation().accept(AcceptRequest { case_id: id.into(), accept: Some(Accept { accepted_by: "王明".into(), ..Default::default() }) }).await?;
    referrer.wait_for(id, "ACCEPTED").await?;
    Ok(())
}

async fn assign(centre: &Clerk, id: &str) -> anyhow::Result<()> {
    let mediator = Mediator { mediator_id: "M-07".into(), name: "赵调解".into(), ..Default::default() };
    centre
        .mediation()
        .assign(AssignRequest { case_id: id.into(), assignment: Some(Assignment { mediator: Some(mediator), ..Default::default() }) })
        .await?;
    Ok(())
}

async fn perform(centre: &Clerk, id: &str) -> anyhow::Result<()> {
    centre
        .mediation()
        .record_performance(RecordPerformanceRequest {
            case_id: id.into(),
            performance: Some(Performance { status: PerformanceStatus::Performed as i32, ..Default::default() }),
        })
        .await?;
    Ok(())
}

async fn close(centre: &Clerk, id: &str, basis: ClosureBasis) -> anyhow::Result<CaseView> {
    Ok(centre
        .mediation()
        .close(CloseRequest { case_id: id.into(), closure: Some(Closure { basis: basis as i32, summary: "案结事了".into(), closed_by: "王明".into() }) })
        .await
        .and_then(answered_case)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn court_channel_settled_confirmed_performed_followed_up_closed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;

    let id = submit(&court, &stack::centre(), "JF-431003-2026-000001", referral("court-1", ClockPolicyKind::CourtOrdinary)).await?;
    // Delivery evidence moves the court's copy on; the centre's inbox lists the case.
    court.wait_for(&id, "DELIVERED").await?;
    let inbox = centre.cases().list_cases(ListCasesRequest { state: "DELIVERED".into(), ..Default::default() }).await?.into_inner();
    assert!(inbox.cases.iter().any(|c| c.case_id == id && c.channel() == Channel::Court), "{inbox:?}");
    // The centre, which must reach the parties, reads their identity numbers (its read recorded
    // by the key service); for the court they are sealed.
    let at_centre = centre.case(&id).await?;
    assert_eq!(id_number(&at_centre, 0), "11010519491231002X");
    assert!(!at_centre.parties_sealed);
    let at_court = court.case(&id).await?;
    assert_eq!(id_number(&at_court, 0), "", "{at_court:?}");
    assert!(at_court.parties_sealed && !at_court.parties_erased);
    assert!(at_court.referral.as_ref().is_some_and(|r| r.parties.iter().all(|p| p.sealed.is_empty() && p.contact.is_empty())));
    assert!(at_centre.allowed_next.contains(&(MessageKind::Receipt as i32)));

    sign_and_accept(&court, &centre, &id).await?;
    // The 15-day limit of a registered case runs from the receipt.
    let v = court.case(&id).await?;
    let limit = v.deadlines.iter().find(|d| d.limit() == TimeLimit::CourtMediationOrdinary).ok_or_else(|| anyhow::anyhow!("no 15-day limit: {v:?}"))?;
    let (started, due) = (limit.started_at.unwrap_or_default().seconds, limit.due_at.unwrap_or_default().seconds);
    assert!((14 * 86_400..=16 * 86_400).contains(&(due - started)), "15 days from the receipt: {limit:?}");
    assert!(limit.met_at.is_none() && !limit.overdue);

    assign(&centre, &id).await?;
    centre.mediation().report_outcome(ReportOutcomeRequest { case_id: id.clone(), outcome: Some(settled(true)) }).await?;
    let v = court.wait_for(&id, "SETTLED").await?;
    assert!(v.deadlines.iter().any(|d| d.limit() == TimeLimit::CourtMediationOrdinary && d.met_at.is_some()), "the outcome meets the limit");

    let agreement = AttachmentDigest { name: "调解协议书.pdf".into(), sha256_hex: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(), ..Default::default() };
    centre
        .mediation()
        .request_confirmation(RequestConfirmationRequest {
            case_id: id.clone(),
            request: Some(ConfirmationRequest { agreement: Some(agreement), applicant_party_ids: vec!["p1".into(), "p2".into()], ..Default::default() }),
        })
        .await?;
    court.wait_for(&id, "CONFIRMATION_REQUESTED").await?;
    let decide = |decision: ConfirmationDecisionKind, number: &str| DecideConfirmationRequest {
        case_id: id.clone(),
        decision: Some(ConfirmationDecision { decision: decision as i32, document_number: number.into(), ..Default::default() }),
    };
    court.court().decide_confirmation(decide(ConfirmationDecisionKind::Accepted, "")).await?;
    centre.wait_for(&id, "CONFIRMATION_ACCEPTED").await?;
    let unnumbered = court.court().decide_confirmation(decide(ConfirmationDecisionKind::Granted, "")).await;
    assert!(matches!(&unnumbered, Err(s) if s.code() == Code::InvalidArgument && field_of(s) == ["decision.document_number"]), "{unnumbered:?}");
    court.court().decide_confirmation(decide(ConfirmationDecisionKind::Granted, "(2026)湘1003民特12号")).await?;
    centre.wait_for(&id, "CONFIRMED").await?;

    perform(&centre, &id).await?;
    court.wait_for(&id, "PERFORMED").await?;
    centre
        .mediation()
        .record_follow_up(RecordFollowUpRequest {
            case_id: id.clone(),
            follow_up: Some(FollowUp { method: FollowUpMethod::Phone as i32, conducted_by: "赵调解".into(), satisfaction: Satisfaction::Satisfied as i32, ..Default::default() }),
        })
        .await?;
    court.wait_for(&id, "FOLLOWED_UP").await?;
    close(&centre, &id, ClosureBasis::Performed).await?;
    let done = court.wait_for(&id, "CLOSED").await?;

    // The court saw every step, each answered with delivery evidence.
    use MessageKind as K;
    for k in [K::Referral, K::Receipt, K::Accept, K::Assignment, K::Outcome, K::ConfirmationRequest, K::Performance, K::FollowUp, K::Closure] {
        assert!(kinds(&done).contains(&k), "court timeline lacks {k:?}: {:?}", kinds(&done));
    }
    assert_eq!(count(&done, K::ConfirmationDecision), 2, "accepted, then granted");
    assert!(count(&done, K::DeliveryEvidence) >= 3, "evidence for what the court sent");
    assert!(done.allowed_next.is_empty(), "nothing more on a closed case");
    let listed = court.cases().list_cases(ListCasesRequest::default()).await?.into_inner();
    assert_eq!(listed.cases.iter().filter(|c| c.case_id == id).map(|c| c.state.as_str()).collect::<Vec<_>>(), ["CLOSED"]);
    let recorded = audit_agrees(&stack, &court, &id, "CLOSED").await?;
    assert_eq!(recorded.first(), Some(&K::Referral));
    assert_eq!(recorded.iter().filter(|k| **k == K::ConfirmationDecision).count(), 2);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn court_channel_failed_returned_filed_for_trial_closed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let id = submit(&court, &stack::centre(), "JF-431003-2026-000002", referral("court-2", ClockPolicyKind::CourtSimplified)).await?;
    sign_and_accept(&court, &centre, &id).await?;
    assign(&centre, &id).await?;
    let failed = Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed { reason: FailureReason::NoAgreement as i32, ..Default::default() })) };
    centre.mediation().report_outcome(ReportOutcomeRequest { case_id: id.clone(), outcome: Some(failed) }).await?;
    let returned = court.wait_for(&id, "FAILED").await?;
    assert_eq!(returned.allowed_next, [MessageKind::DispositionNotice as i32, MessageKind::SupervisionNotice as i32]);
    // The returned case is an open handoff until the court disposes of it: from the centre,
    // waiting for the court's disposition.
    let open = |id: String| {
        let stack = &stack;
        async move {
            let mut a = stack.auditor(&stack::court()).await?;
            let all = a.list_open_handoffs(ListOpenHandoffsRequest::default()).await?.into_inner().handoffs;
            anyhow::Ok(all.into_iter().find(|h| h.case_id == id))
        }
    };
    duijie_tests::wait_until("the failed case among the court's open handoffs", stack::WAIT, || {
        let id = id.clone();
        let open = &open;
        async move { Ok(open(id).await?.is_some_and(|h| h.waiting_for == "disposition")) }
    })
    .await?;
    let handoff = open(id.clone()).await?.ok_or_else(|| anyhow::anyhow!("the handoff went away"))?;
    assert_eq!((handoff.from, handoff.to), (Some(agency_ref(&stack::centre())), Some(agency_ref(&stack::court()))));

    // A court disposes as a court: a police penalty is not among its dispositions.
    let dispose = |kind: DispositionKind| DisposeRequest {
        case_id: id.clone(),
        disposition: Some(DispositionNotice { disposition: kind as i32, document_number: "(2026)湘1003民初345号".into(), ..Default::default() }),
    };
    let wrong = court.referrals().dispose(dispose(DispositionKind::Penalty)).await;
    assert!(matches!(&wrong, Err(s) if s.code() == Code::InvalidArgument && field_of(s) == ["disposition.disposition"]), "{wrong:?}");
    let filed = court.referrals().dispose(dispose(DispositionKind::FiledForTrial)).await.and_then(answered_case)?;
    assert_eq!(filed.state, "CLOSED");
    let at_centre = centre.wait_for(&id, "CLOSED").await?;
    assert!(kinds(&at_centre).contains(&MessageKind::DispositionNotice));
    audit_agrees(&stack, &court, &id, "CLOSED").await?;
    assert!(open(id.clone()).await?.is_none(), "a disposed case is no open handoff");
    // The case is closed: a second disposition is refused, whatever it says.
    for kind in [DispositionKind::FiledForTrial, DispositionKind::SuitWithdrawn] {
        let again = court.referrals().dispose(tonic::Request::new(dispose(kind))).await;
        assert!(matches!(&again, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("CLOSED")), "{again:?}");
    }
    assert_eq!(count(&centre.case(&id).await?, MessageKind::DispositionNotice), 1);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn police_channel_settled_agreement_recognised_closed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let police = stack.clerk(&stack::police()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let id = submit(&police, &stack::centre(), "JF-431003-2026-000003", referral("police-1", ClockPolicyKind::Police)).await?;
    sign_and_accept(&police, &centre, &id).await?;
    // 治安调解: the first round runs three working days from acceptance.
    let v = police.case(&id).await?;
    let round_one = v.deadlines.iter().find(|d| d.limit() == TimeLimit::PoliceRoundOne).ok_or_else(|| anyhow::anyhow!("no round-one limit: {v:?}"))?;
    assert!(round_one.working_days);

    assign(&centre, &id).await?;
    centre.mediation().report_outcome(ReportOutcomeRequest { case_id: id.clone(), outcome: Some(settled(false)) }).await?;
    police.wait_for(&id, "SETTLED").await?;
    perform(&centre, &id).await?;
    police.wait_for(&id, "PERFORMED").await?;
    let recognise = police
        .police()
        .recognize_agreement(RecognizeAgreementRequest {
            case_id: id.clone(),
            recognition: Some(AgreementRecognition { recognised_by: "刘警官".into(), document_number: "湘公(城)调确字〔2026〕18号".into(), ..Default::default() }),
        })
        .await
        .and_then(answered_case)?;
    assert_eq!(recognise.state, "PERFORMED");
    duijie_tests::wait_until("the recognition reaches the centre", stack::WAIT, || {
        let c = centre.clone();
        let id = id.clone();
        async move { Ok(count(&c.case(&id).await?, MessageKind::AgreementRecognition) == 1) }
    })
    .await?;
    close(&centre, &id, ClosureBasis::Performed).await?;
    let done = police.wait_for(&id, "CLOSED").await?;
    assert!(kinds(&done).contains(&MessageKind::Closure));
    let recorded = audit_agrees(&stack, &police, &id, "CLOSED").await?;
    assert!(recorded.contains(&MessageKind::AgreementRecognition));
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn petition_channel_supervised_escalated_village_to_town_settled_petition_closed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let petition = stack.clerk(&stack::petition()).await?;
    let village = stack.clerk(&stack::village()).await?;
    let town = stack.clerk(&stack::town()).await?;
    let id = submit(&petition, &stack::village(), "JF-431003-2026-000004", referral("petition-1", ClockPolicyKind::Petition)).await?;
    sign_and_accept(&petition, &village, &id).await?;

    petition
        .referrals()
        .supervise(SuperviseRequest {
            case_id: id.clone(),
            notice: Some(SupervisionNotice { level: SupervisionLevel::Ordinary as i32, instructions: "请于十日内反馈化解进展".into(), supervisor: "信访局督查科".into(), ..Default::default() }),
        })
        .await?;
    duijie_tests::wait_until("the 督办 notice reaches the village", stack::WAIT, || {
        let v = village.clone();
        let id = id.clone();
        async move { Ok(count(&v.case(&id).await?, MessageKind::SupervisionNotice) == 1) }
    })
    .await?;

    // Village → town: the town committee takes the case over where it stood.
    village
        .mediation()
        .escalate(EscalateRequest {
            case_id: id.clone(),
            escalation: Some(Escalation {
                from_tier: MediationTier::Village as i32,
                to_tier: MediationTier::Town as i32,
                to_agency: Some(agency_ref(&stack::town())),
                reason: "涉及多户村民，需镇调委会协调".into(),
            }),
        })
        .await?;
    let at_town = town.wait_for(&id, "IN_MEDIATION").await?;
    assert_eq!(holder(&at_town), "mediation:431003-102");
    assert_eq!(at_town.referrer.as_ref().map(|r| r.kind()), Some(AgencyKind::Petition), "the town answers the petition office");
    let prior: Vec<MessageKind> = at_town.timeline.iter().filter(|t| t.direction == "prior").map(|t| t.kind()).collect();
    for k in [MessageKind::Referral, MessageKind::Receipt, MessageKind::Accept, MessageKind::SupervisionNotice, MessageKind::Escalation] {
        assert!(prior.contains(&k), "the town inherits the history ({k:?} missing): {prior:?}");
    }
    // The new holder reaches the parties once the audit store has recorded the hand-over (the
    // key service goes by the log's holder).
    duijie_tests::wait_until("the town reads the parties' identity numbers", stack::WAIT, || {
        let (t, id) = (town.clone(), id.clone());
        async move { Ok(id_number(&t.case(&id).await?, 1) == "440524188001010014") }
    })
    .await?;
    duijie_tests::wait_until("the petition office sees the town as holder", stack::WAIT, || {
        let p = petition.clone();
        let id = id.clone();
        async move { Ok(holder(&p.case(&id).await?) == "mediation:431003-102") }
    })
    .await?;
    // The handling limit keeps running from the village's acceptance, on both sides.
    let handling = |v: &CaseView| v.deadlines.iter().find(|d| d.limit() == TimeLimit::PetitionHandling).and_then(|d| d.started_at).map(|t| t.seconds);
    assert!(handling(&at_town).is_some());
    assert_eq!(handling(&at_town), handling(&petition.case(&id).await?));
    // The village handed it on and is out.
    let late = village
        .mediation()
        .report_progress(ReportProgressRequest { case_id: id.clone(), progress: Some(Progress { summary: "已约谈双方".into(), ..Default::default() }) })
        .await;
    assert!(matches!(&late, Err(s) if s.code() == Code::PermissionDenied), "{late:?}");

    // A 督办 notice that crossed the hand-over (sent to the village before the petition office
    // heard of the escalation) is passed on to the town, not stranded at the village.
    let crossing = {
        let header = duijie_common::envelope::Header {
            case_id: uuid::Uuid::parse_str(&id)?,
            case_code: at_town.case_code.clone(),
            channel: Channel::Petition,
            sender: stack::petition(),
            recipient: stack::village(),
            causation_id: None,
        };
        let notice = SupervisionNotice { level: SupervisionLevel::Listed as i32, instructions: "挂牌督办".into(), ..Default::default() };
        duijie_common::envelope::build(&header, envelope::Payload::SupervisionNotice(notice))
    };
    let signer = duijie_tests::signer_for(stack.ca(), &[stack::petition()])?;
    stack.bus.publish_signed(&crossing, &signer).await?;
    // The town receives it as a new message caused by the original.
    duijie_tests::wait_until("the crossing notice reaches the town", stack::WAIT, || {
        let t = town.clone();
        let id = id.clone();
        let mid = crossing.message_id.clone();
        async move {
            Ok(t.case(&id).await?.timeline.iter().any(|e| e.causation_id == mid && e.direction == "in" && e.kind() == MessageKind::SupervisionNotice))
        }
    })
    .await?;
    let passed_on = town
        .case(&id)
        .await?
        .timeline
        .iter()
        .find(|e| e.causation_id == crossing.message_id)
        .map(|e| e.message_id.clone())
        .ok_or_else(|| anyhow::anyhow!("no passed-on notice"))?;
    duijie_tests::wait_until("the petition office gets the town's delivery evidence for it", stack::WAIT, || {
        let p = petition.clone();
        let id = id.clone();
        let passed_on = passed_on.clone();
        async move {
            Ok(p.case(&id).await?.timeline.iter().any(|e| {
                e.kind() == MessageKind::DeliveryEvidence && e.causation_id == passed_on && e.sender.as_ref().is_some_and(|s| s.code == "431003-102")
            }))
        }
    })
    .await?;
    let at_village = village.case(&id).await?;
    assert!(at_village.handed_on && at_village.allowed_next.is_empty() && at_village.deadlines.is_empty(), "{at_village:?}");

    town.mediation().report_outcome(ReportOutcomeRequest { case_id: id.clone(), outcome: Some(settled(false)) }).await?;
    petition.wait_for(&id, "SETTLED").await?;
    let early = petition.petition().close_petition(ClosePetitionRequest { case_id: id.clone(), ..Default::default() }).await;
    assert!(matches!(&early, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("SETTLED")), "{early:?}");
    perform(&town, &id).await?;
    petition.wait_for(&id, "PERFORMED").await?;
    close(&town, &id, ClosureBasis::Performed).await?;
    petition.wait_for(&id, "CLOSED").await?;
    let closed = petition
        .petition()
        .close_petition(ClosePetitionRequest { case_id: id.clone(), document_number: "湘信办结〔2026〕7号".into(), summary: "矛盾化解，信访事项办结".into() })
        .await
        .and_then(answered_case)?;
    assert_eq!(closed.state, "CLOSED");
    assert!(kinds(&closed).contains(&MessageKind::DispositionNotice));
    // The petition is closed once (without an idempotency key, a second call is a second 办结).
    let again = petition.petition().close_petition(ClosePetitionRequest { case_id: id.clone(), document_number: "湘信办结〔2026〕8号".into(), ..Default::default() }).await;
    assert!(matches!(&again, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("told already")), "{again:?}");
    // Nor does any other referrer's disposition follow a closure.
    let other = petition
        .referrals()
        .dispose(DisposeRequest { case_id: id.clone(), disposition: Some(DispositionNotice { disposition: DispositionKind::Other as i32, ..Default::default() }) })
        .await;
    assert!(matches!(&other, Err(s) if s.code() == Code::FailedPrecondition), "{other:?}");
    duijie_tests::wait_until("the town hears the petition is closed", stack::WAIT, || {
        let t = town.clone();
        let id = id.clone();
        async move { Ok(count(&t.case(&id).await?, MessageKind::DispositionNotice) == 1) }
    })
    .await?;
    // The audit store saw the whole case, the hand-over from the village to the town included.
    let recorded = audit_agrees(&stack, &petition, &id, "CLOSED").await?;
    assert_eq!(recorded.iter().filter(|k| **k == MessageKind::Referral).count(), 2, "the referral and its hand-over: {recorded:?}");
    assert!(recorded.contains(&MessageKind::Escalation) && recorded.contains(&MessageKind::SupervisionNotice));
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procuratorate_channel_settled_reviewed_non_prosecution_closed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let procuratorate = stack.clerk(&stack::procuratorate()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let id = submit(&procuratorate, &stack::centre(), "JF-431003-2026-000005", referral("proc-1", ClockPolicyKind::PeoplesMediation)).await?;
    sign_and_accept(&procuratorate, &centre, &id).await?;
    assign(&centre, &id).await?;
    centre.mediation().report_outcome(ReportOutcomeRequest { case_id: id.clone(), outcome: Some(settled(false)) }).await?;
    procuratorate.wait_for(&id, "SETTLED").await?;
    procuratorate
        .procuratorate()
        .review_reconciliation(ReviewReconciliationRequest {
            case_id: id.clone(),
            review: Some(ReconciliationReview { conclusion: ReviewConclusion::VoluntaryAndLawful as i32, reviewed_by: "陈检察官".into(), ..Default::default() }),
        })
        .await?;
    let disposed = procuratorate
        .referrals()
        .dispose(DisposeRequest {
            case_id: id.clone(),
            disposition: Some(DispositionNotice { disposition: DispositionKind::NonProsecution as i32, document_number: "湘城检刑不诉〔2026〕3号".into(), ..Default::default() }),
        })
        .await
        .and_then(answered_case)?;
    assert_eq!(disposed.state, "DISPOSED");
    let at_centre = centre.wait_for(&id, "DISPOSED").await?;
    assert!(kinds(&at_centre).contains(&MessageKind::ReconciliationReview));
    close(&centre, &id, ClosureBasis::Disposed).await?;
    procuratorate.wait_for(&id, "CLOSED").await?;
    let recorded = audit_agrees(&stack, &procuratorate, &id, "CLOSED").await?;
    assert!(recorded.contains(&MessageKind::ReconciliationReview));
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_confirmed_and_redirect_to_another_committee() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let town = stack.clerk(&stack::town()).await?;

    // Cancel: requested by the court, final when the centre confirms.
    let a = submit(&court, &stack::centre(), "JF-431003-2026-000006", referral("court-cancel", ClockPolicyKind::CourtPreFiling)).await?;
    centre.wait_for(&a, "DELIVERED").await?;
    let cancel = CancelRequest {
        case_id: a.clone(),
        cancellation: Some(Cancellation { reason: CancellationReason::SettledOutside as i32, explanation: "双方已自行和解".into() }),
    };
    court.referrals().cancel(cancel.clone()).await?;
    centre.wait_for(&a, "CANCEL_REQUESTED").await?;
    let refuse = AnswerCancellationRequest { case_id: a.clone(), answer: Some(CancellationConfirmation { confirmed: false, reason: "申请人否认和解".into() }) };
    centre.mediation().answer_cancellation(refuse).await?;
    court.wait_for(&a, "DELIVERED").await?; // a refused cancel puts the case back
    court.referrals().cancel(cancel).await?;
    centre.wait_for(&a, "CANCEL_REQUESTED").await?;
    let confirm = AnswerCancellationRequest { case_id: a.clone(), answer: Some(CancellationConfirmation { confirmed: true, ..Default::default() }) };
    centre.mediation().answer_cancellation(confirm).await?;
    let cancelled = court.wait_for(&a, "CANCELLED").await?;
    assert!(cancelled.allowed_next.is_empty());

    // Redirect: the centre hands the case to the town committee, which signs for it afresh and
    // answers the court directly.
    let b = submit(&court, &stack::centre(), "JF-431003-2026-000007", referral("court-redirect", ClockPolicyKind::CourtPreFiling)).await?;
    centre.wait_for(&b, "DELIVERED").await?;
    centre.mediation().sign_for(SignForRequest { case_id: b.clone(), receipt: Some(Receipt { signed_by: "王明".into(), ..Default::default() }) }).await?;
    let unknown = centre
        .mediation()
        .redirect(RedirectRequest {
            case_id: b.clone(),
            redirect: Some(Redirect { to: Some(AgencyRef { kind: AgencyKind::Mediation as i32, code: "999999".into() }), reason: "x".into() }),
        })
        .await;
    assert!(matches!(&unknown, Err(s) if s.code() == Code::InvalidArgument && field_of(s) == ["redirect.to"]), "{unknown:?}");
    centre
        .mediation()
        .redirect(RedirectRequest { case_id: b.clone(), redirect: Some(Redirect { to: Some(agency_ref(&stack::town())), reason: "属地管辖".into() }) })
        .await?;
    let at_town = town.wait_for(&b, "DELIVERED").await?;
    assert_eq!(at_town.referrer.as_ref().map(|r| r.kind()), Some(AgencyKind::Court));
    // The centre handed it on: out of its inbox, nothing left for it to do.
    let centre_inbox = centre.cases().list_cases(ListCasesRequest { state: "DELIVERED".into(), ..Default::default() }).await?.into_inner();
    assert!(!centre_inbox.cases.iter().any(|c| c.case_id == b), "{centre_inbox:?}");
    let handed = centre.case(&b).await?;
    assert!(handed.handed_on && handed.allowed_next.is_empty(), "{handed:?}");
    duijie_tests::wait_until("the court sees the town as holder", stack::WAIT, || {
        let c = court.clone();
        let b = b.clone();
        async move { Ok(holder(&c.case(&b).await?) == "mediation:431003-102") }
    })
    .await?;
    let court_view = court.case(&b).await?;
    assert_eq!((court_view.state.as_str(), holder(&court_view).as_str()), ("SUBMITTED", "mediation:431003-102"), "{court_view:?}");
    town.mediation().sign_for(SignForRequest { case_id: b.clone(), receipt: Some(Receipt { signed_by: "周镇".into(), ..Default::default() }) }).await?;
    court.wait_for(&b, "RECEIVED").await?;
    let centre_view = centre.case(&b).await?;
    assert_eq!(holder(&centre_view), "mediation:431003-102");
    assert_eq!(id_number(&centre_view, 0), "", "a body that handed the case on no longer reads identity numbers");
    assert!(centre_view.parties_sealed);
    let stale = centre.mediation().accept(AcceptRequest { case_id: b.clone(), accept: Some(Accept { accepted_by: "王明".into(), ..Default::default() }) }).await;
    assert!(matches!(&stale, Err(s) if s.code() == Code::PermissionDenied), "{stale:?}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_retries_strangers_and_certificates() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let town = stack.clerk(&stack::town()).await?;

    // A retried submit returns the same case; there is one referral.
    let first = submit(&court, &stack::centre(), "JF-431003-2026-000008", referral("court-retry", ClockPolicyKind::CourtPreFiling)).await?;
    let again = court
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(agency_ref(&stack::centre())),
            case_code: "JF-431003-2026-000008".into(),
            referral: Some(referral("court-retry", ClockPolicyKind::CourtPreFiling)),
        })
        .await
        .and_then(answered_case)?;
    assert_eq!(again.case_id, first);
    // Another referral under the same case code is refused: the code names one case.
    let reused = court
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(agency_ref(&stack::centre())),
            case_code: "JF-431003-2026-000008".into(),
            referral: Some(referral("court-other", ClockPolicyKind::CourtPreFiling)),
        })
        .await;
    assert!(matches!(&reused, Err(s) if s.code() == Code::InvalidArgument && field_of(s) == ["case_code"]), "{reused:?}");
    centre.wait_for(&first, "DELIVERED").await?;
    let inbox = centre.cases().list_cases(ListCasesRequest::default()).await?.into_inner();
    assert_eq!(inbox.cases.len(), 1, "one referral: {inbox:?}");

    // Bad input names the field.
    let bad = |mutate: Mutation| {
        let mut r = SubmitReferralRequest {
            to: Some(agency_ref(&stack::centre())),
            case_code: "JF-431003-2026-000009".into(),
            referral: Some(referral("court-bad", ClockPolicyKind::CourtOrdinary)),
        };
        mutate(&mut r);
        r
    };
    let cases: [(Mutation, &str); 6] = [
        (|r| r.referral.as_mut().into_iter().for_each(|x| x.parties[0].identity.as_mut().into_iter().for_each(|i| i.number = "110105194912310021".into())), "referral.parties[0].identity.number"),
        (|r| r.to = Some(AgencyRef { kind: AgencyKind::Mediation as i32, code: "999999".into() }), "to"),
        (|r| r.referral.as_mut().into_iter().for_each(|x| x.amount = Some(Money { currency: "CNY".into(), minor_units: -1 })), "referral.amount.minor_units"),
        (|r| r.referral.as_mut().into_iter().for_each(|x| x.parties.clear()), "referral.parties"),
        (|r| r.referral.as_mut().into_iter().for_each(|x| x.clock_policy = Some(ClockPolicy { kind: ClockPolicyKind::Police as i32, ..Default::default() })), "referral.clock_policy.kind"),
        (|r| r.referral.as_mut().into_iter().for_each(|x| x.registered_at = None), "referral.registered_at"),
    ];
    for (mutate, field) in cases {
        let refused = court.referrals().submit_referral(bad(mutate)).await;
        assert!(matches!(&refused, Err(s) if s.code() == Code::InvalidArgument && field_of(s) == [field]), "{field}: {refused:?}");
    }

    // A step the state does not allow names the state and what it allows.
    let early = centre.mediation().report_outcome(ReportOutcomeRequest { case_id: first.clone(), outcome: Some(settled(false)) }).await;
    assert!(
        matches!(&early, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("DELIVERED") && s.message().contains("receipt")),
        "{early:?}"
    );
    assert_eq!(centre.case(&first).await?.state, "DELIVERED", "a refused step changes nothing");

    // An action retried with the same idempotency key is done once.
    let notice = || {
        let mut req = tonic::Request::new(SuperviseRequest {
            case_id: first.clone(),
            notice: Some(SupervisionNotice { instructions: "请尽快签收".into(), ..Default::default() }),
        });
        req.metadata_mut().insert("idempotency-key", tonic::metadata::MetadataValue::from_static("court-supervise-1"));
        req
    };
    court.referrals().supervise(notice()).await?;
    let retried = court.referrals().supervise(notice()).await.and_then(answered_case)?;
    assert_eq!(count(&retried, MessageKind::SupervisionNotice), 1, "{:?}", kinds(&retried));

    // An amendment that changes the clock policy changes it on both sides.
    let mut revised = referral("court-retry", ClockPolicyKind::CourtSimplified);
    revised.facts = "补充：双方曾于2026年1月协商未果。".into();
    let amended = court
        .referrals()
        .amend(AmendRequest { case_id: first.clone(), amendment: Some(Amendment { reason: "适用简易程序".into(), revised: Some(revised), ..Default::default() }) })
        .await
        .and_then(answered_case)?;
    assert_eq!(amended.clock_policy(), ClockPolicyKind::CourtSimplified);
    duijie_tests::wait_until("the centre applies the amendment", stack::WAIT, || {
        let c = centre.clone();
        let id = first.clone();
        async move {
            let v = c.case(&id).await?;
            Ok(v.clock_policy() == ClockPolicyKind::CourtSimplified && v.referral.is_some_and(|r| r.facts.starts_with("补充")))
        }
    })
    .await?;

    // Reading a case that is not one's own.
    let police_home = stack.clerk(&stack::police()).await?;
    assert_eq!(police_home.case(&first).await.map_err(|s| s.code()).err(), Some(Code::NotFound));
    let police_at_court = stack.clerk_on(&stack::police(), AgencyKind::Court).await?;
    assert_eq!(police_at_court.case(&first).await.map_err(|s| s.code()).err(), Some(Code::PermissionDenied));
    assert_eq!(town.case(&first).await.map_err(|s| s.code()).err(), Some(Code::PermissionDenied), "the town reads only its own cases");
    let police_signs = stack.clerk_on(&stack::police(), AgencyKind::Mediation).await?;
    let signed = police_signs.mediation().sign_for(SignForRequest { case_id: first.clone(), receipt: Some(Receipt { signed_by: "x".into(), ..Default::default() }) }).await;
    assert!(matches!(&signed, Err(s) if s.code() == Code::PermissionDenied), "{signed:?}");

    // No client certificate, or one from another CA: no answer at all.
    let anonymous = stack.channel(AgencyKind::Court, None).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(ch) => duijie_proto::v1::cases_service_client::CasesServiceClient::new(ch).get_case(GetCaseRequest { case_id: first.clone() }).await.is_err(),
    };
    assert!(refused, "a call without a client certificate is refused");
    let other_ca = duijie_common::certs::DevCa::generate("someone else's CA")?;
    let forged = other_ca.agency(&stack::court())?;
    let forged_call = match stack.channel(AgencyKind::Court, Some(&forged)).await {
        Err(_) => None,
        Ok(ch) => Some(duijie_proto::v1::cases_service_client::CasesServiceClient::new(ch).get_case(GetCaseRequest { case_id: first.clone() }).await),
    };
    assert!(forged_call.is_none_or(|r| r.is_err()), "a certificate from another CA is refused");
    stack.stop().await
}
