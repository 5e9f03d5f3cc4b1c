//! The mediation service (矛盾纠纷调处中心 and the town and village committees under it): an
//! inbox of referrals from all four channels, and every step of handling a case to closure.
//!
//! API: `CasesService` (GetCase, ListCases — the inbox), `MediationService` (SignFor, Accept,
//! Reject, Redirect, Assign, Escalate, ReportProgress, RequestInformation, RequestExtension,
//! ReportOutcome, RequestConfirmation, RecordPerformance, RecordFollowUp, Close,
//! AnswerCancellation).

use duijie_agency::Agency;
use duijie_agency::api::{CasesApi, act, case_id, required};
use duijie_common::server::ApiError;
use duijie_proto::v1 as pb;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::mediation_service_server::{MediationService, MediationServiceServer};
use duijie_proto::v1::{AgencyKind, MediationTier, outcome};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub const KIND: AgencyKind = AgencyKind::Mediation;

fn non_empty(value: &str, field: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() { Err(ApiError::invalid(field, "is required")) } else { Ok(()) }
}

/// Village → town → district → municipal; professional committees stand beside the tiers.
fn tier_rank(t: MediationTier) -> Option<u8> {
    match t {
        MediationTier::Village => Some(1),
        MediationTier::Town => Some(2),
        MediationTier::District => Some(3),
        MediationTier::Municipal => Some(4),
        _ => None,
    }
}

fn check_outcome(o: &pb::Outcome) -> Result<(), ApiError> {
    match &o.kind {
        None => Err(ApiError::invalid("outcome.kind", "settled, failed or withdrawn is required")),
        Some(outcome::Kind::Settled(s)) => {
            if s.terms.iter().all(|t| t.trim().is_empty()) {
                return Err(ApiError::invalid("outcome.settled.terms", "the agreement's terms are required"));
            }
            if s.agreement.as_ref().is_none_or(|a| a.sha256_hex.len() != 64 || !a.sha256_hex.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(ApiError::invalid("outcome.settled.agreement.sha256_hex", "the signed agreement's SHA-256 digest (64 hex digits) is required"));
            }
            if s.amount.as_ref().is_some_and(|m| m.minor_units < 0) {
                return Err(ApiError::invalid("outcome.settled.amount", "must not be negative"));
            }
            Ok(())
        }
        Some(outcome::Kind::Failed(f)) if f.reason() == pb::FailureReason::Unspecified => {
            Err(ApiError::invalid("outcome.failed.reason", "is required"))
        }
        Some(_) => Ok(()),
    }
}

struct MediationApi {
    agency: Agency,
}

#[tonic::async_trait]
impl MediationService for MediationApi {
    async fn sign_for(&self, req: Request<pb::SignForRequest>) -> Result<Response<pb::SignForResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let receipt = required(r.receipt, "receipt")?;
            non_empty(&receipt.signed_by, "receipt.signed_by")?; // a named person signs (签收人)
            Ok((case_id(&r.case_id)?, Payload::Receipt(receipt)))
        })
        .await
    }

    async fn accept(&self, req: Request<pb::AcceptRequest>) -> Result<Response<pb::AcceptResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let accept = required(r.accept, "accept")?;
            non_empty(&accept.accepted_by, "accept.accepted_by")?;
            Ok((case_id(&r.case_id)?, Payload::Accept(accept)))
        })
        .await
    }

    async fn reject(&self, req: Request<pb::RejectRequest>) -> Result<Response<pb::RejectResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let reject = required(r.reject, "reject")?;
            if reject.reason() == pb::RejectReason::Unspecified {
                return Err(ApiError::invalid("reject.reason", "is required"));
            }
            Ok((case_id(&r.case_id)?, Payload::Reject(reject)))
        })
        .await
    }

    async fn redirect(&self, req: Request<pb::RedirectRequest>) -> Result<Response<pb::RedirectResponse>, Status> {
        act(&self.agency, req, |me, r| {
            let redirect = required(r.redirect, "redirect")?;
            let to = duijie_common::server::agency_field(redirect.to.as_ref(), "redirect.to")?;
            if to == *me {
                return Err(ApiError::invalid("redirect.to", "is this committee itself"));
            }
            non_empty(&redirect.reason, "redirect.reason")?;
            Ok((case_id(&r.case_id)?, Payload::Redirect(redirect)))
        })
        .await
    }

    async fn assign(&self, req: Request<pb::AssignRequest>) -> Result<Response<pb::AssignResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let a = required(r.assignment, "assignment")?;
            non_empty(a.mediator.as_ref().map_or("", |m| m.name.as_str()), "assignment.mediator.name")?;
            Ok((case_id(&r.case_id)?, Payload::Assignment(a)))
        })
        .await
    }

    async fn escalate(&self, req: Request<pb::EscalateRequest>) -> Result<Response<pb::EscalateResponse>, Status> {
        act(&self.agency, req, |me, r| {
            let e = required(r.escalation, "escalation")?;
            let (from, to) = (tier_rank(e.from_tier()), tier_rank(e.to_tier()));
            let Some(to) = to else {
                return Err(ApiError::invalid("escalation.to_tier", "village, town, district or municipal is required"));
            };
            if from.is_some_and(|f| f >= to) {
                return Err(ApiError::invalid("escalation.to_tier", "must be above from_tier (escalation goes up)"));
            }
            if let Some(a) = &e.to_agency {
                let node = duijie_common::server::agency_field(Some(a), "escalation.to_agency")?;
                if node == *me {
                    return Err(ApiError::invalid("escalation.to_agency", "is this committee itself"));
                }
            }
            non_empty(&e.reason, "escalation.reason")?;
            Ok((case_id(&r.case_id)?, Payload::Escalation(e)))
        })
        .await
    }

    async fn report_progress(&self, req: Request<pb::ReportProgressRequest>) -> Result<Response<pb::ReportProgressResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let p = required(r.progress, "progress")?;
            non_empty(&p.summary, "progress.summary")?;
            Ok((case_id(&r.case_id)?, Payload::Progress(p)))
        })
        .await
    }

    async fn request_information(&self, req: Request<pb::RequestInformationRequest>) -> Result<Response<pb::RequestInformationResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let q = required(r.request, "request")?;
            if q.questions.iter().all(|s| s.trim().is_empty()) {
                return Err(ApiError::invalid("request.questions", "at least one question is required"));
            }
            Ok((case_id(&r.case_id)?, Payload::InfoRequest(q)))
        })
        .await
    }

    async fn request_extension(&self, req: Request<pb::RequestExtensionRequest>) -> Result<Response<pb::RequestExtensionResponse>, Status> {
        act(&self.agency, req, |_, r| Ok((case_id(&r.case_id)?, Payload::ExtensionRequest(required(r.extension, "extension")?))))
            .await
    }

    async fn report_outcome(&self, req: Request<pb::ReportOutcomeRequest>) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let o = required(r.outcome, "outcome")?;
            check_outcome(&o)?;
            Ok((case_id(&r.case_id)?, Payload::Outcome(o)))
        })
        .await
    }

    async fn request_confirmation(&self, req: Request<pb::RequestConfirmationRequest>) -> Result<Response<pb::RequestConfirmationResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let c = required(r.request, "request")?;
            if c.agreement.as_ref().is_none_or(|a| a.sha256_hex.trim().is_empty()) {
                return Err(ApiError::invalid("request.agreement", "the agreement's digest is required"));
            }
            if c.applicant_party_ids.is_empty() {
                return Err(ApiError::invalid("request.applicant_party_ids", "both parties apply jointly (共同申请)"));
            }
            Ok((case_id(&r.case_id)?, Payload::ConfirmationRequest(c)))
        })
        .await
    }

    async fn record_performance(&self, req: Request<pb::RecordPerformanceRequest>) -> Result<Response<pb::RecordPerformanceResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let p = required(r.performance, "performance")?;
            if p.status() == pb::PerformanceStatus::Unspecified {
                return Err(ApiError::invalid("performance.status", "performed or defaulted is required"));
            }
            Ok((case_id(&r.case_id)?, Payload::Performance(p)))
        })
        .await
    }

    async fn record_follow_up(&self, req: Request<pb::RecordFollowUpRequest>) -> Result<Response<pb::RecordFollowUpResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let f = required(r.follow_up, "follow_up")?;
            non_empty(&f.conducted_by, "follow_up.conducted_by")?;
            Ok((case_id(&r.case_id)?, Payload::FollowUp(f)))
        })
        .await
    }

    async fn close(&self, req: Request<pb::CloseRequest>) -> Result<Response<pb::CloseResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let c = required(r.closure, "closure")?;
            if c.basis() == pb::ClosureBasis::Unspecified {
                return Err(ApiError::invalid("closure.basis", "is required"));
            }
            Ok((case_id(&r.case_id)?, Payload::Closure(c)))
        })
        .await
    }

    async fn answer_cancellation(&self, req: Request<pb::AnswerCancellationRequest>) -> Result<Response<pb::AnswerCancellationResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let a = required(r.answer, "answer")?;
            if !a.confirmed {
                non_empty(&a.reason, "answer.reason")?; // a refusal says why
            }
            Ok((case_id(&r.case_id)?, Payload::CancellationConfirmation(a)))
        })
        .await
    }

    async fn register_case(&self, req: Request<pb::RegisterCaseRequest>) -> Result<Response<pb::RegisterCaseResponse>, Status> {
        let me = duijie_common::server::caller(&req)?;
        let r = req.into_inner();
        duijie_proto::limits::check_case_code("case_code", &r.case_code).map_err(ApiError::from)?;
        let mut referral = required(r.referral, "referral")?;
        if referral.client_request_id.trim().is_empty() {
            return Err(ApiError::invalid("referral.client_request_id", "is required so that a retried register is not registered twice").into());
        }
        check_intake(referral.intake.as_ref())?;
        // A body's own intake runs on the people's mediation clock (人民调解, one month).
        match referral.clock_policy.as_ref().map(|c| c.kind()) {
            None | Some(pb::ClockPolicyKind::Unspecified) => {
                referral.clock_policy = Some(pb::ClockPolicy { kind: pb::ClockPolicyKind::PeoplesMediation as i32, ..Default::default() });
            }
            Some(pb::ClockPolicyKind::PeoplesMediation) => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    "referral.clock_policy.kind",
                    format!("{} does not apply to a case the body took in itself (CLOCK_POLICY_KIND_PEOPLES_MEDIATION does)", other.as_str_name()),
                )
                .into());
            }
        }
        duijie_agency::validate_referral(&referral).map_err(|e| e.within("referral"))?;
        let view = self.agency.register_case(&me, &r.case_code, referral).await?;
        duijie_common::trace::record_case_id(view.case_id);
        Ok(Response::new(duijie_agency::api::case_view(&view).into()))
    }
}

/// What a self-accepted case must say about its intake: the source, the risk level and the
/// person who received it.
fn check_intake(intake: Option<&pb::Intake>) -> Result<(), ApiError> {
    let i = intake.ok_or_else(|| ApiError::invalid("referral.intake", "is required: source, risk level and who received it"))?;
    if matches!(pb::IntakeSource::try_from(i.source), Ok(pb::IntakeSource::Unspecified) | Err(_)) {
        return Err(ApiError::invalid("referral.intake.source", "walk-in, 148 hotline, 12345 hotline, online, grid screening or department transfer is required"));
    }
    if matches!(pb::RiskLevel::try_from(i.risk_level), Ok(pb::RiskLevel::Unspecified) | Err(_)) {
        return Err(ApiError::invalid("referral.intake.risk_level", "low, medium or high is required"));
    }
    non_empty(&i.received_by, "referral.intake.received_by")
}

/// The mediation service's gRPC routes.
pub fn routes(agency: &Agency) -> Routes {
    Routes::new(CasesApi::server(agency.clone())).add_service(MediationServiceServer::new(MediationApi { agency: agency.clone() }).max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES))
}
