//! What an agency reads: one case with its timeline and legal time limits, or a page of its
//! cases. Party identity numbers are unmasked only for the mediation body holding the case.

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::server::ApiError;
use duijie_domain::deadlines::{self, DeadlineStatus};
use duijie_domain::{AgencyNode, CaseState, Role};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, AgencyRef, Channel, ClockPolicyKind, Envelope, MessageKind, Referral};
use prost::Message as _;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Agency;
use crate::store::{self, StoredCase};

/// A case as the calling agency sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseView {
    pub case_id: Uuid,
    pub case_code: String,
    pub channel: Channel,
    pub referrer: AgencyNode,
    pub holder: AgencyNode,
    /// The court a confirmation application was made to, when it is not the referrer.
    pub court: Option<AgencyNode>,
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
    /// What the caller may send next (nothing once closed or handed on).
    pub allowed_next: Vec<MessageKind>,
    /// The parties' identity, contact and address are sealed for this reader.
    pub parties_sealed: bool,
    /// The case's data key was erased: nobody can read them any more.
    pub parties_erased: bool,
}

/// What a view can do with the referral's sealed parties.
pub(crate) enum PartyKey {
    /// Nothing: they stay sealed (lists, action answers, readers other than the holder).
    Sealed,
    /// The case's key, released to the holder: they are opened.
    Open(duijie_common::sealing::Key),
    /// The key was erased.
    Erased,
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
    /// The message itself (a referral's identity numbers masked, a forwarded history left out:
    /// [`duijie_domain::identity::shown`]), for the reader to render in its own language.
    pub message: Envelope,
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

/// A case row and its timeline as read for a view.
pub(crate) struct LoadedView {
    stored: StoredCase,
    events: Vec<store::EventRow>,
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

impl Agency {
    /// The case as `caller` sees it. An agency reads only the cases it sent or received:
    /// `PERMISSION_DENIED` if another agency of this service has the case, `NOT_FOUND` if none
    /// has. Party identity numbers are unmasked only for the mediation body holding the case,
    /// which must reach the parties; everybody else sees them masked.
    pub async fn view(&self, caller: &AgencyNode, case_id: Uuid) -> Result<CaseView, ApiError> {
        self.check_serves(caller)?;
        // One statement reads the row and its timeline, so a view never shows a message without
        // the state it led to.
        let mut conn = self.db.acquire().await?;
        let loaded = self.load_view(&mut conn, caller, case_id).await?;
        drop(conn);
        let key = self.party_key(caller, &loaded).await;
        self.build_view_with(caller, loaded, key)
    }

    /// The case's key for its holder, which must reach the parties (the key service records the
    /// read); anyone else, or a case whose parties are not sealed, gets none.
    async fn party_key(&self, caller: &AgencyNode, loaded: &LoadedView) -> PartyKey {
        let Some(keys) = &self.keys else { return PartyKey::Sealed };
        let holder = loaded.stored.case.role_of(caller) == Role::Holder && caller.kind() == AgencyKind::Mediation;
        // Only the holder's view asks for the key; decoding the referral to see whether it is
        // sealed is left for it.
        if !holder || !Referral::decode(loaded.stored.referral.as_slice()).is_ok_and(|r| duijie_common::sealing::is_sealed(&r)) {
            return PartyKey::Sealed;
        }
        match keys.open(caller, loaded.stored.case_id, "view").await {
            Ok(k) => PartyKey::Open(k),
            Err(duijie_common::sealing::KeyError::Erased) => PartyKey::Erased,
            Err(e) => {
                // The view still answers, with the parties sealed (and says so).
                tracing::warn!(case_id = %loaded.stored.case_id, error = %e, "cannot open the parties' data for the holder");
                PartyKey::Sealed
            }
        }
    }

    /// What a view of the case is made of, read on `conn`: a snapshot, or the transaction of an
    /// action before its commit (which sees its own changes, and holds the case row). A case
    /// that is not `caller`'s is refused by asking on the same connection, never a second one:
    /// many calls each holding one connection and waiting for another would deadlock the pool.
    pub(crate) async fn load_view(&self, conn: &mut PgConnection, caller: &AgencyNode, case_id: Uuid) -> Result<LoadedView, ApiError> {
        let Some((stored, events)) = store::case_with_timeline(conn, caller, case_id).await? else {
            return Err(self.not_owned(conn, caller, case_id).await);
        };
        Ok(LoadedView { stored, events })
    }

    /// The view from what [`load_view`](Self::load_view) read (no database).
    pub(crate) fn build_view(&self, caller: &AgencyNode, loaded: LoadedView) -> Result<CaseView, ApiError> {
        self.build_view_with(caller, loaded, PartyKey::Sealed)
    }

    /// [`build_view`](Self::build_view), the sealed parties opened with `key` if it is given.
    pub(crate) fn build_view_with(&self, caller: &AgencyNode, loaded: LoadedView, key: PartyKey) -> Result<CaseView, ApiError> {
        let LoadedView { stored, events } = loaded;
        let mut timeline = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        for ev in events {
            let env = Envelope::decode(ev.envelope.as_slice()).context("decoding a stored envelope")?;
            if let Some(p) = &env.payload {
                payloads.push((ev.occurred_at, p.clone()));
            }
            timeline.push(TimelineItem {
                message_id: env.message_id.clone(),
                kind: MessageKind::from_routing_segment(&ev.kind).unwrap_or_default(),
                direction: ev.direction,
                sender: env.sender.clone(),
                recipient: env.recipient.clone(),
                occurred_at: ev.occurred_at,
                state_after: CaseState::parse(&ev.state_after).with_context(|| format!("unknown state {:?}", ev.state_after))?,
                causation_id: env.causation_id.clone(),
                message: duijie_domain::identity::shown(env),
            });
        }
        let refs: Vec<(DateTime<Utc>, &Payload)> = payloads.iter().map(|(t, p)| (*t, p)).collect();
        let StoredCase { case_id, case_code, case, clock_policy, referral, updated_at } = stored;
        let role = case.role_of(caller);
        let handed_on = role == Role::Other;
        let mut referral = Referral::decode(referral.as_slice()).context("decoding the stored referral")?;
        if let Some(f) = &mut referral.forwarded {
            f.history.clear(); // shown as the timeline's `prior` entries
        }
        let (mut parties_sealed, mut parties_erased) = (false, false);
        if duijie_common::sealing::is_sealed(&referral) {
            let opened = match &key {
                PartyKey::Open(k) => duijie_common::sealing::open_referral(k, case_id, &mut referral).is_ok(),
                PartyKey::Erased => {
                    parties_erased = true;
                    false
                }
                PartyKey::Sealed => false,
            };
            if !opened {
                duijie_common::sealing::strip_sealed(&mut referral);
                parties_sealed = true;
            }
        }
        if !(role == Role::Holder && caller.kind() == AgencyKind::Mediation) {
            referral = duijie_domain::identity::masked(referral);
        }
        Ok(CaseView {
            case_id,
            case_code,
            channel: case.channel,
            allowed_next: case.allowed_next(caller),
            state: case.lifecycle.state,
            referrer: case.referrer,
            holder: case.holder,
            court: case.court,
            clock_policy,
            referral,
            // The clocks are the holder's and the referrer's, not a former holder's.
            deadlines: if handed_on { Vec::new() } else { deadlines::deadlines(clock_policy, &refs, &self.calendar, Utc::now()) },
            timeline,
            updated_at,
            handed_on,
            parties_sealed,
            parties_erased,
        })
    }

    /// `caller`'s cases, most recently changed first, with their deadline status.
    pub async fn list(&self, caller: &AgencyNode, filter: &ListFilter) -> Result<Vec<CaseSummary>, ApiError> {
        self.check_serves(caller)?;
        let mut tx = store::snapshot(&self.db).await?;
        let cases = store::list(&mut tx, caller, filter).await?;
        let ids: Vec<Uuid> = cases.iter().map(|c| c.case_id).collect();
        let events = store::events(&mut tx, caller, &ids).await?;
        drop(tx);
        let mut by_case: HashMap<Uuid, Vec<(DateTime<Utc>, Payload)>> = HashMap::new();
        for ev in events {
            let env = Envelope::decode(ev.envelope.as_slice()).context("decoding a stored envelope")?;
            if let Some(p) = env.payload {
                by_case.entry(ev.case_id).or_default().push((ev.occurred_at, p));
            }
        }
        let now = Utc::now();
        Ok(cases
            .into_iter()
            .map(|c| {
                let evs = by_case.get(&c.case_id).map(Vec::as_slice).unwrap_or(&[]);
                let refs: Vec<(DateTime<Utc>, &Payload)> = evs.iter().map(|(t, p)| (*t, p)).collect();
                let state = c.case.lifecycle.state;
                let handed_on = c.case.role_of(caller) == Role::Other;
                let limits =
                    if state.is_final() || handed_on { Vec::new() } else { deadlines::deadlines(c.clock_policy, &refs, &self.calendar, now) };
                CaseSummary {
                    case_id: c.case_id,
                    case_code: c.case_code,
                    channel: c.case.channel,
                    referrer: c.case.referrer,
                    holder: c.case.holder,
                    state,
                    next_due_at: limits.iter().filter(|d| d.met_at.is_none()).map(|d| d.due_at).min(),
                    overdue: limits.iter().any(|d| d.is_overdue(now)),
                    updated_at: c.updated_at,
                    handed_on,
                }
            })
            .collect())
    }

    /// The refusal for a case `who` does not have: `PERMISSION_DENIED` if another agency of this
    /// service has it, `NOT_FOUND` if none has. Asked on `conn`, the connection the caller
    /// already holds (never a second one).
    pub(crate) async fn not_owned(&self, conn: &mut PgConnection, who: &AgencyNode, case_id: Uuid) -> ApiError {
        // Another agency's case is refused; a case that has just arrived for `who` (after the
        // caller's lookup) is still "not found", which a retry resolves.
        match store::held_elsewhere(conn, who, case_id).await {
            Ok(true) => ApiError::PermissionDenied(format!("case {case_id} is not one of {who}'s cases")),
            Ok(false) => ApiError::NotFound(format!("no case {case_id} for {who}")),
            Err(e) => ApiError::Unexpected(e),
        }
    }
}
