//! Appending to the log, a batch at a time: every envelope from the tap becomes one record,
//! chained to the previous record of its chain and of its case, and the projections (case state,
//! who took part, deadlines) move in the same transaction.
//!
//! The log is several hash chains (`audit.chains` in the configuration, 1 by default): a case
//! lives on one chain, chosen by a hash of its case id when its first record is appended, and
//! each chain has its own head row (`audit_chains`) and its own gap-free sequence, so writers
//! that append different chains never wait for each other. A batch is appended set-based, each
//! step one statement (or a few, each under `STATEMENT_BYTES` of parameters):
//!
//! 1. skip the message ids already in the log;
//! 2. lock the batch's cases (transaction-level advisory locks, in key order), then read their
//!    projection rows;
//! 3. decide every message in Rust, in order, with the same case desk the agencies run
//!    ([`Case::decide`] through `observe`), keeping each case's row in memory;
//! 4. re-time the cases whose limits may have moved (their earlier records in one read) and
//!    write the deadlines and participants with `UNNEST`;
//! 5. the serialised part: lock the heads of the chains the batch touches (in chain order),
//!    hash every record in Rust, insert the records and message ids with `INSERT … SELECT FROM
//!    UNNEST`, move the heads and write the case rows back; the commit follows.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::inbox::{Batched, HandleError, Handler, Inbound};
use duijie_common::signing::Signature;
use duijie_domain::agency::ref_str;
use duijie_domain::calendar::WorkCalendar;
use duijie_domain::deadlines;
use duijie_domain::lifecycle::{CaseState, Lifecycle, Step};
use duijie_domain::{AgencyNode, Case, Effects, Message};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{
    AgencyKind, AgencyRef, Channel, ClockPolicyKind, ConfirmationDecisionKind, Envelope, outcome,
};
use prost::Message as _;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use tracing::Instrument as _;
use uuid::Uuid;

/// The hash of one record: the record's content (its envelope exactly as received, the state it
/// led to, where it sits in its chain and when it was recorded) chained to the previous record
/// of its chain and of its case. Any edit, deletion or reordering changes a hash or leaves a gap.
pub fn record_hash(
    seq: i64,
    case_seq: i32,
    recorded_at: DateTime<Utc>,
    state_after: &str,
    envelope: &[u8],
    prev_hash: &[u8],
    case_prev_hash: &[u8],
) -> Vec<u8> {
    record_hash_sealed(seq, case_seq, recorded_at, state_after, envelope, prev_hash, case_prev_hash, &Sealed::default())
}

/// [`record_hash`] of a record that also says whether it was refused and how it was signed.
#[allow(clippy::too_many_arguments)]
pub fn record_hash_sealed(
    seq: i64,
    case_seq: i32,
    recorded_at: DateTime<Utc>,
    state_after: &str,
    envelope: &[u8],
    prev_hash: &[u8],
    case_prev_hash: &[u8],
    sealed: &Sealed<'_>,
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"duijie.audit.v1");
    h.update(seq.to_be_bytes());
    h.update(case_seq.to_be_bytes());
    h.update(recorded_at.timestamp_micros().to_be_bytes());
    for part in [prev_hash, case_prev_hash, state_after.as_bytes(), envelope] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    // Records written before signed handoffs carry none of these and hash as they always did.
    if !sealed.is_empty() {
        h.update(b"duijie.audit.v2");
        for part in [sealed.refused, sealed.signature, sealed.signer_cert] {
            match part {
                None => h.update([0u8]),
                Some(p) => {
                    h.update([1u8]);
                    h.update((p.len() as u64).to_be_bytes());
                    h.update(p);
                }
            }
        }
    }
    h.finalize().to_vec()
}

/// What a record says beyond its envelope and state, covered by its hash: why it took no effect
/// (if it did not) and the signature it came with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sealed<'a> {
    /// Why the message took no effect; `None` if it did.
    pub refused: Option<&'a [u8]>,
    /// Its signature (DER), if it carried one.
    pub signature: Option<&'a [u8]>,
    /// The signer's certificate (DER), if it carried one.
    pub signer_cert: Option<&'a [u8]>,
}

impl Sealed<'_> {
    fn is_empty(&self) -> bool {
        self.refused.is_none() && self.signature.is_none() && self.signer_cert.is_none()
    }
}

/// How a refusal for party data in clear starts (`Verify` does not check such a record's
/// signature: its envelope was kept without the data the signature covered).
pub const CLEAR_PARTY_DATA: &str = "party data: ";

/// One message as the tap delivered it to the store: the envelope, the bytes its signature
/// covers, and what the consumer's verifier found.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub envelope: &'a Envelope,
    /// The bytes as published (`None`: encode the envelope, for messages appended directly).
    pub bytes: Option<&'a [u8]>,
    pub signature: Option<&'a Signature>,
    /// The signer the verifier accepted.
    pub signer: Option<&'a str>,
    /// Why the verifier refused its signature: recorded as refused, no effect on the case.
    pub signature_refused: Option<&'a str>,
    /// It carries parties' identity, contact or address in clear (off the tap): recorded as
    /// refused, no effect on the case.
    pub clear_parties: bool,
}

impl<'a> Arrival<'a> {
    /// An envelope appended directly, not off the tap (replays, tests, benchmarks): no signature.
    pub fn direct(envelope: &'a Envelope) -> Self {
        Self { envelope, bytes: None, signature: None, signer: None, signature_refused: None, clear_parties: false }
    }

    fn of(msg: &'a Inbound) -> Self {
        Self {
            envelope: &msg.envelope,
            bytes: Some(&msg.bytes),
            signature: msg.signature.as_ref(),
            signer: msg.signer.as_deref(),
            signature_refused: msg.signature_refused.as_deref(),
            clear_parties: duijie_common::sealing::carried_referral(msg.envelope.payload.as_ref())
                .is_some_and(duijie_common::sealing::has_clear_party_data),
        }
    }
}

/// What the first record of `chain` is chained to. Chain 0 is the log as it was before it was
/// split (its first record follows the empty hash, as it always did); every other chain starts
/// from a value naming it, so a record moved to another chain does not verify there.
pub fn genesis(chain: i32) -> Vec<u8> {
    if chain == 0 {
        return Vec::new();
    }
    let mut h = Sha256::new();
    h.update(b"duijie.audit.chain");
    h.update(chain.to_be_bytes());
    h.finalize().to_vec()
}

/// The chain a new case goes to among `chains`: the first eight bytes of SHA-256 over its id
/// (UUIDv7 ids begin with the time, so the id's own leading bytes would not spread).
pub fn chain_of(case_id: Uuid, chains: u32) -> i32 {
    let digest = Sha256::digest(case_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below `chains`, itself a u32: it fits an i32 for any sane configuration.
    i32::try_from(u64::from_be_bytes(first) % u64::from(chains.max(1))).unwrap_or(0)
}

/// Where a message the log has seen leaves its case: the same desk the agencies run
/// ([`Case::decide`]), so a message their desk refuses is recorded with the state unchanged and
/// the refusal (`Err`, which the record keeps as `refused`; the agencies dead-letter it). A
/// message the desk takes without moving the case (a copy, evidence that counts for nothing) has
/// no step. A case whose referral never reached the log has no referrer to judge by: its
/// lifecycle alone decides.
/// Also returns the court a confirmation application named, when it is not the referrer.
fn observe(c: &CaseRow, lc: Lifecycle, env: &Envelope, payload: &Payload) -> Result<(Lifecycle, Option<Step>, Option<AgencyNode>), String> {
    let from = lc.state;
    let ends = AgencyNode::from_parts(&c.referrer_kind, &c.referrer_code).and_then(|r| Ok((r, AgencyNode::from_parts(&c.holder_kind, &c.holder_code)?)));
    let (Ok((referrer, holder)), Ok(recipient)) = (ends, AgencyNode::from_ref(env.recipient.as_ref())) else {
        let mut lc = lc;
        let step = lc.apply(payload).map_err(|e| e.to_string())?;
        return Ok((lc, Some(step), None));
    };
    let court = match (&c.court_kind, &c.court_code) {
        (Some(kind), Some(code)) => AgencyNode::from_parts(kind, code).ok(),
        _ => None,
    };
    // Delivery evidence speaks for the agency it names as `delivered_to`.
    let speaker = match payload {
        Payload::DeliveryEvidence(ev) => AgencyNode::from_ref(ev.delivered_to.as_ref()),
        _ => AgencyNode::from_ref(env.sender.as_ref()),
    };
    let case = Case { channel: Channel::try_from(c.channel).unwrap_or(Channel::Unspecified), referrer, holder, court, lifecycle: lc.clone() };
    let speaker = speaker.map_err(|e| format!("malformed sender: {e}"))?;
    match case.decide(Message::Observed { sender: &speaker, recipient: &recipient, payload }) {
        Ok(Effects::Apply { lifecycle, new_holder, court, .. }) => {
            let step = Step { from, to: lifecycle.state, new_holder: new_holder.as_ref().map(AgencyRef::from) };
            Ok((lifecycle, Some(step), court))
        }
        Ok(_) => Ok((lc, None, None)),
        Err(refusal) => Err(refusal.to_string()),
    }
}

/// Microsecond precision, as PostgreSQL stores it (the hash must see what the table holds).
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The inbox handler of the audit service.
#[derive(Clone)]
pub struct AuditStore {
    calendar: WorkCalendar,
    /// When a record is recorded: the wall clock, or a fixed time to replay a history.
    recorded_at: Option<DateTime<Utc>>,
    /// How many chains new cases are spread over (at least 1).
    chains: u32,
}

impl Default for AuditStore {
    fn default() -> Self {
        Self { calendar: WorkCalendar::bundled(), recorded_at: None, chains: 1 }
    }
}

impl AuditStore {
    /// A store that records at `at` instead of now: for replaying a log (and testing retention);
    /// the service always records at the wall clock. Recording times never go back along a
    /// chain: a record is stamped no earlier than its chain's last record.
    pub fn recording_at(at: DateTime<Utc>) -> Self {
        Self { recorded_at: Some(at), ..Self::default() }
    }

    /// The same store spreading new cases over `chains` chains (0 counts as 1). Cases already
    /// in the log stay on their chain, so the number may grow at any time.
    pub fn with_chains(self, chains: u32) -> Self {
        Self { chains: chains.max(1), ..self }
    }

    /// How many chains new cases are spread over.
    pub fn chains(&self) -> u32 {
        self.chains
    }
}

/// Creates the head rows of chains `0..chains` that do not exist yet (each at its genesis).
pub async fn ensure_chains(conn: &mut PgConnection, chains: u32) -> Result<(), sqlx::Error> {
    let ids: Vec<i32> = (0..i32::try_from(chains.max(1)).unwrap_or(i32::MAX)).collect();
    ensure_chain_rows(conn, &ids).await
}

async fn ensure_chain_rows(conn: &mut PgConnection, ids: &[i32]) -> Result<(), sqlx::Error> {
    let starts: Vec<Vec<u8>> = ids.iter().map(|c| genesis(*c)).collect();
    sqlx::query(
        "INSERT INTO audit_chains (chain, last_seq, last_hash)
         SELECT c, 0, g FROM unnest($1::int[], $2::bytea[]) AS n(c, g) ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(&starts)
    .execute(conn)
    .await?;
    Ok(())
}

/// A case's projection row, read at the start of a batch, changed in memory by each of its
/// messages and written back once.
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
    before_cancel: Option<String>,
    state_since: DateTime<Utc>,
    clock_policy: i32,
    received_at: DateTime<Utc>,
    signed_at: Option<DateTime<Utc>>,
    accepted_at: Option<DateTime<Utc>>,
    rejected_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    outcome_at: Option<DateTime<Utc>>,
    confirmation_requested_at: Option<DateTime<Utc>>,
    confirmation_granted_at: Option<DateTime<Utc>>,
    closed_at: Option<DateTime<Utc>>,
    last_case_seq: i32,
    last_hash: Vec<u8>,
    overdue_since: Option<DateTime<Utc>>,
    chain: i32,
    /// How a self-accepted case came in (`IntakeSource`; 0 for a referred case).
    intake_source: i32,
    /// Its risk level at intake (`RiskLevel`; 0 for a referred case).
    risk_level: i32,
    /// The court a confirmation application named, when it is not the referrer.
    court_kind: Option<String>,
    court_code: Option<String>,
    /// Every record of the case so far was refused: not counted as a case.
    refused_only: bool,
}

const CASE_COLUMNS: &str = "case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code, state, before_cancel,
     state_since, clock_policy, received_at, signed_at, accepted_at, rejected_at, outcome, outcome_at,
     confirmation_requested_at, confirmation_granted_at, closed_at, last_case_seq, last_hash, overdue_since, chain,
     intake_source, risk_level, court_kind, court_code, refused_only";

/// A case during a batch.
struct Working {
    row: CaseRow,
    /// Whether its limits may have moved (a message that starts, meets, extends or re-times one).
    timing: bool,
    /// Whether it has records from before this batch.
    existed: bool,
    /// This batch's records of the case (when each happened, what it said), for its limits.
    events: Vec<(DateTime<Utc>, Payload)>,
}

/// A record decided but not yet hashed: everything but its chain position and hashes.
struct Pending {
    chain: i32,
    case_id: Uuid,
    case_seq: i32,
    message_id: Uuid,
    kind: &'static str,
    channel: i32,
    sender: String,
    recipient: String,
    occurred_at: DateTime<Utc>,
    causation_id: Option<Uuid>,
    trace_id: String,
    state_after: &'static str,
    envelope: Vec<u8>,
    refused: Option<String>,
    signature: Option<Vec<u8>>,
    signer_cert: Option<Vec<u8>>,
    signer: Option<String>,
}

/// A record ready to insert.
struct LogRow {
    chain: i32,
    seq: i64,
    recorded_at: DateTime<Utc>,
    pending: Pending,
    case_prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// The most bytes of parameters one statement carries. sqlx 0.9.0 leaves Nagle's algorithm on
/// (transact-rs/sqlx#4335, fixed upstream but not released): a statement whose message does not
/// fit the socket's send buffer (16 KiB at first on Linux) waits for PostgreSQL's delayed ACK,
/// 40 ms, which at 128 envelopes a statement cost more than everything else together. So the
/// set-based statements go in runs of rows under this size: a few more round trips, no stall.
const STATEMENT_BYTES: usize = 8 * 1024;

/// Splits `rows` into runs whose parameters (`bytes` each, estimated) stay under
/// [`STATEMENT_BYTES`], at least one row a run.
fn runs<T>(rows: &[T], bytes: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let b = bytes(row);
        if i > start && size + b > STATEMENT_BYTES {
            out.push(&rows[start..i]);
            (start, size) = (i, 0);
        }
        size += b;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

fn kind_of(a: Option<&AgencyRef>) -> &'static str {
    AgencyKind::try_from(a.map_or(0, |a| a.kind)).map(|k| k.as_str()).unwrap_or("unspecified")
}

fn code_of(a: Option<&AgencyRef>) -> String {
    a.map(|a| a.code.clone()).unwrap_or_default()
}

fn rejected(what: impl std::fmt::Display) -> HandleError {
    HandleError::Rejected(what.to_string())
}

/// Sets `slot` to `at` unless it is already set (the first time a case reached a stage counts).
fn stamp(slot: &mut Option<DateTime<Utc>>, at: DateTime<Utc>) {
    if slot.is_none() {
        *slot = Some(at);
    }
}

impl AuditStore {
    /// Appends `env` (once: a message id already in the log is skipped), as appended directly
    /// (unsigned; [`Arrival::direct`]).
    pub async fn append(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), HandleError> {
        self.append_batch(conn, &[env]).await
    }

    /// Appends `envs` directly ([`Arrival::direct`]; see [`AuditStore::append_arrivals`]).
    pub async fn append_batch(&self, conn: &mut PgConnection, envs: &[&Envelope]) -> Result<(), HandleError> {
        let arrivals: Vec<Arrival<'_>> = envs.iter().map(|e| Arrival::direct(e)).collect();
        self.append_arrivals(conn, &arrivals).await
    }

    /// Appends `arrivals` in this order, set-based (see the module's documentation). A message
    /// id already in the log, or twice in `arrivals`, is recorded once. A message whose
    /// signature was refused, or which the case desk refuses, is recorded as refused, with the
    /// reason, and changes nothing else.
    /// Any refusal refuses the whole batch: the inbox then retries its messages one by one.
    pub async fn append_arrivals(&self, conn: &mut PgConnection, arrivals: &[Arrival<'_>]) -> Result<(), HandleError> {
        // 1. What is new.
        let mut parsed = Vec::with_capacity(arrivals.len());
        for a in arrivals {
            let env = a.envelope;
            let message_id = Uuid::parse_str(&env.message_id).map_err(rejected)?;
            let case_id = Uuid::parse_str(&env.case_id).map_err(rejected)?;
            let payload = env.payload.as_ref().ok_or_else(|| rejected("no payload"))?;
            parsed.push((a, message_id, case_id, payload));
        }
        let ids: Vec<Uuid> = parsed.iter().map(|p| p.1).collect();
        let seen: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>("SELECT message_id FROM audit_messages WHERE message_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let mut taken = HashSet::with_capacity(parsed.len());
        parsed.retain(|p| !seen.contains(&p.1) && taken.insert(p.1));
        if parsed.is_empty() {
            return Ok(());
        }

        // 2. Lock the cases (also those the log has not seen yet, which have no row to lock),
        // in one order for every writer, then read them.
        let mut case_ids: Vec<Uuid> = parsed.iter().map(|p| p.2).collect();
        case_ids.sort_unstable();
        case_ids.dedup();
        let mut keys: Vec<i64> = case_ids.iter().map(|c| lock_key(*c)).collect();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY 1) AS ordered")
            .bind(&keys)
            .execute(&mut *conn)
            .await?;
        let sql = format!("SELECT {CASE_COLUMNS} FROM audit_cases WHERE case_id = ANY($1)");
        let rows: Vec<CaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&case_ids).fetch_all(&mut *conn).await?;
        let mut cases: HashMap<Uuid, Working> =
            rows.into_iter().map(|row| (row.case_id, Working { row, timing: false, existed: true, events: Vec::new() })).collect();

        // 3. Decide every message in order.
        let now = Utc::now();
        let mut pending = Vec::with_capacity(parsed.len());
        let mut participants: BTreeSet<(Uuid, &'static str, String)> = BTreeSet::new();
        for (arrival, message_id, case_id, payload) in parsed {
            let env = arrival.envelope;
            let occurred = duijie_common::envelope::from_timestamp(env.occurred_at.as_ref()).map(micros).unwrap_or_else(|| micros(now));
            let refused_on_arrival = arrival
                .signature_refused
                .map(|r| format!("signature: {r}"))
                .or_else(|| arrival.clear_parties.then(|| format!("{CLEAR_PARTY_DATA}identity, contact or address in clear (never sealed); kept without them")));
            let (state_after, refused) = self.decide(&mut cases, env, case_id, payload, occurred, refused_on_arrival)?;
            let w = cases.get_mut(&case_id).ok_or_else(|| rejected("case not kept"))?;
            w.row.last_case_seq += 1;
            if refused.is_none() {
                w.events.push((occurred, payload.clone()));
            }
            // Whoever a forged envelope claims to come from did not take part; the agency it
            // was addressed to may see that it arrived (refused).
            let parties = if arrival.signature_refused.is_some() { vec![env.recipient.as_ref()] } else { vec![env.sender.as_ref(), env.recipient.as_ref()] };
            for a in parties.into_iter().flatten() {
                if !matches!(AgencyKind::try_from(a.kind), Ok(AgencyKind::Bus) | Ok(AgencyKind::Unspecified) | Err(_)) {
                    participants.insert((case_id, kind_of(Some(a)), a.code.clone()));
                }
            }
            pending.push(Pending {
                chain: w.row.chain,
                case_id,
                case_seq: w.row.last_case_seq,
                message_id,
                kind: env.kind().routing_segment(),
                channel: env.channel,
                sender: ref_str(env.sender.as_ref()),
                recipient: ref_str(env.recipient.as_ref()),
                occurred_at: occurred,
                causation_id: if env.causation_id.is_empty() { None } else { Uuid::parse_str(&env.causation_id).ok() },
                trace_id: env.trace.as_ref().and_then(|t| t.traceparent.split('-').nth(1)).unwrap_or_default().to_owned(),
                state_after,
                // Party data that arrived in clear is not kept: the append-only log could never
                // erase it. The record keeps the envelope without it (its signature then no
                // longer matches, which `Verify` expects of such a refusal).
                envelope: if arrival.clear_parties {
                    let mut redacted = env.clone();
                    duijie_common::sealing::strip_party_data(&mut redacted);
                    redacted.encode_to_vec()
                } else {
                    arrival.bytes.map_or_else(|| env.encode_to_vec(), <[u8]>::to_vec)
                },
                refused,
                signature: arrival.signature.map(|s| s.signature.clone()),
                signer_cert: arrival.signature.map(|s| s.cert.clone()),
                signer: arrival.signer.map(str::to_owned),
            });
        }

        // 4. Limits and participants (no chain involved yet).
        self.retime(conn, &mut cases, now).await.map_err(HandleError::Transient)?;
        let participants: Vec<(Uuid, &str, String)> = participants.into_iter().collect();
        for run in runs(&participants, |(_, kind, code)| 40 + kind.len() + code.len()) {
            sqlx::query(
                "INSERT INTO audit_participants (case_id, kind, code)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(run.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(run.iter().map(|p| p.1).collect::<Vec<_>>())
            .bind(run.iter().map(|p| p.2.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }

        // 5. The serialised part: the chains' heads, locked in chain order.
        let mut chains: Vec<i32> = pending.iter().map(|p| p.chain).collect();
        chains.sort_unstable();
        chains.dedup();
        let mut heads = lock_heads(conn, &chains).await?;
        if heads.len() < chains.len() {
            ensure_chain_rows(conn, &chains).await?;
            heads = lock_heads(conn, &chains).await?;
        }
        let mut heads: HashMap<i32, Head> = heads.into_iter().map(|h| (h.chain, h)).collect();
        let wanted = micros(self.recorded_at.unwrap_or_else(Utc::now));
        for h in heads.values_mut() {
            // Never before the chain's last record: retention drops months as prefixes of chains.
            h.recorded_at = h.last_recorded_at.map_or(wanted, |last| wanted.max(last));
        }
        let mut log = Vec::with_capacity(pending.len());
        for p in pending {
            let head = heads.get_mut(&p.chain).ok_or_else(|| HandleError::Transient(anyhow::anyhow!("chain {} has no head", p.chain)))?;
            let w = cases.get_mut(&p.case_id).ok_or_else(|| rejected("case not kept"))?;
            let seq = head.last_seq + 1;
            let case_prev_hash = std::mem::take(&mut w.row.last_hash);
            let sealed = Sealed { refused: p.refused.as_deref().map(str::as_bytes), signature: p.signature.as_deref(), signer_cert: p.signer_cert.as_deref() };
            let hash = record_hash_sealed(seq, p.case_seq, head.recorded_at, p.state_after, &p.envelope, &head.last_hash, &case_prev_hash, &sealed);
            head.last_seq = seq;
            head.last_hash.clone_from(&hash);
            head.moved = true;
            w.row.last_hash.clone_from(&hash);
            log.push(LogRow { chain: p.chain, seq, recorded_at: head.recorded_at, pending: p, case_prev_hash, hash });
        }
        for run in runs(&log, |r| r.pending.envelope.len() + 320) {
            insert_log(conn, run).await?;
        }
        for run in runs(&log, |_| 40) {
            sqlx::query("INSERT INTO audit_messages (message_id, chain, seq) SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[])")
                .bind(run.iter().map(|r| r.pending.message_id).collect::<Vec<_>>())
                .bind(run.iter().map(|r| r.chain).collect::<Vec<_>>())
                .bind(run.iter().map(|r| r.seq).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?;
        }
        let moved: Vec<&Head> = heads.values().filter(|h| h.moved).collect();
        sqlx::query(
            "UPDATE audit_chains h SET last_seq = u.seq, last_hash = u.hash, last_recorded_at = u.at
             FROM unnest($1::int[], $2::bigint[], $3::bytea[], $4::timestamptz[]) AS u(chain, seq, hash, at)
             WHERE h.chain = u.chain",
        )
        .bind(moved.iter().map(|h| h.chain).collect::<Vec<_>>())
        .bind(moved.iter().map(|h| h.last_seq).collect::<Vec<_>>())
        .bind(moved.iter().map(|h| h.last_hash.clone()).collect::<Vec<_>>())
        .bind(moved.iter().map(|h| h.recorded_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        let rows: Vec<CaseRow> = cases.into_values().map(|w| w.row).collect();
        for run in runs(&rows, |r| r.case_code.len() + 360) {
            write_cases(conn, run).await?;
        }
        Ok(())
    }

    /// Decides one message against its case (kept in `cases`, created there on its first record)
    /// and moves the case's row on; returns the state it leaves the case in and, if the message
    /// takes no effect, why (`refused_on_arrival`: its signature, or party data in clear; or the case desk's refusal).
    fn decide(
        &self,
        cases: &mut HashMap<Uuid, Working>,
        env: &Envelope,
        case_id: Uuid,
        payload: &Payload,
        at: DateTime<Utc>,
        refused_on_arrival: Option<String>,
    ) -> Result<(&'static str, Option<String>), HandleError> {
        let parse = |s: &str| CaseState::parse(s).ok_or_else(|| rejected(format!("bad state {s}")));
        let unseen = cases.get(&case_id).is_none_or(|w| w.row.refused_only);
        // A hand-over of a case the log never saw referred: nobody can have handed it on.
        let handed_on_unseen =
            unseen && matches!(payload, Payload::Referral(r) if r.forwarded.as_ref().is_some_and(|f| f.original_referrer != env.sender));
        let refused = refused_on_arrival.or_else(|| {
            handed_on_unseen.then(|| format!("{}: a hand-over of a case the log has never seen referred", ref_str(env.sender.as_ref())))
        });
        if let Some(reason) = refused {
            if let Some(w) = cases.get(&case_id) {
                return Ok((parse(&w.row.state)?.as_str(), Some(reason)));
            }
            // A case the log has not seen: its row is kept (for its place in the chain) but does
            // not count as a case until a message of it takes effect.
            let (state, _) = self.first_record(cases, env, case_id, payload, at)?;
            if let Some(w) = cases.get_mut(&case_id) {
                w.row.refused_only = true;
                w.timing = false;
            }
            return Ok((state, Some(reason)));
        }
        if unseen {
            return self.first_record(cases, env, case_id, payload, at);
        }
        let Some(w) = cases.get_mut(&case_id) else { return Err(rejected("case not kept")) };
        let c = &mut w.row;
        let current = Lifecycle::at(parse(&c.state)?, c.before_cancel.as_deref().map(parse).transpose()?);
        // Where the case stands after this message (the same machine the agencies run; a
        // message their machine refuses is recorded with the state unchanged and the refusal).
        let (lc, step, court) = match payload {
            // A case handed on (redirect, escalation): the holder changed with the hand-over,
            // which the holder hands on (its Redirect/Escalation may be recorded before or after
            // this Referral: the sender is then the holder, or the recipient is).
            Payload::Referral(_) => {
                let is_holder = |a: Option<&AgencyRef>| a.is_some_and(|a| kind_of(Some(a)) == c.holder_kind && a.code == c.holder_code);
                if !(is_holder(env.sender.as_ref()) || is_holder(env.recipient.as_ref())) {
                    return Ok((current.state.as_str(), Some(format!("{}: only the holder hands a case on", ref_str(env.sender.as_ref())))));
                }
                (current, None, None)
            }
            p => match observe(c, current.clone(), env, p) {
                Ok(o) => o,
                Err(refusal) => return Ok((current.state.as_str(), Some(refusal))),
            },
        };
        if let Some(court) = court {
            c.court_kind = Some(court.kind_str().to_owned());
            c.court_code = Some(court.code().to_owned());
        }
        if let Some(h) = step.as_ref().and_then(|s| s.new_holder.as_ref()) {
            c.holder_kind = kind_of(Some(h)).to_owned();
            c.holder_code.clone_from(&h.code);
        }
        if c.state != lc.state.as_str() {
            c.state_since = at;
        }
        c.state = lc.state.as_str().to_owned();
        c.before_cancel = lc.before_cancel.map(|s| s.as_str().to_owned());
        if step.is_some() {
            match payload {
                Payload::Receipt(_) => stamp(&mut c.signed_at, at),
                Payload::Accept(_) => stamp(&mut c.accepted_at, at),
                Payload::Reject(_) => stamp(&mut c.rejected_at, at),
                Payload::Outcome(o) => {
                    let name = match &o.kind {
                        Some(outcome::Kind::Settled(_)) => "settled",
                        Some(outcome::Kind::Failed(_)) => "failed",
                        _ => "withdrawn",
                    };
                    c.outcome.get_or_insert_with(|| name.to_owned());
                    stamp(&mut c.outcome_at, at);
                }
                Payload::ConfirmationRequest(_) => stamp(&mut c.confirmation_requested_at, at),
                Payload::ConfirmationDecision(d) if d.decision() == ConfirmationDecisionKind::Granted => {
                    stamp(&mut c.confirmation_granted_at, at);
                }
                _ => {}
            }
            if lc.state.is_final() {
                stamp(&mut c.closed_at, at);
            }
        }
        c.clock_policy = match payload {
            Payload::Referral(r) => r.clock_policy.as_ref().map_or(c.clock_policy, |p| p.kind),
            // An amendment may re-time the case (e.g. ordinary → simplified procedure).
            Payload::Amendment(a) if step.is_some() => a
                .revised
                .as_ref()
                .and_then(|r| r.clock_policy.as_ref())
                .map(|p| p.kind)
                .filter(|k| *k != 0)
                .unwrap_or(c.clock_policy),
            _ => c.clock_policy,
        };
        w.timing |= moves_limits(payload, step.as_ref());
        Ok((lc.state.as_str(), None))
    }

    /// The first record of a case that counts: its referral (or, if the referral never reached
    /// the log, the first message seen) makes the case row. A case the log knew only from refused
    /// records keeps its place in the chain.
    fn first_record(
        &self,
        cases: &mut HashMap<Uuid, Working>,
        env: &Envelope,
        case_id: Uuid,
        payload: &Payload,
        at: DateTime<Utc>,
    ) -> Result<(&'static str, Option<String>), HandleError> {
        // The first record of a case: its referral (or, if the referral never reached the
        // log, the first message seen). The referrer is the referral's sender, the holder
        // its recipient.
        // A case a body registered itself starts signed for and accepted.
        let intake = match payload {
            Payload::Referral(r) if r.forwarded.is_none() => r.intake.as_ref(),
            _ => None,
        };
        let lc = match payload {
            _ if intake.is_some() => Lifecycle::at(CaseState::Accepted, None),
            Payload::Referral(_) => Lifecycle::referred(),
            _ => Lifecycle::at(CaseState::Submitted, None),
        };
        let registered = intake.map(|_| at);
        let (referrer, holder, clock) = match payload {
            Payload::Referral(r) => {
                let referrer = r.forwarded.as_ref().and_then(|f| f.original_referrer.as_ref()).or(env.sender.as_ref());
                (referrer, env.recipient.as_ref(), r.clock_policy.as_ref().map_or(0, |c| c.kind))
            }
            _ => (None, None, 0),
        };
        let mut row = CaseRow {
            case_id,
            case_code: env.case_code.clone(),
            channel: env.channel,
            referrer_kind: kind_of(referrer).to_owned(),
            referrer_code: code_of(referrer),
            holder_kind: kind_of(holder).to_owned(),
            holder_code: code_of(holder),
            state: lc.state.as_str().to_owned(),
            before_cancel: lc.before_cancel.map(|s| s.as_str().to_owned()),
            state_since: at,
            clock_policy: clock,
            received_at: at,
            signed_at: registered,
            accepted_at: registered,
            rejected_at: None,
            outcome: None,
            outcome_at: None,
            confirmation_requested_at: None,
            confirmation_granted_at: None,
            closed_at: None,
            last_case_seq: 0,
            last_hash: Vec::new(),
            overdue_since: None,
            chain: chain_of(case_id, self.chains),
            intake_source: intake.map_or(0, |i| i.source),
            risk_level: intake.map_or(0, |i| i.risk_level),
            court_kind: None,
            court_code: None,
            refused_only: false,
        };
        let existed = match cases.remove(&case_id) {
            Some(old) => {
                row.chain = old.row.chain;
                row.last_case_seq = old.row.last_case_seq;
                row.last_hash = old.row.last_hash;
                old.existed
            }
            None => false,
        };
        cases.insert(case_id, Working { row, timing: moves_limits(payload, None), existed, events: Vec::new() });
        Ok((lc.state.as_str(), None))
    }

    /// Recomputes the legal time limits of the batch's cases that need it, from their earlier
    /// records (one read) and this batch's, and stores them (keeping which notices went out).
    async fn retime(&self, conn: &mut PgConnection, cases: &mut HashMap<Uuid, Working>, now: DateTime<Utc>) -> anyhow::Result<()> {
        let due: Vec<Uuid> = cases.iter().filter(|(_, w)| w.timing).map(|(id, _)| *id).collect();
        if due.is_empty() {
            return Ok(());
        }
        let earlier_of: Vec<Uuid> = due.iter().filter(|id| cases.get(id).is_some_and(|w| w.existed)).copied().collect();
        let mut earlier: HashMap<Uuid, Vec<(DateTime<Utc>, Payload)>> = HashMap::new();
        if !earlier_of.is_empty() {
            let rows: Vec<(Uuid, DateTime<Utc>, Vec<u8>)> =
                sqlx::query_as("SELECT case_id, occurred_at, envelope FROM audit_log WHERE case_id = ANY($1) AND refused IS NULL ORDER BY case_id, seq")
                    .bind(&earlier_of)
                    .fetch_all(&mut *conn)
                    .await
                    .context("reading the cases' records")?;
            for (case_id, at, bytes) in rows {
                if let Some(p) = Envelope::decode(bytes.as_slice()).context("decoding a recorded envelope")?.payload {
                    earlier.entry(case_id).or_default().push((at, p));
                }
            }
        }
        let mut limits_of = Vec::with_capacity(due.len());
        for id in &due {
            let Some(w) = cases.get_mut(id) else { continue };
            let before = earlier.remove(id).unwrap_or_default();
            let refs: Vec<(DateTime<Utc>, &Payload)> = before.iter().chain(&w.events).map(|(t, p)| (*t, p)).collect();
            let policy = ClockPolicyKind::try_from(w.row.clock_policy).unwrap_or(ClockPolicyKind::Unspecified);
            let limits = deadlines::deadlines(policy, &refs, &self.calendar, now);
            // When the case's first limit fell due without being met in time.
            w.row.overdue_since = limits.iter().filter(|d| d.met_at.is_none_or(|m| m > d.due_at)).map(|d| d.due_at).min();
            limits_of.push((*id, limits));
        }
        for run in runs(&limits_of, |(_, limits)| 24 + 100 * limits.len()) {
            let cases: Vec<Uuid> = run.iter().map(|(id, _)| *id).collect();
            let all = || run.iter().flat_map(|(id, limits)| limits.iter().map(move |d| (*id, d)));
            let (kc, kl): (Vec<Uuid>, Vec<i32>) = all().map(|(id, d)| (id, d.limit as i32)).unzip();
            // A limit can stop applying (a late record shows round one of 治安调解 was met after all).
            sqlx::query(
                "DELETE FROM audit_deadlines d USING unnest($1::uuid[]) AS c(id)
                 WHERE d.case_id = c.id
                   AND NOT EXISTS (SELECT 1 FROM unnest($2::uuid[], $3::int[]) AS k(id, lim) WHERE k.id = d.case_id AND k.lim = d.time_limit)",
            )
            .bind(&cases)
            .bind(&kc)
            .bind(&kl)
            .execute(&mut *conn)
            .await
            .context("dropping limits that no longer apply")?;
            if kc.is_empty() {
                continue;
            }
            sqlx::query(
                "INSERT INTO audit_deadlines (case_id, time_limit, started_at, due_at, met_at)
                 SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[])
                 ON CONFLICT (case_id, time_limit) DO UPDATE
                    SET started_at = EXCLUDED.started_at, due_at = EXCLUDED.due_at, met_at = EXCLUDED.met_at,
                        -- an extension moves the due time: its notices may go out again
                        warned_at = CASE WHEN audit_deadlines.due_at = EXCLUDED.due_at THEN audit_deadlines.warned_at END,
                        breached_at = CASE WHEN audit_deadlines.due_at = EXCLUDED.due_at THEN audit_deadlines.breached_at END",
            )
            .bind(&kc)
            .bind(&kl)
            .bind(all().map(|(_, d)| d.started_at).collect::<Vec<_>>())
            .bind(all().map(|(_, d)| d.due_at).collect::<Vec<_>>())
            .bind(all().map(|(_, d)| d.met_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await
            .context("storing the deadlines")?;
        }
        Ok(())
    }
}

/// Whether `payload` may move the case's legal time limits: only the messages that start,
/// meet, extend or re-time a limit do (evidence, about half of all traffic, never does).
fn moves_limits(payload: &Payload, step: Option<&Step>) -> bool {
    match payload {
        Payload::Referral(_)
        | Payload::Amendment(_)
        | Payload::Receipt(_)
        | Payload::Accept(_)
        | Payload::Reject(_)
        | Payload::Redirect(_)
        | Payload::Outcome(_)
        | Payload::ConfirmationRequest(_)
        | Payload::ConfirmationDecision(_)
        | Payload::ExtensionRequest(_) => true,
        // Evidence re-times a case only when it moved it (the referral delivered).
        Payload::DeliveryEvidence(_) => step.is_some_and(|s| s.from != s.to),
        _ => false,
    }
}

/// The advisory lock key of a case (its first eight bytes would be mostly time in a UUIDv7).
fn lock_key(case_id: Uuid) -> i64 {
    let (hi, lo) = case_id.as_u64_pair();
    i64::from_ne_bytes((hi ^ lo.rotate_left(17)).to_ne_bytes())
}

/// A chain's head during a batch.
#[derive(sqlx::FromRow)]
struct Head {
    chain: i32,
    last_seq: i64,
    last_hash: Vec<u8>,
    last_recorded_at: Option<DateTime<Utc>>,
    /// When this batch's records of the chain are recorded.
    #[sqlx(skip)]
    recorded_at: DateTime<Utc>,
    /// Whether this batch appended to it.
    #[sqlx(skip)]
    moved: bool,
}

async fn lock_heads(conn: &mut PgConnection, chains: &[i32]) -> Result<Vec<Head>, sqlx::Error> {
    sqlx::query_as("SELECT chain, last_seq, last_hash, last_recorded_at FROM audit_chains WHERE chain = ANY($1) ORDER BY chain FOR UPDATE")
        .bind(chains)
        .fetch_all(conn)
        .await
}

/// Inserts records, one statement.
async fn insert_log(conn: &mut PgConnection, rows: &[LogRow]) -> Result<(), sqlx::Error> {
    macro_rules! column {
        ($($field:tt)+) => {
            rows.iter().map(|r| r.$($field)+.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO audit_log (chain, seq, recorded_at, case_id, case_seq, message_id, kind, channel, sender, recipient,
                                occurred_at, causation_id, trace_id, state_after, envelope, case_prev_hash, hash,
                                refused, signature, signer_cert, signer)
         SELECT * FROM unnest($1::int[], $2::bigint[], $3::timestamptz[], $4::uuid[], $5::int[], $6::uuid[], $7::text[],
                              $8::int[], $9::text[], $10::text[], $11::timestamptz[], $12::uuid[], $13::text[], $14::text[],
                              $15::bytea[], $16::bytea[], $17::bytea[], $18::text[], $19::bytea[], $20::bytea[], $21::text[])",
    )
    .bind(column!(chain))
    .bind(column!(seq))
    .bind(column!(recorded_at))
    .bind(column!(pending.case_id))
    .bind(column!(pending.case_seq))
    .bind(column!(pending.message_id))
    .bind(column!(pending.kind))
    .bind(column!(pending.channel))
    .bind(column!(pending.sender))
    .bind(column!(pending.recipient))
    .bind(column!(pending.occurred_at))
    .bind(column!(pending.causation_id))
    .bind(column!(pending.trace_id))
    .bind(column!(pending.state_after))
    .bind(column!(pending.envelope))
    .bind(column!(case_prev_hash))
    .bind(column!(hash))
    .bind(column!(pending.refused))
    .bind(column!(pending.signature))
    .bind(column!(pending.signer_cert))
    .bind(column!(pending.signer))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes case rows back, new and changed ones alike, in one statement.
async fn write_cases(conn: &mut PgConnection, rows: &[CaseRow]) -> Result<(), sqlx::Error> {
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    let sql = format!(
        "INSERT INTO audit_cases ({CASE_COLUMNS})
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                              $9::text[], $10::timestamptz[], $11::int[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[],
                              $15::timestamptz[], $16::text[], $17::timestamptz[], $18::timestamptz[], $19::timestamptz[],
                              $20::timestamptz[], $21::int[], $22::bytea[], $23::timestamptz[], $24::int[], $25::int[], $26::int[], $27::text[], $28::text[], $29::bool[])
         ON CONFLICT (case_id) DO UPDATE SET
             case_code = EXCLUDED.case_code, channel = EXCLUDED.channel, referrer_kind = EXCLUDED.referrer_kind,
             referrer_code = EXCLUDED.referrer_code, received_at = EXCLUDED.received_at,
             intake_source = EXCLUDED.intake_source, risk_level = EXCLUDED.risk_level, refused_only = EXCLUDED.refused_only,
             holder_kind = EXCLUDED.holder_kind, holder_code = EXCLUDED.holder_code, state = EXCLUDED.state,
             before_cancel = EXCLUDED.before_cancel, state_since = EXCLUDED.state_since, clock_policy = EXCLUDED.clock_policy,
             signed_at = EXCLUDED.signed_at, accepted_at = EXCLUDED.accepted_at, rejected_at = EXCLUDED.rejected_at,
             outcome = EXCLUDED.outcome, outcome_at = EXCLUDED.outcome_at,
             confirmation_requested_at = EXCLUDED.confirmation_requested_at,
             confirmation_granted_at = EXCLUDED.confirmation_granted_at, closed_at = EXCLUDED.closed_at,
             last_case_seq = EXCLUDED.last_case_seq, last_hash = EXCLUDED.last_hash, overdue_since = EXCLUDED.overdue_since,
             court_kind = EXCLUDED.court_kind, court_code = EXCLUDED.court_code"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(column!(case_id))
        .bind(column!(case_code))
        .bind(column!(channel))
        .bind(column!(referrer_kind))
        .bind(column!(referrer_code))
        .bind(column!(holder_kind))
        .bind(column!(holder_code))
        .bind(column!(state))
        .bind(column!(before_cancel))
        .bind(column!(state_since))
        .bind(column!(clock_policy))
        .bind(column!(received_at))
        .bind(column!(signed_at))
        .bind(column!(accepted_at))
        .bind(column!(rejected_at))
        .bind(column!(outcome))
        .bind(column!(outcome_at))
        .bind(column!(confirmation_requested_at))
        .bind(column!(confirmation_granted_at))
        .bind(column!(closed_at))
        .bind(column!(last_case_seq))
        .bind(column!(last_hash))
        .bind(column!(overdue_since))
        .bind(column!(chain))
        .bind(column!(intake_source))
        .bind(column!(risk_level))
        .bind(column!(court_kind))
        .bind(column!(court_code))
        .bind(column!(refused_only))
        .execute(conn)
        .await?;
    Ok(())
}

/// The payloads of a case's records in log order, with when each happened.
pub async fn case_payloads(conn: &mut PgConnection, case_id: Uuid) -> anyhow::Result<Vec<(DateTime<Utc>, Payload)>> {
    let rows: Vec<(DateTime<Utc>, Vec<u8>)> =
        sqlx::query_as("SELECT occurred_at, envelope FROM audit_log WHERE case_id = $1 AND refused IS NULL ORDER BY seq")
            .bind(case_id)
            .fetch_all(&mut *conn)
            .await
            .context("reading the case's records")?;
    let mut out = Vec::with_capacity(rows.len());
    for (at, bytes) in rows {
        if let Some(p) = Envelope::decode(bytes.as_slice()).context("decoding a recorded envelope")?.payload {
            out.push((at, p));
        }
    }
    Ok(out)
}

impl Handler for AuditStore {
    async fn handle(&self, conn: &mut PgConnection, msg: &Inbound) -> Result<(), HandleError> {
        let span = append_span(&tracing::Span::current(), msg);
        self.append_arrivals(conn, &[Arrival::of(msg)]).instrument(span).await
    }

    async fn handle_batch<'a>(&'a self, conn: &'a mut PgConnection, batch: &'a [Batched<'a>]) -> Result<(), HandleError> {
        let arrivals: Vec<Arrival<'_>> = batch.iter().map(|b| Arrival::of(b.msg)).collect();
        // One `audit.append` per record, in its message's trace, open while the batch is
        // appended: a trace shows its record's append even though records are written together.
        let spans: Vec<tracing::Span> = batch.iter().map(|b| append_span(&b.span, b.msg)).collect();
        let result = self.append_arrivals(conn, &arrivals).await;
        drop(spans);
        result
    }
}

/// The span `audit.append` of one record, a child of `parent` (the message's `inbox.apply`).
fn append_span(parent: &tracing::Span, msg: &Inbound) -> tracing::Span {
    tracing::info_span!(parent: parent, "audit.append", case_id = %msg.envelope.case_id, message_id = %msg.envelope.message_id,
        kind = msg.envelope.kind().routing_segment())
}
