//! The agency database: each node's copy of its cases and their timelines. Every statement of
//! the crate is here, so the desk's rules ([`duijie_domain::Case`]) never wait on SQL and the
//! SQL never decides a rule.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_domain::{AgencyNode, Case, CaseState, Lifecycle};
use duijie_proto::v1::{Channel, ClockPolicyKind, Envelope};
use prost::Message as _;
use duijie_common::db::{ApiPool, ApiTx};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::view::ListFilter;

/// One case as one node keeps it.
pub struct StoredCase {
    pub case_id: Uuid,
    pub case_code: String,
    pub case: Case,
    pub clock_policy: ClockPolicyKind,
    /// protobuf-encoded `Referral` (as amended)
    pub referral: Vec<u8>,
    pub updated_at: DateTime<Utc>,
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
    court_kind: Option<String>,
    court_code: Option<String>,
    state: String,
    before_cancel: Option<String>,
    clock_policy: i32,
    referral: Vec<u8>,
    updated_at: DateTime<Utc>,
}

fn state(s: &str) -> anyhow::Result<CaseState> {
    CaseState::parse(s).ok_or_else(|| anyhow::anyhow!("unknown case state {s:?} in the database"))
}

impl TryFrom<CaseRow> for StoredCase {
    type Error = anyhow::Error;

    fn try_from(r: CaseRow) -> anyhow::Result<Self> {
        let lifecycle = Lifecycle::at(state(&r.state)?, r.before_cancel.as_deref().map(state).transpose()?);
        Ok(Self {
            case_id: r.case_id,
            case_code: r.case_code,
            case: Case {
                channel: Channel::try_from(r.channel).unwrap_or(Channel::Unspecified),
                referrer: AgencyNode::from_parts(&r.referrer_kind, &r.referrer_code).context("the case's referrer")?,
                holder: AgencyNode::from_parts(&r.holder_kind, &r.holder_code).context("the case's holder")?,
                court: match (&r.court_kind, &r.court_code) {
                    (Some(kind), Some(code)) => Some(AgencyNode::from_parts(kind, code).context("the case's confirming court")?),
                    _ => None,
                },
                lifecycle,
            },
            clock_policy: ClockPolicyKind::try_from(r.clock_policy).unwrap_or(ClockPolicyKind::Unspecified),
            referral: r.referral,
            updated_at: r.updated_at,
        })
    }
}

const CASE_COLUMNS: &str = "case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code, court_kind, court_code,
        state, before_cancel, clock_policy, referral, updated_at";

/// `owner`'s copy of the case, its row locked for a state change (a read goes through
/// [`case_with_timeline`]).
pub async fn locked_case(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> anyhow::Result<Option<StoredCase>> {
    let sql = format!("SELECT {CASE_COLUMNS} FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3 FOR UPDATE");
    let row: Option<CaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner.kind_str())
        .bind(owner.code())
        .bind(case_id)
        .fetch_optional(conn)
        .await
        .context("reading the case")?;
    row.map(StoredCase::try_from).transpose()
}

/// When the case's settlement was reported (the Outcome that left it SETTLED), in `owner`'s timeline.
pub async fn settled_at(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> anyhow::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT max(occurred_at) FROM case_events
         WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3 AND kind = 'outcome' AND state_after = 'SETTLED'",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .fetch_one(conn)
    .await
    .context("looking for the settlement")
}

/// Whether `owner`'s timeline of the case holds a disposition already (sent or received): a
/// referrer tells its disposition once.
pub async fn disposition_told(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> anyhow::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM case_events
                        WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3 AND kind = 'disposition_notice')",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .fetch_one(conn)
    .await
    .context("looking for a disposition")
}

/// Whether `owner` has a copy of the case.
pub async fn case_exists(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3)")
        .bind(owner.kind_str())
        .bind(owner.code())
        .bind(case_id)
        .fetch_one(conn)
        .await
        .context("looking for the case")
}

/// The advisory lock key of a case (its id folded to 64 bits; a collision only makes two cases
/// wait for each other).
pub fn case_lock_key(case_id: Uuid) -> i64 {
    let (hi, lo) = case_id.as_u64_pair();
    i64::from_ne_bytes((hi ^ lo).to_ne_bytes())
}

/// Takes the transaction's locks on `cases` (keys from [`case_lock_key`]) in ascending order. Every
/// transaction that writes a case's timeline takes its lock first, before its first write gives
/// it a transaction id: so within a case, transaction ids rise in timeline order and the live
/// feed (`feed.rs`, ordered by transaction id) keeps each case's order.
pub async fn lock_cases(conn: &mut PgConnection, keys: &[i64]) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY 1) AS ordered")
        .bind(&keys)
        .fetch_one(conn)
        .await
        .context("locking the cases")?;
    Ok(())
}

/// `owner`'s copy of the case with its timeline, in one statement: one snapshot without a
/// transaction, one round trip (a look at a case is most of the calls an agency gets).
pub async fn case_with_timeline(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> anyhow::Result<Option<(StoredCase, Vec<EventRow>)>> {
    let row: Option<CaseTimelineRow> = sqlx::query_as(
        "SELECT c.case_id, c.case_code, c.channel, c.referrer_kind, c.referrer_code, c.holder_kind, c.holder_code,
                c.court_kind, c.court_code, c.state, c.before_cancel, c.clock_policy, c.referral, c.updated_at,
                t.envelopes, t.kinds, t.directions, t.states, t.times
         FROM cases c
         LEFT JOIN LATERAL (
             SELECT array_agg(e.envelope ORDER BY e.seq) AS envelopes, array_agg(e.kind ORDER BY e.seq) AS kinds,
                    array_agg(e.direction ORDER BY e.seq) AS directions, array_agg(e.state_after ORDER BY e.seq) AS states,
                    array_agg(e.occurred_at ORDER BY e.seq) AS times
             FROM case_events e
             WHERE e.owner_kind = c.owner_kind AND e.owner_code = c.owner_code AND e.case_id = c.case_id
         ) t ON true
         WHERE c.owner_kind = $1 AND c.owner_code = $2 AND c.case_id = $3",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .fetch_optional(conn)
    .await
    .context("reading the case and its timeline")?;
    let Some(CaseTimelineRow { case, envelopes, kinds, directions, states, times }) = row else { return Ok(None) };
    let (envelopes, kinds, directions, states, times) =
        (envelopes.unwrap_or_default(), kinds.unwrap_or_default(), directions.unwrap_or_default(), states.unwrap_or_default(), times.unwrap_or_default());
    anyhow::ensure!(
        [kinds.len(), directions.len(), states.len(), times.len()].iter().all(|n| *n == envelopes.len()),
        "the timeline's columns came back with different lengths"
    );
    let events = envelopes
        .into_iter()
        .zip(kinds)
        .zip(directions)
        .zip(states)
        .zip(times)
        .map(|((((envelope, kind), direction), state_after), occurred_at)| EventRow { case_id, envelope, kind, direction, state_after, occurred_at })
        .collect();
    Ok(Some((StoredCase::try_from(case)?, events)))
}

#[derive(sqlx::FromRow)]
struct CaseTimelineRow {
    #[sqlx(flatten)]
    case: CaseRow,
    envelopes: Option<Vec<Vec<u8>>>,
    kinds: Option<Vec<String>>,
    directions: Option<Vec<String>>,
    states: Option<Vec<String>>,
    times: Option<Vec<DateTime<Utc>>>,
}

/// `owner`'s cases, most recently changed first.
pub async fn list(conn: &mut PgConnection, owner: &AgencyNode, filter: &ListFilter) -> anyhow::Result<Vec<StoredCase>> {
    let sql = format!(
        "SELECT {CASE_COLUMNS} FROM cases
         WHERE owner_kind = $1 AND owner_code = $2
           -- a state filter asks for cases this agency acts on: not those it handed on
           AND ($3::text IS NULL OR (state = $3 AND ((holder_kind = owner_kind AND holder_code = owner_code)
                                                  OR (referrer_kind = owner_kind AND referrer_code = owner_code)
                                                  OR (court_kind = owner_kind AND court_code = owner_code))))
           AND ($4::int IS NULL OR channel = $4)
           AND ($5::timestamptz IS NULL OR (updated_at, case_id) < ($5, $6))
         ORDER BY updated_at DESC, case_id DESC
         LIMIT $7"
    );
    let rows: Vec<CaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner.kind_str())
        .bind(owner.code())
        .bind(filter.state.map(CaseState::as_str))
        .bind(filter.channel.map(|c| c as i32))
        .bind(filter.after.map(|(t, _)| t))
        .bind(filter.after.map(|(_, id)| id))
        .bind(i64::from(filter.page_size.clamp(1, 500)))
        .fetch_all(conn)
        .await
        .context("listing cases")?;
    rows.into_iter().map(StoredCase::try_from).collect()
}

/// What a referrer stores for a referral it sends.
pub struct NewReferral<'a> {
    pub case_id: Uuid,
    pub case_code: &'a str,
    pub case: &'a Case,
    pub clock_policy: ClockPolicyKind,
    pub client_request_id: &'a str,
    pub referral: Vec<u8>,
}

/// Stores the referrer's copy of a new case; `false` if the referrer's request id was already
/// used (a retried submit).
pub async fn insert_referred(conn: &mut PgConnection, r: &NewReferral<'_>) -> Result<bool, sqlx::Error> {
    let owner = &r.case.referrer;
    Ok(sqlx::query(
        "INSERT INTO cases (owner_kind, owner_code, case_id, case_code, channel, referrer_kind, referrer_code,
                            holder_kind, holder_code, state, clock_policy, client_request_id, referral)
         VALUES ($1, $2, $3, $4, $5, $1, $2, $6, $7, $8, $9, NULLIF($10, ''), $11)
         ON CONFLICT (owner_kind, owner_code, client_request_id) WHERE client_request_id IS NOT NULL DO NOTHING",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(r.case_id)
    .bind(r.case_code)
    .bind(r.case.channel as i32)
    .bind(r.case.holder.kind_str())
    .bind(r.case.holder.code())
    .bind(r.case.lifecycle.state.as_str())
    .bind(r.clock_policy as i32)
    .bind(r.client_request_id)
    .bind(&r.referral)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// The case a referrer's earlier submit with `client_request_id` created.
pub async fn referred_by_request(conn: &mut PgConnection, owner: &AgencyNode, client_request_id: &str) -> anyhow::Result<Uuid> {
    sqlx::query_scalar("SELECT case_id FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND client_request_id = $3")
        .bind(owner.kind_str())
        .bind(owner.code())
        .bind(client_request_id)
        .fetch_one(conn)
        .await
        .context("looking up the earlier submit")
}

/// Stores the holder's copy of a case it received: new, or a case this body handed on before
/// coming back from the body that holds it now (`forwarded` and `sender` is that holder).
/// `false` if the case exists here otherwise.
#[allow(clippy::too_many_arguments)]
pub async fn insert_received(
    conn: &mut PgConnection,
    owner: &AgencyNode,
    case_id: Uuid,
    case_code: &str,
    case: &Case,
    clock_policy: ClockPolicyKind,
    referral: &[u8],
    forwarded_by: Option<&AgencyNode>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
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
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .bind(case_code)
    .bind(case.channel as i32)
    .bind(case.referrer.kind_str())
    .bind(case.referrer.code())
    .bind(case.lifecycle.state.as_str())
    .bind(clock_policy as i32)
    .bind(referral)
    .bind(forwarded_by.is_some())
    .bind(forwarded_by.map(AgencyNode::kind_str))
    .bind(forwarded_by.map(|n| n.code()))
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// `court`'s copy of a case a mediation body applied to it for judicial confirmation (the
/// court did not refer it); `false` if the case exists here already.
pub async fn insert_applied(
    conn: &mut PgConnection,
    court: &AgencyNode,
    case_id: Uuid,
    case_code: &str,
    case: &Case,
    clock_policy: ClockPolicyKind,
    referral: &[u8],
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO cases (owner_kind, owner_code, case_id, case_code, channel, referrer_kind, referrer_code,
                            holder_kind, holder_code, court_kind, court_code, state, clock_policy, referral)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $1, $2, $10, $11, $12)
         ON CONFLICT (owner_kind, owner_code, case_id) DO NOTHING",
    )
    .bind(court.kind_str())
    .bind(court.code())
    .bind(case_id)
    .bind(case_code)
    .bind(case.channel as i32)
    .bind(case.referrer.kind_str())
    .bind(case.referrer.code())
    .bind(case.holder.kind_str())
    .bind(case.holder.code())
    .bind(case.lifecycle.state.as_str())
    .bind(clock_policy as i32)
    .bind(referral)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Stores a case's new position (and its new holder, when the step moved it; the court a
/// confirmation application named; its amended referral and clock policy, when amended).
pub async fn update(
    conn: &mut PgConnection,
    owner: &AgencyNode,
    case_id: Uuid,
    lc: &Lifecycle,
    new_holder: Option<&AgencyNode>,
    court: Option<&AgencyNode>,
    referral: Option<&(Vec<u8>, i32)>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE cases SET state = $4, before_cancel = $5,
                holder_kind = COALESCE($6, holder_kind), holder_code = COALESCE($7, holder_code),
                referral = COALESCE($8, referral), clock_policy = COALESCE($9, clock_policy),
                court_kind = COALESCE($10, court_kind), court_code = COALESCE($11, court_code), updated_at = now()
         WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .bind(lc.state.as_str())
    .bind(lc.before_cancel.map(CaseState::as_str))
    .bind(new_holder.map(AgencyNode::kind_str))
    .bind(new_holder.map(|h| h.code()))
    .bind(referral.map(|(bytes, _)| bytes.as_slice()))
    .bind(referral.map(|(_, clock)| *clock))
    .bind(court.map(AgencyNode::kind_str))
    .bind(court.map(|c| c.code()))
    .execute(conn)
    .await
    .context("updating the case")?;
    Ok(())
}

/// How a message came into a node's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    /// Before this node held the case (the history a handed-on case carries).
    Prior,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
            Direction::Prior => "prior",
        }
    }
}

/// Adds `env` to `owner`'s timeline of its case (once per message).
pub async fn insert_event(conn: &mut PgConnection, owner: &AgencyNode, env: &Envelope, direction: Direction, state_after: CaseState) -> anyhow::Result<()> {
    let occurred = duijie_common::envelope::from_timestamp(env.occurred_at.as_ref()).unwrap_or_else(Utc::now);
    sqlx::query(
        "INSERT INTO case_events (owner_kind, owner_code, case_id, message_id, direction, kind, sender, recipient,
                                  occurred_at, state_after, envelope)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (owner_kind, owner_code, message_id) DO NOTHING",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(Uuid::parse_str(&env.case_id)?)
    .bind(Uuid::parse_str(&env.message_id)?)
    .bind(direction.as_str())
    .bind(env.kind().routing_segment())
    .bind(duijie_domain::agency::ref_str(env.sender.as_ref()))
    .bind(duijie_domain::agency::ref_str(env.recipient.as_ref()))
    .bind(occurred)
    .bind(state_after.as_str())
    .bind(env.encode_to_vec())
    .execute(conn)
    .await
    .context("recording the event")?;
    Ok(())
}

/// One message of a timeline as stored.
#[derive(sqlx::FromRow)]
pub struct EventRow {
    pub case_id: Uuid,
    pub envelope: Vec<u8>,
    pub kind: String,
    pub direction: String,
    pub state_after: String,
    pub occurred_at: DateTime<Utc>,
}

/// The timelines of `owner`'s `cases`, in order.
pub async fn events(conn: &mut PgConnection, owner: &AgencyNode, cases: &[Uuid]) -> anyhow::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT case_id, envelope, kind, direction, state_after, occurred_at FROM case_events
         WHERE owner_kind = $1 AND owner_code = $2 AND case_id = ANY($3) ORDER BY seq",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(cases)
    .fetch_all(conn)
    .await
    .context("reading the timeline")
}

/// The last message about the case that `owner` received from the other end (what its next
/// message answers).
pub async fn last_inbound(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> anyhow::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "SELECT message_id FROM case_events WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3
           AND direction = 'in' AND kind <> 'delivery_evidence' ORDER BY seq DESC LIMIT 1",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .fetch_optional(conn)
    .await
    .context("reading the last message received")
}

/// Whether a node other than `who` has the case (in this service's database).
pub async fn held_elsewhere(conn: &mut PgConnection, who: &AgencyNode, case_id: Uuid) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cases WHERE case_id = $1 AND (owner_kind, owner_code) <> ($2, $3))")
        .bind(case_id)
        .bind(who.kind_str())
        .bind(who.code())
        .fetch_one(conn)
        .await
        .context("looking for the case")
}

/// A read-only transaction of a call that sees one snapshot of the database for all its
/// statements.
pub async fn snapshot(db: &ApiPool) -> anyhow::Result<ApiTx> {
    let mut tx = db.begin().await.context("starting a read")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await.context("starting a read")?;
    Ok(tx)
}

/// One timeline row as the live feed hands it out.
#[derive(sqlx::FromRow)]
pub struct FeedRow {
    /// The writing transaction's id (`xid8` as text).
    pub tx: String,
    pub seq: i64,
    pub case_id: Uuid,
    pub case_code: String,
    pub message_id: Uuid,
    pub kind: String,
    pub direction: String,
    pub state_after: String,
    pub occurred_at: DateTime<Utc>,
    /// Written by a transaction older than every one still running: final, and nothing not yet
    /// visible can come before it (migration `0104_feed.sql`).
    pub ready: bool,
}

/// `owner`'s timeline rows after `(tx, seq)` in feed order, at most `limit`; the ready ones come
/// first (a row not ready holds back every row after it).
pub async fn feed_after(conn: &mut PgConnection, owner: &AgencyNode, tx: &str, seq: i64, limit: i64) -> anyhow::Result<Vec<FeedRow>> {
    sqlx::query_as(
        "SELECT e.tx::text AS tx, e.seq, e.case_id, c.case_code, e.message_id, e.kind, e.direction, e.state_after, e.occurred_at,
                e.tx < pg_snapshot_xmin(pg_current_snapshot()) AS ready
         FROM case_events e
         JOIN cases c ON c.owner_kind = e.owner_kind AND c.owner_code = e.owner_code AND c.case_id = e.case_id
         WHERE e.owner_kind = $1 AND e.owner_code = $2 AND (e.tx, e.seq) > ($3::xid8, $4)
         ORDER BY e.tx, e.seq
         LIMIT $5",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(tx)
    .bind(seq)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("reading the case changes")
}

/// Where `owner`'s feed stands now: the last row that is ready, or `("0", 0)` before any.
pub async fn feed_end(conn: &mut PgConnection, owner: &AgencyNode) -> anyhow::Result<(String, i64)> {
    let last: Option<(String, i64)> = sqlx::query_as(
        "SELECT tx::text, seq FROM case_events
         WHERE owner_kind = $1 AND owner_code = $2 AND tx < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY tx DESC, seq DESC LIMIT 1",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .fetch_optional(conn)
    .await
    .context("reading where the case changes stand")?;
    Ok(last.unwrap_or_else(|| ("0".to_owned(), 0)))
}

/// The original referral of a case `owner` received directly, as its referrer published and
/// signed it: (envelope, signature, certificate); empty where none was kept (a case this body
/// opened itself, or one received before referrals were signed).
pub async fn referral_proof(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), sqlx::Error> {
    type Proof = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    let row: Option<Proof> = sqlx::query_as(
        "SELECT referral_envelope, referral_signature, referral_signer_cert FROM cases WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(e, s, c)| (e.unwrap_or_default(), s.unwrap_or_default(), c.unwrap_or_default())).unwrap_or_default())
}

/// Keeps the original referral of a case `owner` just received, with its signature.
pub async fn keep_referral_proof(conn: &mut PgConnection, owner: &AgencyNode, case_id: Uuid, envelope: &[u8], signature: &[u8], cert: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cases SET referral_envelope = $4, referral_signature = $5, referral_signer_cert = $6
         WHERE owner_kind = $1 AND owner_code = $2 AND case_id = $3",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(case_id)
    .bind(envelope)
    .bind(signature)
    .bind(cert)
    .execute(conn)
    .await?;
    Ok(())
}
