//! The audit store: statistics of a replayed workload counted by hand, tamper detection, one
//! record per envelope, a breach notice at the referring agency's queue, a restart of the audit
//! service mid-stream (during which new referrals are refused), and the audit gate's marks.

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use duijie_agency::gate::{self, AuditGate, GateConfig, GateState, Lag, Seen, Why};
use duijie_audit::service::{AuditConfig, AuditServiceConfig};
use duijie_audit::store::AuditStore;
use duijie_audit::{stats, verify};
use duijie_domain::AgencyNode;
use duijie_common::config::BusConfig;
use duijie_common::envelope::{self, Header};
use duijie_proto::answered_case;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Stack, agency_ref, referral, settled};
use duijie_tests::{TestBus, node, wait_until};
use prost::Message as _;
use sqlx::{Executor as _, PgPool};
use futures::StreamExt as _;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

/// 10:00 China time on 2026-`month`-`day`.
fn day(month: u32, d: u32) -> DateTime<Utc> {
    chrono::FixedOffset::east_opt(8 * 3600)
        .and_then(|tz| tz.with_ymd_and_hms(2026, month, d, 10, 0, 0).single())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// One case's messages, back-dated, as the tap would deliver them.
struct Story {
    case_id: Uuid,
    code: String,
    channel: Channel,
    referrer: AgencyNode,
    centre: AgencyNode,
    envs: Vec<Envelope>,
}

impl Story {
    fn new(code: &str, referrer: AgencyNode, centre: AgencyNode, clock: ClockPolicyKind, at: DateTime<Utc>) -> Self {
        let channel = duijie_domain::case::channel_of(referrer.kind()).unwrap_or(Channel::Unspecified);
        let mut s = Self { case_id: Uuid::now_v7(), code: code.into(), channel, referrer, centre, envs: Vec::new() };
        let (from, to) = (s.referrer.clone(), s.centre.clone());
        s.push(&from, &to, Payload::Referral(referral(code, clock)), at);
        s
    }

    fn push(&mut self, from: &AgencyNode, to: &AgencyNode, payload: Payload, at: DateTime<Utc>) -> &mut Self {
        let header = Header {
            case_id: self.case_id,
            case_code: self.code.clone(),
            channel: self.channel,
            sender: from.clone(),
            recipient: to.clone(),
            causation_id: None,
        };
        let mut env = envelope::build(&header, payload);
        env.occurred_at = Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 });
        self.envs.push(env);
        self
    }

    /// A message from the centre to the referrer.
    fn centre(&mut self, payload: Payload, at: DateTime<Utc>) -> &mut Self {
        let (from, to) = (self.centre.clone(), self.referrer.clone());
        self.push(&from, &to, payload, at)
    }

    /// A message from the referrer to the centre.
    fn referrer(&mut self, payload: Payload, at: DateTime<Utc>) -> &mut Self {
        let (from, to) = (self.referrer.clone(), self.centre.clone());
        self.push(&from, &to, payload, at)
    }

    fn signed_and_accepted(&mut self, at: DateTime<Utc>) -> &mut Self {
        self.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), at)
            .centre(Payload::Accept(Accept { accepted_by: "王明".into(), ..Default::default() }), at)
    }
}

fn failed() -> Payload {
    Payload::Outcome(Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed { reason: FailureReason::NoAgreement as i32, ..Default::default() })) })
}
fn decision(d: ConfirmationDecisionKind) -> Payload {
    Payload::ConfirmationDecision(ConfirmationDecision { decision: d as i32, document_number: "(2026)湘1003民特1号".into(), ..Default::default() })
}
fn performed() -> Payload {
    Payload::Performance(Performance { status: PerformanceStatus::Performed as i32, ..Default::default() })
}
fn closure() -> Payload {
    Payload::Closure(Closure { basis: ClosureBasis::Performed as i32, ..Default::default() })
}
fn disposition(kind: DispositionKind) -> Payload {
    Payload::DispositionNotice(DispositionNotice { disposition: kind as i32, ..Default::default() })
}

/// A fresh, migrated audit database.
async fn audit_db(bus: &mut TestBus) -> anyhow::Result<PgPool> {
    bus.extra_database(&duijie_audit::migrator()).await
}

async fn append_all(pool: &PgPool, stories: &[&Story]) -> anyhow::Result<()> {
    let store = AuditStore::default();
    for s in stories {
        for env in &s.envs {
            let mut tx = pool.begin().await?;
            store.append(&mut tx, env).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The March workload whose figures are counted by hand in `statistics_of_a_replayed_workload`.
fn march() -> Vec<Story> {
    let (court, police, petition, procuratorate) = (stack::court(), stack::police(), stack::petition(), stack::procuratorate());
    let centre = stack::centre();
    // A: 诉调 settled in March, confirmation accepted and granted, closed in April.
    let mut a = Story::new("JF-A", court.clone(), centre.clone(), ClockPolicyKind::CourtOrdinary, day(3, 2));
    a.signed_and_accepted(day(3, 3))
        .centre(Payload::Outcome(settled(true)), day(3, 10))
        .centre(Payload::ConfirmationRequest(ConfirmationRequest::default()), day(3, 11))
        .referrer(decision(ConfirmationDecisionKind::Accepted), day(3, 12))
        .referrer(decision(ConfirmationDecisionKind::Granted), day(3, 20))
        .centre(performed(), day(3, 25))
        .centre(Payload::FollowUp(FollowUp::default()), day(3, 28))
        .centre(closure(), day(4, 2));
    // B: 警调 failed, the police disposes: closed in March after 7 days.
    let mut b = Story::new("JF-B", police.clone(), centre.clone(), ClockPolicyKind::Police, day(3, 5));
    b.signed_and_accepted(day(3, 5)).centre(failed(), day(3, 9)).referrer(disposition(DispositionKind::Penalty), day(3, 12));
    // C: 访调 rejected, the petition office closes it: 5 days.
    let mut c = Story::new("JF-C", petition, centre.clone(), ClockPolicyKind::Petition, day(3, 15));
    c.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), day(3, 16))
        .centre(Payload::Reject(Reject { reason: RejectReason::OutOfScope as i32, ..Default::default() }), day(3, 17))
        .referrer(disposition(DispositionKind::PetitionClosed), day(3, 20));
    // D: 检调 accepted in March, settled in April.
    let mut d = Story::new("JF-D", procuratorate, centre.clone(), ClockPolicyKind::PeoplesMediation, day(3, 20));
    d.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), day(3, 20))
        .centre(Payload::Accept(Accept { accepted_by: "王明".into(), ..Default::default() }), day(3, 21))
        .centre(Payload::Outcome(settled(false)), day(4, 5));
    // E: 诉调 received in February, settled and closed in March after 13 days.
    let mut e = Story::new("JF-E", court.clone(), centre.clone(), ClockPolicyKind::CourtPreFiling, day(2, 20));
    e.signed_and_accepted(day(2, 21)).centre(Payload::Outcome(settled(false)), day(3, 1)).centre(performed(), day(3, 3)).centre(closure(), day(3, 5));
    // F: another district (431004): outside the region.
    let mut f = Story::new("JF-F", node(AgencyKind::Police, "431004-01"), node(AgencyKind::Mediation, "431004"), ClockPolicyKind::Police, day(3, 10));
    f.signed_and_accepted(day(3, 10));
    // G: 诉调 signed for on 03-25, its 15 days run into April: not overdue in March.
    let mut g = Story::new("JF-G", court.clone(), centre.clone(), ClockPolicyKind::CourtOrdinary, day(3, 25));
    g.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), day(3, 25));
    // H: 诉调 simplified, signed for on 03-02, no outcome: its 7 days ended on 03-09 — overdue.
    let mut h = Story::new("JF-H", court, centre, ClockPolicyKind::CourtSimplified, day(3, 2));
    h.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), day(3, 2));
    vec![a, b, c, d, e, f, g, h]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_of_a_replayed_workload() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let pool = audit_db(&mut bus).await?;
    let stories = march();
    append_all(&pool, &stories.iter().collect::<Vec<_>>()).await?;

    let sel = stats::Selection { from: day(3, 1) - chrono::Duration::hours(10), to: day(4, 1) - chrono::Duration::hours(10), region: "431003".into(), ..Default::default() };
    let f = stats::statistics(&pool, &sel).await?;
    // Counted by hand from `march()`.
    assert_eq!((f.received, f.received_court, f.received_police, f.received_petition, f.received_procuratorate, f.received_self_accepted), (6, 3, 1, 1, 1, 0), "{f:?}");
    assert_eq!((f.signed_for, f.accepted, f.rejected), (6, 3, 1), "{f:?}");
    assert_eq!((f.mediated, f.settled, f.failed), (3, 2, 1), "{f:?}");
    assert!((f.mediation_rate() - 0.5).abs() < 1e-9 && (f.success_rate() - 2.0 / 3.0).abs() < 1e-9, "{f:?}");
    assert_eq!((f.confirmations_requested, f.confirmations_granted), (1, 1), "{f:?}");
    assert_eq!(f.closed, 3, "{f:?}");
    // Days to closure among B (7), C (5), E (13): median 7, p90 = 7 + 0.8 × 6.
    assert_eq!(f.median_days_to_closure.map(|d| (d * 1000.0).round() / 1000.0), Some(7.0));
    assert_eq!(f.p90_days_to_closure.map(|d| (d * 1000.0).round() / 1000.0), Some(11.8));
    assert_eq!(f.overdue, 1, "only H's 7 days ran out in March: {f:?}");

    // The selection narrows as asked.
    let court_only = stats::statistics(&pool, &stats::Selection { channel: Channel::Court as i32, ..sel.clone() }).await?;
    assert_eq!((court_only.received, court_only.mediated), (3, 2), "A and E settled in March");
    let province = stats::statistics(&pool, &stats::Selection { region: "43".into(), ..sel.clone() }).await?;
    assert_eq!(province.received, 7, "F is in the province");
    let police = stats::statistics(&pool, &stats::Selection { agency: Some(("police".into(), "431003-01".into())), ..sel.clone() }).await?;
    assert_eq!((police.received, police.failed, police.closed), (1, 1, 1));
    bus.cleanup(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_and_changes_are_refused() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let stories = march();
    let all: Vec<&Story> = stories.iter().collect();
    let pool = audit_db(&mut bus).await?;
    append_all(&pool, &all).await?;
    let clean = verify::verify_log(&pool).await?;
    assert!(clean.ok(), "{clean:?}");
    let total = clean.records_checked;
    assert_eq!(total, stories.iter().map(|s| s.envs.len() as u64).sum::<u64>());

    // The database refuses changes.
    for sql in ["UPDATE audit_log SET state_after = 'CLOSED' WHERE seq = 3", "DELETE FROM audit_log WHERE seq = 3", "TRUNCATE audit_log"] {
        let refused = sqlx::raw_sql(sql).execute(&pool).await;
        assert!(refused.as_ref().is_err_and(|e| e.to_string().contains("append-only")), "{sql}: {refused:?}");
    }

    // Someone who can switch the triggers off (the table's owner): each kind of change is found.
    // Each starts from an intact log of its own.
    let mut tx = pool.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute("UPDATE audit_log SET state_after = 'CLOSED' WHERE seq = 5").await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    let edited = verify::verify_log(&pool).await?;
    assert_eq!(edited.broken.as_ref().map(|(s, p)| (*s, p.contains("hash mismatch"))), Some((5, true)), "{edited:?}");
    let pool2 = audit_db(&mut bus).await?;
    append_all(&pool2, &all).await?;
    // A column that no longer says what the envelope says (same hash).
    let mut tx = pool2.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute("UPDATE audit_log SET recipient = 'mediation:999999' WHERE seq = 2").await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    let column = verify::verify_log(&pool2).await?;
    assert_eq!(column.broken.as_ref().map(|(s, p)| (*s, p.contains("recipient"))), Some((2, true)), "{column:?}");

    // A deleted record, and a deleted last record.
    let pool3 = audit_db(&mut bus).await?;
    append_all(&pool3, &all).await?;
    let mut tx = pool3.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute("DELETE FROM audit_log WHERE seq = 7").await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    let deleted = verify::verify_log(&pool3).await?;
    assert_eq!(deleted.broken.as_ref().map(|(s, p)| (*s, p.contains("record 7 is missing"))), Some((8, true)), "{deleted:?}");

    // Reordered records (two swap places).
    let pool4 = audit_db(&mut bus).await?;
    append_all(&pool4, &all).await?;
    let mut tx = pool4.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute("UPDATE audit_log SET seq = -4 WHERE seq = 4").await?;
    tx.execute("UPDATE audit_log SET seq = 4 WHERE seq = 3").await?;
    tx.execute("UPDATE audit_log SET seq = 3 WHERE seq = -4").await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    let reordered = verify::verify_log(&pool4).await?;
    assert_eq!(reordered.broken.as_ref().map(|(s, _)| *s), Some(3), "{reordered:?}");

    // The tail cut off: the head still names the last record.
    let pool5 = audit_db(&mut bus).await?;
    append_all(&pool5, &all).await?;
    let mut tx = pool5.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute(sqlx::AssertSqlSafe(format!("DELETE FROM audit_log WHERE seq = {total}"))).await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    let cut = verify::verify_log(&pool5).await?;
    assert!(cut.broken.as_ref().is_some_and(|(_, p)| p.contains("head")), "{cut:?}");

    // One case's chain on its own: intact for a case the edit did not touch, broken where it did.
    let edited_case: Uuid = sqlx::query_scalar("SELECT case_id FROM audit_log WHERE seq = 5").fetch_one(&pool).await?;
    let untouched = stories.iter().map(|s| s.case_id).find(|c| *c != edited_case).ok_or_else(|| anyhow::anyhow!("one case only"))?;
    assert!(verify::verify_case(&pool, untouched).await?.ok());
    assert_eq!(verify::verify_case(&pool, edited_case).await?.broken.map(|(s, _)| s), Some(5));
    bus.cleanup(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_months_and_the_chain_continues_from_the_checkpoint() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let pool = audit_db(&mut bus).await?;
    let stories = march();
    // Half of the workload recorded in January 2025 (its own partition), the rest now.
    sqlx::raw_sql(
        "CREATE TABLE audit_log_2025_01 PARTITION OF audit_log
           FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')",
    )
    .execute(&pool)
    .await?;
    let old = AuditStore::recording_at(Utc.with_ymd_and_hms(2025, 1, 15, 8, 0, 0).single().unwrap_or_default());
    let (first, second) = stories.split_at(4);
    for env in first.iter().flat_map(|s| &s.envs) {
        let mut tx = pool.begin().await?;
        old.append(&mut tx, env).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await?;
    }
    // A case with records on both sides of the cut: its chain must resume after the drop.
    let mut late = Story::new("JF-LATE", stack::court(), stack::centre(), ClockPolicyKind::CourtOrdinary, day(3, 1));
    let mut tx = pool.begin().await?;
    old.append(&mut tx, &late.envs[0]).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    tx.commit().await?;
    let dropped_records: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&pool).await?;
    append_all(&pool, &second.iter().collect::<Vec<_>>()).await?;
    late.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), day(3, 2));
    append_all(&pool, &[&Story { envs: late.envs[1..].to_vec(), ..late }]).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&pool).await?;
    assert!(verify::verify_log(&pool).await?.ok());

    // Keeping 180 days (the legal minimum) drops January 2025 only.
    duijie_audit::service::maintain_partitions(&pool, 180).await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&pool).await?;
    assert_eq!(left, total - dropped_records, "January 2025 is gone");
    let checkpoint: (i64, String) = sqlx::query_as("SELECT seq, dropped FROM audit_checkpoints").fetch_one(&pool).await?;
    assert_eq!(checkpoint.1, "audit_log_2025_01");
    let report = verify::verify_log(&pool).await?;
    assert!(report.ok(), "the chain continues from the checkpoint: {report:?}");
    assert_eq!(report.records_checked, u64::try_from(left)?);
    // And a record deleted after the drop is still found.
    let mut tx = pool.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute(sqlx::AssertSqlSafe(format!("DELETE FROM audit_log WHERE seq = {}", checkpoint.0 + 3))).await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    let broken = verify::verify_log(&pool).await?;
    assert_eq!(broken.broken.map(|(s, _)| s), Some(checkpoint.0 + 4));
    bus.cleanup(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_envelope_is_stored_once() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let pool = audit_db(&mut bus).await?;
    let stories = march();
    let a = &stories[0];
    append_all(&pool, &[a, a]).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&pool).await?;
    assert_eq!(n, a.envs.len() as i64);
    assert!(verify::verify_log(&pool).await?.ok());
    bus.cleanup(&[]).await
}

/// The stories' envelopes interleaved case by case (each case's messages keep their order), as
/// the tap delivers concurrent cases.
fn interleaved(stories: &[&Story]) -> Vec<Envelope> {
    let longest = stories.iter().map(|s| s.envs.len()).max().unwrap_or(0);
    (0..longest).flat_map(|i| stories.iter().filter_map(move |s| s.envs.get(i).cloned())).collect()
}

/// Appends `envs` through the store's batch entry point, `batch` per transaction.
async fn append_batched(pool: &PgPool, store: &AuditStore, envs: &[Envelope], batch: usize) -> anyhow::Result<()> {
    for chunk in envs.chunks(batch) {
        let mut tx = pool.begin().await?;
        store.append_batch(&mut tx, &chunk.iter().collect::<Vec<_>>()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await?;
    }
    Ok(())
}

/// Every projection row, as text, without what depends on the chains (hashes, chain numbers).
async fn projections(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let mut rows: Vec<String> =
        sqlx::query_scalar("SELECT (to_jsonb(c) - 'last_hash' - 'chain')::text FROM audit_cases c ORDER BY case_code").fetch_all(pool).await?;
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT c.case_code || ' ' || (to_jsonb(d) - 'case_id')::text FROM audit_deadlines d JOIN audit_cases c USING (case_id)
             ORDER BY c.case_code, d.time_limit",
        )
        .fetch_all(pool)
        .await?,
    );
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT c.case_code || ' ' || p.kind || ':' || p.code FROM audit_participants p JOIN audit_cases c USING (case_id) ORDER BY 1",
        )
        .fetch_all(pool)
        .await?,
    );
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT l.message_id::text || ' ' || l.case_seq || ' ' || l.state_after || ' ' || l.occurred_at::text FROM audit_log l ORDER BY 1",
        )
        .fetch_all(pool)
        .await?,
    );
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_appends_on_several_chains_record_what_one_by_one_appends_record() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let stories = march();
    let all: Vec<&Story> = stories.iter().collect();
    let one_by_one = audit_db(&mut bus).await?;
    append_all(&one_by_one, &all).await?;

    // The same workload interleaved as on the bus, in batches of 16 (several messages of one
    // case in a batch, a case's messages spread over batches), on four chains; and every
    // envelope delivered twice, also within one batch.
    let batched = audit_db(&mut bus).await?;
    let store = AuditStore::default().with_chains(4);
    // As the service does when it starts (the store itself adds a chain's head when it is first used).
    duijie_audit::store::ensure_chains(&mut *batched.acquire().await?, 4).await?;
    let envs = interleaved(&all);
    let twice: Vec<Envelope> = envs.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    append_batched(&batched, &store, &twice[..40], 16).await?;
    append_batched(&batched, &store, &envs, 16).await?;

    assert_eq!(projections(&batched).await?, projections(&one_by_one).await?, "the same case states, limits, participants and records");
    let sel = stats::Selection { from: day(3, 1) - chrono::Duration::hours(10), to: day(4, 1) - chrono::Duration::hours(10), region: "431003".into(), ..Default::default() };
    let (a, b) = (stats::statistics(&one_by_one, &sel).await?, stats::statistics(&batched, &sel).await?);
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "the same statistics");
    assert_eq!((b.received, b.mediated, b.closed, b.overdue), (6, 3, 3, 1), "{b:?}");

    // Each case on the chain its id hashes to, every chain gap-free and verified.
    let expected: std::collections::BTreeSet<i32> = stories.iter().map(|s| duijie_audit::store::chain_of(s.case_id, 4)).collect();
    let used: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT chain FROM audit_log ORDER BY 1").fetch_all(&batched).await?;
    assert_eq!(used, expected.into_iter().collect::<Vec<_>>());
    for s in &stories {
        let chains: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT chain FROM audit_log WHERE case_id = $1").bind(s.case_id).fetch_all(&batched).await?;
        assert_eq!(chains, [duijie_audit::store::chain_of(s.case_id, 4)], "case {} on one chain", s.code);
        assert!(verify::verify_case(&batched, s.case_id).await?.ok());
    }
    let report = verify::verify_log(&batched).await?;
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.records_checked, envs.len() as u64);
    assert_eq!(report.chains, 4);

    // Growing the number of chains later: the cases already in the log stay where they are.
    let more = AuditStore::default().with_chains(7);
    duijie_audit::store::ensure_chains(&mut *batched.acquire().await?, 7).await?;
    let mut late = Story::new("JF-LATE", stack::court(), stack::centre(), ClockPolicyKind::CourtOrdinary, day(3, 30));
    late.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), day(3, 31));
    let mut a_more = stories[0].envs[..1].to_vec();
    a_more[0].message_id = Uuid::now_v7().to_string();
    a_more[0].payload = Some(Payload::SupervisionNotice(SupervisionNotice::default()));
    append_batched(&batched, &more, &[late.envs.clone(), a_more].concat(), 16).await?;
    let a_chain: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT chain FROM audit_log WHERE case_id = $1").bind(stories[0].case_id).fetch_all(&batched).await?;
    assert_eq!(a_chain, [duijie_audit::store::chain_of(stories[0].case_id, 4)]);
    let late_chain: i32 = sqlx::query_scalar("SELECT DISTINCT chain FROM audit_log WHERE case_id = $1").bind(late.case_id).fetch_one(&batched).await?;
    assert_eq!(late_chain, duijie_audit::store::chain_of(late.case_id, 7));
    let report = verify::verify_log(&batched).await?;
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.chains, 7);
    bus.cleanup(&[]).await
}

/// Runs `sql` as the owner with the log's triggers off (what an attacker with the owner's
/// rights can do).
async fn tamper(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute(sqlx::AssertSqlSafe(sql.to_owned())).await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    Ok(())
}

/// A log of the March workload on three chains, appended in batches of 8, and the chain with
/// the most records.
async fn three_chains(bus: &mut TestBus, stories: &[Story]) -> anyhow::Result<(PgPool, i32)> {
    let pool = audit_db(bus).await?;
    append_batched(&pool, &AuditStore::default().with_chains(3), &interleaved(&stories.iter().collect::<Vec<_>>()), 8).await?;
    assert!(verify::verify_log(&pool).await?.ok());
    let chain: i32 = sqlx::query_scalar("SELECT chain FROM audit_log GROUP BY chain ORDER BY count(*) DESC, chain LIMIT 1").fetch_one(&pool).await?;
    Ok((pool, chain))
}

#[derive(sqlx::FromRow)]
struct Copied {
    recorded_at: DateTime<Utc>,
    case_id: Uuid,
    message_id: Uuid,
    kind: String,
    channel: i32,
    sender: String,
    recipient: String,
    occurred_at: DateTime<Utc>,
    trace_id: String,
    state_after: String,
    envelope: Vec<u8>,
}

/// Appends the last `n` records of `chain` again as its next ones, placed as the store would
/// place them (sequence, case sequence and case_prev_hash continue; the chain's head and the
/// cases' rows move on), with hashes made by `hash`; returns the first new sequence number.
async fn append_copies(
    pool: &PgPool,
    chain: i32,
    n: i64,
    hash: impl Fn(i64, i32, DateTime<Utc>, &str, &[u8], &[u8], &[u8]) -> Vec<u8>,
) -> anyhow::Result<i64> {
    let mut tx = pool.begin().await?;
    let (mut seq, mut prev): (i64, Vec<u8>) =
        sqlx::query_as("SELECT last_seq, last_hash FROM audit_chains WHERE chain = $1").bind(chain).fetch_one(&mut *tx).await?;
    let first = seq + 1;
    let copies: Vec<Copied> = sqlx::query_as(
        "SELECT recorded_at, case_id, message_id, kind, channel, sender, recipient, occurred_at, trace_id, state_after, envelope
         FROM audit_log WHERE chain = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(chain)
    .bind(seq - n)
    .fetch_all(&mut *tx)
    .await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    for r in copies {
        let (case_seq, case_prev): (i32, Vec<u8>) =
            sqlx::query_as("SELECT last_case_seq + 1, last_hash FROM audit_cases WHERE case_id = $1").bind(r.case_id).fetch_one(&mut *tx).await?;
        seq += 1;
        let h = hash(seq, case_seq, r.recorded_at, &r.state_after, &r.envelope, &prev, &case_prev);
        sqlx::query(
            "INSERT INTO audit_log (chain, seq, recorded_at, case_id, case_seq, message_id, kind, channel, sender, recipient,
                                    occurred_at, causation_id, trace_id, state_after, envelope, case_prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13, $14, $15, $16)",
        )
        .bind(chain)
        .bind(seq)
        .bind(r.recorded_at)
        .bind(r.case_id)
        .bind(case_seq)
        .bind(r.message_id)
        .bind(&r.kind)
        .bind(r.channel)
        .bind(&r.sender)
        .bind(&r.recipient)
        .bind(r.occurred_at)
        .bind(&r.trace_id)
        .bind(&r.state_after)
        .bind(&r.envelope)
        .bind(&case_prev)
        .bind(&h)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE audit_cases SET last_case_seq = $1, last_hash = $2 WHERE case_id = $3").bind(case_seq).bind(&h).bind(r.case_id).execute(&mut *tx).await?;
        prev = h;
    }
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    sqlx::query("UPDATE audit_chains SET last_seq = $1, last_hash = $2 WHERE chain = $3").bind(seq).bind(&prev).bind(chain).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_one_of_several_chains_is_found_and_a_forged_or_replayed_batch_too() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let stories = march();
    let last_of = |pool: PgPool, chain: i32| async move {
        let last: i64 = sqlx::query_scalar("SELECT last_seq FROM audit_chains WHERE chain = $1").bind(chain).fetch_one(&pool).await?;
        anyhow::Ok(last)
    };

    // The kinds of change found on one chain, each on an intact log of its own.
    let (pool, c) = three_chains(&mut bus, &stories).await?;
    tamper(&pool, &format!("UPDATE audit_log SET state_after = 'CLOSED' WHERE chain = {c} AND seq = 4")).await?;
    let r = verify::verify_log(&pool).await?;
    assert_eq!(r.broken.as_ref().map(|(s, p)| (r.broken_chain, *s, p.contains("hash mismatch"))), Some((c, 4, true)), "{r:?}");

    let (pool, c) = three_chains(&mut bus, &stories).await?;
    tamper(&pool, &format!("DELETE FROM audit_log WHERE chain = {c} AND seq = 3")).await?;
    let r = verify::verify_log(&pool).await?;
    assert_eq!(r.broken.as_ref().map(|(s, p)| (r.broken_chain, *s, p.contains("record 3 is missing"))), Some((c, 4, true)), "{r:?}");

    let (pool, c) = three_chains(&mut bus, &stories).await?;
    tamper(&pool, &format!("UPDATE audit_log SET seq = -3 WHERE chain = {c} AND seq = 3; UPDATE audit_log SET seq = 3 WHERE chain = {c} AND seq = 2; UPDATE audit_log SET seq = 2 WHERE chain = {c} AND seq = -3")).await?;
    let r = verify::verify_log(&pool).await?;
    assert_eq!(r.broken.as_ref().map(|(s, _)| (r.broken_chain, *s)), Some((c, 2)), "{r:?}");

    let (pool, c) = three_chains(&mut bus, &stories).await?;
    let last = last_of(pool.clone(), c).await?;
    tamper(&pool, &format!("DELETE FROM audit_log WHERE chain = {c} AND seq = {last}")).await?;
    let r = verify::verify_log(&pool).await?;
    assert!(r.broken.as_ref().is_some_and(|(_, p)| p.contains("head")) && r.broken_chain == c, "{r:?}");

    // A record moved onto another chain (renumbered to look like that chain's next record).
    let (pool, c) = three_chains(&mut bus, &stories).await?;
    let other: i32 = sqlx::query_scalar("SELECT min(chain) FROM audit_log WHERE chain <> $1").bind(c).fetch_one(&pool).await?;
    let (last, other_last) = (last_of(pool.clone(), c).await?, last_of(pool.clone(), other).await?);
    tamper(&pool, &format!("UPDATE audit_log SET chain = {other}, seq = {} WHERE chain = {c} AND seq = {last}", other_last + 1)).await?;
    sqlx::query("UPDATE audit_chains SET last_seq = last_seq + 1 WHERE chain = $1").bind(other).execute(&pool).await?;
    assert!(!verify::verify_log(&pool).await?.ok());

    // A forged batch: records that look like the next ones of a chain and of their cases
    // (sequence and case sequence continue, case_prev_hash names the case's last record, the
    // head is moved on), but whose hashes were not made by the store (here: not chained to the
    // chain's previous record).
    let (pool, c) = three_chains(&mut bus, &stories).await?;
    let first = append_copies(&pool, c, 3, |seq, case_seq, at, state, env, _prev, case_prev| {
        duijie_audit::store::record_hash(seq, case_seq, at, state, env, &[], case_prev)
    })
    .await?;
    let r = verify::verify_log(&pool).await?;
    assert_eq!(r.broken.as_ref().map(|(s, p)| (r.broken_chain, *s, p.contains("hash mismatch"))), Some((c, first, true)), "{r:?}");

    // A batch replayed: the chain's last records appended again as its next ones, with every
    // hash recomputed exactly as the store computes it (the formula is public).
    let (pool, c) = three_chains(&mut bus, &stories).await?;
    let first = append_copies(&pool, c, 2, duijie_audit::store::record_hash).await?;
    let r = verify::verify_log(&pool).await?;
    assert_eq!(r.broken.as_ref().map(|(s, p)| (r.broken_chain, *s, p.contains("recorded twice"))), Some((c, first, true)), "{r:?}");
    let replayed_case: Uuid = sqlx::query_scalar("SELECT case_id FROM audit_log WHERE chain = $1 AND seq = $2").bind(c).bind(first).fetch_one(&pool).await?;
    assert!(verify::verify_case(&pool, replayed_case).await?.broken.is_some_and(|(_, p)| p.contains("recorded twice")));

    // A tail cut off together with its chain's head (consistently, so the chain alone looks
    // whole) is found by the tree head recorded before.
    let (pool, c) = three_chains(&mut bus, &stories).await?;
    let ca = duijie_common::certs::DevCa::generate("duijie test CA")?;
    let (cert, key) = ca.issue(duijie_common::signing::AUDIT_SIGNER, &["localhost"])?;
    let mut signer = duijie_common::signing::Signer::new();
    signer.add_pem(cert.as_bytes(), key.as_bytes())?;
    let root = duijie_audit::tree::record(&pool, &signer).await?;
    let clean = verify::verify_log(&pool).await?;
    assert_eq!(clean.tree_head.as_ref(), Some(&root), "the log verifies against the tree head just recorded");
    let last = last_of(pool.clone(), c).await?;
    let (before, before_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_log WHERE chain = $1 AND seq = $2").bind(c).bind(last - 1).fetch_one(&pool).await?;
    tamper(&pool, &format!("DELETE FROM audit_log WHERE chain = {c} AND seq = {last}")).await?;
    sqlx::query("UPDATE audit_chains SET last_seq = $1, last_hash = $2 WHERE chain = $3").bind(before).bind(&before_hash).bind(c).execute(&pool).await?;
    let r = verify::verify_log(&pool).await?;
    assert!(r.broken.as_ref().is_some_and(|(_, p)| p.contains("tree head") && p.contains("cut back")) && r.broken_chain == c, "{r:?}");
    // The tree heads themselves are append-only.
    let refused = sqlx::raw_sql("DELETE FROM audit_tree_heads").execute(&pool).await;
    assert!(refused.as_ref().is_err_and(|e| e.to_string().contains("append-only")), "{refused:?}");
    bus.cleanup(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_before_the_chains_verifies_after_the_migration_and_continues() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let stories = march();
    let a = &stories[0];
    let jan = "CREATE TABLE audit_log_2025_01 PARTITION OF audit_log FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')";
    // Records as the store wrote them before the migration: chain 0 hashes exactly as the single
    // chain did (same formula, same empty start), so the one-chain store writes them here and
    // they are copied column for column into a database still on the old schema.
    let scratch = audit_db(&mut bus).await?;
    sqlx::raw_sql(jan).execute(&scratch).await?;
    let old = AuditStore::recording_at(Utc.with_ymd_and_hms(2025, 1, 15, 8, 0, 0).single().unwrap_or_default());
    append_batched(&scratch, &old, &a.envs[..3], 128).await?;
    append_batched(&scratch, &AuditStore::default(), &a.envs[3..6], 1).await?;
    let migrations = duijie_audit::migrator();
    let before = sqlx::migrate::Migrator::with_migrations(migrations.iter().filter(|m| m.version < 202).cloned().collect());
    let legacy = audit_db(&mut bus).await?;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public").execute(&legacy).await?;
    before.run(&legacy).await?;
    sqlx::raw_sql(jan).execute(&legacy).await?;
    for table in ["audit_log", "audit_messages", "audit_cases", "audit_participants", "audit_deadlines"] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT (to_jsonb(t) - 'chain')::text FROM {table} t"))).fetch_all(&scratch).await?;
        for row in rows {
            sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1::jsonb)"))).bind(row).execute(&legacy).await?;
        }
    }
    sqlx::raw_sql("UPDATE audit_head SET (last_seq, last_hash) = (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1)").execute(&legacy).await?;
    // Retention as it ran before the migration: January 2025 dropped, its checkpoint kept.
    sqlx::raw_sql(
        "INSERT INTO audit_checkpoints (seq, hash, dropped) SELECT seq, hash, 'audit_log_2025_01' FROM audit_log_2025_01 ORDER BY seq DESC LIMIT 1;
         ALTER TABLE audit_log DETACH PARTITION audit_log_2025_01; DROP TABLE audit_log_2025_01",
    )
    .execute(&legacy)
    .await?;

    // The migration: the old log is chain 0, its head and checkpoint chain 0's.
    migrations.run(&legacy).await?;
    let r = verify::verify_log(&legacy).await?;
    assert!(r.ok() && r.records_checked == 3 && r.chains == 1, "{r:?}");
    // Appending on three chains: case A continues on chain 0, its case chain unbroken across
    // the migration; the new cases spread over the chains. The first two messages of every
    // other case are recorded in January 2025 (on chain 0 they cannot be: its records never go
    // back in time), the rest now.
    sqlx::raw_sql(jan).execute(&legacy).await?;
    // As the service does at start with `audit.chains: 3` (otherwise a chain gets its head only
    // once a case lands on it, which random case ids may not do).
    duijie_audit::store::ensure_chains(&mut *legacy.acquire().await?, 3).await?;
    let rest: Vec<Story> = stories[1..].iter().map(|s| Story { envs: s.envs[..2].to_vec(), code: s.code.clone(), referrer: s.referrer.clone(), centre: s.centre.clone(), ..*s }).collect();
    let old = AuditStore::recording_at(Utc.with_ymd_and_hms(2025, 1, 20, 8, 0, 0).single().unwrap_or_default()).with_chains(3);
    append_batched(&legacy, &old, &interleaved(&rest.iter().collect::<Vec<_>>()), 16).await?;
    let later: Vec<Story> = stories[1..].iter().map(|s| Story { envs: s.envs[2..].to_vec(), code: s.code.clone(), referrer: s.referrer.clone(), centre: s.centre.clone(), ..*s }).collect();
    let store = AuditStore::default().with_chains(3);
    append_batched(&legacy, &store, &[a.envs[6..].to_vec(), interleaved(&later.iter().collect::<Vec<_>>())].concat(), 16).await?;
    let a_records: Vec<(i32, i32)> = sqlx::query_as("SELECT chain, case_seq FROM audit_log WHERE case_id = $1 ORDER BY seq").bind(a.case_id).fetch_all(&legacy).await?;
    assert_eq!(a_records, (4..=a.envs.len() as i32).map(|s| (0, s)).collect::<Vec<_>>());
    let r = verify::verify_log(&legacy).await?;
    assert!(r.ok() && r.chains == 3, "{r:?}");
    assert!(verify::verify_case(&legacy, a.case_id).await?.ok());

    // Retention drops January 2025 again: one checkpoint for each chain that had records there,
    // and every chain continues from its own.
    let in_january: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT chain FROM audit_log_2025_01 ORDER BY 1").fetch_all(&legacy).await?;
    assert!(!in_january.contains(&0), "chain 0 already had records from now");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&legacy).await?;
    let dropped: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log_2025_01").fetch_one(&legacy).await?;
    duijie_audit::service::maintain_partitions(&legacy, 180).await?;
    let checkpointed: Vec<i32> = sqlx::query_scalar("SELECT chain FROM audit_checkpoints WHERE chain > 0 ORDER BY 1").fetch_all(&legacy).await?;
    assert_eq!(checkpointed, in_january);
    let r = verify::verify_log(&legacy).await?;
    assert!(r.ok() && r.records_checked == u64::try_from(total - dropped)?, "{r:?}");
    for s in &stories {
        let r = verify::verify_case(&legacy, s.case_id).await?;
        assert!(r.ok(), "{}: {r:?}", s.code);
    }
    bus.cleanup(&[]).await
}

/// An audit service on its own (no agency services), on `bus`.
async fn audit_service(bus: &mut TestBus, ca: &duijie_common::certs::DevCa, dir: &std::path::Path) -> anyhow::Result<duijie_audit::service::Running> {
    let (cert, key) = ca.issue("duijie-audit", &["localhost", "127.0.0.1"])?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    std::fs::write(dir.join("audit.pem"), cert)?;
    std::fs::write(dir.join("audit-key.pem"), key)?;
    std::fs::create_dir_all(dir.join("keys"))?;
    std::fs::copy(dir.join("audit.pem"), dir.join("keys/service-audit.pem"))?;
    std::fs::copy(dir.join("audit-key.pem"), dir.join("keys/service-audit-key.pem"))?;
    let cfg = AuditServiceConfig {
        signing: duijie_common::signing::SigningConfig { ca: dir.join("ca.pem"), keys: dir.join("keys") },
        bus: BusConfig {
            database: bus.extra_database_config().await?,
            amqp: bus.amqp_cfg.clone(),
            // The test bus's own partitions: with the default 4, the service would add two
            // more court partitions to the hash ring, which the test's reader does not read.
            topology: bus.topology.config().clone(),
            relay: TestBus::relay_config(),
            consumer: Default::default(),
            metrics: Default::default(),
        },
        grpc: duijie_common::server::GrpcConfig {
            listen: "127.0.0.1:0".parse()?,
            health_listen: None,
            tls: duijie_common::server::TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("audit.pem"), key: dir.join("audit-key.pem") },
            grace_ms: Duration::from_secs(5),
        },
        audit: AuditConfig {
            deadline_scan_ms: Duration::from_millis(200),
            keys: duijie_audit::keys::KeysConfig { master_key: Some(duijie_tests::stack::test_master_key()?.into()) },
            ..Default::default()
        },
    };
    duijie_audit::service::start(cfg, bus.shutdown.child_token()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_case_sends_a_breach_notice_to_the_referring_agency() -> anyhow::Result<()> {
    let mut bus = TestBus::new().await?;
    let (court, centre) = (node(AgencyKind::Court, "990001"), node(AgencyKind::Mediation, "990001"));
    bus.declare(&[court.clone(), centre.clone()]).await?;
    let ca = duijie_common::certs::DevCa::generate("test CA")?;
    let dir = std::env::temp_dir().join(format!("duijie-{}", bus.prefix));
    let audit = audit_service(&mut bus, &ca, &dir).await?;
    // A 诉调 case signed for 20 days ago with no outcome: its 15 days ran out.
    let now = Utc::now();
    let mut story = Story::new("JF-990001-1", court.clone(), centre.clone(), ClockPolicyKind::CourtOrdinary, now - chrono::Duration::days(21));
    story.centre(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }), now - chrono::Duration::days(20));
    let signer = duijie_tests::signer_for(&ca, &[court.clone(), centre.clone()])?;
    for env in &story.envs {
        let mut env = env.clone();
        duijie_tests::without_party_data(&mut env);
        bus.publish_signed(&env, &signer).await?;
    }
    // The breach reaches the court's inbox queue.
    // (A consumer on each partition of the courts' inboxes: quorum queues with a single active
    // consumer refuse basic.get.)
    let conn = bus.connector.connect("test reader").await?;
    let ch = conn.create_channel().await?;
    let mut streams = Vec::new();
    for (i, queue) in bus.topology.inbox_queues(court.kind()).into_iter().enumerate() {
        let opts = lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() };
        streams.push(ch.basic_consume(queue.into(), format!("reader-{i}").into(), opts, lapin::types::FieldTable::default()).await?);
    }
    let mut deliveries = futures::stream::select_all(streams);
    let find = async {
        while let Some(d) = deliveries.next().await {
            let env = Envelope::decode(d?.data.as_slice())?;
            if let Some(Payload::DeadlineBreached(b)) = env.payload {
                return anyhow::Ok((env.case_id, b));
            }
        }
        anyhow::bail!("the reader ended")
    };
    let (case, b) = tokio::time::timeout(stack::WAIT, find).await.map_err(|_| anyhow::anyhow!("no DeadlineBreached in the court's queue"))??;
    assert_eq!(case, story.case_id.to_string());
    let deadline = b.deadline.unwrap_or_default();
    assert_eq!(deadline.limit(), TimeLimit::CourtMediationOrdinary);
    assert!(b.overdue_by.is_some_and(|d| d.seconds > 4 * 86_400), "about five days over");
    // The court sees the case in its overdue list; a police station does not.
    let client = |who: AgencyNode| {
        let (ca, addr) = (&ca, audit.addr);
        async move {
            let cert = ca.agency(&who)?;
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
                .domain_name("localhost")
                .identity(tonic::transport::Identity::from_pem(&cert.cert, &cert.key));
            let ch = tonic::transport::Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
            anyhow::Ok(audit_service_client::AuditServiceClient::new(ch))
        }
    };
    let overdue = client(court.clone()).await?.list_overdue(ListOverdueRequest::default()).await?.into_inner();
    assert_eq!(overdue.cases.iter().map(|c| c.case_id.clone()).collect::<Vec<_>>(), [story.case_id.to_string()]);
    assert!(overdue.cases[0].overdue);
    let stranger = client(node(AgencyKind::Police, "990001-01")).await?.list_overdue(ListOverdueRequest::default()).await?.into_inner();
    assert!(stranger.cases.is_empty());
    let denied = client(node(AgencyKind::Police, "990001-01")).await?.get_timeline(GetTimelineRequest { case_code: "JF-990001-1".into(), ..Default::default() }).await;
    assert_eq!(denied.map(|_| ()).map_err(|s| s.code()), Err(Code::PermissionDenied));
    let timeline = client(court.clone()).await?.get_timeline(GetTimelineRequest { case_code: "JF-990001-1".into(), ..Default::default() }).await?.into_inner();
    let kinds: Vec<MessageKind> = timeline.records.iter().map(|r| r.kind()).collect();
    assert_eq!(&kinds[..2], [MessageKind::Referral, MessageKind::Receipt]);
    assert!(kinds.contains(&MessageKind::DeadlineBreached), "the notice itself is recorded: {kinds:?}");
    let _ = std::fs::remove_dir_all(&dir);
    audit.shutdown.cancel();
    let _ = audit.handle.await;
    bus.cleanup(&[court, centre]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_service_restarted_mid_stream_misses_nothing_and_referrals_wait_for_it() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let submit = |i: usize| {
        let court = court.clone();
        async move {
            court
                .referrals()
                .submit_referral(SubmitReferralRequest {
                    to: Some(agency_ref(&stack::centre())),
                    case_code: format!("JF-431003-2026-1{i:05}"),
                    referral: Some(referral(&format!("restart-{i}"), ClockPolicyKind::CourtPreFiling)),
                })
                .await
        }
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit(i).await.and_then(answered_case)?.case_id);
    }
    let gate = stack.service(AgencyKind::Court)?.agency.gate().cloned().ok_or_else(|| anyhow::anyhow!("the court has no gate"))?;
    let before = gate.state();
    // The audit service goes away while the centre signs for the cases.
    let signing = {
        let (centre, ids) = (centre.clone(), ids.clone());
        tokio::spawn(async move {
            for id in &ids {
                centre.wait_for(id, "DELIVERED").await?;
                centre.mediation().sign_for(SignForRequest { case_id: id.clone(), receipt: Some(Receipt { signed_by: "王明".into(), ..Default::default() }) }).await?;
            }
            anyhow::Ok(())
        })
    };
    stack.stop_audit().await?;
    signing.await??;
    // While it cannot record, no new referral is taken — and nothing else stops. (The court's
    // gate notices within its interval; a referral sent before that is taken, as it should be,
    // so the test asks only once the gate is closed.)
    wait_until("the court's audit gate to close", stack::WAIT, || {
        let agency = stack.service(AgencyKind::Court).map(|s| s.agency.clone());
        async move { Ok(!agency?.gate_open()) }
    })
    .await?;
    match submit(99).await {
        Err(s) if s.code() == Code::Unavailable => {}
        Err(s) => anyhow::bail!("unexpected {s}"),
        Ok(_) => anyhow::bail!("a referral was taken while the audit store was down"),
    }
    assert_eq!(gate.state().why, Some(Why::NoConsumer));
    assert_eq!(gate_health(&court).await?, (ServingStatus::Serving, ServingStatus::NotServing), "only the gate is down");
    for id in &ids {
        court.wait_for(id, "RECEIVED").await?;
    }
    stack.start_audit().await?;
    wait_until("referrals taken again", stack::WAIT, || {
        let submit = &submit;
        async move { Ok(submit(10).await.is_ok()) }
    })
    .await?;
    // Every message that reached an agency is in the log, once, and the chain verifies.
    let supervisor = node(AgencyKind::Supervisor, "431003");
    let mut audit = stack.auditor(&supervisor).await?;
    for id in &ids {
        let id = id.clone();
        wait_until("the audit store to catch up", stack::WAIT, || {
            let mut audit = audit.clone();
            let id = id.clone();
            async move {
                let t = audit.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await?.into_inner();
                Ok(t.case.is_some_and(|c| c.state == "RECEIVED"))
            }
        })
        .await?;
    }
    let pool = stack.audit.as_ref().map(|a| a.pool.clone()).ok_or_else(|| anyhow::anyhow!("no audit"))?;
    let dupes: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT message_id FROM audit_log GROUP BY message_id HAVING count(*) > 1) d")
        .fetch_one(&pool)
        .await?;
    assert_eq!(dupes, 0);
    let mut court_messages: Vec<String> = Vec::new();
    for id in &ids {
        let v = court.case(id).await?;
        court_messages.extend(v.timeline.iter().map(|t| t.message_id.clone()));
    }
    let recorded: Vec<String> = sqlx::query_scalar::<_, Uuid>("SELECT message_id FROM audit_log")
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    let missing: Vec<&String> = court_messages.iter().filter(|m| !recorded.contains(m)).collect();
    assert!(missing.is_empty(), "messages the court saw but the audit store did not: {missing:?}");
    let verified = audit.verify(VerifyRequest::default()).await?.into_inner();
    assert!(verified.ok, "{verified:?}");
    // The court's gate closed once and opened once over the stop and the start, whatever the
    // backlog did meanwhile.
    let after = gate.state();
    assert_eq!((after.closings - before.closings, after.openings - before.openings), (1, 1), "{after:?}");
    assert!(after.open);
    assert_eq!(gate_health(&court).await?, (ServingStatus::Serving, ServingStatus::Serving));
    // The live figures, through the API: today's referrals and receipts, and who may read them.
    let today = GetStatisticsRequest {
        from: Some(prost_types::Timestamp { seconds: Utc::now().timestamp() - 86_400, nanos: 0 }),
        to: Some(prost_types::Timestamp { seconds: Utc::now().timestamp() + 60, nanos: 0 }),
        ..Default::default()
    };
    let figures = audit.get_statistics(today.clone()).await?.into_inner();
    assert_eq!((figures.received, figures.received_court, figures.signed_for), (11, 11, 10), "{figures:?}");
    let direct = stats::statistics(&pool, &stats::Selection {
        from: Utc::now() - chrono::Duration::days(1),
        to: Utc::now() + chrono::Duration::minutes(1),
        region: "431003".into(),
        ..Default::default()
    })
    .await?;
    assert_eq!((direct.received as u64, direct.signed_for as u64), (figures.received, figures.signed_for), "one definition, one answer");
    let as_court = stack.auditor(&stack::court()).await?.get_statistics(today.clone()).await?.into_inner();
    assert_eq!(as_court.received, 11, "the court's own figures");
    let elsewhere = stack
        .auditor(&node(AgencyKind::Supervisor, "431004"))
        .await?
        .get_statistics(GetStatisticsRequest { region: "431003".into(), ..today })
        .await;
    assert_eq!(elsewhere.map(|_| ()).map_err(|s| s.code()), Err(Code::PermissionDenied));
    stack.stop().await
}

/// The overall health of `clerk`'s service and its `duijie.audit_gate`.
async fn gate_health(clerk: &stack::Clerk) -> anyhow::Result<(ServingStatus, ServingStatus)> {
    let health = HealthClient::new(clerk.ch.clone());
    let status = |service: &str| {
        let request = HealthCheckRequest { service: service.to_owned() };
        let mut health = health.clone();
        async move { anyhow::Ok(health.check(request).await?.into_inner().status()) }
    };
    let overall = status("").await?;
    let gate = status(gate::HEALTH_SERVICE).await?;
    Ok((overall, gate))
}

/// A gate watching a test's tap, with a stand-in for the audit service's consumer on it (it holds
/// one message and never acks it, so what is published stays waiting).
struct GateRig {
    bus: TestBus,
    gate: AuditGate,
    ch: lapin::Channel,
    _conn: lapin::Connection,
    _consumers: Vec<lapin::Consumer>,
    /// The stand-in's consumer on the first partition and the message it holds there (quorum
    /// queues with a single active consumer refuse `basic.get`: messages are taken away through
    /// it, one ack at a time).
    first: tokio::sync::Mutex<(lapin::Consumer, Option<lapin::message::Delivery>)>,
}

impl GateRig {
    async fn start(cfg: GateConfig) -> anyhow::Result<Self> {
        use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
        let bus = TestBus::new().await?;
        bus.declare(&[stack::court()]).await?;
        let conn = bus.connector.connect("stand-in audit consumer").await?;
        let consumer_ch = conn.create_channel().await?;
        consumer_ch.basic_qos(1, BasicQosOptions::default()).await?;
        // A consumer on every partition of the tap (the gate wants each one consumed).
        let mut consumers = Vec::new();
        for (i, tap) in bus.topology.tap_queues().into_iter().enumerate() {
            let tag = format!("stand-in-{i}");
            consumers.push(consumer_ch.basic_consume(tap.into(), tag.into(), BasicConsumeOptions::default(), lapin::types::FieldTable::default()).await?);
        }
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        // The stand-in takes one message of the first partition and holds it (prefetch 1 on
        // the channel): from here on, what is published waits.
        let first = bus.topology.tap_queues()[0].clone();
        ch.basic_publish("".into(), first.into(), Default::default(), b"held", lapin::BasicProperties::default()).await?.await?;
        let mut first_consumer = consumers.remove(0);
        let held = tokio::time::timeout(stack::WAIT, first_consumer.next()).await?.ok_or_else(|| anyhow::anyhow!("the stand-in got nothing"))??;
        let gate = AuditGate::new("court", &[stack::court()]);
        tokio::spawn(gate.clone().watch(bus.connector.clone(), bus.topology.clone(), cfg, bus.shutdown.child_token()));
        Ok(Self { bus, gate, ch, _conn: conn, _consumers: consumers, first: tokio::sync::Mutex::new((first_consumer, Some(held))) })
    }

    /// Leaves exactly `n` messages waiting in the tap (beside the one the stand-in holds),
    /// publishing or taking away one at a time, so the backlog moves straight to `n` and no look
    /// of the gate sees it pass through a mark on the way.
    async fn fill(&self, n: u32) -> anyhow::Result<()> {
        use lapin::options::{BasicAckOptions, BasicPublishOptions, QueueDeclareOptions};
        let tap = self.bus.topology.tap_queues()[0].clone();
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let waiting = self.ch.queue_declare(tap.clone().into(), passive, lapin::types::FieldTable::default()).await?.message_count();
        let mut first = self.first.lock().await;
        for _ in n..waiting {
            // Ack the message in hand: the next waiting one comes to the stand-in and is held.
            if let Some(held) = first.1.take() {
                held.ack(BasicAckOptions::default()).await?;
            }
            let next = tokio::time::timeout(stack::WAIT, first.0.next()).await?.ok_or_else(|| anyhow::anyhow!("the tap ran dry"))??;
            first.1 = Some(next);
        }
        drop(first);
        for _ in waiting..n {
            self.ch
                .basic_publish("".into(), tap.clone().into(), BasicPublishOptions::default(), b"x", lapin::BasicProperties::default())
                .await?
                .await?;
        }
        Ok(())
    }

    async fn wait(&self, what: &str, cond: impl Fn(&GateState) -> bool) -> anyhow::Result<GateState> {
        wait_until(what, stack::WAIT, || {
            let ok = cond(&self.gate.state());
            async move { Ok(ok) }
        })
        .await?;
        Ok(self.gate.state())
    }

    /// Waits for `looks` more decisions after the one that saw `seen`, and returns the state then.
    async fn after_looks(&self, what: &str, seen: impl Fn(&Seen) -> bool, looks: u64) -> anyhow::Result<GateState> {
        let first = self.wait(what, |s| s.seen.as_ref().is_some_and(&seen)).await?;
        self.wait(&format!("{looks} more looks"), |s| s.looks >= first.looks + looks).await
    }
}

fn backlog_is(n: u32) -> impl Fn(&Seen) -> bool {
    move |s| matches!(s, Seen::Tap { backlog, .. } if *backlog == n)
}

fn lag_is(lag: Lag) -> impl Fn(&Seen) -> bool {
    move |s| matches!(s, Seen::Tap { lag: l, .. } if *l == lag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_closes_above_the_high_backlog_mark_and_reopens_once_at_the_low_one() -> anyhow::Result<()> {
    // No audit service reports its lag here: after the stale window the counts decide alone.
    let cfg = GateConfig {
        close_backlog: 20,
        open_backlog: 5,
        interval_ms: Duration::from_millis(100),
        status_stale_ms: Duration::from_millis(300),
        ..GateConfig::default()
    };
    let rig = GateRig::start(cfg).await?;
    let mut reports = duijie_common::status::listen(&rig._conn, &rig.ch, &rig.bus.topology, duijie_common::status::GATE_KEYS, "test").await?;
    let s = rig.wait("the gate to open on an empty tap", |s| s.open).await?;
    assert_eq!(s.seen, Some(Seen::Tap { consumers: 1, backlog: 0, lag: Lag::Unknown }), "no lag report: cannot tell");

    rig.fill(24).await?;
    let s = rig.wait("the gate to close above 20 messages", |s| s.why == Some(Why::Backlog { messages: 24, close: 20, open: 5 })).await?;
    assert_eq!(s.closings, 1);
    let refused = rig.gate.check().map_err(|e| e.to_string());
    assert!(refused.as_ref().is_err_and(|e| e.contains("24 messages behind")), "{refused:?}");
    // Its report on the status exchange says so, for `duijie-bus status`.
    let closed_report = async {
        while let Some(d) = reports.next().await {
            let r = duijie_common::status::decode::<duijie_common::status::GateReport>(&d?.data);
            if r.is_some_and(|r| !r.open && r.service == "court" && r.reason.contains("messages behind") && r.closings == 1) {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the status consumer ended")
    };
    tokio::time::timeout(stack::WAIT, closed_report).await.map_err(|_| anyhow::anyhow!("no report of the closed gate"))??;

    // Between the marks a closed gate stays closed...
    rig.fill(12).await?;
    let s = rig.after_looks("a look at 12 waiting", backlog_is(12), 10).await?;
    assert!(!s.open && s.closings == 1, "{s:?}");
    // ...reopens at the low mark...
    rig.fill(5).await?;
    let s = rig.wait("the gate to reopen at 5 messages", |s| s.open).await?;
    assert_eq!((s.closings, s.openings), (1, 2));
    // ...and stays open between the marks.
    rig.fill(12).await?;
    let s = rig.after_looks("a look at 12 waiting", backlog_is(12), 10).await?;
    assert!(s.open && (s.closings, s.openings) == (1, 2), "{s:?}");
    rig.bus.cleanup(&[stack::court()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_closes_and_reopens_at_the_age_marks_of_the_audit_services_reports() -> anyhow::Result<()> {
    let cfg = GateConfig {
        close_lag_ms: Duration::from_secs(10),
        open_lag_ms: Duration::from_secs(4),
        interval_ms: Duration::from_millis(100),
        status_stale_ms: Duration::from_millis(500),
        ..GateConfig::default()
    };
    let rig = GateRig::start(cfg).await?;
    // A stand-in for the audit service's reports: the lag in `tell`, none while it says None.
    let (tell, told) = tokio::sync::watch::channel(Some(0_u64));
    let (ch, topology, stop) = (rig.ch.clone(), rig.bus.topology.clone(), rig.bus.shutdown.child_token());
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let lag = *told.borrow();
            if let Some(ms) = lag {
                let report = duijie_common::status::AuditLag { at: Utc::now(), lag_ms: Some(ms), recorded: 0, replica: String::new() };
                duijie_common::status::publish(&ch, &topology, duijie_common::status::AUDIT_LAG_KEY, &report).await?;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    });
    let secs = |s| Lag::Known(Duration::from_secs(s));
    let s = rig.wait("the gate to open on the audit service's report", |s| s.open).await?;
    assert_eq!(s.seen, Some(Seen::Tap { consumers: 1, backlog: 0, lag: secs(0) }));

    tell.send_replace(Some(30_000));
    let s = rig.wait("the gate to close above 10 s", |s| !s.open).await?;
    assert!(s.why.as_ref().is_some_and(|w| w.to_string().contains("30.0 s old")), "{s:?}");
    tell.send_replace(Some(7_000));
    let s = rig.after_looks("a look at 7 s", lag_is(secs(7)), 10).await?;
    assert!(!s.open && s.closings == 1, "between the marks it stays closed: {s:?}");
    tell.send_replace(Some(4_000));
    let s = rig.wait("the gate to reopen at 4 s", |s| s.open).await?;
    assert_eq!((s.closings, s.openings), (1, 2));
    tell.send_replace(Some(7_000));
    let s = rig.after_looks("a look at 7 s", lag_is(secs(7)), 10).await?;
    assert!(s.open && s.closings == 1, "between the marks it stays open: {s:?}");
    tell.send_replace(Some(12_000));
    rig.wait("the gate to close above 10 s again", |s| !s.open).await?;
    // The audit service falls silent: cannot tell, and the empty tap with its consumer decides.
    tell.send_replace(None);
    let s = rig.wait("the gate to reopen on the counts", |s| s.open).await?;
    assert_eq!(s.seen, Some(Seen::Tap { consumers: 1, backlog: 0, lag: Lag::Unknown }));
    assert_eq!((s.closings, s.openings), (2, 3));
    rig.bus.cleanup(&[stack::court()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_store_that_stops_recording_closes_the_gate_by_the_age_of_what_it_holds() -> anyhow::Result<()> {
    let stack = Stack::start_with(
        GateConfig { close_lag_ms: Duration::from_secs(4), open_lag_ms: Duration::from_secs(2), ..stack::test_gate() },
        |_, _| {},
    )
    .await?;
    let court = stack.clerk(&stack::court()).await?;
    let submit = |i: usize| {
        let court = court.clone();
        async move {
            court
                .referrals()
                .submit_referral(SubmitReferralRequest {
                    to: Some(agency_ref(&stack::centre())),
                    case_code: format!("JF-431003-2026-2{i:05}"),
                    referral: Some(referral(&format!("stall-{i}"), ClockPolicyKind::CourtPreFiling)),
                })
                .await
        }
    };
    let gate = stack.service(AgencyKind::Court)?.agency.gate().cloned().ok_or_else(|| anyhow::anyhow!("the court has no gate"))?;
    let before = gate.state();
    // The audit store cannot write (its tables are locked), but its consumer stays on the tap:
    // only the age of what it holds can tell.
    let pool = stack.audit.as_ref().map(|a| a.pool.clone()).ok_or_else(|| anyhow::anyhow!("no audit"))?;
    let mut lock = pool.begin().await?;
    lock.execute("LOCK TABLE inbox, audit_log IN EXCLUSIVE MODE").await?;
    let id = submit(1).await.and_then(answered_case)?.case_id;
    wait_until("the court's audit gate to close", stack::WAIT, || {
        let open = gate.state().open;
        async move { Ok(!open) }
    })
    .await?;
    let s = gate.state();
    assert!(matches!(s.why, Some(Why::Lag { .. })), "{s:?}");
    assert!(matches!(s.seen, Some(Seen::Tap { consumers: 1, .. })), "the audit service kept consuming: {s:?}");
    match submit(2).await {
        Err(e) if e.code() == Code::Unavailable => assert!(e.message().contains("has not recorded"), "{e}"),
        other => anyhow::bail!("a referral was taken while the audit store was stuck: {other:?}"),
    }
    assert_eq!(gate_health(&court).await?, (ServingStatus::Serving, ServingStatus::NotServing));
    // Messages about cases on the bus still flow.
    stack.clerk(&stack::centre()).await?.wait_for(&id, "DELIVERED").await?;

    lock.rollback().await?;
    wait_until("the court's audit gate to reopen", stack::WAIT, || {
        let open = gate.state().open;
        async move { Ok(open) }
    })
    .await?;
    let after = gate.state();
    assert_eq!((after.closings - before.closings, after.openings - before.openings), (1, 1), "{after:?}");
    assert_eq!(gate_health(&court).await?, (ServingStatus::Serving, ServingStatus::Serving));
    submit(3).await.and_then(answered_case)?;
    stack.stop().await
}
