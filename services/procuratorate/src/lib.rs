//! The procuratorate service (人民检察院): sends 检调 referrals for criminal reconciliation
//! (刑事和解), reviews the reconciliation agreement, and disposes (不起诉 etc.).
//!
//! API: `CasesService` (GetCase, ListCases), `ReferralsService` (SubmitReferral, Amend, Cancel,
//! Supervise, Dispose), `ProcuratorateService` (ReviewReconciliation).

use duijie_agency::Agency;
use duijie_agency::api::{self, ReferrerRules, act, case_id, required};
use duijie_common::server::ApiError;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::procuratorate_service_server::{ProcuratorateService, ProcuratorateServiceServer};
use duijie_proto::v1::{AgencyKind, ReviewConclusion, ReviewReconciliationRequest, ReviewReconciliationResponse};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub const KIND: AgencyKind = AgencyKind::Procuratorate;

/// Reconciliation is mediated by a people's mediation committee on its clock.
pub struct ProcuratorateRules;

impl ReferrerRules for ProcuratorateRules {
    fn kind(&self) -> AgencyKind {
        KIND
    }
}

struct ProcuratorateApi {
    agency: Agency,
}

#[tonic::async_trait]
impl ProcuratorateService for ProcuratorateApi {
    async fn review_reconciliation(&self, req: Request<ReviewReconciliationRequest>) -> Result<Response<ReviewReconciliationResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let review = required(r.review, "review")?;
            if review.conclusion() == ReviewConclusion::Unspecified {
                return Err(ApiError::invalid("review.conclusion", "is required"));
            }
            if review.reviewed_by.trim().is_empty() {
                return Err(ApiError::invalid("review.reviewed_by", "is required"));
            }
            Ok((case_id(&r.case_id)?, Payload::ReconciliationReview(review)))
        })
        .await
    }
}

/// The procuratorate service's gRPC routes.
pub fn routes(agency: &Agency) -> Routes {
    api::referrer_routes(agency, ProcuratorateRules)
        .add_service(ProcuratorateServiceServer::new(ProcuratorateApi { agency: agency.clone() }).max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES))
}
