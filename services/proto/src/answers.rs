//! The answers that carry one case.
//!
//! Every RPC of the agency APIs that reads or acts on one case answers with its own
//! `<Method>Response { CaseView case = 1; }` (buf's STANDARD lint: one response message per
//! RPC). [`CaseAnswer`] lets a server build any of them from a [`CaseView`] and a client take
//! the case out of any of them.

use crate::v1::*;

/// A `<Method>Response` whose only field is `case`, the case as the caller sees it.
pub trait CaseAnswer: From<CaseView> {
    /// The case carried, if the service sent one.
    fn case(&self) -> Option<&CaseView>;
    /// Takes the case out.
    fn into_case(self) -> Option<CaseView>;
}

/// The case of a service's answer. An answer without one breaks the contract and is
/// reported as `INTERNAL`, like any other answer the client cannot use.
pub fn answered_case<R: CaseAnswer>(answer: tonic::Response<R>) -> Result<CaseView, tonic::Status> {
    answer
        .into_inner()
        .into_case()
        .ok_or_else(|| tonic::Status::internal("the service answered without the case"))
}

macro_rules! case_answers {
    ($($answer:ident),* $(,)?) => {$(
        impl From<CaseView> for $answer {
            fn from(case: CaseView) -> Self {
                Self { case: Some(case) }
            }
        }

        impl CaseAnswer for $answer {
            fn case(&self) -> Option<&CaseView> {
                self.case.as_ref()
            }

            fn into_case(self) -> Option<CaseView> {
                self.case
            }
        }
    )*};
}

case_answers!(
    // CasesService
    GetCaseResponse,
    // ReferralsService
    SubmitReferralResponse,
    AmendResponse,
    CancelResponse,
    SuperviseResponse,
    DisposeResponse,
    // CourtService, PoliceService, ProcuratorateService, PetitionService
    DecideConfirmationResponse,
    RecognizeAgreementResponse,
    ReviewReconciliationResponse,
    ClosePetitionResponse,
    // MediationService
    SignForResponse,
    AcceptResponse,
    RejectResponse,
    RedirectResponse,
    AssignResponse,
    EscalateResponse,
    ReportProgressResponse,
    RequestInformationResponse,
    RequestExtensionResponse,
    ReportOutcomeResponse,
    RequestConfirmationResponse,
    RecordPerformanceResponse,
    RecordFollowUpResponse,
    CloseResponse,
    RegisterCaseResponse,
    AnswerCancellationResponse,
);
