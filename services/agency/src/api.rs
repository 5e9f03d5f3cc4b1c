//! The gRPC side of the agency core: the `CasesService` every agency serves, the
//! `ReferralsService` of the four referring agencies (with each agency's own rules), and the helpers the
//! five service crates use for their own methods.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use duijie_domain::AgencyNode;
use duijie_common::envelope::timestamp as ts;
use duijie_common::server::{ApiError, agency_field, caller};
use duijie_domain::lifecycle::CaseState;
use duijie_proto::CaseAnswer;
use duijie_proto::v1 as pb;
use duijie_proto::v1::cases_service_server::{CasesService, CasesServiceServer};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::referrals_service_server::{ReferralsService, ReferralsServiceServer};
use duijie_proto::v1::{AgencyKind, AgencyRef, Channel, ClockPolicyKind, Referral};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{Agency, CaseSummary, CaseView, ListFilter, TimelineItem};

/// The proto form of a case view.
pub fn case_view(v: &CaseView) -> pb::CaseView {
    let now = Utc::now();
    pb::CaseView {
        case_id: v.case_id.to_string(),
        case_code: v.case_code.clone(),
        channel: v.channel as i32,
        referrer: Some(AgencyRef::from(&v.referrer)),
        holder: Some(AgencyRef::from(&v.holder)),
        state: v.state.as_str().to_owned(),
        clock_policy: v.clock_policy as i32,
        referral: Some(v.referral.clone()),
        deadlines: v.deadlines.iter().map(|d| d.view(now)).collect(),
        timeline: v.timeline.iter().map(timeline_entry).collect(),
        allowed_next: v.allowed_next.iter().map(|k| *k as i32).collect(),
        handed_on: v.handed_on,
        court: v.court.as_ref().map(AgencyRef::from),
        parties_sealed: v.parties_sealed,
        parties_erased: v.parties_erased,
    }
}

fn timeline_entry(t: &TimelineItem) -> pb::TimelineEntry {
    pb::TimelineEntry {
        message_id: t.message_id.clone(),
        kind: t.kind as i32,
        direction: t.direction.clone(),
        sender: t.sender.clone(),
        recipient: t.recipient.clone(),
        occurred_at: Some(ts(t.occurred_at)),
        state_after: t.state_after.as_str().to_owned(),
        summary: t.message.payload.as_ref().map(duijie_domain::summary::english).unwrap_or_default(),
        causation_id: t.causation_id.clone(),
        message: Some(t.message.clone()),
    }
}

fn case_summary(s: &CaseSummary) -> pb::CaseSummary {
    pb::CaseSummary {
        case_id: s.case_id.to_string(),
        case_code: s.case_code.clone(),
        channel: s.channel as i32,
        referrer: Some(AgencyRef::from(&s.referrer)),
        holder: Some(AgencyRef::from(&s.holder)),
        state: s.state.as_str().to_owned(),
        next_due_at: s.next_due_at.map(ts),
        overdue: s.overdue,
        updated_at: Some(ts(s.updated_at)),
        handed_on: s.handed_on,
    }
}

/// A case id from a request.
pub fn case_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s.trim()).map_err(|_| ApiError::invalid("case_id", "must be a case id (UUID)"))
}

/// A required message field of a request.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid(field, "is required"))
}

/// Runs one case action for the calling agency: `build` turns the request into the case and
/// the message to send; the answer (the method's own `<Method>Response`) carries the case as
/// the caller sees it afterwards.
pub async fn act<T, R: CaseAnswer>(
    agency: &Agency,
    req: Request<T>,
    build: impl FnOnce(&AgencyNode, T) -> Result<(Uuid, Payload), ApiError>,
) -> Result<Response<R>, Status> {
    let me = caller(&req)?;
    let key = idempotency_key(&req)?;
    let (case, payload) = build(&me, req.into_inner())?;
    duijie_common::trace::record_case_id(case);
    crate::rules::check_bounds(&payload, crate::rules::request_field(&payload))?;
    let view = agency.send_once(&me, case, payload, key.as_deref()).await?;
    Ok(Response::new(case_view(&view).into()))
}

/// The caller's `idempotency-key` metadata (1–128 printable ASCII characters), if any.
pub fn idempotency_key<T>(req: &Request<T>) -> Result<Option<String>, ApiError> {
    let Some(v) = req.metadata().get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().map_err(|_| ApiError::invalid("idempotency-key", "must be printable ASCII"))?;
    if key.is_empty() || key.len() > 128 {
        return Err(ApiError::invalid("idempotency-key", "must be 1 to 128 characters"));
    }
    Ok(Some(key.to_owned()))
}

/// `CasesService`: reading the calling agency's cases.
pub struct CasesApi {
    agency: Agency,
}

impl CasesApi {
    pub fn server(agency: Agency) -> CasesServiceServer<Self> {
        CasesServiceServer::new(Self { agency }).max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES)
    }
}

/// Page tokens are `<updated_at in µs>.<case id>` of the last case of the previous page.
fn page_token(s: &CaseSummary) -> String {
    format!("{}.{}", s.updated_at.timestamp_micros(), s.case_id)
}

fn parse_page_token(t: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::invalid("page_token", "is not a token from a previous page");
    let (micros, id) = t.split_once('.').ok_or_else(bad)?;
    let at = micros.parse::<i64>().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad)?;
    Ok(Some((at, Uuid::parse_str(id).map_err(|_| bad())?)))
}

#[tonic::async_trait]
impl CasesService for CasesApi {
    type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let me = caller(&req)?;
        let from = match req.get_ref().cursor.trim() {
            "" => None,
            c => Some(crate::feed::Cursor::parse(c)?),
        };
        let changes = self.agency.watch(&me, from).await?;
        let stream = futures::stream::unfold(changes, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item.map(watch_response).map_err(Status::from), rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_case(&self, req: Request<pb::GetCaseRequest>) -> Result<Response<pb::GetCaseResponse>, Status> {
        let me = caller(&req)?;
        let id = case_id(&req.get_ref().case_id)?;
        Ok(Response::new(case_view(&self.agency.view(&me, id).await?).into()))
    }

    async fn list_cases(&self, req: Request<pb::ListCasesRequest>) -> Result<Response<pb::ListCasesResponse>, Status> {
        let me = caller(&req)?;
        let r = req.into_inner();
        let state = match r.state.trim() {
            "" => None,
            s => Some(CaseState::parse(s).ok_or_else(|| ApiError::invalid("state", format!("unknown state {s:?}")))?),
        };
        let channel = match Channel::try_from(r.channel) {
            Ok(Channel::Unspecified) => None,
            Ok(c) => Some(c),
            Err(_) => return Err(ApiError::invalid("channel", "unknown channel").into()),
        };
        if r.page_size > 500 {
            return Err(ApiError::invalid("page_size", "at most 500").into());
        }
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        let filter = ListFilter { state, channel, page_size, after: parse_page_token(&r.page_token)? };
        let cases = self.agency.list(&me, &filter).await?;
        let next_page_token = match cases.last() {
            Some(last) if cases.len() == page_size as usize => page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListCasesResponse { cases: cases.iter().map(case_summary).collect(), next_page_token }))
    }
}

/// What a referring agency service checks beyond the rules of its kind
/// ([`duijie_domain::referrers`]: clock policies, dispositions).
pub trait ReferrerRules: Send + Sync + 'static {
    /// The kind of agency the service acts for.
    fn kind(&self) -> AgencyKind;
    /// Further checks of a referral (e.g. a court's registration).
    fn check_referral(&self, _referral: &Referral) -> Result<(), ApiError> {
        Ok(())
    }
}

/// The routes every referring agency serves: `CasesService` and `ReferralsService` with its
/// `rules`.
pub fn referrer_routes(agency: &Agency, rules: impl ReferrerRules) -> tonic::service::Routes {
    tonic::service::Routes::new(CasesApi::server(agency.clone())).add_service(ReferralsApi::server(agency.clone(), rules))
}

/// `ReferralsService`: a referring agency sends a referral and acts on it.
pub struct ReferralsApi {
    agency: Agency,
    rules: Arc<dyn ReferrerRules>,
}

impl ReferralsApi {
    pub fn server(agency: Agency, rules: impl ReferrerRules) -> ReferralsServiceServer<Self> {
        ReferralsServiceServer::new(Self { agency, rules: Arc::new(rules) }).max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES)
    }

    fn kind_rules(&self) -> Result<&'static duijie_domain::referrers::ReferrerRules, ApiError> {
        let kind = self.rules.kind();
        duijie_domain::referrers::of(kind).ok_or_else(|| ApiError::PermissionDenied(format!("a {} does not refer cases", kind.as_str())))
    }

    fn check_referral(&self, r: &Referral, prefix: &str) -> Result<(), ApiError> {
        let clock = r.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind());
        let policies = self.kind_rules()?.clock_policies;
        if clock != ClockPolicyKind::Unspecified && !policies.contains(&clock) {
            let allowed: Vec<&str> = policies.iter().map(|c| c.as_str_name()).collect();
            return Err(ApiError::invalid(
                format!("{prefix}.clock_policy.kind"),
                format!("{} does not apply to this agency's referrals (allowed: {})", clock.as_str_name(), allowed.join(", ")),
            ));
        }
        self.rules.check_referral(r).map_err(|e| e.within(prefix))
    }
}

#[tonic::async_trait]
impl ReferralsService for ReferralsApi {
    async fn submit_referral(&self, req: Request<pb::SubmitReferralRequest>) -> Result<Response<pb::SubmitReferralResponse>, Status> {
        let me = caller(&req)?;
        let r = req.into_inner();
        let to = agency_field(r.to.as_ref(), "to")?;
        duijie_proto::limits::check_case_code("case_code", &r.case_code).map_err(ApiError::from)?;
        let referral = required(r.referral, "referral")?;
        if referral.client_request_id.trim().is_empty() {
            return Err(ApiError::invalid("referral.client_request_id", "is required so that a retried submit is not sent twice").into());
        }
        crate::validate_referral(&referral).map_err(|e| e.within("referral"))?;
        self.check_referral(&referral, "referral")?;
        let view = self.agency.submit_referral(&me, &to, &r.case_code, referral).await?;
        // The case id is made by the submit: the call's span learns it only now.
        duijie_common::trace::record_case_id(view.case_id);
        Ok(Response::new(case_view(&view).into()))
    }

    async fn amend(&self, req: Request<pb::AmendRequest>) -> Result<Response<pb::AmendResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let amendment = required(r.amendment, "amendment")?;
            if let Some(revised) = &amendment.revised {
                self.check_referral(revised, "amendment.revised")?;
            }
            Ok((case_id(&r.case_id)?, Payload::Amendment(amendment)))
        })
        .await
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let c = required(r.cancellation, "cancellation")?;
            if c.reason() == pb::CancellationReason::Unspecified {
                return Err(ApiError::invalid("cancellation.reason", "is required"));
            }
            Ok((case_id(&r.case_id)?, Payload::Cancellation(c)))
        })
        .await
    }

    async fn supervise(&self, req: Request<pb::SuperviseRequest>) -> Result<Response<pb::SuperviseResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let n = required(r.notice, "notice")?;
            if n.instructions.trim().is_empty() {
                return Err(ApiError::invalid("notice.instructions", "are required"));
            }
            Ok((case_id(&r.case_id)?, Payload::SupervisionNotice(n)))
        })
        .await
    }

    async fn dispose(&self, req: Request<pb::DisposeRequest>) -> Result<Response<pb::DisposeResponse>, Status> {
        act(&self.agency, req, |_, r| {
            let d = required(r.disposition, "disposition")?;
            let dispositions = self.kind_rules()?.dispositions;
            if !dispositions.contains(&d.disposition()) {
                let allowed: Vec<&str> = dispositions.iter().map(|k| k.as_str_name()).collect();
                return Err(ApiError::invalid(
                    "disposition.disposition",
                    format!("must be one of {}", allowed.join(", ")),
                ));
            }
            Ok((case_id(&r.case_id)?, Payload::DispositionNotice(d)))
        })
        .await
    }
}

fn watch_response(c: crate::feed::Change) -> pb::WatchResponse {
    let mut r = pb::WatchResponse { cursor: c.cursor.to_string(), ..Default::default() };
    if let Some(case) = c.case {
        r.case_id = case.case_id.to_string();
        r.case_code = case.case_code;
        r.kind = case.kind as i32;
        r.direction = case.direction;
        r.message_id = case.message_id.to_string();
        r.state_after = case.state_after.as_str().to_owned();
        r.occurred_at = Some(ts(case.occurred_at));
    }
    r
}
