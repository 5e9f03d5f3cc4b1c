//! Walking the hash chains: recomputes every record's hash from its stored content and its
//! predecessors, checks that each chain's sequence has no gap and ends where its head says,
//! that every case's chain is unbroken and on one chain, that the indexed columns say what the
//! envelope says, that no message is recorded twice, and that the log still holds what every
//! recorded tree head committed to. Reports the first record that does not verify. Everything
//! is read in one snapshot, so appends going on meanwhile do not disturb it.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_proto::v1::Envelope;
use futures::TryStreamExt as _;
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::store::{Sealed, genesis, record_hash_sealed};
use duijie_common::signing::{Signature, Verifier};
use crate::tree::{self, ChainHead};
use duijie_domain::agency::ref_str;

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub records_checked: u64,
    /// The first record that does not verify (its sequence number in its chain), and why.
    pub broken: Option<(i64, String)>,
    /// The chain of the record in `broken`.
    pub broken_chain: i32,
    /// How many chains the log has.
    pub chains: u32,
    /// The tree head over the chains' heads the log was verified against (whole-log
    /// verifications that passed).
    pub tree_head: Option<Vec<u8>>,
    /// Records whose signature was checked again (against the CA, at their recording time).
    pub signatures_checked: u64,
    /// Records that carry no signature (appended before signed handoffs, or directly).
    pub unsigned_records: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    chain: i32,
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
    refused: Option<String>,
    signature: Option<Vec<u8>>,
    signer_cert: Option<Vec<u8>>,
    signer: Option<String>,
}

const COLUMNS: &str = "chain, seq, recorded_at, case_id, case_seq, message_id, kind, sender, recipient, state_after, envelope,
    case_prev_hash, hash, refused, signature, signer_cert, signer";

/// Checks a record's signature again. A record that took effect must carry a good signature of
/// the signer it names (or none at all: recorded before signed handoffs, or appended directly);
/// one refused for its signature may carry anything.
fn signature_problem(row: &Row, verifier: &Verifier, signatures: &mut u64, unsigned: &mut u64) -> Option<String> {
    let (Some(signature), Some(cert)) = (&row.signature, &row.signer_cert) else {
        *unsigned += 1;
        return None;
    };
    *signatures += 1;
    if row.refused.as_deref().is_some_and(|r| r.starts_with("signature:") || r.starts_with(crate::store::CLEAR_PARTY_DATA)) {
        return None;
    }
    let env = match Envelope::decode(row.envelope.as_slice()) {
        Ok(e) => e,
        Err(e) => return Some(format!("envelope does not decode: {e}")),
    };
    let sig = Signature { signature: signature.clone(), cert: cert.clone() };
    match verifier.verify_envelope(&env, &row.envelope, Some(&sig), row.recorded_at) {
        Ok(signer) if row.signer.as_deref().is_none_or(|s| s == signer) => None,
        Ok(signer) => Some(format!("the record names {} as signer, the signature is {signer}'s", row.signer.as_deref().unwrap_or_default())),
        Err(e) => Some(format!("the signature does not verify: {e}")),
    }
}

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

/// A read-only transaction on `conn` that sees one snapshot for all its statements.
async fn snapshot(conn: &mut PgConnection) -> anyhow::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
    let mut tx = sqlx::Connection::begin(conn).await.context("beginning the verification")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await.context("taking a snapshot")?;
    Ok(tx)
}

/// The last checkpoint of each chain (where it continues after retention dropped old months).
async fn checkpoints(conn: &mut PgConnection) -> anyhow::Result<HashMap<i32, (i64, Vec<u8>)>> {
    let rows: Vec<(i32, i64, Vec<u8>)> =
        sqlx::query_as("SELECT DISTINCT ON (chain) chain, seq, hash FROM audit_checkpoints ORDER BY chain, seq DESC")
            .fetch_all(conn)
            .await
            .context("reading the checkpoints")?;
    Ok(rows.into_iter().map(|(c, s, h)| (c, (s, h))).collect())
}

/// Where one chain's walk stands.
struct Walk {
    chain: i32,
    /// The sequence number the next record must have.
    expected: i64,
    prev_hash: Vec<u8>,
    /// Whether records before the chain's checkpoint were dropped.
    truncated: bool,
}

impl Walk {
    fn start(chain: i32, checkpoints: &HashMap<i32, (i64, Vec<u8>)>) -> Self {
        match checkpoints.get(&chain) {
            Some((seq, hash)) => Self { chain, expected: seq + 1, prev_hash: hash.clone(), truncated: true },
            None => Self { chain, expected: 1, prev_hash: genesis(chain), truncated: false },
        }
    }

    /// Whether the chain ends where its head says.
    fn ends_at_head(&self, heads: &HashMap<i32, ChainHead>) -> Option<(i64, String)> {
        let last = self.expected - 1;
        match heads.get(&self.chain) {
            None if last == 0 => None,
            None => Some((last, format!("chain {} has records but no head", self.chain))),
            Some(h) if h.size != last || (h.size > 0 && h.hash != self.prev_hash) => {
                Some((self.expected, format!("the log ends at record {last} but its head says {}", h.size)))
            }
            Some(_) => None,
        }
    }
}

/// How often (in records) a whole-log verification reports its progress.
pub const PROGRESS_EVERY: u64 = 10_000;

/// A recorded tree head.
#[derive(sqlx::FromRow)]
struct TreeHeadRow {
    id: i64,
    chains: Vec<i32>,
    sizes: Vec<i64>,
    hashes: Vec<Vec<u8>>,
    root: Vec<u8>,
}

/// What recorded tree heads (named) say a chain's record at a position must hash to.
type Commitments = HashMap<(i32, i64), Vec<(String, Vec<u8>)>>;

/// Takes what the tree head `what` lists into `committed`, to be checked as the walk passes the
/// records; a chain now shorter than it says, or a dropped position that disagrees with the
/// retention checkpoint, is reported at once as (chain, seq, problem).
fn commit(
    committed: &mut Commitments,
    what: &str,
    listed: Vec<ChainHead>,
    heads: &HashMap<i32, ChainHead>,
    checkpoints: &HashMap<i32, (i64, Vec<u8>)>,
) -> Option<(i32, i64, String)> {
    for h in listed {
        let now = heads.get(&h.chain).map_or(0, |n| n.size);
        if h.size > now {
            return Some((h.chain, now + 1, format!("{what} covers record {} of chain {}: the chain was cut back to {now}", h.size, h.chain)));
        }
        match checkpoints.get(&h.chain) {
            // Dropped for retention: the checkpoint keeps only its last record's hash.
            Some((cp, cp_hash)) if h.size == *cp && *cp_hash != h.hash => {
                return Some((h.chain, h.size, format!("{what} disagrees with the retention checkpoint")));
            }
            Some((cp, _)) if h.size <= *cp => {}
            _ if h.size > 0 => committed.entry((h.chain, h.size)).or_default().push((what.to_owned(), h.hash)),
            _ => {}
        }
    }
    None
}

/// Verifies the whole log, on one connection of `pool` (its hashes; no signature check).
pub async fn verify_log(pool: &PgPool) -> anyhow::Result<Report> {
    verify_log_with(pool, None).await
}

/// Verifies the whole log, on one connection of `pool`; with a verifier, every signature too.
pub async fn verify_log_with(pool: &PgPool, verifier: Option<&Verifier>) -> anyhow::Result<Report> {
    verify_log_on(&mut *pool.acquire().await.context("acquiring a connection")?, verifier, &mut |_| {}).await
}

/// Verifies the whole log on `conn` (see [`verify_log`]), calling `progress` with the number of
/// records checked so far every [`PROGRESS_EVERY`] records.
pub async fn verify_log_on(conn: &mut PgConnection, verifier: Option<&Verifier>, progress: &mut (dyn FnMut(u64) + Send)) -> anyhow::Result<Report> {
    verify_log_against(conn, verifier, None, progress).await
}

/// A witness's anchor to check the log against: its id and the heads it committed to (its
/// signature already checked by the caller).
pub struct AnchorHeads {
    pub id: i64,
    pub heads: Vec<ChainHead>,
}

/// [`verify_log_on`], and with `anchor` also that the log still holds every record the anchor
/// committed to: checked like a recorded tree head, but from outside the database, so a log
/// rewritten together with its heads and every tree head is still found.
pub async fn verify_log_against(
    conn: &mut PgConnection,
    verifier: Option<&Verifier>,
    anchor: Option<&AnchorHeads>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> anyhow::Result<Report> {
    let mut tx = snapshot(conn).await?;
    let checkpoints = checkpoints(&mut tx).await?;
    let heads: HashMap<i32, ChainHead> = tree::heads(&mut tx).await?.into_iter().map(|h| (h.chain, h)).collect();
    let chains = u32::try_from(heads.len()).unwrap_or(u32::MAX);
    let (mut signatures, mut unsigned) = (0u64, 0u64);
    let report = |checked: u64, chain: i32, seq: i64, problem: String| Report {
        records_checked: checked,
        broken: Some((seq, problem)),
        broken_chain: chain,
        chains,
        ..Report::default()
    };

    // The tree heads: each must hash to what it lists, and list nothing beyond today's heads;
    // the records it names are checked as the walk passes them.
    let tree_heads: Vec<TreeHeadRow> = sqlx::query_as("SELECT id, chains, sizes, hashes, root FROM audit_tree_heads ORDER BY id")
        .fetch_all(&mut *tx)
        .await
        .context("reading the tree heads")?;
    let mut committed: Commitments = HashMap::new();
    for TreeHeadRow { id, chains: t_chains, sizes, hashes, root } in tree_heads {
        let listed: Vec<ChainHead> =
            t_chains.iter().zip(&sizes).zip(&hashes).map(|((c, s), h)| ChainHead { chain: *c, size: *s, hash: h.clone() }).collect();
        if listed.len() != t_chains.len().max(sizes.len()).max(hashes.len()) || tree::root(&listed) != root {
            return Ok(report(0, 0, 0, format!("tree head {id} does not hash to what it lists")));
        }
        if let Some((chain, seq, problem)) = commit(&mut committed, &format!("tree head {id}"), listed, &heads, &checkpoints) {
            return Ok(report(0, chain, seq, problem));
        }
    }
    if let Some(a) = anchor
        && let Some((chain, seq, problem)) = commit(&mut committed, &format!("the witness's anchor (tree head {})", a.id), a.heads.clone(), &heads, &checkpoints)
    {
        return Ok(report(0, chain, seq, problem));
    }

    let mut cases: HashMap<Uuid, (i32, i32, Vec<u8>)> = HashMap::new();
    let mut checked = 0u64;
    let mut walk: Option<Walk> = None;
    let mut walked: HashSet<i32> = HashSet::new();
    let sql = format!("SELECT {COLUMNS} FROM audit_log ORDER BY chain, seq");
    {
        let mut rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await.context("reading the log")? {
            checked += 1;
            if checked.is_multiple_of(PROGRESS_EVERY) {
                progress(checked);
            }
            if walk.as_ref().is_none_or(|w| w.chain != row.chain) {
                if let Some(w) = &walk
                    && let Some((seq, problem)) = w.ends_at_head(&heads)
                {
                    return Ok(report(checked, w.chain, seq, problem));
                }
                walked.insert(row.chain);
                walk = Some(Walk::start(row.chain, &checkpoints));
            }
            let Some(w) = walk.as_mut() else { continue };
            if row.seq != w.expected {
                let what = if row.seq > w.expected { format!("gap in sequence: record {} is missing", w.expected) } else { "sequence out of order".into() };
                return Ok(report(checked, row.chain, row.seq, what));
            }
            let case_prev = match cases.get(&row.case_id) {
                Some((chain, _, _)) if *chain != row.chain => {
                    return Ok(report(checked, row.chain, row.seq, format!("case chain broken: the case's records are on chains {chain} and {}", row.chain)));
                }
                Some((_, last_seq, last_hash)) => {
                    if row.case_seq != last_seq + 1 {
                        return Ok(report(checked, row.chain, row.seq, format!("case chain broken: expected case record {}", last_seq + 1)));
                    }
                    last_hash.clone()
                }
                // The case's earlier records went with a dropped partition: its chain resumes here.
                None if w.truncated && row.case_seq > 1 => row.case_prev_hash.clone(),
                None if row.case_seq != 1 => {
                    return Ok(report(checked, row.chain, row.seq, format!("case chain broken: case records before {} are missing", row.case_seq)));
                }
                None => Vec::new(),
            };
            if let Some(problem) = check_row(&row, &w.prev_hash, &case_prev) {
                return Ok(report(checked, row.chain, row.seq, problem));
            }
            if let Some(v) = verifier
                && let Some(problem) = signature_problem(&row, v, &mut signatures, &mut unsigned)
            {
                return Ok(report(checked, row.chain, row.seq, problem));
            }
            if let Some(commitments) = committed.get(&(row.chain, row.seq))
                && let Some((what, _)) = commitments.iter().find(|(_, h)| *h != row.hash)
            {
                return Ok(report(checked, row.chain, row.seq, format!("the record differs from what {what} committed to: the log was rewritten")));
            }
            cases.insert(row.case_id, (row.chain, row.case_seq, row.hash.clone()));
            w.prev_hash = row.hash;
            w.expected += 1;
        }
    }
    if let Some(w) = &walk
        && let Some((seq, problem)) = w.ends_at_head(&heads)
    {
        return Ok(report(checked, w.chain, seq, problem));
    }
    // Chains with no records left: their heads must say so (or name their checkpoint).
    let mut idle: Vec<i32> = heads.keys().filter(|c| !walked.contains(c)).copied().collect();
    idle.sort_unstable();
    for chain in idle {
        if let Some((seq, problem)) = Walk::start(chain, &checkpoints).ends_at_head(&heads) {
            return Ok(report(checked, chain, seq, problem));
        }
    }
    // A message recorded twice (a batch replayed with its hashes recomputed).
    if let Some((chain, seq, problem)) = duplicate(&mut tx).await? {
        return Ok(report(checked, chain, seq, problem));
    }
    let root = tree::root(&heads.into_values().collect::<Vec<_>>());
    Ok(Report { records_checked: checked, broken: None, broken_chain: 0, chains, tree_head: Some(root), signatures_checked: signatures, unsigned_records: unsigned })
}

/// The first later copy of a message recorded more than once, if any.
async fn duplicate(conn: &mut PgConnection) -> anyhow::Result<Option<(i32, i64, String)>> {
    let twice: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM audit_log GROUP BY message_id HAVING count(*) > 1")
        .fetch_all(&mut *conn)
        .await
        .context("looking for messages recorded twice")?;
    if twice.is_empty() {
        return Ok(None);
    }
    let copies: Vec<(Uuid, i32, i64)> =
        sqlx::query_as("SELECT message_id, chain, seq FROM audit_log WHERE message_id = ANY($1) ORDER BY chain, seq")
            .bind(&twice)
            .fetch_all(&mut *conn)
            .await
            .context("reading messages recorded twice")?;
    let mut first: HashMap<Uuid, (i32, i64)> = HashMap::new();
    for (id, chain, seq) in copies {
        if let Some((c, s)) = first.get(&id) {
            return Ok(Some((chain, seq, format!("message {id} recorded twice (first as record {s} of chain {c}): a replayed record"))));
        }
        first.insert(id, (chain, seq));
    }
    Ok(None)
}

/// Verifies one case's chain (each record against its chain predecessor too), on one
/// connection of `pool`.
pub async fn verify_case(pool: &PgPool, case_id: Uuid) -> anyhow::Result<Report> {
    verify_case_on(&mut *pool.acquire().await.context("acquiring a connection")?, case_id).await
}

/// [`verify_case`] on `conn`.
pub async fn verify_case_on(conn: &mut PgConnection, case_id: Uuid) -> anyhow::Result<Report> {
    let mut tx = snapshot(conn).await?;
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE case_id = $1 ORDER BY chain, seq");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(case_id).fetch_all(&mut *tx).await.context("reading the case")?;
    let mut case_prev: Vec<u8> = Vec::new();
    let mut checked = 0u64;
    let mut messages = HashSet::new();
    let broken = |checked: u64, row: &Row, problem: String| Report {
        records_checked: checked,
        broken: Some((row.seq, problem)),
        broken_chain: row.chain,
        ..Report::default()
    };
    for (i, row) in rows.iter().enumerate() {
        checked += 1;
        if row.chain != rows[0].chain {
            return Ok(broken(checked, row, format!("case chain broken: the case's records are on chains {} and {}", rows[0].chain, row.chain)));
        }
        if !messages.insert(row.message_id) {
            return Ok(broken(checked, row, format!("message {} recorded twice: a replayed record", row.message_id)));
        }
        // From 1, or (the case's first records dropped for retention) from where it resumes.
        if i == 0 && row.case_seq > 1 && !resumes(&mut tx, row).await? {
            return Ok(broken(checked, row, format!("case chain broken: case records before {} are missing", row.case_seq)));
        }
        let expected_case_seq = rows[0].case_seq.saturating_add(i32::try_from(i).unwrap_or(i32::MAX));
        if row.case_seq != expected_case_seq {
            return Ok(broken(checked, row, format!("case chain broken: expected case record {expected_case_seq}")));
        }
        if i == 0 && row.case_seq > 1 {
            case_prev = row.case_prev_hash.clone();
        }
        let prev: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE chain = $1 AND seq = $2")
            .bind(row.chain)
            .bind(row.seq - 1)
            .fetch_optional(&mut *tx)
            .await
            .context("reading the previous record")?;
        let prev = match prev {
            Some(h) => h,
            None if row.seq == 1 => genesis(row.chain),
            None => {
                let cp: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM audit_checkpoints WHERE chain = $1 AND seq = $2")
                    .bind(row.chain)
                    .bind(row.seq - 1)
                    .fetch_optional(&mut *tx)
                    .await?;
                match cp {
                    Some(h) => h,
                    None => return Ok(broken(checked, row, format!("gap in sequence: record {} is missing", row.seq - 1))),
                }
            }
        };
        if let Some(problem) = check_row(row, &prev, &case_prev) {
            return Ok(broken(checked, row, problem));
        }
        case_prev = row.hash.clone();
    }
    Ok(Report { records_checked: checked, ..Report::default() })
}

/// Whether a case chain that starts at `row` (its case sequence above 1) lost its earlier
/// records to retention: the record before `row` on its chain went with a dropped partition.
async fn resumes(conn: &mut PgConnection, row: &Row) -> anyhow::Result<bool> {
    let dropped_to: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints WHERE chain = $1")
        .bind(row.chain)
        .fetch_one(conn)
        .await
        .context("reading the checkpoints")?;
    Ok(dropped_to.is_some_and(|s| s < row.seq))
}

fn check_row(row: &Row, prev_hash: &[u8], case_prev: &[u8]) -> Option<String> {
    if row.case_prev_hash != case_prev {
        return Some("case chain broken: the previous record of the case does not match".into());
    }
    let sealed = Sealed { refused: row.refused.as_deref().map(str::as_bytes), signature: row.signature.as_deref(), signer_cert: row.signer_cert.as_deref() };
    let hash = record_hash_sealed(row.seq, row.case_seq, row.recorded_at, &row.state_after, &row.envelope, prev_hash, case_prev, &sealed);
    if hash != row.hash {
        return Some("hash mismatch: the record or one before it was changed".into());
    }
    column_mismatch(row)
}
