//! Party data sealed per case (issue #14 item 4). A party's identity document, contact and
//! address are encrypted with the case's data key (AES-256-GCM) before the referral is stored
//! or sent, so every copy — agency databases, outbox rows, the broker, the audit log — holds
//! only ciphertext. The audit service keeps each case's key wrapped by a master key and hands it
//! to the agency that opens the case and to the case's current holder, recording every
//! release; destroying the key erases the parties' data everywhere at once (crypto-shredding)
//! while every stored byte, and so the hash chain, stays as it was.

use std::time::Duration;

use anyhow::Context as _;
use duijie_domain::AgencyNode;
use duijie_proto::v1::audit_service_client::AuditServiceClient;
use duijie_proto::v1::{OpenCaseKeyRequest, IssueCaseKeyRequest, Party, PartySecrets, Referral};
use prost::Message as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use tonic::transport::Channel;
use uuid::Uuid;

/// The format byte of a sealed blob: version 1 = nonce ‖ AES-256-GCM ciphertext and tag.
const VERSION: u8 = 1;
const PARTY_CONTEXT: &[u8] = b"duijie.party.v1";
const KEY_CONTEXT: &[u8] = b"duijie.casekey.v1";

/// Why sealed data could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed data is malformed")]
    Malformed,
    #[error("sealed data does not open with this key (another case's, or altered)")]
    WrongKey,
    #[error("the key is not 32 bytes")]
    BadKey,
}

/// A 256-bit AES key: a case's data key or the master key that wraps them.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A new random key.
    pub fn generate() -> anyhow::Result<Self> {
        let mut k = [0u8; 32];
        SystemRandom::new().fill(&mut k).map_err(|_| anyhow::anyhow!("no randomness for a key"))?;
        Ok(Self(k))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        Ok(Self(bytes.try_into().map_err(|_| SealError::BadKey)?))
    }

    /// A key written as 64 hex digits (the master key in the environment).
    pub fn from_hex(hex: &str) -> anyhow::Result<Self> {
        let hex = hex.trim();
        anyhow::ensure!(hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()), "a key is 64 hex digits");
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("a key is 64 hex digits")?;
        }
        Ok(Self(k))
    }

    /// The key's bytes (to hand a case key to the agency that may hold it).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).map_err(|_| SealError::BadKey)?))
    }

    /// Encrypts `plain` bound to `aad`: version ‖ random nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut buf = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts what [`Key::seal`] made with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut buf = ct.to_vec();
        let plain = self.aead()?.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }

    /// Wraps a case's data key with this (master) key, bound to the case.
    pub fn wrap(&self, case_id: Uuid, case_key: &Key) -> anyhow::Result<Vec<u8>> {
        self.seal(&key_aad(case_id), &case_key.0)
    }

    /// Unwraps a case's data key wrapped by [`Key::wrap`] for the same case.
    pub fn unwrap_key(&self, case_id: Uuid, wrapped: &[u8]) -> Result<Key, SealError> {
        Key::from_bytes(&self.open(&key_aad(case_id), wrapped)?)
    }
}

fn key_aad(case_id: Uuid) -> Vec<u8> {
    [KEY_CONTEXT, case_id.as_bytes()].concat()
}

/// A party's sealed data is bound to its case and party id: it cannot be moved to another
/// party or case and still open.
fn party_aad(case_id: Uuid, party_id: &str) -> Vec<u8> {
    [PARTY_CONTEXT, case_id.as_bytes(), party_id.as_bytes()].concat()
}

/// Whether a party carries data that must be sealed (identity, contact or address in clear).
fn has_clear_data(p: &Party) -> bool {
    p.identity.as_ref().is_some_and(|i| !i.number.is_empty()) || !p.contact.is_empty() || !p.address.is_empty()
}

/// Seals every party's identity, contact and address of `referral` (case `case_id`) with
/// `key`, leaving them empty in clear. A party already sealed is left as it is.
pub fn seal_referral(key: &Key, case_id: Uuid, referral: &mut Referral) -> anyhow::Result<()> {
    for p in &mut referral.parties {
        if !has_clear_data(p) {
            continue;
        }
        let secrets = PartySecrets { identity: p.identity.take(), contact: std::mem::take(&mut p.contact), address: std::mem::take(&mut p.address) };
        p.sealed = key.seal(&party_aad(case_id, &p.party_id), &secrets.encode_to_vec())?;
    }
    Ok(())
}

/// Opens every sealed party of `referral` in place (identity, contact and address back in clear).
pub fn open_referral(key: &Key, case_id: Uuid, referral: &mut Referral) -> Result<(), SealError> {
    for p in &mut referral.parties {
        if p.sealed.is_empty() {
            continue;
        }
        let plain = key.open(&party_aad(case_id, &p.party_id), &p.sealed)?;
        let secrets = PartySecrets::decode(plain.as_slice()).map_err(|_| SealError::Malformed)?;
        p.identity = secrets.identity;
        p.contact = secrets.contact;
        p.address = secrets.address;
        p.sealed.clear();
    }
    Ok(())
}

/// Whether any party of `referral` carries identity, contact or address in clear: what the bus
/// must never carry (it could never be erased from the audit log).
pub fn has_clear_party_data(referral: &Referral) -> bool {
    referral.parties.iter().any(has_clear_data)
}

/// The referral a payload carries (a referral, or an amendment's revised one), if any.
pub fn carried_referral(payload: Option<&duijie_proto::v1::envelope::Payload>) -> Option<&Referral> {
    use duijie_proto::v1::envelope::Payload;
    match payload? {
        Payload::Referral(r) => Some(r),
        Payload::Amendment(a) => a.revised.as_ref(),
        _ => None,
    }
}

/// Clears the parties' identity, contact and address of the referral `env` carries (a referral
/// or an amendment's revised one): what must not be kept when it arrived in clear.
pub fn strip_party_data(env: &mut duijie_proto::v1::Envelope) {
    use duijie_proto::v1::envelope::Payload;
    let referral = match env.payload.as_mut() {
        Some(Payload::Referral(r)) => Some(r),
        Some(Payload::Amendment(a)) => a.revised.as_mut(),
        _ => None,
    };
    for p in referral.into_iter().flat_map(|r| r.parties.iter_mut()) {
        p.identity = None;
        p.contact.clear();
        p.address.clear();
    }
}

/// Whether any party of `referral` is sealed.
pub fn is_sealed(referral: &Referral) -> bool {
    referral.parties.iter().any(|p| !p.sealed.is_empty())
}

/// Drops the ciphertext from a referral shown to a reader who cannot open it.
pub fn strip_sealed(referral: &mut Referral) {
    for p in &mut referral.parties {
        p.sealed.clear();
    }
}

/// Where the agency services ask for case keys (`key_service:` in their configuration): the
/// audit service, called with each node's own certificate.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct KeyServiceConfig {
    /// The audit service's gRPC address, `host:port`, e.g. `127.0.0.1:50056`.
    pub endpoint: String,
    /// The name its certificate is checked against.
    #[serde(default = "default_tls_domain")]
    pub tls_domain: String,
}

fn default_tls_domain() -> String {
    "localhost".to_owned()
}

/// Why a case key was not given.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The case's key was erased: its parties' data is gone.
    #[error("the case's data key was erased")]
    Erased,
    /// The key service refused this agency (not the case's holder, not its issuer).
    #[error("the key service refused: {0}")]
    Refused(String),
    /// The key service could not be reached or failed.
    #[error("the key service is unavailable: {0}")]
    Unavailable(String),
}

/// Asks the audit service for case keys, as each of the process's nodes.
#[derive(Clone)]
pub struct KeyClient {
    channels: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, AuditServiceClient<Channel>>>>,
    /// For an agency service: how to make the channel of an agency of its kind when it first
    /// needs one (its certificate from `signing.keys`).
    on_demand: Option<std::sync::Arc<OnDemand>>,
}

struct OnDemand {
    endpoint: String,
    tls_domain: String,
    ca: Vec<u8>,
    keys: crate::client::Pki,
    kind: duijie_proto::v1::AgencyKind,
}

impl std::fmt::Debug for KeyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.channels.read().map(|c| c.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("KeyClient").field("nodes", &nodes).finish()
    }
}

impl KeyClient {
    /// A client per node, each with that node's certificate from `signing.keys` (lazy channels:
    /// nothing connects until the first call).
    pub fn new(cfg: &KeyServiceConfig, signing: &crate::signing::SigningConfig, nodes: &[AgencyNode]) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let ca = read(&signing.ca)?;
        let keys = crate::client::Pki::new(&signing.keys);
        let mut channels = std::collections::HashMap::new();
        for n in nodes {
            let (cert, key) = keys.node_files(n);
            let tls = crate::server::TlsPem { ca: ca.clone(), cert: read(&cert)?, key: read(&key)? };
            let ch = crate::client::channel(&cfg.endpoint, &cfg.tls_domain, &tls)?;
            channels.insert(n.to_string(), AuditServiceClient::new(ch));
        }
        Ok(Self { channels: std::sync::Arc::new(std::sync::RwLock::new(channels)), on_demand: None })
    }

    /// A client for every agency of `kind` (an agency service): each agency's channel is made
    /// with its own certificate from `signing.keys` the first time it asks (lazy: nothing
    /// connects until then).
    pub fn for_kind(cfg: &KeyServiceConfig, signing: &crate::signing::SigningConfig, kind: duijie_proto::v1::AgencyKind) -> anyhow::Result<Self> {
        let ca = std::fs::read(&signing.ca).with_context(|| format!("reading {}", signing.ca.display()))?;
        let on_demand = OnDemand { endpoint: cfg.endpoint.clone(), tls_domain: cfg.tls_domain.clone(), ca, keys: crate::client::Pki::new(&signing.keys), kind };
        Ok(Self { channels: std::sync::Arc::default(), on_demand: Some(std::sync::Arc::new(on_demand)) })
    }

    fn client(&self, who: &AgencyNode) -> Result<AuditServiceClient<Channel>, KeyError> {
        let poisoned = || KeyError::Unavailable("the key client's lock is poisoned".into());
        if let Some(c) = self.channels.read().map_err(|_| poisoned())?.get(&who.to_string()) {
            return Ok(c.clone());
        }
        let refused = |why: String| KeyError::Refused(format!("no key-service identity for {who}: {why}"));
        let Some(d) = &self.on_demand else { return Err(refused("not an agency of this process".into())) };
        if who.kind() != d.kind {
            return Err(refused(format!("this process acts for {} agencies", d.kind.as_str())));
        }
        let (cert, key) = d.keys.node_files(who);
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| refused(format!("reading {}: {e}", p.display())));
        let tls = crate::server::TlsPem { ca: d.ca.clone(), cert: read(&cert)?, key: read(&key)? };
        let ch = crate::client::channel(&d.endpoint, &d.tls_domain, &tls).map_err(|e| refused(format!("{e:#}")))?;
        let client = AuditServiceClient::new(ch);
        self.channels.write().map_err(|_| poisoned())?.insert(who.to_string(), client.clone());
        Ok(client)
    }

    /// The key of a case `who` opens (submit, registration, amendment), sent to `holder`.
    pub async fn issue(&self, who: &AgencyNode, case_id: Uuid, holder: &AgencyNode) -> Result<Key, KeyError> {
        let mut c = self.client(who)?;
        let mut req = tonic::Request::new(IssueCaseKeyRequest { case_id: case_id.to_string(), holder: Some(holder.into()) });
        req.set_timeout(CALL_TIMEOUT);
        let key = c.issue_case_key(req).await.map_err(key_error)?.into_inner().key;
        Key::from_bytes(&key).map_err(|e| KeyError::Unavailable(e.to_string()))
    }

    /// The key of a case `who` holds, to read its parties' data (recorded with `purpose`).
    pub async fn open(&self, who: &AgencyNode, case_id: Uuid, purpose: &str) -> Result<Key, KeyError> {
        let mut c = self.client(who)?;
        let mut req = tonic::Request::new(OpenCaseKeyRequest { case_id: case_id.to_string(), purpose: purpose.to_owned() });
        req.set_timeout(CALL_TIMEOUT);
        let key = c.open_case_key(req).await.map_err(key_error)?.into_inner().key;
        Key::from_bytes(&key).map_err(|e| KeyError::Unavailable(e.to_string()))
    }
}

/// How long a key call may take (it is on a clerk's call).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn key_error(s: tonic::Status) -> KeyError {
    match s.code() {
        tonic::Code::FailedPrecondition => KeyError::Erased,
        tonic::Code::PermissionDenied | tonic::Code::NotFound | tonic::Code::InvalidArgument => KeyError::Refused(s.message().to_owned()),
        _ => KeyError::Unavailable(format!("{}: {}", s.code(), s.message())),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // test fixtures
mod tests {
    use super::*;
    use duijie_proto::v1::{IdDocumentType, IdentityDocument};

    fn referral() -> Referral {
        Referral {
            parties: vec![Party {
                party_id: "p1".into(),
                name: "张三".into(),
                identity: Some(IdentityDocument { document_type: IdDocumentType::ResidentIdCard as i32, number: "11010519491231002X".into() }),
                contact: "13800000000".into(),
                address: "郴州市".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sealed_parties_open_only_with_their_case_key_and_case() -> anyhow::Result<()> {
        let (key, other) = (Key::generate()?, Key::generate()?);
        let case = Uuid::now_v7();
        let mut r = referral();
        seal_referral(&key, case, &mut r)?;
        let bytes = r.encode_to_vec();
        assert!(!String::from_utf8_lossy(&bytes).contains("11010519491231002X"), "no identity number in clear");
        assert!(r.parties[0].identity.is_none() && r.parties[0].contact.is_empty() && is_sealed(&r));
        assert_eq!(open_referral(&other, case, &mut r.clone()), Err(SealError::WrongKey));
        assert_eq!(open_referral(&key, Uuid::now_v7(), &mut r.clone()), Err(SealError::WrongKey), "bound to its case");
        open_referral(&key, case, &mut r)?;
        assert_eq!(r, referral());
        Ok(())
    }

    #[test]
    fn a_case_key_unwraps_only_with_the_master_key_for_its_case() -> anyhow::Result<()> {
        let master = Key::from_hex(&"ab".repeat(32))?;
        let (case, dek) = (Uuid::now_v7(), Key::generate()?);
        let wrapped = master.wrap(case, &dek)?;
        assert_eq!(master.unwrap_key(case, &wrapped)?.as_bytes(), dek.as_bytes());
        assert!(master.unwrap_key(Uuid::now_v7(), &wrapped).is_err());
        assert!(Key::generate()?.unwrap_key(case, &wrapped).is_err());
        assert!(Key::from_hex("abc").is_err());
        Ok(())
    }
}
