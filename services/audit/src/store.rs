//! Appending to the log: every envelope from the tap becomes one record, chained to the
//! previous record of the log and of its case, and the projections (case state, who took part,
//! deadlines) move in the same transaction.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::inbox::{HandleError, Handler, Inbound};
use duijie_domain::calendar::WorkCalendar;
use duijie_domain::deadlines;
use duijie_domain::lifecycle::{CaseState, Lifecycle, Step};
use duijie_domain::agency::ref_str;
use duijie_domain::{AgencyNode, Case, Effects, Message};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{
    AgencyKind, AgencyRef, Channel, ClockPolicyKind, ConfirmationDecisionKind, Envelope, outcome,
};
use prost::Message as _;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

/// The hash of one record: the record's content (its envelope exactly as received, the state it
/// led to, where it sits in the log and when it was recorded) chained to the previous record of
/// the log and of its case. Any edit, deletion or reordering changes a hash or leaves a gap.
pub fn record_hash(
    seq: i64,
    case_seq: i32,
    recorded_at: DateTime<Utc>,
    state_after: &str,
    envelope: &[u8],
    prev_hash: &[u8],
    case_prev_hash: &[u8],
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
    h.finalize().to_vec()
}

/// Where a message the log has seen leaves its case: the same desk the agencies run
/// ([`Case::decide`]), so a message their desk refuses is recorded with the state unchanged
/// (`None`: no step). A case whose referral never reached the log has no referrer to judge by:
/// its lifecycle alone decides.
fn observe(c: &CaseRow, lc: Lifecycle, env: &Envelope, payload: &Payload) -> (Lifecycle, Option<Step>) {
    let from = lc.state;
    let ends = AgencyNode::from_parts(&c.referrer_kind, &c.referrer_code).and_then(|r| Ok((r, AgencyNode::from_parts(&c.holder_kind, &c.holder_code)?)));
    let Ok((referrer, holder)) = ends else {
        let mut lc = lc;
        let step = lc.apply(payload).ok();
        return (lc, step);
    };
    // Delivery evidence speaks for the agency it names as `delivered_to`.
    let speaker = match payload {
        Payload::DeliveryEvidence(ev) => AgencyNode::from_ref(ev.delivered_to.as_ref()),
        _ => AgencyNode::from_ref(env.sender.as_ref()),
    };
    let case = Case { channel: Channel::try_from(c.channel).unwrap_or(Channel::Unspecified), referrer, holder, lifecycle: lc.clone() };
    match speaker.map(|s| case.decide(Message::Observed { sender: &s, payload })) {
        Ok(Ok(Effects::Apply { lifecycle, new_holder, .. })) => {
            let step = Step { from, to: lifecycle.state, new_holder: new_holder.as_ref().map(AgencyRef::from) };
            (lifecycle, Some(step))
        }
        _ => (lc, None),
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
}

impl Default for AuditStore {
    fn default() -> Self {
        Self { calendar: WorkCalendar::bundled(), recorded_at: None }
    }
}

impl AuditStore {
    /// A store that records at `at` instead of now: for replaying a log (and testing retention);
    /// the service always records at the wall clock.
    pub fn recording_at(at: DateTime<Utc>) -> Self {
        Self { recorded_at: Some(at), ..Self::default() }
    }
}

#[derive(sqlx::FromRow)]
struct CaseRow {
    channel: i32,
    referrer_kind: String,
    referrer_code: String,
    holder_kind: String,
    holder_code: String,
    state: String,
    before_cancel: Option<String>,
    clock_policy: i32,
    last_case_seq: i32,
    last_hash: Vec<u8>,
}

impl AuditStore {
    /// Appends `env` (once: a message id already in the log is skipped).
    pub async fn append(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), HandleError> {
        let message_id = Uuid::parse_str(&env.message_id).map_err(|e| HandleError::Rejected(e.to_string()))?;
        let case_id = Uuid::parse_str(&env.case_id).map_err(|e| HandleError::Rejected(e.to_string()))?;
        // One writer at a time: the head row's lock orders every append.
        let (last_seq, last_hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT last_seq, last_hash FROM audit_head WHERE id = 1 FOR UPDATE").fetch_one(&mut *conn).await?;
        let seen: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM audit_messages WHERE message_id = $1").bind(message_id).fetch_optional(&mut *conn).await?;
        if seen.is_some() {
            return Ok(());
        }
        let case: Option<CaseRow> = sqlx::query_as(
            "SELECT channel, referrer_kind, referrer_code, holder_kind, holder_code, state, before_cancel, clock_policy,
                    last_case_seq, last_hash
             FROM audit_cases WHERE case_id = $1 FOR UPDATE",
        )
        .bind(case_id)
        .fetch_optional(&mut *conn)
        .await?;
        let payload = env.payload.as_ref().ok_or_else(|| HandleError::Rejected("no payload".into()))?;
        let occurred = duijie_common::envelope::from_timestamp(env.occurred_at.as_ref()).map(micros).unwrap_or_else(|| micros(Utc::now()));
        let recorded = micros(self.recorded_at.unwrap_or_else(Utc::now));
        let parse = |s: &str| CaseState::parse(s).ok_or_else(|| HandleError::Rejected(format!("bad state {s}")));

        // Where the case stands after this message (the same machine the agencies run; a
        // message their machine refuses is still recorded, with the state unchanged).
        let (lc, step) = match (&case, payload) {
            (None, Payload::Referral(_)) => (Lifecycle::referred(), None),
            (None, _) => {
                // A feedback message for a case the log has not seen: recorded on its own chain.
                (Lifecycle::at(CaseState::Submitted, None), None)
            }
            (Some(c), Payload::Referral(_)) => {
                // A case handed on (redirect, escalation): the holder changed with the hand-over.
                (Lifecycle::at(parse(&c.state)?, c.before_cancel.as_deref().map(parse).transpose()?), None)
            }
            (Some(c), p) => {
                let lc = Lifecycle::at(parse(&c.state)?, c.before_cancel.as_deref().map(parse).transpose()?);
                observe(c, lc, env, p)
            }
        };
        let state_after = lc.state.as_str();
        let seq = last_seq + 1;
        let case_seq = case.as_ref().map_or(1, |c| c.last_case_seq + 1);
        let case_prev_hash = case.as_ref().map(|c| c.last_hash.clone()).unwrap_or_default();
        let bytes = env.encode_to_vec();
        let hash = record_hash(seq, case_seq, recorded, state_after, &bytes, &last_hash, &case_prev_hash);
        let trace_id = env
            .trace
            .as_ref()
            .and_then(|t| t.traceparent.split('-').nth(1))
            .unwrap_or_default()
            .to_owned();
        let causation = if env.causation_id.is_empty() { None } else { Uuid::parse_str(&env.causation_id).ok() };
        sqlx::query(
            "INSERT INTO audit_log (seq, recorded_at, case_id, case_seq, message_id, kind, channel, sender, recipient,
                                    occurred_at, causation_id, trace_id, state_after, envelope, case_prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(seq)
        .bind(recorded)
        .bind(case_id)
        .bind(case_seq)
        .bind(message_id)
        .bind(env.kind().routing_segment())
        .bind(env.channel)
        .bind(ref_str(env.sender.as_ref()))
        .bind(ref_str(env.recipient.as_ref()))
        .bind(occurred)
        .bind(causation)
        .bind(&trace_id)
        .bind(state_after)
        .bind(&bytes)
        .bind(&case_prev_hash)
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO audit_messages (message_id, seq) VALUES ($1, $2)").bind(message_id).bind(seq).execute(&mut *conn).await?;
        sqlx::query("UPDATE audit_head SET last_seq = $1, last_hash = $2 WHERE id = 1").bind(seq).bind(&hash).execute(&mut *conn).await?;

        self.project(conn, env, payload, case.as_ref(), &lc, step.as_ref(), occurred, case_id, case_seq, &hash).await?;
        Ok(())
    }

    /// Moves the projections of the case on.
    #[allow(clippy::too_many_arguments)]
    async fn project(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        payload: &Payload,
        case: Option<&CaseRow>,
        lc: &Lifecycle,
        step: Option<&Step>,
        at: DateTime<Utc>,
        case_id: Uuid,
        case_seq: i32,
        hash: &[u8],
    ) -> Result<(), HandleError> {
        let sender = env.sender.as_ref();
        let recipient = env.recipient.as_ref();
        let kind_of = |a: Option<&AgencyRef>| AgencyKind::try_from(a.map_or(0, |a| a.kind)).map(|k| k.as_str()).unwrap_or("unspecified");
        let code_of = |a: Option<&AgencyRef>| a.map(|a| a.code.clone()).unwrap_or_default();
        match (case, payload) {
            (None, _) => {
                // The first record of a case: its referral (or, if the referral never reached the
                // log, the first message seen). The referrer is the referral's sender, the holder
                // its recipient.
                let (referrer, holder, clock) = match payload {
                    Payload::Referral(r) => {
                        let referrer = r.forwarded.as_ref().and_then(|f| f.original_referrer.as_ref()).or(sender);
                        (referrer, recipient, r.clock_policy.as_ref().map_or(0, |c| c.kind))
                    }
                    _ => (None, None, 0),
                };
                sqlx::query(
                    "INSERT INTO audit_cases (case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code,
                                              state, before_cancel, state_since, clock_policy, received_at, last_case_seq, last_hash)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $12, $13)",
                )
                .bind(case_id)
                .bind(&env.case_code)
                .bind(env.channel)
                .bind(kind_of(referrer))
                .bind(code_of(referrer))
                .bind(kind_of(holder))
                .bind(code_of(holder))
                .bind(lc.state.as_str())
                .bind(lc.before_cancel.map(CaseState::as_str))
                .bind(at)
                .bind(clock)
                .bind(case_seq)
                .bind(hash)
                .execute(&mut *conn)
                .await?;
            }
            (Some(c), _) => {
                let new_holder = step.and_then(|s| s.new_holder.as_ref());
                let changed = c.state != lc.state.as_str();
                let stamp = |col: &str| format!("{col} = COALESCE({col}, $6)");
                let mut sets = vec![
                    "state = $2".to_owned(),
                    "before_cancel = $3".to_owned(),
                    "holder_kind = COALESCE($4, holder_kind)".to_owned(),
                    "holder_code = COALESCE($5, holder_code)".to_owned(),
                    "last_case_seq = $7".to_owned(),
                    "last_hash = $8".to_owned(),
                ];
                if changed {
                    sets.push("state_since = $6".into());
                }
                if step.is_some() {
                    match payload {
                        Payload::Receipt(_) => sets.push(stamp("signed_at")),
                        Payload::Accept(_) => sets.push(stamp("accepted_at")),
                        Payload::Reject(_) => sets.push(stamp("rejected_at")),
                        Payload::Outcome(o) => {
                            let name = match &o.kind {
                                Some(outcome::Kind::Settled(_)) => "settled",
                                Some(outcome::Kind::Failed(_)) => "failed",
                                _ => "withdrawn",
                            };
                            sets.push(format!("outcome = COALESCE(outcome, '{name}')"));
                            sets.push(stamp("outcome_at"));
                        }
                        Payload::ConfirmationRequest(_) => sets.push(stamp("confirmation_requested_at")),
                        Payload::ConfirmationDecision(d) if d.decision() == ConfirmationDecisionKind::Granted => {
                            sets.push(stamp("confirmation_granted_at"));
                        }
                        _ => {}
                    }
                    if lc.state.is_final() {
                        sets.push(stamp("closed_at"));
                    }
                }
                let clock = match payload {
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
                sets.push(format!("clock_policy = {clock}"));
                let sql = format!("UPDATE audit_cases SET {} WHERE case_id = $1", sets.join(", "));
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(case_id)
                    .bind(lc.state.as_str())
                    .bind(lc.before_cancel.map(CaseState::as_str))
                    .bind(new_holder.map(|h| kind_of(Some(h))))
                    .bind(new_holder.map(|h| h.code.clone()))
                    .bind(at)
                    .bind(case_seq)
                    .bind(hash)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        let parties: Vec<&AgencyRef> = [sender, recipient]
            .into_iter()
            .flatten()
            .filter(|a| !matches!(AgencyKind::try_from(a.kind), Ok(AgencyKind::Bus) | Ok(AgencyKind::Unspecified) | Err(_)))
            .collect();
        if !parties.is_empty() {
            sqlx::query(
                "INSERT INTO audit_participants (case_id, kind, code)
                 SELECT $1, k, c FROM unnest($2::text[], $3::text[]) AS p(k, c) ON CONFLICT DO NOTHING",
            )
            .bind(case_id)
            .bind(parties.iter().map(|a| kind_of(Some(a))).collect::<Vec<_>>())
            .bind(parties.iter().map(|a| a.code.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        // Only the messages that start, meet, extend or re-time a limit change the deadlines
        // (evidence, about half of all traffic, never does).
        let timing = match payload {
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
        };
        if timing {
            self.refresh_deadlines(conn, case_id).await.map_err(HandleError::Transient)?;
        }
        Ok(())
    }

    /// Recomputes the case's legal time limits from its records (keeping which notices went out).
    pub async fn refresh_deadlines(&self, conn: &mut PgConnection, case_id: Uuid) -> anyhow::Result<()> {
        let clock: i32 = sqlx::query_scalar("SELECT clock_policy FROM audit_cases WHERE case_id = $1")
            .bind(case_id)
            .fetch_one(&mut *conn)
            .await
            .context("reading the case's clock policy")?;
        let records = case_payloads(conn, case_id).await?;
        let refs: Vec<(DateTime<Utc>, &Payload)> = records.iter().map(|(t, p)| (*t, p)).collect();
        let policy = ClockPolicyKind::try_from(clock).unwrap_or(ClockPolicyKind::Unspecified);
        let limits = deadlines::deadlines(policy, &refs, &self.calendar, Utc::now());
        // A limit can stop applying (a late record shows round one of 治安调解 was met after all).
        let keep: Vec<i32> = limits.iter().map(|d| d.limit as i32).collect();
        sqlx::query("DELETE FROM audit_deadlines WHERE case_id = $1 AND NOT (time_limit = ANY($2))")
            .bind(case_id)
            .bind(&keep)
            .execute(&mut *conn)
            .await
            .context("dropping limits that no longer apply")?;
        for d in limits {
            sqlx::query(
                "INSERT INTO audit_deadlines (case_id, time_limit, started_at, due_at, met_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (case_id, time_limit) DO UPDATE
                    SET started_at = EXCLUDED.started_at, due_at = EXCLUDED.due_at, met_at = EXCLUDED.met_at,
                        -- an extension moves the due time: its notices may go out again
                        warned_at = CASE WHEN audit_deadlines.due_at = EXCLUDED.due_at THEN audit_deadlines.warned_at END,
                        breached_at = CASE WHEN audit_deadlines.due_at = EXCLUDED.due_at THEN audit_deadlines.breached_at END",
            )
            .bind(case_id)
            .bind(d.limit as i32)
            .bind(d.started_at)
            .bind(d.due_at)
            .bind(d.met_at)
            .execute(&mut *conn)
            .await
            .context("storing a deadline")?;
        }
        sqlx::query(
            "UPDATE audit_cases SET overdue_since = (SELECT min(due_at) FROM audit_deadlines
                 WHERE case_id = $1 AND (met_at IS NULL OR met_at > due_at))
             WHERE case_id = $1",
        )
        .bind(case_id)
        .execute(&mut *conn)
        .await
        .context("noting when the case went overdue")?;
        Ok(())
    }
}

/// The payloads of a case's records in log order, with when each happened.
pub async fn case_payloads(conn: &mut PgConnection, case_id: Uuid) -> anyhow::Result<Vec<(DateTime<Utc>, Payload)>> {
    let rows: Vec<(DateTime<Utc>, Vec<u8>)> =
        sqlx::query_as("SELECT occurred_at, envelope FROM audit_log WHERE case_id = $1 ORDER BY seq")
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
        self.append(conn, &msg.envelope).await
    }
}
