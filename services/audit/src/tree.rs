//! Tree heads: one hash over every chain's head at one moment, a Merkle tree hash as RFC 6962
//! (Certificate Transparency) defines it, with one leaf per chain: `(chain, size, hash of the
//! chain's last record)`. A tree head commits to the whole log as it stood, however many chains
//! it has; it is what a deployment signs and hands to its witnesses (supervisors, the
//! procuratorate), and what `Verify` checks the log against later: a chain cut back or rewritten
//! since a tree head no longer holds the record the tree head names.

use anyhow::Context as _;
use sha2::{Digest, Sha256};
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

fn leaf(head: &ChainHead) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(b"duijie.audit.head");
    h.update(head.chain.to_be_bytes());
    h.update(head.size.to_be_bytes());
    h.update(&head.hash);
    h.finalize().to_vec()
}

/// RFC 6962 §2.1: MTH of n leaves splits at the largest power of two below n.
fn mth(leaves: &[Vec<u8>]) -> Vec<u8> {
    match leaves {
        [] => Sha256::digest([]).to_vec(),
        [one] => one.clone(),
        _ => {
            let k = leaves.len().next_power_of_two() / 2;
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(mth(&leaves[..k]));
            h.update(mth(&leaves[k..]));
            h.finalize().to_vec()
        }
    }
}

/// The tree hash over `heads` (in chain order).
pub fn root(heads: &[ChainHead]) -> Vec<u8> {
    let mut sorted: Vec<&ChainHead> = heads.iter().collect();
    sorted.sort_by_key(|h| h.chain);
    mth(&sorted.into_iter().map(leaf).collect::<Vec<_>>())
}

/// Every chain's head, as one statement sees them (a batch moves its chains' heads in one
/// transaction, so this is a consistent cut of the log).
pub async fn heads(conn: &mut PgConnection) -> anyhow::Result<Vec<ChainHead>> {
    sqlx::query_as("SELECT chain, last_seq, last_hash FROM audit_chains ORDER BY chain")
        .fetch_all(conn)
        .await
        .context("reading the chains' heads")
}

/// Records a tree head over the chains' current heads, unless the last one recorded already
/// says the same. Returns the root.
pub async fn record(pool: &PgPool) -> anyhow::Result<Vec<u8>> {
    let mut conn = pool.acquire().await.context("recording a tree head")?;
    let heads = heads(&mut conn).await?;
    let root = root(&heads);
    let last: Option<Vec<u8>> = sqlx::query_scalar("SELECT root FROM audit_tree_heads ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .context("reading the last tree head")?;
    if last.as_ref() != Some(&root) {
        sqlx::query("INSERT INTO audit_tree_heads (chains, sizes, hashes, root) VALUES ($1, $2, $3, $4)")
            .bind(heads.iter().map(|h| h.chain).collect::<Vec<_>>())
            .bind(heads.iter().map(|h| h.size).collect::<Vec<_>>())
            .bind(heads.iter().map(|h| h.hash.clone()).collect::<Vec<_>>())
            .bind(&root)
            .execute(&mut *conn)
            .await
            .context("recording a tree head")?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

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
