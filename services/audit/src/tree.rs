//! Tree heads: one hash over every chain's head at one moment, a Merkle tree hash as RFC 6962
//! (Certificate Transparency) defines it, with one leaf per chain: `(chain, size, hash of the
//! chain's last record)`. A tree head commits to the whole log as it stood, however many chains
//! it has; it is what a deployment signs and hands to its witnesses (supervisors, the
//! procuratorate), and what `Verify` checks the log against later: a chain cut back or rewritten
//! since a tree head no longer holds the record the tree head names.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::anchor::{ANCHOR_CONTEXT, signed_bytes};
use duijie_common::envelope::timestamp;
use duijie_common::signing::{AUDIT_SIGNER, Signer};
use duijie_proto::v1 as pb;
use sqlx::{PgConnection, PgPool};

/// A chain's head: its size (the sequence number of its last record, 0 when empty) and the hash
/// of that record (the chain's genesis value when empty).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChainHead {
    pub chain: i32,
    #[sqlx(rename = "last_seq")]
    pub size: i64,
    #[sqlx(rename = "last_hash")]
    pub hash: Vec<u8>,
}

#[cfg(test)]
fn leaf(head: &ChainHead) -> Vec<u8> {
    duijie_common::anchor::leaf(head.chain, head.size, &head.hash)
}

/// The tree hash over `heads` (in chain order); the same function the witnesses' tools use
/// ([`duijie_common::anchor::root`]).
pub fn root(heads: &[ChainHead]) -> Vec<u8> {
    duijie_common::anchor::root(&triples(heads))
}

fn triples(heads: &[ChainHead]) -> Vec<(i32, i64, &[u8])> {
    heads.iter().map(|h| (h.chain, h.size, h.hash.as_slice())).collect()
}

/// Every chain's head, as one statement sees them (a batch moves its chains' heads in one
/// transaction, so this is a consistent cut of the log).
pub async fn heads(conn: &mut PgConnection) -> anyhow::Result<Vec<ChainHead>> {
    sqlx::query_as("SELECT chain, last_seq, last_hash FROM audit_chains ORDER BY chain")
        .fetch_all(conn)
        .await
        .context("reading the chains' heads")
}

/// A recorded tree head with its signature, as `audit_tree_heads` holds it.
#[derive(sqlx::FromRow)]
struct AnchorRow {
    id: i64,
    created_at: DateTime<Utc>,
    chains: Vec<i32>,
    sizes: Vec<i64>,
    hashes: Vec<Vec<u8>>,
    root: Vec<u8>,
    signature: Option<Vec<u8>>,
    signer_cert: Option<Vec<u8>>,
}

impl AnchorRow {
    /// The anchor, or None for a tree head recorded before tree heads were signed.
    fn anchor(self) -> Option<pb::Anchor> {
        let (signature, signer_cert) = (self.signature?, self.signer_cert?);
        let heads = self
            .chains
            .iter()
            .zip(&self.sizes)
            .zip(self.hashes)
            .map(|((c, s), hash)| pb::ChainHead { chain: u32::try_from(*c).unwrap_or(0), size: *s, hash })
            .collect();
        Some(pb::Anchor { id: self.id, created_at: Some(timestamp(self.created_at)), heads, root: self.root, signature, signer_cert })
    }
}

/// Records a tree head over the chains' current heads, signed by the audit service (`signer`
/// holds [`AUDIT_SIGNER`]'s key), unless the last one recorded already says the same and is
/// signed. Returns the root.
///
/// The time signed is taken here and stored as `created_at`, truncated to microseconds (what
/// PostgreSQL keeps), so the row reads back as exactly what was signed.
pub async fn record(pool: &PgPool, signer: &Signer) -> anyhow::Result<Vec<u8>> {
    record_on(&mut *pool.acquire().await.context("recording a tree head")?, signer).await
}

/// [`record`] on one connection.
pub async fn record_on(conn: &mut PgConnection, signer: &Signer) -> anyhow::Result<Vec<u8>> {
    let heads = heads(&mut *conn).await?;
    let root = root(&heads);
    let last: Option<(Vec<u8>, bool)> =
        sqlx::query_as("SELECT root, signature IS NOT NULL FROM audit_tree_heads ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .context("reading the last tree head")?;
    if last.as_ref() != Some(&(root.clone(), true)) {
        let micros = Utc::now().timestamp_micros();
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros).context("the clock is out of range")?;
        let sig = signer
            .sign_bytes(AUDIT_SIGNER, ANCHOR_CONTEXT, &signed_bytes(micros, &triples(&heads), &root))
            .context("signing the tree head")?;
        sqlx::query(
            "INSERT INTO audit_tree_heads (created_at, chains, sizes, hashes, root, signature, signer_cert)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(created_at)
        .bind(heads.iter().map(|h| h.chain).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.size).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.hash.clone()).collect::<Vec<_>>())
        .bind(&root)
        .bind(&sig.signature)
        .bind(&sig.cert)
        .execute(&mut *conn)
        .await
        .context("recording a tree head")?;
    }
    Ok(root)
}

/// The latest signed tree head, if any.
pub async fn latest_anchor(conn: &mut PgConnection) -> anyhow::Result<Option<pb::Anchor>> {
    let row: Option<AnchorRow> = sqlx::query_as(
        "SELECT id, created_at, chains, sizes, hashes, root, signature, signer_cert FROM audit_tree_heads
         WHERE signature IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .context("reading the latest anchor")?;
    Ok(row.and_then(AnchorRow::anchor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn head(chain: i32) -> ChainHead {
        ChainHead { chain, size: i64::from(chain) + 1, hash: vec![u8::try_from(chain).unwrap_or(0); 32] }
    }

    #[test]
    fn the_tree_follows_rfc_6962() {
        let l: Vec<Vec<u8>> = (0..5).map(|c| leaf(&head(c))).collect();
        let node = |a: &[u8], b: &[u8]| {
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(a);
            h.update(b);
            h.finalize().to_vec()
        };
        assert_eq!(root(&[head(0)]), l[0]);
        assert_eq!(root(&[head(1), head(0)]), node(&l[0], &l[1]), "leaves in chain order");
        assert_eq!(root(&(0..3).map(head).collect::<Vec<_>>()), node(&node(&l[0], &l[1]), &l[2]));
        let four = node(&node(&l[0], &l[1]), &node(&l[2], &l[3]));
        assert_eq!(root(&(0..5).map(head).collect::<Vec<_>>()), node(&four, &l[4]));
    }

    #[test]
    fn any_head_changes_the_root() {
        let heads: Vec<ChainHead> = (0..4).map(head).collect();
        let mut cut = heads.clone();
        cut[2].size -= 1;
        assert_ne!(root(&heads), root(&cut));
    }
}
