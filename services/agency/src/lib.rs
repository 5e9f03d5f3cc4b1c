//! The core of every agency service: cases as one agency node sees them, the lifecycle applied
//! to every message it sends (refused if the state does not allow it) and receives (dead-lettered
//! if not), delivery evidence for what it durably took, and the case's legal time limits.
//!
//! Outgoing: [`Agency::submit_referral`] and [`Agency::send`] check the caller's rights and the
//! case's state, update the case and stage the envelope in one transaction.
//! Incoming: [`Agency`] is the inbox [`Handler`] of the nodes it serves.

pub mod api;
pub mod gate;
pub mod service;

use std::collections::BTreeSet;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::amqp::{AgencyNode, Topology};
use duijie_common::envelope::{self, Header};
use duijie_common::inbox::{HandleError, Handler, Inbound};
use duijie_common::outbox::{self, RelayWaker};
use duijie_common::server::ApiError;
use duijie_domain::calendar::WorkCalendar;
use duijie_domain::deadlines::{self, DeadlineStatus};
use duijie_domain::lifecycle::{CaseState, Lifecycle, Refusal};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{
    AgencyKind, AgencyRef, Channel, ClockPolicyKind, DeliveryEvidence, Envelope, EvidenceType, ForwardedCase, MessageKind,
    Referral, TimeLimit,
};
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The migrations of an agency database: the bus tables and the case tables, one history.
pub fn migrator() -> sqlx::migrate::Migrator {
    static AGENCY: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/agency");
    sqlx::migrate::Migrator::with_migrations(
        duijie_common::db::BUS_MIGRATOR.iter().chain(AGENCY.iter()).cloned().collect(),
    )
}

/// The longest extension one request may ask for (the legal caps are 10 to 30 days; a year is
/// a sanity bound, not a legal rule).
pub const MAX_EXTENSION_DAYS: u32 = 365;

/// A case as the calling agency sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseView {
    pub case_id: Uuid,
    pub case_code: String,
    pub channel: Channel,
    pub referrer: AgencyNode,
    pub holder: AgencyNode,
    pub state: CaseState,
    pub clock_policy: ClockPolicyKind,
    /// The referral, identity numbers masked unless the caller holds the case (see
    /// [`Agency::view`]).
    pub referral: Referral,
    pub deadlines: Vec<DeadlineStatus>,
    /// The case's messages in order, as this agency sent, received or inherited them.
    pub timeline: Vec<TimelineItem>,
    pub updated_at: DateTime<Utc>,
    /// This agency handed the case on and no longer acts on it.
    pub handed_on: bool,
}

/// One message of a case's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineItem {
    pub message_id: String,
    pub kind: MessageKind,
    /// `out`, `in`, or `prior` (before this agency held the case).
    pub direction: String,
    pub sender: Option<AgencyRef>,
    pub recipient: Option<AgencyRef>,
    pub occurred_at: DateTime<Utc>,
    pub state_after: CaseState,
    pub summary: String,
    pub causation_id: String,
}

/// A case in a list.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSummary {
    pub case_id: Uuid,
    pub case_code: String,
    pub channel: Channel,
    pub referrer: AgencyNode,
    pub holder: AgencyNode,
    pub state: CaseState,
    /// The earliest due time among the limits still running.
    pub next_due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub updated_at: DateTime<Utc>,
    pub handed_on: bool,
}

/// Which of an agency's cases to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<CaseState>,
    pub channel: Option<Channel>,
    /// 1..=500.
    pub page_size: u32,
    /// Continue after this case (its `updated_at` and id), newest first.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// One agency service's core, serving `nodes` (all of one kind).
#[derive(Clone)]
pub struct Agency {
    pool: PgPool,
    topology: Topology,
    waker: Option<RelayWaker>,
    nodes: BTreeSet<(i32, String)>,
    /// Agencies a case may be sent or handed to; `None` accepts any well-formed agency.
    directory: Option<std::sync::Arc<BTreeSet<(i32, String)>>>,
    /// Closed while the audit store cannot record: no new referrals then.
    gate: Option<gate::AuditGate>,
    calendar: WorkCalendar,
}

/// One case of one owner, as [`CaseRow`].
const CASE_BY_OWNER: &str = "SELECT case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code,
        state, before_cancel, clock_policy, referral, updated_at
 FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3";

/// [`CASE_BY_OWNER`], locking the row for a state change.
const CASE_BY_OWNER_FOR_UPDATE: &str = "SELECT case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code,
        state, before_cancel, clock_policy, referral
 FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3 FOR UPDATE";

#[derive(sqlx::FromRow)]
struct CaseRowWithTime {
    #[sqlx(flatten)]
    row: CaseRow,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    case_id: Uuid,
    envelope: Vec<u8>,
    kind: String,
    direction: String,
    state_after: String,
    occurred_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct CaseRow {
    case_id: Uuid,
    case_code: String,
    channel: i32,
    referrer_kind: String,
    referrer_code: String,
    holder_kind: String,
    holder_code: String,
    state: String,
    before_cancel: Option<String>,
    clock_policy: i32,
    /// protobuf-encoded `Referral`
    referral: Vec<u8>,
}

fn node_from(kind: &str, code: &str) -> anyhow::Result<AgencyNode> {
    let k = AgencyKind::parse(kind).ok_or_else(|| anyhow::anyhow!("unknown agency kind {kind:?} in the database"))?;
    AgencyNode::new(k, code)
}

fn state_from(s: &str) -> anyhow::Result<CaseState> {
    CaseState::parse(s).ok_or_else(|| anyhow::anyhow!("unknown case state {s:?} in the database"))
}

fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::Incomplete { kind, field } => ApiError::invalid(format!("{}.{field}", kind.routing_segment()), "is required"),
        other => ApiError::FailedPrecondition(other.to_string()),
    }
}

impl Agency {
    /// The core for `nodes`, on `pool` (migrated with [`migrator`]).
    pub fn new(pool: PgPool, topology: Topology, nodes: &[AgencyNode], waker: Option<RelayWaker>) -> Self {
        Self {
            pool,
            topology,
            waker,
            nodes: nodes.iter().map(|n| (n.kind as i32, n.code.clone())).collect(),
            directory: None,
            gate: None,
            calendar: WorkCalendar::bundled(),
        }
    }

    /// Only agencies in `known` may receive a case from this service (the agency directory of
    /// the deployment); any other recipient is refused as an unknown agency.
    #[must_use]
    pub fn with_directory(mut self, known: &[AgencyNode]) -> Self {
        self.directory = Some(std::sync::Arc::new(known.iter().map(|n| (n.kind as i32, n.code.clone())).collect()));
        self
    }

    /// New referrals are refused with `UNAVAILABLE` while `gate` is closed.
    #[must_use]
    pub fn with_gate(mut self, gate: gate::AuditGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Whether new referrals are taken now (always, without a gate).
    pub fn gate_open(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.check().is_ok())
    }

    fn check_known(&self, node: &AgencyNode, field: &str) -> Result<(), ApiError> {
        match &self.directory {
            Some(d) if !d.contains(&(node.kind as i32, node.code.clone())) => {
                Err(ApiError::invalid(field, format!("unknown agency {node}")))
            }
            _ => Ok(()),
        }
    }

    fn serves(&self, node: &AgencyNode) -> bool {
        self.nodes.contains(&(node.kind as i32, node.code.clone()))
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// Sends a referral from `caller` to a mediation body. A retried submit (same
    /// `client_request_id`) returns the case of the first one.
    pub async fn submit_referral(
        &self,
        caller: &AgencyNode,
        to: &AgencyNode,
        case_code: &str,
        referral: Referral,
    ) -> Result<CaseView, ApiError> {
        if !self.serves(caller) {
            return Err(ApiError::PermissionDenied(format!("this service does not act for {caller}")));
        }
        if !MessageKind::Referral.allowed_senders().contains(&caller.kind) {
            return Err(ApiError::PermissionDenied(format!("{caller}: a {} may not send referrals", caller.kind.as_str())));
        }
        if to.kind != AgencyKind::Mediation {
            return Err(ApiError::invalid("to", "referrals go to a mediation body"));
        }
        self.check_known(to, "to")?;
        if case_code.trim().is_empty() {
            return Err(ApiError::invalid("case_code", "is required"));
        }
        if referral.forwarded.is_some() {
            return Err(ApiError::invalid("referral.forwarded", "is set only by a mediation body handing a case on"));
        }
        validate_referral(&referral)?;
        if let Some(g) = &self.gate {
            g.check()?;
        }
        let channel = channel_of(caller.kind).ok_or_else(|| ApiError::PermissionDenied("no channel for this agency".into()))?;
        let mut tx = self.pool.begin().await.context("beginning")?;
        let case_id = Uuid::now_v7();
        let header = Header {
            case_id,
            case_code: case_code.to_owned(),
            channel,
            sender: caller.clone(),
            recipient: to.clone(),
            causation_id: None,
        };
        let clock = referral.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind());
        let mut env = envelope::build(&header, Payload::Referral(referral.clone()));
        let inserted = sqlx::query(
            "INSERT INTO cases (owner_kind, owner_code, case_id, case_code, channel, referrer_kind, referrer_code,
                                holder_kind, holder_code, state, clock_policy, client_request_id, referral)
             VALUES ($1, $2, $3, $4, $5, $1, $2, $6, $7, $8, $9, NULLIF($10, ''), $11)
             ON CONFLICT (owner_kind, owner_code, client_request_id) WHERE client_request_id IS NOT NULL DO NOTHING",
        )
        .bind(caller.kind.as_str())
        .bind(&caller.code)
        .bind(case_id)
        .bind(case_code)
        .bind(channel as i32)
        .bind(to.kind.as_str())
        .bind(&to.code)
        .bind(CaseState::Submitted.as_str())
        .bind(clock as i32)
        .bind(&referral.client_request_id)
        .bind(referral.encode_to_vec())
        .execute(&mut *tx)
        .await;
        let inserted = match inserted {
            Ok(r) => r.rows_affected(),
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("cases_sent_case_code") => {
                return Err(ApiError::invalid("case_code", format!("{case_code} is already used by another case of {caller}")));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("creating the case").into()),
        };
        if inserted == 0 {
            // A retry (or a concurrent duplicate) of a submit that already created the case.
            drop(tx);
            let existing: Uuid = sqlx::query_scalar(
                "SELECT case_id FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND client_request_id = $3",
            )
            .bind(caller.kind.as_str())
            .bind(&caller.code)
            .bind(&referral.client_request_id)
            .fetch_one(&self.pool)
            .await
            .context("looking up the earlier submit")?;
            return self.view(caller, existing).await;
        }
        self.record_out(&mut tx, caller, &mut env, CaseState::Submitted).await?;
        tx.commit().await.context("committing the referral")?;
        self.wake();
        self.view(caller, case_id).await
    }

    /// Sends `payload` about `case_id` from `caller` to the other side of the handoff, if the
    /// caller may send it and the case's state allows it.
    pub async fn send(&self, caller: &AgencyNode, case_id: Uuid, payload: Payload) -> Result<CaseView, ApiError> {
        self.send_once(caller, case_id, payload, None).await
    }

    /// [`send`](Self::send), at most once per `request_id` (an idempotency key of the caller):
    /// a retry with the same key answers with the case as it is now, without acting again.
    pub async fn send_once(
        &self,
        caller: &AgencyNode,
        case_id: Uuid,
        payload: Payload,
        request_id: Option<&str>,
    ) -> Result<CaseView, ApiError> {
        let kind = payload.kind();
        if !self.serves(caller) {
            return Err(ApiError::PermissionDenied(format!("this service does not act for {caller}")));
        }
        if !kind.allowed_senders().contains(&caller.kind) {
            return Err(ApiError::PermissionDenied(format!("{caller}: a {} may not send {kind}", caller.kind.as_str())));
        }
        let mut tx = self.pool.begin().await.context("beginning")?;
        let row = self.lock_case(&mut tx, caller, case_id).await?;
        if let Some(key) = request_id.filter(|k| !k.is_empty()) {
            // The case row is locked: a concurrent retry waits here and then finds the key.
            let first = sqlx::query(
                "INSERT INTO action_requests (owner_kind, owner_code, request_id, case_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )
            .bind(caller.kind.as_str())
            .bind(&caller.code)
            .bind(key)
            .bind(case_id)
            .execute(&mut *tx)
            .await
            .context("recording the request id")?
            .rows_affected()
                == 1;
            if !first {
                drop(tx);
                let earlier: Uuid = sqlx::query_scalar(
                    "SELECT case_id FROM action_requests WHERE owner_kind = $1 AND owner_code = $2 AND request_id = $3",
                )
                .bind(caller.kind.as_str())
                .bind(&caller.code)
                .bind(key)
                .fetch_one(&self.pool)
                .await
                .context("reading the earlier request")?;
                if earlier != case_id {
                    return Err(ApiError::invalid("idempotency-key", format!("already used for case {earlier}")));
                }
                return self.view(caller, case_id).await;
            }
        }
        let referrer = node_from(&row.referrer_kind, &row.referrer_code)?;
        let holder = node_from(&row.holder_kind, &row.holder_code)?;
        // Only the two ends of the handoff act on a case; a committee that handed it on is out.
        if *caller != referrer && *caller != holder {
            return Err(ApiError::PermissionDenied(format!("{caller} no longer holds case {case_id}")));
        }
        let mut revised_referral = None;
        match &payload {
            Payload::ExtensionRequest(x) => {
                if !(1..=MAX_EXTENSION_DAYS).contains(&x.days) {
                    return Err(ApiError::invalid("extension.days", format!("must be 1 to {MAX_EXTENSION_DAYS}")));
                }
                if x.limit() == TimeLimit::Unspecified {
                    return Err(ApiError::invalid("extension.limit", "name the time limit to extend"));
                }
                missing_consent(&row.referral, x)?
                    .map_or(Ok(()), |p| Err(ApiError::invalid("extension.consents", format!("party {p} has not consented"))))?;
            }
            Payload::Amendment(a) => {
                if let Some(revised) = &a.revised {
                    validate_referral(revised).map_err(|e| e.within("amendment.revised"))?;
                    revised_referral = Some(amended(&row.referral, revised)?);
                }
            }
            Payload::ConfirmationRequest(_) if referrer.kind != AgencyKind::Court => {
                return Err(ApiError::FailedPrecondition(format!(
                    "a judicial confirmation request goes to the referring court, and this case's referrer is {referrer}"
                )));
            }
            _ => {}
        }
        let mut lc = Lifecycle::at(state_from(&row.state)?, row.before_cancel.as_deref().map(state_from).transpose()?);
        let step = lc.apply(&payload).map_err(refusal)?;
        // Referrers talk to the holder; everybody else answers the referrer.
        let recipient = if *caller == referrer { holder.clone() } else { referrer.clone() };
        let (to_field, new_holder) = match (&payload, &step.new_holder) {
            (Payload::Redirect(_), Some(h)) => ("redirect.to", Some(h)),
            (_, Some(h)) => ("escalation.to_agency", Some(h)),
            (_, None) => ("", None),
        };
        let new_holder = match new_holder {
            Some(h) => Some(
                AgencyKind::try_from(h.kind)
                    .ok()
                    .and_then(|k| AgencyNode::new(k, &h.code).ok())
                    .ok_or_else(|| ApiError::invalid(to_field, "not a valid agency"))?,
            ),
            None => None,
        };
        // Handing the case to another body: it must be a known mediation body other than this one.
        let forward_to = new_holder.clone().filter(|h| *h != holder);
        if let Some(to) = &forward_to {
            if to.kind != AgencyKind::Mediation {
                return Err(ApiError::invalid(to_field, "a case is handed on only to a mediation body"));
            }
            self.check_known(to, to_field)?;
        }
        let header = Header {
            case_id,
            case_code: row.case_code.clone(),
            channel: Channel::try_from(row.channel).unwrap_or(Channel::Unspecified),
            sender: caller.clone(),
            recipient,
            causation_id: self.last_inbound(&mut tx, caller, case_id).await?,
        };
        let mut env = envelope::build(&header, payload);
        update_case(&mut tx, caller, case_id, &lc, new_holder.as_ref(), revised_referral.as_ref())
            .await
            .context("updating the case")?;
        self.record_out(&mut tx, caller, &mut env, lc.state).await?;
        if let Some(to) = &forward_to {
            self.forward(&mut tx, caller, &row, &referrer, to, &env, lc.state).await?;
        }
        tx.commit().await.context("committing")?;
        self.wake();
        self.view(caller, case_id).await
    }

    /// The case as `caller` sees it. An agency reads only the cases it sent or received:
    /// `PERMISSION_DENIED` if another agency of this service has the case, `NOT_FOUND` if none
    /// has. Party identity numbers are unmasked only for the mediation body holding the case,
    /// which must reach the parties; everybody else sees them masked.
    pub async fn view(&self, caller: &AgencyNode, case_id: Uuid) -> Result<CaseView, ApiError> {
        if !self.serves(caller) {
            return Err(ApiError::PermissionDenied(format!("this service does not act for {caller}")));
        }
        // One snapshot for the row and its timeline, so a view never shows a message without
        // the state it led to.
        let mut tx = self.snapshot().await?;
        let row: Option<CaseRowWithTime> = sqlx::query_as(CASE_BY_OWNER)
            .bind(caller.kind.as_str())
            .bind(&caller.code)
            .bind(case_id)
            .fetch_optional(&mut *tx)
            .await
            .context("reading the case")?;
        let Some(CaseRowWithTime { row, updated_at }) = row else {
            return Err(self.not_owned(caller, case_id).await);
        };
        let events = self.events(&mut tx, caller, &[case_id]).await?;
        drop(tx); // read-only: rolling back is ending it
        let mut timeline = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        for ev in events {
            let env = Envelope::decode(ev.envelope.as_slice()).context("decoding a stored envelope")?;
            timeline.push(TimelineItem {
                message_id: env.message_id.clone(),
                kind: MessageKind::from_routing_segment(&ev.kind).unwrap_or_default(),
                direction: ev.direction,
                sender: env.sender.clone(),
                recipient: env.recipient.clone(),
                occurred_at: ev.occurred_at,
                state_after: state_from(&ev.state_after)?,
                summary: env.payload.as_ref().map(summary).unwrap_or_default(),
                causation_id: env.causation_id.clone(),
            });
            if let Some(p) = env.payload {
                payloads.push((ev.occurred_at, p));
            }
        }
        let clock = ClockPolicyKind::try_from(row.clock_policy).unwrap_or(ClockPolicyKind::Unspecified);
        let refs: Vec<(DateTime<Utc>, &Payload)> = payloads.iter().map(|(t, p)| (*t, p)).collect();
        let holder = node_from(&row.holder_kind, &row.holder_code)?;
        let referrer = node_from(&row.referrer_kind, &row.referrer_code)?;
        let handed_on = holder != *caller && referrer != *caller;
        let mut referral = Referral::decode(row.referral.as_slice()).context("decoding the stored referral")?;
        if let Some(f) = &mut referral.forwarded {
            f.history.clear(); // shown as the timeline's `prior` entries
        }
        if !(holder == *caller && caller.kind == AgencyKind::Mediation) {
            referral = masked(referral);
        }
        Ok(CaseView {
            case_id: row.case_id,
            case_code: row.case_code,
            channel: Channel::try_from(row.channel).unwrap_or(Channel::Unspecified),
            referrer,
            holder,
            state: state_from(&row.state)?,
            clock_policy: clock,
            referral,
            // The clocks are the holder's and the referrer's, not a former holder's.
            deadlines: if handed_on { Vec::new() } else { deadlines::deadlines(clock, &refs, &self.calendar, Utc::now()) },
            timeline,
            updated_at,
            handed_on,
        })
    }

    /// `caller`'s cases, most recently changed first, with their deadline status.
    pub async fn list(&self, caller: &AgencyNode, filter: &ListFilter) -> Result<Vec<CaseSummary>, ApiError> {
        if !self.serves(caller) {
            return Err(ApiError::PermissionDenied(format!("this service does not act for {caller}")));
        }
        let limit = i64::from(filter.page_size.clamp(1, 500));
        let mut tx = self.snapshot().await?;
        let rows: Vec<CaseRowWithTime> = sqlx::query_as(
            "SELECT case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code,
                    state, before_cancel, clock_policy, referral, updated_at
             FROM cases
             WHERE owner_kind = $1 AND owner_code = $2
               -- a state filter asks for cases this agency acts on: not those it handed on
               AND ($3::text IS NULL OR (state = $3 AND ((holder_kind = owner_kind AND holder_code = owner_code)
                                                      OR (referrer_kind = owner_kind AND referrer_code = owner_code))))
               AND ($4::int IS NULL OR channel = $4)
               AND ($5::timestamptz IS NULL OR (updated_at, case_id) < ($5, $6))
             ORDER BY updated_at DESC, case_id DESC
             LIMIT $7",
        )
        .bind(caller.kind.as_str())
        .bind(&caller.code)
        .bind(filter.state.map(CaseState::as_str))
        .bind(filter.channel.map(|c| c as i32))
        .bind(filter.after.map(|(t, _)| t))
        .bind(filter.after.map(|(_, id)| id))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .context("listing cases")?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.row.case_id).collect();
        let mut by_case: std::collections::HashMap<Uuid, Vec<(DateTime<Utc>, Payload)>> = std::collections::HashMap::new();
        let events = self.events(&mut tx, caller, &ids).await?;
        drop(tx);
        for ev in events {
            let env = Envelope::decode(ev.envelope.as_slice()).context("decoding a stored envelope")?;
            if let Some(p) = env.payload {
                by_case.entry(ev.case_id).or_default().push((ev.occurred_at, p));
            }
        }
        let now = Utc::now();
        rows.into_iter()
            .map(|r| {
                let clock = ClockPolicyKind::try_from(r.row.clock_policy).unwrap_or(ClockPolicyKind::Unspecified);
                let evs = by_case.get(&r.row.case_id).map(Vec::as_slice).unwrap_or(&[]);
                let refs: Vec<(DateTime<Utc>, &Payload)> = evs.iter().map(|(t, p)| (*t, p)).collect();
                let state = state_from(&r.row.state)?;
                let holder = node_from(&r.row.holder_kind, &r.row.holder_code)?;
                let referrer = node_from(&r.row.referrer_kind, &r.row.referrer_code)?;
                let handed_on = holder != *caller && referrer != *caller;
                let limits =
                    if state.is_final() || handed_on { Vec::new() } else { deadlines::deadlines(clock, &refs, &self.calendar, now) };
                Ok(CaseSummary {
                    case_id: r.row.case_id,
                    case_code: r.row.case_code,
                    channel: Channel::try_from(r.row.channel).unwrap_or(Channel::Unspecified),
                    referrer,
                    holder,
                    state,
                    next_due_at: limits.iter().filter(|d| d.met_at.is_none()).map(|d| d.due_at).min(),
                    overdue: limits.iter().any(|d| d.is_overdue(now)),
                    updated_at: r.updated_at,
                    handed_on,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(ApiError::from)
    }

    /// A read-only transaction that sees one snapshot of the database for all its statements.
    async fn snapshot(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await.context("starting a read")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await.context("starting a read")?;
        Ok(tx)
    }

    async fn events(&self, conn: &mut PgConnection, owner: &AgencyNode, cases: &[Uuid]) -> anyhow::Result<Vec<EventRow>> {
        sqlx::query_as(
            "SELECT case_id, envelope, kind, direction, state_after, occurred_at FROM case_events
             WHERE owner_kind = $1 AND owner_code = $2 AND case_id = ANY($3) ORDER BY seq",
        )
        .bind(owner.kind.as_str())
        .bind(&owner.code)
        .bind(cases)
        .fetch_all(conn)
        .await
        .context("reading the timeline")
    }

    /// Hands the case to `to`: a referral carrying the original referrer, why it moves, and the
    /// case's history, so `to` answers the referrer directly and its clocks keep running.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        tx: &mut PgConnection,
        caller: &AgencyNode,
        row: &CaseRow,
        referrer: &AgencyNode,
        to: &AgencyNode,
        handoff: &Envelope,
        state_after: CaseState,
    ) -> Result<(), ApiError> {
        let history: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT envelope FROM case_events WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3 ORDER BY seq",
        )
        .bind(caller.kind.as_str())
        .bind(&caller.code)
        .bind(row.case_id)
        .fetch_all(&mut *tx)
        .await
        .context("reading the case's history")?;
        // A referral forwarded before carries its own history: keep each message once.
        let history = history
            .into_iter()
            .map(|bytes| {
                let mut env = Envelope::decode(bytes.as_slice()).context("decoding a stored envelope")?;
                if let Some(Payload::Referral(r)) = &mut env.payload
                    && let Some(f) = &mut r.forwarded
                {
                    f.history.clear();
                    return Ok(env.encode_to_vec());
                }
                Ok(bytes)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut referral = Referral::decode(row.referral.as_slice()).context("decoding the stored referral")?;
        referral.forwarded = Some(ForwardedCase {
            original_referrer: Some(AgencyRef::from(referrer)),
            forwarded_by: Some(AgencyRef::from(caller)),
            reason: handoff.kind,
            history,
        });
        let header = Header {
            case_id: row.case_id,
            case_code: row.case_code.clone(),
            channel: Channel::try_from(row.channel).unwrap_or(Channel::Unspecified),
            sender: caller.clone(),
            recipient: to.clone(),
            causation_id: Uuid::parse_str(&handoff.message_id).ok(),
        };
        let mut env = envelope::build(&header, Payload::Referral(referral));
        self.record_out(tx, caller, &mut env, state_after).await?;
        Ok(())
    }

    /// The refusal for a case `who` does not have: `PERMISSION_DENIED` if another agency of this
    /// service has it, `NOT_FOUND` if none has.
    async fn not_owned(&self, who: &AgencyNode, case_id: Uuid) -> ApiError {
        // Another agency's case is refused; a case that has just arrived for `who` (after the
        // caller's lookup) is still "not found", which a retry resolves.
        let elsewhere: Result<bool, _> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM cases WHERE case_id = $1 AND (owner_kind, owner_code) <> ($2, $3))",
        )
        .bind(case_id)
        .bind(who.kind.as_str())
        .bind(&who.code)
        .fetch_one(&self.pool)
        .await;
        match elsewhere {
            Ok(true) => ApiError::PermissionDenied(format!("case {case_id} is not one of {who}'s cases")),
            Ok(false) => ApiError::NotFound(format!("no case {case_id} for {who}")),
            Err(e) => ApiError::Unexpected(anyhow::Error::new(e).context("looking for the case")),
        }
    }

    async fn lock_case(&self, tx: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> Result<CaseRow, ApiError> {
        let row: Option<CaseRow> = sqlx::query_as(
            CASE_BY_OWNER_FOR_UPDATE,
        )
        .bind(owner.kind.as_str())
        .bind(&owner.code)
        .bind(case_id)
        .fetch_optional(&mut *tx)
        .await
        .context("locking the case")?;
        match row {
            Some(r) => Ok(r),
            None => Err(self.not_owned(owner, case_id).await),
        }
    }

    async fn last_inbound(&self, tx: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> anyhow::Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT message_id FROM case_events WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3
               AND direction = 'in' AND kind <> 'delivery_evidence' ORDER BY seq DESC LIMIT 1",
        )
        .bind(owner.kind.as_str())
        .bind(&owner.code)
        .bind(case_id)
        .fetch_optional(&mut *tx)
        .await?)
    }

    /// Stages `env` and records it in the owner's timeline.
    async fn record_out(&self, tx: &mut PgConnection, owner: &AgencyNode, env: &mut Envelope, state_after: CaseState) -> anyhow::Result<()> {
        outbox::stage(tx, &self.topology, env).await.context("staging the envelope")?;
        insert_event(tx, owner, env, "out", state_after).await
    }
}

/// Stores a case's new state (and its new holder, when the step moved it).
async fn update_case(
    conn: &mut PgConnection,
    owner: &AgencyNode,
    case_id: Uuid,
    lc: &Lifecycle,
    new_holder: Option<&AgencyNode>,
    referral: Option<&(Vec<u8>, i32)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cases SET state = $4, before_cancel = $5,
                holder_kind = COALESCE($6, holder_kind), holder_code = COALESCE($7, holder_code),
                referral = COALESCE($8, referral), clock_policy = COALESCE($9, clock_policy), updated_at = now()
         WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3",
    )
    .bind(owner.kind.as_str())
    .bind(&owner.code)
    .bind(case_id)
    .bind(lc.state.as_str())
    .bind(lc.before_cancel.map(CaseState::as_str))
    .bind(new_holder.map(|h| h.kind.as_str()))
    .bind(new_holder.map(|h| h.code.clone()))
    .bind(referral.map(|(bytes, _)| bytes.as_slice()))
    .bind(referral.map(|(_, clock)| *clock))
    .execute(conn)
    .await?;
    Ok(())
}

fn agency_str(a: Option<&AgencyRef>) -> String {
    a.map(|a| format!("{}:{}", AgencyKind::try_from(a.kind).map(|k| k.as_str()).unwrap_or("?"), a.code)).unwrap_or_default()
}

async fn insert_event(tx: &mut PgConnection, owner: &AgencyNode, env: &Envelope, direction: &str, state_after: CaseState) -> anyhow::Result<()> {
    let occurred = envelope::from_timestamp(env.occurred_at.as_ref()).unwrap_or_else(Utc::now);
    sqlx::query(
        "INSERT INTO case_events (owner_kind, owner_code, case_id, message_id, direction, kind, sender, recipient,
                                  occurred_at, state_after, envelope)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (owner_kind, owner_code, message_id) DO NOTHING",
    )
    .bind(owner.kind.as_str())
    .bind(&owner.code)
    .bind(Uuid::parse_str(&env.case_id)?)
    .bind(Uuid::parse_str(&env.message_id)?)
    .bind(direction)
    .bind(env.kind().routing_segment())
    .bind(agency_str(env.sender.as_ref()))
    .bind(agency_str(env.recipient.as_ref()))
    .bind(occurred)
    .bind(state_after.as_str())
    .bind(env.encode_to_vec())
    .execute(&mut *tx)
    .await
    .context("recording the event")?;
    Ok(())
}

/// The first party of the stored referral that has not consented to extension `x`, if any
/// (an extension needs every party's consent).
fn missing_consent(stored: &[u8], x: &duijie_proto::v1::ExtensionRequest) -> Result<Option<String>, ApiError> {
    let parties = Referral::decode(stored).context("decoding the stored referral")?.parties;
    Ok(parties
        .into_iter()
        .find(|p| !x.consents.iter().any(|c| c.party_id == p.party_id && c.consented))
        .map(|p| p.party_id))
}

/// The stored referral after an amendment, and its clock policy: the revised content, keeping
/// what the referrer cannot change by amending (its request id, the forwarding of a handed-on
/// case, and the clock policy when the revision names none).
fn amended(stored: &[u8], revised: &Referral) -> Result<(Vec<u8>, i32), ApiError> {
    let old = Referral::decode(stored).context("decoding the stored referral")?;
    let mut new = revised.clone();
    new.client_request_id = old.client_request_id;
    new.forwarded = old.forwarded;
    if new.clock_policy.as_ref().is_none_or(|c| c.kind() == ClockPolicyKind::Unspecified) {
        new.clock_policy = old.clock_policy;
    }
    let clock = new.clock_policy.as_ref().map_or(0, |c| c.kind);
    Ok((new.encode_to_vec(), clock))
}

/// `referral` as shown to an agency that does not need the parties' identity numbers.
pub fn masked(mut referral: Referral) -> Referral {
    for p in &mut referral.parties {
        if let Some(id) = &mut p.identity {
            id.number = duijie_domain::identity::mask(&id.number);
        }
    }
    referral
}

/// A one-line summary of a message for timelines.
pub fn summary(payload: &Payload) -> String {
    use duijie_proto::v1::outcome::Kind;
    let agency = |a: Option<&AgencyRef>| agency_str(a);
    match payload {
        Payload::Referral(r) => match &r.forwarded {
            Some(f) => format!("handed on by {} ({})", agency(f.forwarded_by.as_ref()), f.reason().routing_segment()),
            None => format!("{} parties; {}", r.parties.len(), r.cause_of_action),
        },
        Payload::Amendment(a) => a.reason.clone(),
        Payload::Cancellation(c) => format!("{}: {}", c.reason().as_str_name(), c.explanation),
        Payload::SupervisionNotice(n) => format!("{}: {}", n.level().as_str_name(), n.instructions),
        Payload::Receipt(r) => format!("signed for by {}", r.signed_by),
        Payload::Accept(a) => format!("accepted by {}", a.accepted_by),
        Payload::Reject(r) => format!("{}: {}", r.reason().as_str_name(), r.explanation),
        Payload::Redirect(r) => format!("to {}: {}", agency(r.to.as_ref()), r.reason),
        Payload::Assignment(a) => a.mediator.as_ref().map(|m| format!("mediator {}", m.name)).unwrap_or_default(),
        Payload::Escalation(e) => format!("{} → {} {}", e.from_tier().as_str_name(), e.to_tier().as_str_name(), agency(e.to_agency.as_ref())),
        Payload::Progress(p) => p.summary.clone(),
        Payload::InfoRequest(q) => q.questions.join("; "),
        Payload::ExtensionRequest(x) => format!("{} +{} days", x.limit().as_str_name(), x.days),
        Payload::Outcome(o) => match &o.kind {
            Some(Kind::Settled(s)) => format!("settled: {}", s.terms.join("; ")),
            Some(Kind::Failed(f)) => format!("failed: {}", f.reason().as_str_name()),
            Some(Kind::Withdrawn(_)) => "withdrawn".into(),
            None => String::new(),
        },
        Payload::ConfirmationRequest(_) => "judicial confirmation requested".into(),
        Payload::ConfirmationDecision(d) => format!("{} {}", d.decision().as_str_name(), d.document_number),
        Payload::AgreementRecognition(a) => format!("recognised {}", a.document_number),
        Payload::ReconciliationReview(r) => r.conclusion().as_str_name().to_owned(),
        Payload::Performance(p) => p.status().as_str_name().to_owned(),
        Payload::FollowUp(f) => format!("{}: {}", f.satisfaction().as_str_name(), f.summary),
        Payload::Closure(c) => format!("{}: {}", c.basis().as_str_name(), c.summary),
        Payload::CancellationConfirmation(c) => if c.confirmed { "cancel confirmed".into() } else { format!("cancel refused: {}", c.reason) },
        Payload::DispositionNotice(d) => format!("{} {}", d.disposition().as_str_name(), d.document_number),
        Payload::DeliveryEvidence(e) => format!("{} {} to {}", e.evidence_type().as_str_name(), e.message_kind().routing_segment(), agency(e.delivered_to.as_ref())),
        Payload::DeadlineWarning(_) => "deadline near".into(),
        Payload::DeadlineBreached(_) => "deadline passed".into(),
    }
}

/// The channel a referring agency's referrals travel on.
pub fn channel_of(kind: AgencyKind) -> Option<Channel> {
    match kind {
        AgencyKind::Court => Some(Channel::Court),
        AgencyKind::Police => Some(Channel::Police),
        AgencyKind::Petition => Some(Channel::Petition),
        AgencyKind::Procuratorate => Some(Channel::Procuratorate),
        _ => None,
    }
}

/// Input checks of a referral, naming the field at fault.
pub fn validate_referral(r: &Referral) -> Result<(), ApiError> {
    if r.parties.is_empty() {
        return Err(ApiError::invalid("parties", "at least one party is required"));
    }
    for (i, p) in r.parties.iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(ApiError::invalid(format!("parties[{i}].name"), "is required"));
        }
        if let Some(id) = &p.identity {
            duijie_domain::identity::validate(id.document_type(), &id.number)
                .map_err(|e| ApiError::invalid(format!("parties[{i}].identity.number"), e.to_string()))?;
        }
    }
    if let Some(m) = &r.amount
        && m.minor_units < 0
    {
        return Err(ApiError::invalid("amount", "must not be negative"));
    }
    if r.clock_policy.as_ref().is_none_or(|c| c.kind() == ClockPolicyKind::Unspecified) {
        return Err(ApiError::invalid("clock_policy", "is required"));
    }
    if r.facts.trim().is_empty() {
        return Err(ApiError::invalid("facts", "are required"));
    }
    Ok(())
}

impl Agency {
    /// Delivery evidence back to the sender for what `owner` durably took (not for evidence or
    /// deadline notices themselves).
    async fn evidence(&self, conn: &mut PgConnection, owner: &AgencyNode, env: &Envelope) -> Result<(), HandleError> {
        let kind = env.kind();
        if matches!(kind, MessageKind::DeliveryEvidence | MessageKind::DeadlineWarning | MessageKind::DeadlineBreached) {
            return Ok(());
        }
        let sender = env.sender.as_ref().ok_or_else(|| HandleError::Rejected("no sender".into()))?;
        let sender_kind = AgencyKind::try_from(sender.kind).unwrap_or_default();
        let to = AgencyNode::new(sender_kind, &sender.code).map_err(|e| HandleError::Rejected(e.to_string()))?;
        let header = Header {
            case_id: Uuid::parse_str(&env.case_id).map_err(|e| HandleError::Rejected(e.to_string()))?,
            case_code: env.case_code.clone(),
            channel: env.channel(),
            sender: AgencyNode::new(AgencyKind::Bus, &owner.code).map_err(|e| HandleError::Rejected(e.to_string()))?,
            recipient: to,
            causation_id: Uuid::parse_str(&env.message_id).ok(),
        };
        let now = Utc::now();
        let mut evidence = envelope::build(
            &header,
            Payload::DeliveryEvidence(DeliveryEvidence {
                evidence_type: EvidenceType::Delivered as i32,
                message_id: env.message_id.clone(),
                message_kind: kind as i32,
                delivered_to: Some(AgencyRef::from(owner)),
                consumer: format!("{owner}"),
                delivered_at: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 0 }),
                ..Default::default()
            }),
        );
        outbox::stage(conn, &self.topology, &mut evidence).await.map_err(|e| HandleError::Transient(e.into()))?;
        Ok(())
    }
}

impl Handler for Agency {
    async fn handle(&self, conn: &mut PgConnection, msg: &Inbound) -> Result<(), HandleError> {
        let env = &msg.envelope;
        let recipient = env.recipient.as_ref().ok_or_else(|| HandleError::Rejected("no recipient".into()))?;
        let owner = AgencyKind::try_from(recipient.kind)
            .ok()
            .and_then(|k| AgencyNode::new(k, &recipient.code).ok())
            .filter(|n| self.serves(n))
            .ok_or_else(|| HandleError::Rejected(format!("this service does not serve {}", agency_str(Some(recipient)))))?;
        let sender_kind = env.sender.as_ref().and_then(|s| AgencyKind::try_from(s.kind).ok()).unwrap_or_default();
        let kind = env.kind();
        env.check_sender_kind().map_err(|e| HandleError::Rejected(e.to_string()))?;
        let case_id = Uuid::parse_str(&env.case_id).map_err(|e| HandleError::Rejected(e.to_string()))?;
        let state_after = match env.payload.as_ref() {
            Some(Payload::Referral(referral)) => {
                let sender = env.sender.as_ref().ok_or_else(|| HandleError::Rejected("no sender".into()))?;
                let sender_node = AgencyNode::new(sender_kind, &sender.code).map_err(|e| HandleError::Rejected(e.to_string()))?;
                let clock = referral.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind());
                // A referral handed on by another mediation body names the original referrer
                // (who the new holder answers) and how far the case had come.
                let (referrer, state) = match &referral.forwarded {
                    None => (sender_node, CaseState::Delivered),
                    Some(f) => {
                        // Only a mediation body hands a case on, in its own name, for a case
                        // a referring agency sent.
                        if sender_kind != AgencyKind::Mediation || f.forwarded_by.as_ref() != Some(sender) {
                            return Err(HandleError::Rejected("a forwarded referral comes from the mediation body that hands the case on".into()));
                        }
                        let original = f
                            .original_referrer
                            .as_ref()
                            .and_then(|r| AgencyKind::try_from(r.kind).ok().and_then(|k| AgencyNode::new(k, &r.code).ok()))
                            .filter(|n| channel_of(n.kind).is_some())
                            .ok_or_else(|| HandleError::Rejected("a forwarded referral names no referring agency as its original referrer".into()))?;
                        let state = match f.reason() {
                            MessageKind::Redirect => CaseState::Delivered,
                            MessageKind::Escalation => CaseState::InMediation,
                            other => return Err(HandleError::Rejected(format!("a case is not handed on by {other}"))),
                        };
                        (original, state)
                    }
                };
                // A case may come back to a body that handed it on before: it holds it again.
                let inserted = sqlx::query(
                    "INSERT INTO cases (owner_kind, owner_code, case_id, case_code, channel, referrer_kind, referrer_code,
                                        holder_kind, holder_code, state, clock_policy, referral)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $1, $2, $8, $9, $10)
                     ON CONFLICT (owner_kind, owner_code, case_id) DO UPDATE
                        SET holder_kind = EXCLUDED.holder_kind, holder_code = EXCLUDED.holder_code, state = EXCLUDED.state,
                            before_cancel = NULL, referral = EXCLUDED.referral, clock_policy = EXCLUDED.clock_policy,
                            updated_at = now()
                        -- only a case this body handed on, coming back from the body that holds it now
                        WHERE $11 AND cases.holder_kind = $12 AND cases.holder_code = $13",
                )
                .bind(owner.kind.as_str())
                .bind(&owner.code)
                .bind(case_id)
                .bind(&env.case_code)
                .bind(env.channel)
                .bind(referrer.kind.as_str())
                .bind(&referrer.code)
                .bind(state.as_str())
                .bind(clock as i32)
                .bind(referral.encode_to_vec())
                .bind(referral.forwarded.is_some())
                .bind(sender_kind.as_str())
                .bind(&sender.code)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Err(HandleError::Rejected(format!("case {case_id} already exists here")));
                }
                if let Some(f) = &referral.forwarded {
                    let mut lc = Lifecycle::referred();
                    for bytes in &f.history {
                        let prior = Envelope::decode(bytes.as_slice()).map_err(|e| HandleError::Rejected(format!("history: {e}")))?;
                        prior.check().map_err(|e| HandleError::Rejected(format!("history: {e}")))?;
                        if prior.case_id != env.case_id {
                            return Err(HandleError::Rejected("history: a message of another case".into()));
                        }
                        if let Some(p) = &prior.payload
                            && !matches!(p, Payload::Referral(_))
                        {
                            let _ = lc.apply(p); // the sender's machine already accepted it
                        }
                        insert_event(conn, &owner, &prior, "prior", lc.state).await.map_err(HandleError::Transient)?;
                    }
                }
                state
            }
            Some(payload) => {
                let row: Option<CaseRow> = sqlx::query_as(CASE_BY_OWNER_FOR_UPDATE)
                    .bind(owner.kind.as_str())
                    .bind(&owner.code)
                    .bind(case_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                let row = row.ok_or_else(|| HandleError::Rejected(format!("unknown case {case_id}")))?;
                // Only the other end of the handoff speaks for the case: the referrer, or the
                // current holder (whose service also signs its delivery evidence).
                // Delivery evidence is signed by the bus; it speaks for the agency it names as
                // `delivered_to` (agency codes are unique per kind only).
                let speaker = match payload {
                    Payload::DeliveryEvidence(ev) => ev.delivered_to.as_ref(),
                    _ => env.sender.as_ref(),
                };
                let speaker_kind = speaker.and_then(|s| AgencyKind::try_from(s.kind).ok()).unwrap_or_default();
                let speaker_code = speaker.map(|s| s.code.as_str()).unwrap_or("");
                let from_referrer = speaker_kind.as_str() == row.referrer_kind && speaker_code == row.referrer_code;
                let from_holder = speaker_kind.as_str() == row.holder_kind && speaker_code == row.holder_code;
                // Deadline notices come from the audit store (sender kind `bus`, checked above).
                let notice = matches!(payload, Payload::DeadlineWarning(_) | Payload::DeadlineBreached(_));
                // Evidence from a body that handed the case on (it took a message and passed it
                // on) is a fact to record, with no effect on the case.
                if !from_referrer && !from_holder && matches!(payload, Payload::DeliveryEvidence(_)) {
                    let current = state_from(&row.state).map_err(|e| HandleError::Rejected(e.to_string()))?;
                    insert_event(conn, &owner, env, "in", current).await.map_err(HandleError::Transient)?;
                    return Ok(());
                }
                if !from_referrer && !from_holder && !notice {
                    return Err(HandleError::Rejected(format!(
                        "{} is neither the referrer nor the holder of case {case_id}",
                        agency_str(env.sender.as_ref())
                    )));
                }
                let owner_holds = row.holder_kind == owner.kind.as_str() && row.holder_code == owner.code;
                let owner_referred = row.referrer_kind == owner.kind.as_str() && row.referrer_code == owner.code;
                let bus_fact = matches!(payload, Payload::DeliveryEvidence(_) | Payload::DeadlineWarning(_) | Payload::DeadlineBreached(_));
                if !owner_holds && !owner_referred {
                    let current = state_from(&row.state).map_err(|e| HandleError::Rejected(e.to_string()))?;
                    if from_referrer && !bus_fact {
                        // This body handed the case on before the referrer heard of it: the
                        // referrer's message goes on to the current holder (a new message that
                        // names the original as its cause), instead of stopping at a body that no
                        // longer acts on the case.
                        let holder = node_from(&row.holder_kind, &row.holder_code).map_err(|e| HandleError::Rejected(e.to_string()))?;
                        let mut passed = env.clone();
                        passed.message_id = Uuid::now_v7().to_string();
                        passed.causation_id.clone_from(&env.message_id);
                        passed.recipient = Some(AgencyRef::from(&holder));
                        insert_event(conn, &owner, env, "in", current).await.map_err(HandleError::Transient)?;
                        outbox::stage(conn, &self.topology, &mut passed).await.map_err(|e| HandleError::Transient(e.into()))?;
                        tracing::info!(case = %case_id, kind = %kind, to = %holder, "passed a referrer's message on to the current holder");
                        // This body did take it: the referrer gets its evidence, then the holder's.
                        return self.evidence(conn, &owner, env).await;
                    }
                    // A body that handed the case on only records what still reaches it (the new
                    // holder's evidence for the forwarded referral): its copy stays as it was
                    // handed on, out of its inbox and its clocks.
                    insert_event(conn, &owner, env, "in", current).await.map_err(HandleError::Transient)?;
                    return Ok(());
                }
                let parse = |s: &str| CaseState::parse(s).ok_or_else(|| HandleError::Rejected(format!("bad state {s}")));
                let mut lc = Lifecycle::at(parse(&row.state)?, row.before_cancel.as_deref().map(parse).transpose()?);
                // Evidence moves a case to DELIVERED only when it says the referral was delivered.
                let counts = match payload {
                    Payload::DeliveryEvidence(ev) => {
                        ev.evidence_type() == EvidenceType::Delivered && ev.message_kind() == MessageKind::Referral
                    }
                    _ => true,
                };
                let step = if counts {
                    lc.apply(payload).map_err(|r| HandleError::Rejected(format!("refused: {r}")))?
                } else {
                    duijie_domain::lifecycle::Step { from: lc.state, to: lc.state, new_holder: None }
                };
                let new_holder = match &step.new_holder {
                    Some(h) => Some(
                        AgencyKind::try_from(h.kind)
                            .ok()
                            .and_then(|k| AgencyNode::new(k, &h.code).ok())
                            .ok_or_else(|| HandleError::Rejected("the new holder is not a valid agency".into()))?,
                    ),
                    None => None,
                };
                let revised = match payload {
                    Payload::Amendment(a) => match &a.revised {
                        Some(r) => Some(amended(&row.referral, r).map_err(|e| HandleError::Rejected(e.to_string()))?),
                        None => None,
                    },
                    _ => None,
                };
                update_case(conn, &owner, case_id, &lc, new_holder.as_ref(), revised.as_ref()).await?;
                lc.state
            }
            None => return Err(HandleError::Rejected("no payload".into())),
        };
        insert_event(conn, &owner, env, "in", state_after).await.map_err(HandleError::Transient)?;
        self.evidence(conn, &owner, env).await
    }

    fn committed(&self, _msg: &Inbound) {
        self.wake(); // the delivery evidence staged with it can go out at once
    }
}
