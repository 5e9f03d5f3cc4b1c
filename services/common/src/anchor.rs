//! Anchors: tree heads signed by the audit service, which witnesses (supervisors, the
//! procuratorate) keep outside the audit database. Shared by the audit service (which signs and
//! checks them) and the CLI (which checks one before saving it), so both read the same bytes.
//!
//! The tree hash is RFC 6962's Merkle tree hash with one leaf per chain,
//! `SHA-256(0x00 ‖ "duijie.audit.head" ‖ chain ‖ size ‖ hash of the chain's last record)`.

use chrono::{DateTime, Utc};
use duijie_proto::v1 as pb;
use sha2::{Digest as _, Sha256};

use crate::signing::{AUDIT_SIGNER, Signature, SignatureError, Verifier};

/// Domain separation: a signature over an anchor can never be taken for one over anything else.
pub const ANCHOR_CONTEXT: &[u8] = b"duijie.audit.anchor.v1\0";

/// One chain's head as an anchor lists it: chain, size, hash of the chain's last record.
pub type Head<'a> = (i32, i64, &'a [u8]);

/// The leaf of one chain's head.
pub fn leaf(chain: i32, size: i64, hash: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(b"duijie.audit.head");
    h.update(chain.to_be_bytes());
    h.update(size.to_be_bytes());
    h.update(hash);
    h.finalize().to_vec()
}

/// RFC 6962 §2.1: MTH of n leaves splits at the largest power of two below n.
pub fn mth(leaves: &[Vec<u8>]) -> Vec<u8> {
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

/// The tree hash over `(chain, size, hash)` heads, in any order (sorted by chain here).
pub fn root(heads: &[Head<'_>]) -> Vec<u8> {
    let mut sorted = heads.to_vec();
    sorted.sort_by_key(|h| h.0);
    mth(&sorted.into_iter().map(|(c, s, h)| leaf(c, s, h)).collect::<Vec<_>>())
}

fn len_u32(n: usize) -> [u8; 4] {
    // Heads and hashes are short; a length past u32 cannot occur and would only fail the check.
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

/// The bytes an anchor's signature covers (after [`ANCHOR_CONTEXT`]): created_at in microseconds,
/// every head in chain order, the root; lengths before variable parts, so no two anchors share
/// their bytes.
pub fn signed_bytes(created_at_micros: i64, heads: &[Head<'_>], root: &[u8]) -> Vec<u8> {
    let mut sorted = heads.to_vec();
    sorted.sort_by_key(|h| h.0);
    let mut b = Vec::with_capacity(16 + sorted.len() * 48 + root.len());
    b.extend_from_slice(&created_at_micros.to_be_bytes());
    b.extend_from_slice(&len_u32(sorted.len()));
    for (chain, size, hash) in sorted {
        b.extend_from_slice(&chain.to_be_bytes());
        b.extend_from_slice(&size.to_be_bytes());
        b.extend_from_slice(&len_u32(hash.len()));
        b.extend_from_slice(hash);
    }
    b.extend_from_slice(&len_u32(root.len()));
    b.extend_from_slice(root);
    b
}

/// Why an anchor is not to be believed.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// A field is missing or out of range.
    #[error("malformed anchor: {0}")]
    Malformed(String),
    /// The root does not hash to the heads the anchor lists.
    #[error("the anchor's root does not hash to the heads it lists")]
    BadRoot,
    /// The signature or its certificate does not hold.
    #[error("the anchor's signature does not hold: {0}")]
    Signature(#[from] SignatureError),
    /// Signed by a trusted certificate, but not the audit service's.
    #[error("the anchor is signed by {0}, not by {AUDIT_SIGNER}")]
    WrongSigner(String),
}

/// An anchor's heads as `(chain, size, hash)`.
pub fn heads(anchor: &pb::Anchor) -> Result<Vec<Head<'_>>, AnchorError> {
    anchor
        .heads
        .iter()
        .map(|h| {
            let chain = i32::try_from(h.chain).map_err(|_| AnchorError::Malformed(format!("chain {} out of range", h.chain)))?;
            if h.size < 0 {
                return Err(AnchorError::Malformed(format!("chain {chain}: negative size")));
            }
            Ok((chain, h.size, h.hash.as_slice()))
        })
        .collect()
}

/// When the anchor was made, in microseconds since the epoch.
fn created_micros(anchor: &pb::Anchor) -> Result<(i64, DateTime<Utc>), AnchorError> {
    let t = crate::envelope::from_timestamp(anchor.created_at.as_ref()).ok_or_else(|| AnchorError::Malformed("no created_at".into()))?;
    Ok((t.timestamp_micros(), t))
}

/// Checks an anchor: its root hashes to its heads, its signature is good over them, and its
/// certificate chains to `verifier`'s CA, was valid when the anchor was made and names the audit
/// service.
pub fn check(verifier: &Verifier, anchor: &pb::Anchor) -> Result<(), AnchorError> {
    let heads = heads(anchor)?;
    if root(&heads) != anchor.root {
        return Err(AnchorError::BadRoot);
    }
    let (micros, at) = created_micros(anchor)?;
    let sig = Signature { signature: anchor.signature.clone(), cert: anchor.signer_cert.clone() };
    let signer = verifier.verify_bytes(ANCHOR_CONTEXT, &signed_bytes(micros, &heads, &anchor.root), &sig, at)?;
    if signer != AUDIT_SIGNER {
        return Err(AnchorError::WrongSigner(signer));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_bytes_do_not_depend_on_head_order_but_on_every_field() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let one = signed_bytes(5, &[(0, 3, &a), (1, 4, &b)], b"r");
        assert_eq!(one, signed_bytes(5, &[(1, 4, &b), (0, 3, &a)], b"r"));
        assert_ne!(one, signed_bytes(6, &[(0, 3, &a), (1, 4, &b)], b"r"));
        assert_ne!(one, signed_bytes(5, &[(0, 3, &a), (1, 5, &b)], b"r"));
        assert_ne!(one, signed_bytes(5, &[(0, 3, &a), (1, 4, &b)], b"s"));
    }
}
