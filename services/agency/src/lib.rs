//! The core of every agency service: cases as one agency node sees them, the lifecycle applied
//! to every message it sends (refused if the state does not allow it) and receives (dead-lettered
//! if not), delivery evidence for what it durably took, and the case's legal time limits.
//!
//! Outgoing: [`Agency::submit_referral`] and [`Agency::send`] check the caller's rights and the
//! case's state, update the case and stage the envelope in one transaction.
//! Incoming: [`Agency`] is the inbox [`Handler`] of the nodes it serves.

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
    AgencyKind, AgencyRef, Channel, ClockPolicyKind, DeliveryEvidence, Envelope, EvidenceType, MessageKind, Referral,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseView {
    pub case_id: Uuid,
    pub case_code: String,
    pub channel: Channel,
    pub referrer: AgencyNode,
    pub holder: AgencyNode,
    pub state: CaseState,
    pub clock_policy: ClockPolicyKind,
    pub deadlines: Vec<DeadlineStatus>,
    /// Kinds of the case's messages in order, as this agency sent or received them.
    pub timeline: Vec<(String, MessageKind, CaseState)>,
}

/// One agency service's core, serving `nodes` (all of one kind).
#[derive(Clone)]
pub struct Agency {
    pool: PgPool,
    topology: Topology,
    waker: Option<RelayWaker>,
    nodes: BTreeSet<(i32, String)>,
    calendar: WorkCalendar,
}

/// One case of one owner, as [`CaseRow`].
const CASE_BY_OWNER: &str = "SELECT case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code,
        state, before_cancel, clock_policy, referral
 FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3";

/// [`CASE_BY_OWNER`], locking the row for a state change.
const CASE_BY_OWNER_FOR_UPDATE: &str = "SELECT case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code,
        state, before_cancel, clock_policy, referral
 FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3 FOR UPDATE";

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
    ApiError::FailedPrecondition(r.to_string())
}

impl Agency {
    /// The core for `nodes`, on `pool` (migrated with [`migrator`]).
    pub fn new(pool: PgPool, topology: Topology, nodes: &[AgencyNode], waker: Option<RelayWaker>) -> Self {
        Self {
            pool,
            topology,
            waker,
            nodes: nodes.iter().map(|n| (n.kind as i32, n.code.clone())).collect(),
            calendar: WorkCalendar::bundled(),
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
            return Err(ApiError::PermissionDenied(format!("a {} may not send referrals", caller.kind.as_str())));
        }
        if to.kind != AgencyKind::Mediation {
            return Err(ApiError::invalid("recipient", "referrals go to a mediation body"));
        }
        validate_referral(&referral)?;
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
        .await
        .context("creating the case")?
        .rows_affected();
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
        let kind = payload.kind();
        if !self.serves(caller) {
            return Err(ApiError::PermissionDenied(format!("this service does not act for {caller}")));
        }
        if !kind.allowed_senders().contains(&caller.kind) {
            return Err(ApiError::PermissionDenied(format!("a {} may not send {kind}", caller.kind.as_str())));
        }
        let mut tx = self.pool.begin().await.context("beginning")?;
        let row = self.lock_case(&mut tx, caller, case_id).await?;
        let referrer = node_from(&row.referrer_kind, &row.referrer_code)?;
        let holder = node_from(&row.holder_kind, &row.holder_code)?;
        // Only the two ends of the handoff act on a case; a committee that handed it on is out.
        if *caller != referrer && *caller != holder {
            return Err(ApiError::PermissionDenied(format!("{caller} no longer holds case {case_id}")));
        }
        match &payload {
            Payload::ExtensionRequest(x) => {
                if !(1..=MAX_EXTENSION_DAYS).contains(&x.days) {
                    return Err(ApiError::invalid("extension_request.days", format!("must be 1 to {MAX_EXTENSION_DAYS}")));
                }
                // An extension needs the consent of every party of the referral.
                let parties = Referral::decode(row.referral.as_slice()).context("decoding the stored referral")?.parties;
                if let Some(p) = parties
                    .iter()
                    .find(|p| !x.consents.iter().any(|c| c.party_id == p.party_id && c.consented))
                {
                    return Err(ApiError::invalid("extension_request.consents", format!("party {} has not consented", p.party_id)));
                }
            }
            Payload::ConfirmationRequest(_) if referrer.kind != AgencyKind::Court => {
                return Err(ApiError::FailedPrecondition(format!(
                    "a judicial confirmation request goes to a court, and this case's referrer is {referrer}; not supported on this channel yet"
                )));
            }
            _ => {}
        }
        let mut lc = Lifecycle::at(state_from(&row.state)?, row.before_cancel.as_deref().map(state_from).transpose()?);
        let step = lc.apply(&payload).map_err(refusal)?;
        // Referrers talk to the holder; everybody else answers the referrer.
        let recipient = if *caller == referrer { holder.clone() } else { referrer.clone() };
        let new_holder = match &step.new_holder {
            Some(h) => Some(node_from(AgencyKind::try_from(h.kind).map(|k| k.as_str()).unwrap_or(""), &h.code)
                .map_err(|e| ApiError::invalid("to", e.to_string()))?),
            None => None,
        };
        if new_holder.as_ref().is_some_and(|h| *h != holder) {
            // Handing the case to another committee needs the forwarded referral to carry the
            // original referrer and the state it is handed on in (review of 2026-11-25); until
            // then it is refused rather than sent to a committee that would drop it.
            return Err(ApiError::FailedPrecondition(
                "handing a case to another committee or agency is not supported yet; escalate within the same committee".into(),
            ));
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
        update_case(&mut tx, caller, case_id, &lc, new_holder.as_ref()).await.context("updating the case")?;
        self.record_out(&mut tx, caller, &mut env, lc.state).await?;
        tx.commit().await.context("committing")?;
        self.wake();
        self.view(caller, case_id).await
    }

    /// The case as `caller` sees it; `NOT_FOUND` if it has none (whoever else has it).
    pub async fn view(&self, caller: &AgencyNode, case_id: Uuid) -> Result<CaseView, ApiError> {
        let row: Option<CaseRow> = sqlx::query_as(
            CASE_BY_OWNER,
        )
        .bind(caller.kind.as_str())
        .bind(&caller.code)
        .bind(case_id)
        .fetch_optional(&self.pool)
        .await
        .context("reading the case")?;
        let row = row.ok_or_else(|| ApiError::NotFound(format!("no case {case_id} for {caller}")))?;
        let events: Vec<(Vec<u8>, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT envelope, kind, state_after, occurred_at FROM case_events
             WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3 ORDER BY seq",
        )
        .bind(caller.kind.as_str())
        .bind(&caller.code)
        .bind(case_id)
        .fetch_all(&self.pool)
        .await
        .context("reading the timeline")?;
        let mut payloads = Vec::with_capacity(events.len());
        let mut timeline = Vec::with_capacity(events.len());
        for (bytes, kind, state, at) in &events {
            let env = Envelope::decode(bytes.as_slice()).context("decoding a stored envelope")?;
            timeline.push((env.message_id.clone(), MessageKind::from_routing_segment(kind).unwrap_or_default(), state_from(state)?));
            if let Some(p) = env.payload {
                payloads.push((*at, p));
            }
        }
        let clock = ClockPolicyKind::try_from(row.clock_policy).unwrap_or(ClockPolicyKind::Unspecified);
        let refs: Vec<(DateTime<Utc>, &Payload)> = payloads.iter().map(|(t, p)| (*t, p)).collect();
        Ok(CaseView {
            case_id: row.case_id,
            case_code: row.case_code,
            channel: Channel::try_from(row.channel).unwrap_or(Channel::Unspecified),
            referrer: node_from(&row.referrer_kind, &row.referrer_code)?,
            holder: node_from(&row.holder_kind, &row.holder_code)?,
            state: state_from(&row.state)?,
            clock_policy: clock,
            deadlines: deadlines::deadlines(clock, &refs, &self.calendar, Utc::now()),
            timeline,
        })
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
        row.ok_or_else(|| ApiError::NotFound(format!("no case {case_id} for {owner}")))
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
async fn update_case(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid, lc: &Lifecycle, new_holder: Option<&AgencyNode>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cases SET state = $4, before_cancel = $5,
                holder_kind = COALESCE($6, holder_kind), holder_code = COALESCE($7, holder_code), updated_at = now()
         WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3",
    )
    .bind(owner.kind.as_str())
    .bind(&owner.code)
    .bind(case_id)
    .bind(lc.state.as_str())
    .bind(lc.before_cancel.map(CaseState::as_str))
    .bind(new_holder.map(|h| h.kind.as_str()))
    .bind(new_holder.map(|h| h.code.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

fn agency_str(a: Option<&AgencyRef>) -> String {
    a.map(|a| format!("{}:{}", AgencyKind::try_from(a.kind).map(|k| k.as_str()).unwrap_or("?"), a.code)).unwrap_or_default()
}

async fn insert_event(tx: &mut PgConnection, owner: &AgencyNode, env: &Envelope, direction: &str, state_after: CaseState) -> anyhow::Result<()> {
    let occurred = env
        .occurred_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_else(Utc::now);
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
        if !kind.allowed_senders().contains(&sender_kind) {
            return Err(HandleError::Rejected(format!("a {} may not send {kind}", sender_kind.as_str())));
        }
        let case_id = Uuid::parse_str(&env.case_id).map_err(|e| HandleError::Rejected(e.to_string()))?;
        let state_after = match env.payload.as_ref() {
            Some(Payload::Referral(referral)) => {
                let sender = env.sender.as_ref().ok_or_else(|| HandleError::Rejected("no sender".into()))?;
                let sender_node = AgencyNode::new(sender_kind, &sender.code).map_err(|e| HandleError::Rejected(e.to_string()))?;
                let clock = referral.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind());
                let (ref_kind, ref_code) = (sender_kind.as_str().to_owned(), sender_node.code.clone());
                let inserted = sqlx::query(
                    "INSERT INTO cases (owner_kind, owner_code, case_id, case_code, channel, referrer_kind, referrer_code,
                                        holder_kind, holder_code, state, clock_policy, referral)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $1, $2, $8, $9, $10)
                     ON CONFLICT DO NOTHING",
                )
                .bind(owner.kind.as_str())
                .bind(&owner.code)
                .bind(case_id)
                .bind(&env.case_code)
                .bind(env.channel)
                .bind(ref_kind)
                .bind(ref_code)
                .bind(CaseState::Delivered.as_str())
                .bind(clock as i32)
                .bind(referral.encode_to_vec())
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Err(HandleError::Rejected(format!("case {case_id} already exists here")));
                }
                CaseState::Delivered
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
                if !from_referrer && !from_holder {
                    return Err(HandleError::Rejected(format!(
                        "{} is neither the referrer nor the holder of case {case_id}",
                        agency_str(env.sender.as_ref())
                    )));
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
                update_case(conn, &owner, case_id, &lc, new_holder.as_ref()).await?;
                lc.state
            }
            None => return Err(HandleError::Rejected("no payload".into())),
        };
        insert_event(conn, &owner, env, "in", state_after).await.map_err(HandleError::Transient)?;
        // Delivery evidence back to the sender for what this service durably took (not for
        // evidence or deadline notices themselves).
        if !matches!(kind, MessageKind::DeliveryEvidence | MessageKind::DeadlineWarning | MessageKind::DeadlineBreached) {
            let sender = env.sender.as_ref().ok_or_else(|| HandleError::Rejected("no sender".into()))?;
            let to = AgencyNode::new(sender_kind, &sender.code).map_err(|e| HandleError::Rejected(e.to_string()))?;
            let header = Header {
                case_id,
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
                    delivered_to: Some(AgencyRef::from(&owner)),
                    consumer: format!("{owner}"),
                    delivered_at: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 0 }),
                    ..Default::default()
                }),
            );
            outbox::stage(conn, &self.topology, &mut evidence).await.map_err(|e| HandleError::Transient(e.into()))?;
        }
        Ok(())
    }

    fn committed(&self, _msg: &Inbound) {
        self.wake(); // the delivery evidence staged with it can go out at once
    }
}
