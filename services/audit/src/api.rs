//! The `AuditService` gRPC service. An agency reads the cases it took part in (sent or received a
//! message of); a supervisor (`supervisor:<region>`) reads every case whose referrer or holder
//! code starts with its region, the statistics of its region, and runs Verify.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_domain::AgencyNode;
use duijie_common::envelope::{from_timestamp, timestamp as ts};
use duijie_common::server::{ApiError, caller, caller_name};
use duijie_domain::calendar::WorkCalendar;
use duijie_domain::deadlines;
use duijie_proto::v1 as pb;
use duijie_proto::v1::audit_service_server::{AuditService, AuditServiceServer};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, AgencyRef, Channel, ClockPolicyKind, Envelope};
use duijie_common::db::{ApiConn, ApiPool};
use duijie_common::signing::{Signer, Verifier};
use prost::Message as _;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::lookup::{self, LookupConfig};
use crate::{stats, tree, verify};

/// What a Verify call asks for, checked before any work starts.
struct VerifyJob {
    /// One case, or the whole log.
    case: Option<Uuid>,
    /// A witness's anchor whose signature was checked.
    anchor: Option<verify::AnchorHeads>,
}

/// Records between two progress messages of `VerifyWithProgress` never wait on a slow reader:
/// progress that finds the channel full is dropped (the next one says more).
const PROGRESS_BUFFER: usize = 8;

/// The `AuditService` over the audit database. Each call holds one connection at a time (the
/// statistics take a second only when one is free at once).
pub struct AuditApi {
    db: ApiPool,
    calendar: WorkCalendar,
    lookup: LookupConfig,
    /// Checks the records' signatures again in `Verify` (none: hashes only), and witnesses'
    /// anchors (none: an anchor cannot be checked and is refused).
    verifier: Option<Arc<Verifier>>,
    /// Signs the tree head `GetAnchor` records when none is signed yet (none: it records none).
    signer: Option<Arc<Signer>>,
    /// Wraps the case data keys (none: the key calls answer FAILED_PRECONDITION).
    master: Option<duijie_common::sealing::Key>,
}

impl AuditApi {
    /// The service on `api_pool`, which should be the calls' own
    /// ([`duijie_common::db::ServicePools`]; a `PgPool` is taken as an [`ApiPool`] of its size):
    /// a call that finds every connection in use is answered "busy".
    pub fn server(api_pool: impl Into<ApiPool>) -> AuditServiceServer<Self> {
        Self::server_with(api_pool, LookupConfig::default())
    }

    /// The service with the parties' lookup set up by `lookup` (who may call it, the access-code
    /// secret, the rate limits).
    pub fn server_with(api_pool: impl Into<ApiPool>, lookup: LookupConfig) -> AuditServiceServer<Self> {
        Self::server_signed(api_pool, lookup, None)
    }

    /// [`AuditApi::server_with`] whose `Verify` also checks every record's signature with
    /// `verifier` (the agencies' CA).
    pub fn server_signed(
        api_pool: impl Into<ApiPool>,
        lookup: LookupConfig,
        verifier: Option<Arc<Verifier>>,
    ) -> AuditServiceServer<Self> {
        Self::server_anchored(api_pool, lookup, verifier, None, None)
    }

    /// [`AuditApi::server_signed`] that can also sign a first tree head for `GetAnchor` with
    /// `signer` (holding the key of [`duijie_common::signing::AUDIT_SIGNER`]), and keeps the
    /// case data keys wrapped by `master`.
    pub fn server_anchored(
        api_pool: impl Into<ApiPool>,
        lookup: LookupConfig,
        verifier: Option<Arc<Verifier>>,
        signer: Option<Arc<Signer>>,
        master: Option<duijie_common::sealing::Key>,
    ) -> AuditServiceServer<Self> {
        AuditServiceServer::new(Self { db: api_pool.into(), calendar: WorkCalendar::bundled(), lookup, verifier, signer, master })
            .max_decoding_message_size(duijie_common::server::MAX_REQUEST_BYTES)
    }

    /// A connection for one call.
    async fn conn(&self) -> Result<ApiConn, ApiError> {
        self.db.acquire().await.map_err(ApiError::Unexpected)
    }
}

fn from_ts(t: Option<&prost_types::Timestamp>, field: &str) -> Result<DateTime<Utc>, ApiError> {
    from_timestamp(t).ok_or_else(|| ApiError::invalid(field, "is required"))
}

pub(crate) fn agency_ref(kind: &str, code: &str) -> AgencyRef {
    AgencyRef { kind: AgencyKind::parse(kind).map_or(0, |k| k as i32), code: code.to_owned() }
}

#[derive(sqlx::FromRow, Clone)]
struct CaseRow {
    case_id: Uuid,
    case_code: String,
    channel: i32,
    referrer_kind: String,
    referrer_code: String,
    holder_kind: String,
    holder_code: String,
    state: String,
    state_since: DateTime<Utc>,
    clock_policy: i32,
    received_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    court_kind: Option<String>,
    court_code: Option<String>,
}

const CASE_COLUMNS: &str = "c.case_id, c.case_code, c.channel, c.referrer_kind, c.referrer_code, c.holder_kind, c.holder_code,
    c.state, c.state_since, c.clock_policy, c.received_at, c.closed_at, c.court_kind, c.court_code";

/// The cases `who` may read, as a SQL condition on `audit_cases c` with `who`'s kind in $1 and
/// code (or region) in $2.
fn visible(who: &AgencyNode) -> &'static str {
    if who.kind() == AgencyKind::Supervisor {
        "(c.referrer_code LIKE $2 || '%' OR c.holder_code LIKE $2 || '%')"
    } else {
        "EXISTS (SELECT 1 FROM audit_participants p WHERE p.kind = $1 AND p.code = $2 AND p.case_id = c.case_id)"
    }
}

impl AuditApi {
    async fn case_view(&self, conn: &mut PgConnection, c: &CaseRow) -> anyhow::Result<pb::AuditCase> {
        let payloads = crate::store::case_payloads(conn, c.case_id).await?;
        let refs: Vec<(DateTime<Utc>, &Payload)> = payloads.iter().map(|(t, p)| (*t, p)).collect();
        Ok(self.case_view_from(c, &refs))
    }

    /// The case with its deadline status computed from `refs` (its records' payloads).
    fn case_view_from(&self, c: &CaseRow, refs: &[(DateTime<Utc>, &Payload)]) -> pb::AuditCase {
        let now = Utc::now();
        let policy = ClockPolicyKind::try_from(c.clock_policy).unwrap_or(ClockPolicyKind::Unspecified);
        let limits = deadlines::deadlines(policy, refs, &self.calendar, now);
        pb::AuditCase {
            case_id: c.case_id.to_string(),
            case_code: c.case_code.clone(),
            channel: c.channel,
            referrer: Some(agency_ref(&c.referrer_kind, &c.referrer_code)),
            holder: Some(agency_ref(&c.holder_kind, &c.holder_code)),
            state: c.state.clone(),
            state_since: Some(ts(c.state_since)),
            received_at: Some(ts(c.received_at)),
            closed_at: c.closed_at.map(ts),
            overdue: limits.iter().any(|d| d.is_overdue(now)),
            deadlines: limits.iter().map(|d| d.view(now)).collect(),
        }
    }

    async fn find_case(&self, conn: &mut PgConnection, who: &AgencyNode, r: &pb::GetTimelineRequest) -> Result<CaseRow, ApiError> {
        let (cond, arg) = if !r.case_id.trim().is_empty() {
            let id = Uuid::parse_str(r.case_id.trim()).map_err(|_| ApiError::invalid("case_id", "must be a case id (UUID)"))?;
            ("c.case_id = $3::uuid", id.to_string())
        } else if !r.case_code.trim().is_empty() {
            // A NUL or a 1 MB code would reach PostgreSQL as an error, not as "no such case".
            duijie_proto::limits::check_case_code("case_code", r.case_code.trim())?;
            ("c.case_code = $3", r.case_code.trim().to_owned())
        } else {
            return Err(ApiError::invalid("case_id", "a case id or a case code is required"));
        };
        let sql = format!(
            "SELECT {CASE_COLUMNS}, {} AS allowed FROM audit_cases c WHERE {cond} ORDER BY allowed DESC, c.received_at DESC LIMIT 1",
            visible(who)
        );
        let row: Option<CaseRowAllowed> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(who.kind().as_str())
            .bind(who.code())
            .bind(&arg)
            .fetch_optional(conn)
            .await
            .context("looking up the case")?;
        match row {
            None => Err(ApiError::NotFound(format!("no case {arg} in the audit store"))),
            Some(r) if !r.allowed => Err(ApiError::PermissionDenied(format!("{who} may not read case {arg}"))),
            Some(r) => Ok(r.row),
        }
    }
}

#[derive(sqlx::FromRow)]
struct CaseRowAllowed {
    #[sqlx(flatten)]
    row: CaseRow,
    allowed: bool,
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    chain: i32,
    seq: i64,
    case_seq: i32,
    message_id: Uuid,
    recorded_at: DateTime<Utc>,
    occurred_at: DateTime<Utc>,
    causation_id: Option<Uuid>,
    trace_id: String,
    state_after: String,
    envelope: Vec<u8>,
    hash: Vec<u8>,
    refused: Option<String>,
    signer: Option<String>,
}

fn case_uuid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s.trim()).map_err(|_| ApiError::invalid("case_id", "must be a case id (UUID)"))
}

impl AuditApi {
    fn master(&self) -> Result<&duijie_common::sealing::Key, ApiError> {
        self.master.as_ref().ok_or_else(|| ApiError::FailedPrecondition("this audit service keeps no case keys (audit.keys.master_key)".into()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditApi {
    /// Checks who asks and what: supervisors only, a case id or the whole log, and a witness's
    /// anchor that the audit service really signed.
    fn verify_job(&self, who: &AgencyNode, r: &pb::VerifyRequest) -> Result<VerifyJob, ApiError> {
        if who.kind() != AgencyKind::Supervisor {
            return Err(ApiError::PermissionDenied(format!("{who}: verifying the audit log is for supervisors")));
        }
        let case = r.case_id.trim();
        let case = if case.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(case).map_err(|_| ApiError::invalid("case_id", "must be a case id (UUID)"))?)
        };
        let anchor = match &r.anchor {
            None => None,
            Some(_) if case.is_some() => return Err(ApiError::invalid("anchor", "an anchor is checked against the whole log, not one case")),
            Some(a) => {
                let verifier =
                    self.verifier.as_deref().ok_or_else(|| ApiError::FailedPrecondition("this audit service has no CA to check anchors with".into()))?;
                // A bad anchor is the witness's input at fault, not the log: refused, not "broken".
                duijie_common::anchor::check(verifier, a).map_err(|e| ApiError::invalid("anchor", e.to_string()))?;
                let heads = duijie_common::anchor::heads(a)
                    .map_err(|e| ApiError::invalid("anchor", e.to_string()))?
                    .into_iter()
                    .map(|(chain, size, hash)| tree::ChainHead { chain, size, hash: hash.to_vec() })
                    .collect();
                Some(verify::AnchorHeads { id: a.id, heads })
            }
        };
        Ok(VerifyJob { case, anchor })
    }
}

/// Runs a checked Verify on `conn`.
async fn run_verify(
    conn: &mut PgConnection,
    verifier: Option<&Verifier>,
    job: &VerifyJob,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<pb::VerifyResponse, ApiError> {
    let report = match job.case {
        None => verify::verify_log_against(conn, verifier, job.anchor.as_ref(), progress).await,
        Some(id) => verify::verify_case_on(conn, id).await,
    }
    .map_err(ApiError::Unexpected)?;
    let (first_broken_seq, problem) = report.broken.clone().map_or((0, String::new()), |(s, p)| (u64::try_from(s).unwrap_or(0), p));
    Ok(pb::VerifyResponse {
        ok: report.ok(),
        records_checked: report.records_checked,
        first_broken_seq,
        problem,
        first_broken_chain: u32::try_from(report.broken_chain).unwrap_or(0),
        chains: report.chains,
        tree_head_hex: report.tree_head.as_deref().map(hex).unwrap_or_default(),
        signatures_checked: report.signatures_checked,
        unsigned_records: report.unsigned_records,
        anchor_checked: job.anchor.is_some(),
    })
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_timeline(&self, req: Request<pb::GetTimelineRequest>) -> Result<Response<pb::GetTimelineResponse>, Status> {
        let who = caller(&req)?;
        let mut conn = self.conn().await?;
        let case = self.find_case(&mut conn, &who, req.get_ref()).await?;
        let rows: Vec<RecordRow> = sqlx::query_as(
            "SELECT chain, seq, case_seq, message_id, recorded_at, occurred_at, causation_id, trace_id, state_after, envelope, hash,
                    refused, signer
             FROM audit_log WHERE case_id = $1 ORDER BY seq",
        )
        .bind(case.case_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("reading the timeline")))?;
        drop(conn);
        let mut delivered: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut records = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        for r in &rows {
            let env = Envelope::decode(r.envelope.as_slice()).map_err(|e| ApiError::Unexpected(e.into()))?;
            // What was refused took no effect: it neither moves the limits nor counts as delivered.
            if let Some(p) = env.payload.as_ref().filter(|_| r.refused.is_none()) {
                payloads.push((r.occurred_at, p.clone()));
            }
            if let Some(Payload::DeliveryEvidence(ev)) = env.payload.as_ref().filter(|_| r.refused.is_none()) {
                delivered.entry(ev.message_id.clone()).or_insert(r.occurred_at);
            }
            records.push(pb::AuditRecord {
                seq: u64::try_from(r.seq).unwrap_or(0),
                case_seq: u32::try_from(r.case_seq).unwrap_or(0),
                message_id: r.message_id.to_string(),
                kind: env.kind,
                sender: env.sender.clone(),
                recipient: env.recipient.clone(),
                occurred_at: Some(ts(r.occurred_at)),
                recorded_at: Some(ts(r.recorded_at)),
                causation_id: r.causation_id.map(|c| c.to_string()).unwrap_or_default(),
                trace_id: r.trace_id.clone(),
                state_after: r.state_after.clone(),
                summary: env.payload.as_ref().map(duijie_domain::summary::english).unwrap_or_default(),
                delivered_at: None,
                hash_hex: hex(&r.hash),
                message: Some(duijie_domain::identity::shown(env)),
                chain: u32::try_from(r.chain).unwrap_or(0),
                refused: r.refused.clone().unwrap_or_default(),
                signer: r.signer.clone().unwrap_or_default(),
            });
        }
        for rec in &mut records {
            rec.delivered_at = delivered.get(&rec.message_id).map(|t| ts(*t));
        }
        let refs: Vec<(DateTime<Utc>, &Payload)> = payloads.iter().map(|(t, p)| (*t, p)).collect();
        let view = self.case_view_from(&case, &refs);
        let mut conn = self.conn().await?;
        let key_releases = crate::keys::releases(&mut conn, case.case_id)
            .await
            .map_err(ApiError::Unexpected)?
            .into_iter()
            .map(|(agency, at, action, purpose)| {
                let agency = agency.parse::<AgencyNode>().ok().map(|n| AgencyRef::from(&n));
                pb::KeyRelease { agency, at: Some(ts(at)), action, purpose }
            })
            .collect();
        Ok(Response::new(pb::GetTimelineResponse { case: Some(view), records, key_releases }))
    }

    async fn list_open_handoffs(
        &self,
        req: Request<pb::ListOpenHandoffsRequest>,
    ) -> Result<Response<pb::ListOpenHandoffsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let limit = i64::from(if r.limit == 0 { 100 } else { r.limit.min(1000) });
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM audit_cases c
             WHERE c.closed_at IS NULL AND NOT c.refused_only
               AND c.state IN ('SUBMITTED', 'DELIVERED', 'RECEIVED', 'CANCEL_REQUESTED', 'CONFIRMATION_REQUESTED', 'CONFIRMATION_ACCEPTED',
                               'REJECTED', 'FAILED', 'WITHDRAWN', 'DEFAULTED', 'CONFIRMATION_DENIED')
               -- a self-accepted case is returned to no one: its holder closes it
               AND (c.channel <> 5 OR c.state NOT IN ('REJECTED', 'FAILED', 'WITHDRAWN', 'DEFAULTED', 'CONFIRMATION_DENIED'))
               AND c.state_since <= now() - make_interval(secs => $3)
               AND {}
             ORDER BY c.state_since LIMIT $4",
            visible(&who)
        );
        let rows: Vec<CaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(who.kind().as_str())
            .bind(who.code())
            .bind(r.min_age_seconds as f64)
            .bind(limit)
            .fetch_all(&mut *self.conn().await?)
            .await
            .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("listing open handoffs")))?;
        let now = Utc::now();
        let handoffs = rows
            .iter()
            .map(|c| {
                let referrer = agency_ref(&c.referrer_kind, &c.referrer_code);
                let holder = agency_ref(&c.holder_kind, &c.holder_code);
                let (waiting_for, from, to) = match c.state.as_str() {
                    "SUBMITTED" => ("delivery", referrer, holder),
                    "DELIVERED" => ("receipt", referrer, holder),
                    "RECEIVED" => ("triage", referrer, holder),
                    "CANCEL_REQUESTED" => ("cancel_answer", referrer, holder),
                    // With the court applied to (the referrer, unless another court was named).
                    "CONFIRMATION_REQUESTED" | "CONFIRMATION_ACCEPTED" => {
                        let court = c.court_kind.as_deref().zip(c.court_code.as_deref()).map(|(k, code)| agency_ref(k, code));
                        ("confirmation_decision", holder, court.unwrap_or(referrer))
                    }
                    // Returned to the referrer (rejected, failed, withdrawn, defaulted, confirmation
                    // denied): its disposition is awaited (处置反馈).
                    _ => ("disposition", holder, referrer),
                };
                pb::OpenHandoff {
                    case_id: c.case_id.to_string(),
                    case_code: c.case_code.clone(),
                    channel: c.channel,
                    from: Some(from),
                    to: Some(to),
                    waiting_for: waiting_for.to_owned(),
                    since: Some(ts(c.state_since)),
                    age_seconds: u64::try_from((now - c.state_since).num_seconds()).unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(pb::ListOpenHandoffsResponse { handoffs }))
    }

    async fn list_overdue(&self, req: Request<pb::ListOverdueRequest>) -> Result<Response<pb::ListOverdueResponse>, Status> {
        let who = caller(&req)?;
        let limit = i64::from(if req.get_ref().limit == 0 { 100 } else { req.get_ref().limit.min(1000) });
        let mut conn = self.conn().await?;
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM audit_cases c
             WHERE c.closed_at IS NULL AND NOT c.refused_only
               AND EXISTS (SELECT 1 FROM audit_deadlines d WHERE d.case_id = c.case_id AND d.met_at IS NULL AND d.due_at < now())
               AND {}
             ORDER BY c.received_at LIMIT $3",
            visible(&who)
        );
        let rows: Vec<CaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(who.kind().as_str())
            .bind(who.code())
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("listing overdue cases")))?;
        let mut cases = Vec::with_capacity(rows.len());
        for c in &rows {
            cases.push(self.case_view(&mut conn, c).await.map_err(ApiError::Unexpected)?);
        }
        Ok(Response::new(pb::ListOverdueResponse { cases }))
    }

    async fn get_statistics(&self, req: Request<pb::GetStatisticsRequest>) -> Result<Response<pb::GetStatisticsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let from = from_ts(r.from.as_ref(), "from")?;
        let to = from_ts(r.to.as_ref(), "to")?;
        if to <= from {
            return Err(ApiError::invalid("to", "must be after from").into());
        }
        let channel = match Channel::try_from(r.channel) {
            Ok(c) => c as i32,
            Err(_) => return Err(ApiError::invalid("channel", "unknown channel").into()),
        };
        let mut agency = match &r.agency {
            Some(a) => Some(duijie_common::server::agency_field(Some(a), "agency")?),
            None => None,
        };
        let mut region = r.region.trim().to_owned();
        if who.kind() == AgencyKind::Supervisor {
            // A supervisor sees its region and anything inside it.
            if region.is_empty() {
                who.code().clone_into(&mut region);
            } else if !region.starts_with(who.code()) {
                return Err(ApiError::PermissionDenied(format!("{who} may not read region {region}")).into());
            }
        } else {
            // An agency sees its own figures only.
            if agency.as_ref().is_some_and(|a| *a != who) {
                return Err(ApiError::PermissionDenied(format!("{who} may read only its own statistics")).into());
            }
            agency = Some(who.clone());
        }
        let sel = stats::Selection {
            from,
            to,
            region,
            channel,
            agency: agency.map(|a| (a.kind().as_str().to_owned(), a.code().to_owned())),
        };
        let mut conn = self.conn().await?;
        // The second statement beside the first only if a connection is free now.
        let mut second = self.db.acquire_if_free().await.map_err(ApiError::Unexpected)?;
        let f = stats::statistics_on(&mut conn, second.as_deref_mut(), &sel).await.map_err(ApiError::Unexpected)?;
        drop((conn, second));
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Response::new(pb::GetStatisticsResponse {
            received: n(f.received),
            received_self_accepted: n(f.received_self_accepted),
            received_court: n(f.received_court),
            received_police: n(f.received_police),
            received_petition: n(f.received_petition),
            received_procuratorate: n(f.received_procuratorate),
            received_by_intake_source: f
                .received_by_intake_source
                .iter()
                .map(|(source, count)| pb::IntakeSourceCount { source: *source, count: n(*count) })
                .collect(),
            signed_for: n(f.signed_for),
            accepted: n(f.accepted),
            rejected: n(f.rejected),
            mediated: n(f.mediated),
            settled: n(f.settled),
            failed: n(f.failed),
            mediation_rate: f.mediation_rate(),
            success_rate: f.success_rate(),
            confirmations_requested: n(f.confirmations_requested),
            confirmations_granted: n(f.confirmations_granted),
            overdue: n(f.overdue),
            closed: n(f.closed),
            median_days_to_closure: f.median_days_to_closure.unwrap_or(0.0),
            p90_days_to_closure: f.p90_days_to_closure.unwrap_or(0.0),
            refused_messages: n(f.refused_messages),
            signature_refusals: n(f.signature_refusals),
        }))
    }

    async fn verify(&self, req: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let who = caller(&req)?;
        let job = self.verify_job(&who, req.get_ref())?;
        let mut conn = self.conn().await?;
        let r = run_verify(&mut conn, self.verifier.as_deref(), &job, &mut |_| {}).await?;
        Ok(Response::new(r))
    }

    type VerifyWithProgressStream = Pin<Box<dyn futures::Stream<Item = Result<pb::VerifyWithProgressResponse, Status>> + Send + 'static>>;

    async fn verify_with_progress(
        &self,
        req: Request<pb::VerifyWithProgressRequest>,
    ) -> Result<Response<Self::VerifyWithProgressStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner().verify.unwrap_or_default();
        // Refusals (rights, bad input, a bad anchor, busy) answer the call itself, before the
        // stream starts.
        let job = self.verify_job(&who, &r)?;
        let mut conn = self.conn().await?;
        let verifier = self.verifier.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::VerifyWithProgressResponse, Status>>(PROGRESS_BUFFER);
        tokio::spawn(async move {
            let progress_msg = |n: u64| Ok(pb::VerifyWithProgressResponse { event: Some(pb::verify_with_progress_response::Event::RecordsChecked(n)) });
            let progress_tx = tx.clone();
            let mut progress = move |n: u64| {
                // A full channel (a slow reader) or a gone one (the client left): skip this one.
                let _ = progress_tx.try_send(progress_msg(n));
            };
            let result = run_verify(&mut conn, verifier.as_deref(), &job, &mut progress).await.map_err(Status::from);
            // The client may have gone away; then nothing is left to tell it.
            if let Ok(r) = &result
                && !r.records_checked.is_multiple_of(verify::PROGRESS_EVERY)
            {
                // The last count too, so every walk reports its progress at least once.
                let _ = tx.send(progress_msg(r.records_checked)).await;
            }
            let result = result.map(|r| pb::VerifyWithProgressResponse { event: Some(pb::verify_with_progress_response::Event::Result(r)) });
            let _ = tx.send(result).await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_anchor(&self, req: Request<pb::GetAnchorRequest>) -> Result<Response<pb::GetAnchorResponse>, Status> {
        let who = caller(&req)?;
        // The witnesses DESIGN names: supervisors and the procuratorate keep anchors outside the
        // audit database. Nobody else needs one, and the heads say how busy every chain is.
        if !matches!(who.kind(), AgencyKind::Supervisor | AgencyKind::Procuratorate) {
            return Err(ApiError::PermissionDenied(format!("{who}: anchors are handed to supervisors and the procuratorate")).into());
        }
        let mut conn = self.conn().await?;
        let mut anchor = tree::latest_anchor(&mut conn).await.map_err(ApiError::Unexpected)?;
        if anchor.is_none()
            && let Some(signer) = &self.signer
        {
            // None signed yet (a new deployment, or one from before anchors): sign one now rather
            // than make the witness wait for the next interval.
            tree::record_on(&mut conn, signer).await.map_err(ApiError::Unexpected)?;
            anchor = tree::latest_anchor(&mut conn).await.map_err(ApiError::Unexpected)?;
        }
        let anchor = anchor.ok_or_else(|| ApiError::Unavailable("no signed tree head yet; ask again after the next one is recorded".into()))?;
        Ok(Response::new(pb::GetAnchorResponse { anchor: Some(anchor) }))
    }

    async fn issue_case_key(&self, req: Request<pb::IssueCaseKeyRequest>) -> Result<Response<pb::IssueCaseKeyResponse>, Status> {
        let who = caller(&req)?;
        let id = case_uuid(&req.get_ref().case_id)?;
        let master = self.master()?;
        let mut tx = self.db.begin().await.map_err(ApiError::Unexpected)?;
        let holder = AgencyNode::from_ref(req.get_ref().holder.as_ref()).map_err(|e| ApiError::invalid("holder", e.to_string()))?;
        let key = crate::keys::issue(&mut tx, master, id, &who, &holder).await?;
        tx.commit().await.map_err(|e| ApiError::Unexpected(e.into()))?;
        Ok(Response::new(pb::IssueCaseKeyResponse { key: key.as_bytes().to_vec() }))
    }

    async fn open_case_key(&self, req: Request<pb::OpenCaseKeyRequest>) -> Result<Response<pb::OpenCaseKeyResponse>, Status> {
        let who = caller(&req)?;
        let id = case_uuid(&req.get_ref().case_id)?;
        let purpose: String = req.get_ref().purpose.chars().filter(|c| !c.is_control()).take(200).collect();
        let master = self.master()?;
        let mut tx = self.db.begin().await.map_err(ApiError::Unexpected)?;
        let key = crate::keys::open(&mut tx, master, id, &who, &purpose).await?;
        // Committed before the key leaves: no read of the parties' data goes unrecorded.
        tx.commit().await.map_err(|e| ApiError::Unexpected(e.into()))?;
        Ok(Response::new(pb::OpenCaseKeyResponse { key: key.as_bytes().to_vec() }))
    }

    async fn erase_case(&self, req: Request<pb::EraseCaseRequest>) -> Result<Response<pb::EraseCaseResponse>, Status> {
        let who = caller(&req)?;
        let id = case_uuid(&req.get_ref().case_id)?;
        let reason: String = req.get_ref().reason.chars().filter(|c| !c.is_control()).take(500).collect();
        let mut tx = self.db.begin().await.map_err(ApiError::Unexpected)?;
        let at = crate::keys::erase(&mut tx, id, &who, &reason).await?;
        tx.commit().await.map_err(|e| ApiError::Unexpected(e.into()))?;
        tracing::info!(case_id = %id, by = %who, "case data key erased");
        Ok(Response::new(pb::EraseCaseResponse { erased_at: Some(ts(at)) }))
    }

    async fn lookup_case(&self, req: Request<pb::LookupCaseRequest>) -> Result<Response<pb::LookupCaseResponse>, Status> {
        // Only the console asks, on a party's behalf: an agency reads its cases through the calls
        // above, and nobody else may try codes and factors against the store.
        let via = caller_name(&req)?;
        if !self.lookup.callers.contains(&via) {
            return Err(ApiError::PermissionDenied(format!("{via}: the parties' lookup is answered to the console only")).into());
        }
        let mut conn = self.conn().await?;
        let answer = lookup::lookup(&mut conn, &self.lookup, &self.calendar, &via, req.get_ref(), self.master.as_ref()).await?;
        Ok(Response::new(answer))
    }

    async fn get_access_code(&self, req: Request<pb::GetAccessCodeRequest>) -> Result<Response<pb::GetAccessCodeResponse>, Status> {
        let who = caller(&req)?;
        if who.kind() == AgencyKind::Supervisor {
            return Err(ApiError::PermissionDenied(format!("{who}: access codes are for the agencies of the case")).into());
        }
        let id = Uuid::parse_str(req.get_ref().case_id.trim()).map_err(|_| ApiError::invalid("case_id", "must be a case id (UUID)"))?;
        let mut conn = self.conn().await?;
        let case = self.find_case(&mut conn, &who, &pb::GetTimelineRequest { case_id: id.to_string(), case_code: String::new() }).await?;
        drop(conn);
        let access_code = self.lookup.access_code_secret.as_ref().and_then(|s| lookup::access_code(s, case.case_id)).unwrap_or_default();
        Ok(Response::new(pb::GetAccessCodeResponse { case_code: case.case_code, access_code }))
    }
}
