//! The police service (公安机关/派出所): sends 警调 referrals of minor disputes and 治安 cases,
//! recognises a performed agreement, and disposes (处罚/不予处罚).
//!
//! API: `CasesService` (GetCase, ListCases), `ReferralsService` (SubmitReferral, Amend, Cancel,
//! Supervise, Dispose), `PoliceService` (RecognizeAgreement).

use duijie_agency::Agency;
use duijie_agency::api::{self, ReferrerRules, act, case_id, required};
use duijie_common::server::ApiError;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::police_service_server::{PoliceService, PoliceServiceServer};
use duijie_proto::v1::{AgencyKind, RecognizeAgreementRequest, RecognizeAgreementResponse};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub const KIND: AgencyKind = AgencyKind::Police;

/// 治安调解 runs on the police clock (working days); other minor disputes handed to a people's
/// mediation committee run on its clock.
pub struct PoliceRules;

impl ReferrerRules for PoliceRules {
    fn kind(&self) -> AgencyKind {
        KIND
    }
}

struct PoliceApi {
    agency: Agency,
}

#[tonic::async_trait]
impl PoliceService for PoliceApi {
    async fn recognize_agreement(&self, req: Request<RecognizeAgreementRequest>) -> Result<Response<RecognizeAgreementResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let rec = required(r.recognition, "recognition")?;
            if rec.recognised_by.trim().is_empty() {
                return Err(ApiError::invalid("recognition.recognised_by", "is required"));
            }
            Ok((case_id(&r.case_id)?, Payload::AgreementRecognition(rec)))
        })
        .await
    }
}

/// The police service's gRPC routes.
pub fn routes(agency: &Agency) -> Routes {
    api::referrer_routes(agency, PoliceRules).add_service(PoliceServiceServer::new(PoliceApi { agency: agency.clone() }).max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES))
}
