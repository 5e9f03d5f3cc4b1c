//! Anchored audit head (issue #14 item 6): the audit service signs its tree heads and hands the
//! latest to witnesses (supervisors, the procuratorate); `Verify` given a witness's anchor finds
//! a log the database owner rewrote consistently — record, every later hash, the chain's head and
//! every tree head — which `Verify` alone cannot. A tampered anchor is refused (INVALID_ARGUMENT,
//! field `anchor`): a bad anchor says nothing about the log.

use std::collections::HashMap;

use duijie_audit::store::{Sealed, record_hash_sealed};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Stack, referral};
use duijie_tests::{node, signer_for, wait_until};
use prost::Message as _;
use sqlx::{Executor as _, PgPool};
use uuid::Uuid;

async fn submit(court: &stack::Clerk, code: &str) -> anyhow::Result<String> {
    court.submit(&stack::centre(), code, referral(code, ClockPolicyKind::CourtPreFiling)).await
}

#[derive(sqlx::FromRow)]
struct Rec {
    seq: i64,
    case_id: Uuid,
    case_seq: i32,
    recorded_at: chrono::DateTime<chrono::Utc>,
    state_after: String,
    envelope: Vec<u8>,
    case_prev_hash: Vec<u8>,
    refused: Option<String>,
    signature: Option<Vec<u8>>,
    signer_cert: Option<Vec<u8>>,
}

/// What the database owner can do without any key: rewrite a referral's facts (dropping its
/// signature, which it cannot forge: the record then counts as unsigned), recompute its hash and
/// every later hash of its chain and of its case exactly as the store computes them (the formula
/// is public), move the chain's and the cases' heads, and delete every tree head. Returns the
/// chain rewritten.
async fn rewrite_consistently(pool: &PgPool) -> anyhow::Result<i32> {
    let mut tx = pool.begin().await?;
    tx.execute("ALTER TABLE audit_log DISABLE TRIGGER USER").await?;
    tx.execute("ALTER TABLE audit_tree_heads DISABLE TRIGGER USER").await?;
    let (chain, seq): (i32, i64) = sqlx::query_as("SELECT chain, seq FROM audit_log WHERE case_seq = 1 ORDER BY chain, seq LIMIT 1").fetch_one(&mut *tx).await?;
    let rows: Vec<Rec> = sqlx::query_as(
        "SELECT seq, case_id, case_seq, recorded_at, state_after, envelope, case_prev_hash, refused, signature, signer_cert
         FROM audit_log WHERE chain = $1 AND seq >= $2 ORDER BY seq",
    )
    .bind(chain)
    .bind(seq)
    .fetch_all(&mut *tx)
    .await?;
    let mut prev: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE chain = $1 AND seq = $2")
        .bind(chain)
        .bind(seq - 1)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_else(|| duijie_audit::store::genesis(chain));
    let mut case_heads: HashMap<Uuid, Vec<u8>> = HashMap::new();
    for (i, mut r) in rows.into_iter().enumerate() {
        if i == 0 {
            let mut env = Envelope::decode(r.envelope.as_slice())?;
            let Some(Payload::Referral(referral)) = env.payload.as_mut() else { anyhow::bail!("the first record of a case is not a referral") };
            referral.facts = "双方已于2026年1月达成和解，无争议。".into();
            r.envelope = env.encode_to_vec();
            (r.signature, r.signer_cert) = (None, None);
        }
        let case_prev = case_heads.get(&r.case_id).cloned().unwrap_or(r.case_prev_hash);
        let sealed = Sealed { refused: r.refused.as_deref().map(str::as_bytes), signature: r.signature.as_deref(), signer_cert: r.signer_cert.as_deref() };
        let h = record_hash_sealed(r.seq, r.case_seq, r.recorded_at, &r.state_after, &r.envelope, &prev, &case_prev, &sealed);
        sqlx::query(
            "UPDATE audit_log SET envelope = $1, signature = $2, signer_cert = $3, signer = CASE WHEN $2 IS NULL THEN NULL ELSE signer END,
                    case_prev_hash = $4, hash = $5
             WHERE chain = $6 AND seq = $7",
        )
        .bind(&r.envelope)
        .bind(&r.signature)
        .bind(&r.signer_cert)
        .bind(&case_prev)
        .bind(&h)
        .bind(chain)
        .bind(r.seq)
        .execute(&mut *tx)
        .await?;
        case_heads.insert(r.case_id, h.clone());
        prev = h;
    }
    for (case, h) in &case_heads {
        sqlx::query("UPDATE audit_cases SET last_hash = $1 WHERE case_id = $2").bind(h).bind(case).execute(&mut *tx).await?;
    }
    sqlx::query("UPDATE audit_chains SET last_hash = $1 WHERE chain = $2").bind(&prev).bind(chain).execute(&mut *tx).await?;
    tx.execute("DELETE FROM audit_tree_heads").await?;
    tx.execute("ALTER TABLE audit_log ENABLE TRIGGER USER").await?;
    tx.execute("ALTER TABLE audit_tree_heads ENABLE TRIGGER USER").await?;
    tx.commit().await?;
    Ok(chain)
}

fn verify_with(anchor: Option<Anchor>) -> VerifyRequest {
    VerifyRequest { case_id: String::new(), anchor }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_anchor_finds_a_consistent_rewrite_that_verify_alone_misses() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let supervisor = node(AgencyKind::Supervisor, "431003");
    let mut audit = stack.auditor(&supervisor).await?;
    let mut ids = Vec::new();
    for code in ["JF-431003-2026-ANC001", "JF-431003-2026-ANC002"] {
        ids.push(submit(&court, code).await?);
    }
    for id in &ids {
        wait_until("the referral in the audit store", stack::WAIT, || {
            let mut a = audit.clone();
            let id = id.clone();
            async move { Ok(a.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await.is_ok_and(|t| !t.into_inner().records.is_empty())) }
        })
        .await?;
    }

    // The witnesses take an anchor (none was recorded yet: GetAnchor signs one at once); anyone
    // else is refused.
    let anchor = audit.get_anchor(GetAnchorRequest {}).await?.into_inner().anchor.ok_or_else(|| anyhow::anyhow!("no anchor"))?;
    let ca = duijie_common::signing::Verifier::from_pem(stack.ca().cert_pem().as_bytes())?;
    duijie_common::anchor::check(&ca, &anchor)?;
    assert!(anchor.heads.iter().map(|h| h.size).sum::<i64>() >= 2, "{anchor:?}");
    let procuratorate = node(AgencyKind::Procuratorate, "431003");
    let theirs = stack.auditor(&procuratorate).await?.get_anchor(GetAnchorRequest {}).await?.into_inner().anchor;
    assert_eq!(theirs.as_ref().map(|a| &a.root), Some(&anchor.root));
    let refused = stack.auditor(&stack::court()).await?.get_anchor(GetAnchorRequest {}).await;
    assert_eq!(refused.as_ref().map_err(tonic::Status::code).err(), Some(tonic::Code::PermissionDenied), "{refused:?}");

    // Before any rewrite the log holds what the anchor committed to.
    let r = audit.verify(verify_with(Some(anchor.clone()))).await?.into_inner();
    assert!(r.ok && r.anchor_checked, "{r:?}");

    // Tampered anchors are refused, not taken as a broken log.
    let mut bad_root = anchor.clone();
    if let Some(b) = bad_root.root.first_mut() {
        *b ^= 1;
    }
    let mut bad_sig = anchor.clone();
    if let Some(b) = bad_sig.signature.last_mut() {
        *b ^= 1;
    }
    let mut bad_head = anchor.clone();
    if let Some(h) = bad_head.heads.iter_mut().find(|h| h.size > 0) {
        h.size -= 1;
    }
    // Signed by a trusted key, but the court's, not the audit service's.
    let mut court_signed = anchor.clone();
    let court_key = signer_for(stack.ca(), &[stack::court()])?;
    let triples: Vec<(i32, i64, &[u8])> = duijie_common::anchor::heads(&anchor)?;
    let micros = duijie_common::envelope::from_timestamp(anchor.created_at.as_ref()).map(|t| t.timestamp_micros()).unwrap_or_default();
    let sig = court_key.sign_bytes(&stack::court().to_string(), duijie_common::anchor::ANCHOR_CONTEXT, &duijie_common::anchor::signed_bytes(micros, &triples, &anchor.root))?;
    (court_signed.signature, court_signed.signer_cert) = (sig.signature, sig.cert);
    for (what, bad, reason) in [("root", bad_root, "root"), ("signature", bad_sig, "signature"), ("head", bad_head, "root"), ("signer", court_signed, "not by duijie-audit")] {
        let e = audit.verify(verify_with(Some(bad))).await.err().ok_or_else(|| anyhow::anyhow!("a tampered {what} was taken"))?;
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains("anchor") && e.message().contains(reason), "{what}: {}", e.message());
    }

    // The owner rewrites the log consistently: Verify alone finds nothing, the anchor finds it.
    let pool = stack.audit.as_ref().map(|a| a.pool.clone()).ok_or_else(|| anyhow::anyhow!("no audit"))?;
    let chain = rewrite_consistently(&pool).await?;
    let alone = audit.verify(verify_with(None)).await?.into_inner();
    assert!(alone.ok && !alone.anchor_checked, "the rewrite is consistent: {alone:?}");
    let anchored = audit.verify(verify_with(Some(anchor.clone()))).await?.into_inner();
    assert!(!anchored.ok && anchored.anchor_checked, "{anchored:?}");
    assert_eq!(anchored.first_broken_chain, u32::try_from(chain)?, "{anchored:?}");
    assert!(anchored.problem.contains("anchor") && anchored.problem.contains("rewritten"), "{anchored:?}");

    // The same through the streaming call, which ends with the result.
    let mut stream = audit.verify_with_progress(VerifyWithProgressRequest { verify: Some(verify_with(Some(anchor))) }).await?.into_inner();
    let mut last = None;
    while let Some(m) = stream.message().await? {
        last = m.event;
    }
    match last {
        Some(verify_with_progress_response::Event::Result(r)) => assert!(!r.ok && r.anchor_checked, "{r:?}"),
        other => anyhow::bail!("the stream ended with {other:?}"),
    }
    stack.stop().await
}
