//! The court service (人民法院立案庭): sends 诉调 referrals, decides judicial confirmation
//! applications (司法确认), and disposes of cases mediation did not settle (立案/审判).
//!
//! API: `CasesService` (GetCase, ListCases), `ReferralsService` (SubmitReferral, Amend, Cancel,
//! Supervise, Dispose), `CourtService` (DecideConfirmation).

use duijie_agency::Agency;
use duijie_agency::api::{self, ReferrerRules, act, case_id, required};
use duijie_common::server::ApiError;
use duijie_proto::v1::court_service_server::{CourtService, CourtServiceServer};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{
    AgencyKind, ClockPolicyKind, ConfirmationDecisionKind, DecideConfirmationRequest, DecideConfirmationResponse, Referral,
};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub const KIND: AgencyKind = AgencyKind::Court;

/// What a court's referrals and dispositions may be.
pub struct CourtRules;

impl ReferrerRules for CourtRules {
    fn kind(&self) -> AgencyKind {
        KIND
    }

    /// Since 2025-01-01 a case is registered first (先立案后调解) for the 15/7-day limits; only
    /// pre-filing mediation under the older rules comes before registration.
    fn check_referral(&self, r: &Referral) -> Result<(), ApiError> {
        let clock = r.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind());
        if matches!(clock, ClockPolicyKind::CourtOrdinary | ClockPolicyKind::CourtSimplified) && r.registered_at.is_none() {
            return Err(ApiError::invalid("registered_at", "a registered case (立案) carries its registration time"));
        }
        Ok(())
    }
}

struct CourtApi {
    agency: Agency,
}

#[tonic::async_trait]
impl CourtService for CourtApi {
    async fn decide_confirmation(&self, req: Request<DecideConfirmationRequest>) -> Result<Response<DecideConfirmationResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let d = required(r.decision, "decision")?;
            match d.decision() {
                ConfirmationDecisionKind::Unspecified => return Err(ApiError::invalid("decision.decision", "is required")),
                // A ruling (裁定书) has a number; accepting or not accepting the application does not.
                ConfirmationDecisionKind::Granted | ConfirmationDecisionKind::Denied if d.document_number.trim().is_empty() => {
                    return Err(ApiError::invalid("decision.document_number", "a ruling carries its document number"));
                }
                _ => {}
            }
            Ok((case_id(&r.case_id)?, Payload::ConfirmationDecision(d)))
        })
        .await
    }
}

/// The court service's gRPC routes.
pub fn routes(agency: &Agency) -> Routes {
    api::referrer_routes(agency, CourtRules).add_service(CourtServiceServer::new(CourtApi { agency: agency.clone() }).max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES))
}
