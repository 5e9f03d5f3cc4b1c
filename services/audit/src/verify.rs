//! Walking the hash chains: recomputes every record's hash from its stored content and its
//! predecessors, checks that the global sequence has no gap, that every case's chain is
//! unbroken, that the indexed columns say what the envelope says, and that the log ends where
//! its head says. Reports the first record that does not verify.

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_proto::v1::Envelope;
use futures::TryStreamExt as _;
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::store::record_hash;
use duijie_domain::agency::ref_str;

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records_checked: u64,
    /// The first record that does not verify, and why.
    pub broken: Option<(i64, String)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    recorded_at: DateTime<Utc>,
    case_id: Uuid,
    case_seq: i32,
    message_id: Uuid,
    kind: String,
    sender: String,
    recipient: String,
    state_after: String,
    envelope: Vec<u8>,
    case_prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

const COLUMNS: &str =
    "seq, recorded_at, case_id, case_seq, message_id, kind, sender, recipient, state_after, envelope, case_prev_hash, hash";

/// Why `row`'s columns disagree with its envelope, if they do.
fn column_mismatch(row: &Row) -> Option<String> {
    let env = match Envelope::decode(row.envelope.as_slice()) {
        Ok(e) => e,
        Err(e) => return Some(format!("envelope does not decode: {e}")),
    };
    let checks = [
        ("message_id", env.message_id == row.message_id.to_string()),
        ("case_id", env.case_id == row.case_id.to_string()),
        ("kind", env.kind().routing_segment() == row.kind),
        ("sender", ref_str(env.sender.as_ref()) == row.sender),
        ("recipient", ref_str(env.recipient.as_ref()) == row.recipient),
    ];
    checks.iter().find(|(_, ok)| !ok).map(|(col, _)| format!("column {col} differs from the recorded envelope"))
}

/// Verifies the whole log, on one connection of `pool`.
pub async fn verify_log(pool: &PgPool) -> anyhow::Result<Report> {
    verify_log_on(&mut *pool.acquire().await.context("acquiring a connection")?).await
}

/// Verifies the whole log on `conn`.
pub async fn verify_log_on(conn: &mut PgConnection) -> anyhow::Result<Report> {
    // After retention dropped old partitions, the chain continues from the last checkpoint.
    let checkpoint: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .context("reading the checkpoint")?;
    let (mut expected, mut prev_hash) = checkpoint.clone().map_or((1, Vec::new()), |(s, h)| (s + 1, h));
    let truncated = checkpoint.is_some();
    let mut cases: HashMap<Uuid, (i32, Vec<u8>)> = HashMap::new();
    let mut checked = 0u64;
    let sql = format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq");
    let mut rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql)).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await.context("reading the log")? {
        checked += 1;
        if row.seq != expected {
            let what = if row.seq > expected { format!("gap in sequence: record {expected} is missing") } else { "sequence out of order".into() };
            return Ok(Report { records_checked: checked, broken: Some((row.seq, what)) });
        }
        let case_prev = match cases.get(&row.case_id) {
            Some((last_seq, last_hash)) => {
                if row.case_seq != last_seq + 1 {
                    return Ok(broken(checked, row.seq, format!("case chain broken: expected case record {}", last_seq + 1)));
                }
                last_hash.clone()
            }
            // The case's earlier records went with a dropped partition: its chain resumes here.
            None if truncated && row.case_seq > 1 => row.case_prev_hash.clone(),
            None if row.case_seq != 1 => {
                return Ok(broken(checked, row.seq, format!("case chain broken: case records before {} are missing", row.case_seq)));
            }
            None => Vec::new(),
        };
        if let Some(problem) = check_row(&row, &prev_hash, &case_prev) {
            return Ok(broken(checked, row.seq, problem));
        }
        cases.insert(row.case_id, (row.case_seq, row.hash.clone()));
        prev_hash = row.hash;
        expected += 1;
    }
    drop(rows);
    let (head_seq, head_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT last_seq, last_hash FROM audit_head WHERE id = 1").fetch_one(&mut *conn).await.context("reading the head")?;
    if head_seq != expected - 1 || (head_seq > 0 && head_hash != prev_hash) {
        return Ok(broken(checked, expected, format!("the log ends at record {} but its head says {head_seq}", expected - 1)));
    }
    Ok(Report { records_checked: checked, broken: None })
}

/// Verifies one case's chain (each record against its global predecessor too), on one
/// connection of `pool`.
pub async fn verify_case(pool: &PgPool, case_id: Uuid) -> anyhow::Result<Report> {
    verify_case_on(&mut *pool.acquire().await.context("acquiring a connection")?, case_id).await
}

/// [`verify_case`] on `conn`.
pub async fn verify_case_on(conn: &mut PgConnection, case_id: Uuid) -> anyhow::Result<Report> {
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE case_id = $1 ORDER BY seq");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(case_id).fetch_all(&mut *conn).await.context("reading the case")?;
    let mut case_prev: Vec<u8> = Vec::new();
    let mut checked = 0u64;
    for (i, row) in rows.iter().enumerate() {
        checked += 1;
        let expected_case_seq = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if row.case_seq != expected_case_seq && !(i == 0 && row.case_seq > 1) {
            return Ok(broken(checked, row.seq, format!("case chain broken: expected case record {expected_case_seq}")));
        }
        if i == 0 && row.case_seq > 1 {
            case_prev = row.case_prev_hash.clone();
        }
        let prev: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(row.seq - 1)
            .fetch_optional(&mut *conn)
            .await
            .context("reading the previous record")?;
        let prev = match prev {
            Some(h) => h,
            None if row.seq == 1 => Vec::new(),
            None => {
                let cp: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM audit_checkpoints WHERE seq = $1")
                    .bind(row.seq - 1)
                    .fetch_optional(&mut *conn)
                    .await?;
                match cp {
                    Some(h) => h,
                    None => return Ok(broken(checked, row.seq, format!("gap in sequence: record {} is missing", row.seq - 1))),
                }
            }
        };
        if let Some(problem) = check_row(row, &prev, &case_prev) {
            return Ok(broken(checked, row.seq, problem));
        }
        case_prev = row.hash.clone();
    }
    Ok(Report { records_checked: checked, broken: None })
}

fn broken(checked: u64, seq: i64, problem: String) -> Report {
    Report { records_checked: checked, broken: Some((seq, problem)) }
}

fn check_row(row: &Row, prev_hash: &[u8], case_prev: &[u8]) -> Option<String> {
    if row.case_prev_hash != case_prev {
        return Some("case chain broken: the previous record of the case does not match".into());
    }
    let hash = record_hash(row.seq, row.case_seq, row.recorded_at, &row.state_after, &row.envelope, prev_hash, case_prev);
    if hash != row.hash {
        return Some("hash mismatch: the record or one before it was changed".into());
    }
    column_mismatch(row)
}
