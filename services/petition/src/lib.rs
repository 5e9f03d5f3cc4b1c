//! The petition service (信访局/信访办): sends 访调 referrals, supervises them (督办), and
//! closes the petition (办结) once the centre closed the case.
//!
//! API: `CasesService` (GetCase, ListCases), `ReferralsService` (SubmitReferral, Amend, Cancel,
//! Supervise, Dispose), `PetitionService` (ClosePetition).

use duijie_agency::Agency;
use duijie_agency::api::{self, ReferrerRules, case_id, idempotency_key};
use duijie_common::server::{ApiError, caller};
use duijie_domain::lifecycle::CaseState;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::petition_service_server::{PetitionService, PetitionServiceServer};
use duijie_proto::v1::{AgencyKind, ClosePetitionRequest, ClosePetitionResponse, DispositionKind, DispositionNotice};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub const KIND: AgencyKind = AgencyKind::Petition;

/// 信访工作条例 (2022): forward within 15 days, handle within 60.
pub struct PetitionRules;

impl ReferrerRules for PetitionRules {
    fn kind(&self) -> AgencyKind {
        KIND
    }
}

struct PetitionApi {
    agency: Agency,
}

#[tonic::async_trait]
impl PetitionService for PetitionApi {
    async fn close_petition(&self, req: Request<ClosePetitionRequest>) -> Result<Response<ClosePetitionResponse>, Status> {
        let me = caller(&req)?;
        // A retried 办结 (same key) answers with the case and sends no second notice.
        let key = idempotency_key(&req)?;
        let r = req.into_inner();
        let case = case_id(&r.case_id)?;
        duijie_proto::limits::check_line("document_number", &r.document_number, duijie_proto::limits::MAX_ID).map_err(ApiError::from)?;
        duijie_proto::limits::check_block("summary", &r.summary, duijie_proto::limits::MAX_TEXT).map_err(ApiError::from)?;
        // 办结 follows the centre's closure (案结事了); before that the case is still being handled.
        let state = self.agency.view(&me, case).await?.state;
        if state != CaseState::Closed {
            return Err(ApiError::FailedPrecondition(format!(
                "case is {state}; the petition is closed after the mediation centre closed the case"
            ))
            .into());
        }
        let notice = DispositionNotice {
            disposition: DispositionKind::PetitionClosed as i32,
            document_number: r.document_number,
            summary: r.summary,
            ..Default::default()
        };
        let view = self.agency.send_once(&me, case, Payload::DispositionNotice(notice), key.as_deref()).await?;
        Ok(Response::new(api::case_view(&view).into()))
    }
}

/// The petition service's gRPC routes.
pub fn routes(agency: &Agency) -> Routes {
    api::referrer_routes(agency, PetitionRules).add_service(PetitionServiceServer::new(PetitionApi { agency: agency.clone() }).max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES))
}
