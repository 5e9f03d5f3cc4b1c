//! Signed handoffs: every envelope is signed by the agency node that sends it, and every
//! receiver (the recipient's service, the audit store, `Verify`) checks the signature before it
//! believes the envelope — trust does not rest on the broker's password.
//!
//! * **Key and certificate.** A node signs with the private key of its agency certificate (the
//!   one its clerks' mTLS uses: common name `<kind>:<code>`, ECDSA P-256), and the signature
//!   travels with the certificate, so a receiver needs only the agencies' CA. The audit service
//!   signs what the bus itself sends (deadline notices) and its tree heads with its own
//!   certificate (common name [`AUDIT_SIGNER`]).
//! * **What is signed:** `"duijie.envelope.v1\0"` followed by the envelope's bytes exactly as
//!   published (the outbox row's payload); ECDSA P-256 with SHA-256, ASN.1 DER signature.
//! * **Who must have signed** ([`expected_signer`]): the envelope's sender; for delivery evidence
//!   the agency it names as `delivered_to` (the recipient signs its receipt); for what the bus
//!   sends, the audit service; for a referrer's message passed on by a body that had handed the
//!   case on, that body, and the envelope then carries the original as its sender signed it
//!   ([`duijie_proto::v1::PassedOn`]).
//! * **Rotation.** A new certificate (new key) from the same CA: envelopes signed before keep
//!   their certificate and verify as they did ([`Verifier::verify`] at the time they were sent or
//!   recorded). Trusting a new CA: put both CA certificates in the trust file (a PEM bundle).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, Envelope};
use lapin::types::{AMQPValue, ByteArray, FieldTable};
use prost::Message as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, TrustAnchor, UnixTime};
use sha2::{Digest as _, Sha256};

use duijie_domain::AgencyNode;

/// AMQP header carrying the signature (bytes).
pub const SIGNATURE_HEADER: &str = "x-duijie-signature";
/// AMQP header carrying the signer's certificate (DER bytes).
pub const SIGNER_CERT_HEADER: &str = "x-duijie-signer-cert";
/// Common name of the audit service's certificate: the signer of what the bus itself sends.
pub const AUDIT_SIGNER: &str = "duijie-audit";
/// Domain separation: a signature over an envelope can never be taken for one over anything else.
const ENVELOPE_CONTEXT: &[u8] = b"duijie.envelope.v1\0";
/// How often one message may be passed on (each hand-over of a case that crossed it once).
const MAX_PASS_ON_DEPTH: usize = 4;
/// Certificates whose chain was checked, kept so a busy consumer checks each chain once.
const CACHE_MAX: usize = 4096;

/// A signature and the certificate of the key that made it.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    /// ECDSA P-256 SHA-256 signature, ASN.1 DER.
    pub signature: Vec<u8>,
    /// The signer's certificate, DER.
    pub cert: Vec<u8>,
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({} bytes, cert {} bytes)", self.signature.len(), self.cert.len())
    }
}

impl Signature {
    /// Writes the signature into AMQP headers.
    pub fn write_headers(&self, headers: &mut FieldTable) {
        headers.insert(SIGNATURE_HEADER.into(), AMQPValue::ByteArray(ByteArray::from(self.signature.clone())));
        headers.insert(SIGNER_CERT_HEADER.into(), AMQPValue::ByteArray(ByteArray::from(self.cert.clone())));
    }

    /// The signature a delivery carries, if any (both headers present as byte arrays).
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<Self> {
        let inner = headers?.inner();
        let bytes = |k: &str| match inner.get(k) {
            Some(AMQPValue::ByteArray(b)) => Some(b.as_slice().to_vec()),
            _ => None,
        };
        Some(Self { signature: bytes(SIGNATURE_HEADER)?, cert: bytes(SIGNER_CERT_HEADER)? })
    }
}

/// Why an envelope's signature is not accepted. Shown in dead-letter reasons and audit records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature at all.
    #[error("unsigned: the envelope carries no signature")]
    Unsigned,
    /// The certificate cannot be read or does not chain to a trusted CA at the time.
    #[error("untrusted signer certificate: {0}")]
    Untrusted(String),
    /// The signature does not match the bytes and the certificate's key.
    #[error("bad signature: the bytes are not what {0} signed")]
    BadSignature(String),
    /// A trusted agency signed, but not the one that had to.
    #[error("signed by {signer}, but only {expected} may sign this envelope")]
    WrongSigner { signer: String, expected: String },
    /// A passed-on message whose original does not prove what it claims.
    #[error("passed-on message: {0}")]
    BadPassOn(String),
    /// The envelope names no valid signer (malformed sender).
    #[error("the envelope names no valid signer: {0}")]
    NoSigner(String),
}

/// The common name that must have signed `env` (see the module documentation).
pub fn expected_signer(env: &Envelope) -> Result<String, SignatureError> {
    let node = |r| AgencyNode::from_ref(r).map(|n| n.to_string()).map_err(|e| SignatureError::NoSigner(e.to_string()));
    if let Some(Payload::DeliveryEvidence(ev)) = &env.payload {
        return node(ev.delivered_to.as_ref());
    }
    if let Some(p) = &env.passed_on {
        let original = Envelope::decode(p.original.as_slice()).map_err(|e| SignatureError::BadPassOn(format!("undecodable original: {e}")))?;
        return node(original.recipient.as_ref());
    }
    match env.sender.as_ref().map(|s| AgencyKind::try_from(s.kind)) {
        Some(Ok(AgencyKind::Bus)) => Ok(AUDIT_SIGNER.to_owned()),
        _ => node(env.sender.as_ref()),
    }
}

fn signed_message(envelope: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENVELOPE_CONTEXT.len() + envelope.len());
    m.extend_from_slice(ENVELOPE_CONTEXT);
    m.extend_from_slice(envelope);
    m
}

/// One signing key: the key pair and its certificate.
struct SigningKey {
    key: EcdsaKeyPair,
    cert: Vec<u8>,
}

/// The signing keys of the nodes a process sends for, by certificate common name.
pub struct Signer {
    keys: std::sync::RwLock<HashMap<String, std::sync::Arc<SigningKey>>>,
    rng: SystemRandom,
    /// Where keys of agencies of this kind not held yet are read from when first needed.
    on_demand: Option<(crate::client::Pki, duijie_proto::v1::AgencyKind)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.keys.read().map(|k| k.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("Signer").field("signers", &names).finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with no keys yet.
    pub fn new() -> Self {
        Self { keys: std::sync::RwLock::new(HashMap::new()), rng: SystemRandom::new(), on_demand: None }
    }

    /// Also signs for any agency of `kind` whose certificate and key appear in `pki` later
    /// (`<kind>-<code>.pem`), read the first time that agency sends.
    #[must_use]
    pub fn with_keys_on_demand(mut self, pki: crate::client::Pki, kind: duijie_proto::v1::AgencyKind) -> Self {
        self.on_demand = Some((pki, kind));
        self
    }

    /// The key of `name`: held, or read now for an agency of the on-demand kind.
    fn key(&self, name: &str) -> anyhow::Result<std::sync::Arc<SigningKey>> {
        if let Some(k) = self.keys.read().map_err(|_| anyhow::anyhow!("the signing keys' lock is poisoned"))?.get(name) {
            return Ok(k.clone());
        }
        let Some((pki, kind)) = &self.on_demand else { anyhow::bail!("no signing key for {name} in this process") };
        let node: AgencyNode = name.parse().map_err(|e| anyhow::anyhow!("no signing key for {name}: {e}"))?;
        anyhow::ensure!(node.kind() == *kind, "no signing key for {name} in this process (it signs for {} agencies)", kind.as_str());
        let (cert, key) = pki.node_files(&node);
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("no signing key for {name}: reading {}", p.display()));
        let (cert_pem, key_pem) = (read(&cert)?, read(&key)?);
        let (cn, k) = self.load_pem(&cert_pem, &key_pem)?;
        anyhow::ensure!(cn == name, "the certificate {} names {cn}, not {name}", cert.display());
        let k = std::sync::Arc::new(k);
        self.keys.write().map_err(|_| anyhow::anyhow!("the signing keys' lock is poisoned"))?.insert(cn, k.clone());
        Ok(k)
    }

    /// Adds the key of the certificate `cert_pem` (its common name names the signer) with its
    /// private key `key_pem` (PKCS#8, ECDSA P-256). Returns the common name.
    pub fn add_pem(&mut self, cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<String> {
        let (name, key) = self.load_pem(cert_pem, key_pem)?;
        self.keys.get_mut().map_err(|_| anyhow::anyhow!("the signing keys' lock is poisoned"))?.insert(name.clone(), std::sync::Arc::new(key));
        Ok(name)
    }

    /// The key of a certificate and its private key, with the certificate's common name.
    fn load_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<(String, SigningKey)> {
        let cert = CertificateDer::from_pem_slice(cert_pem).context("reading the signing certificate (PEM)")?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem).context("reading the signing key (PKCS#8 PEM)")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.secret_pkcs8_der(), &self.rng)
            .map_err(|e| anyhow::anyhow!("the signing key is not an ECDSA P-256 key: {e}"))?;
        let name = common_name(&cert).map_err(|e| anyhow::anyhow!("the signing certificate: {e}"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).map_err(|e| anyhow::anyhow!("the signing certificate: {e}"))?;
        anyhow::ensure!(
            parsed.public_key().subject_public_key.data.as_ref() == ring::signature::KeyPair::public_key(&pair).as_ref(),
            "the signing key of {name} does not belong to its certificate"
        );
        Ok((name, SigningKey { key: pair, cert: cert.to_vec() }))
    }

    /// Adds the certificate and key in these files (see [`Signer::add_pem`]).
    pub fn add_files(&mut self, cert: &Path, key: &Path) -> anyhow::Result<String> {
        let c = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let k = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        self.add_pem(&c, &k).with_context(|| format!("signing key {}", cert.display()))
    }

    /// Whether it holds the key of `name`.
    pub fn has(&self, name: &str) -> bool {
        self.keys.read().is_ok_and(|k| k.contains_key(name))
    }

    /// Signs `envelope` (its bytes as published) as `name`.
    pub fn sign(&self, name: &str, envelope: &[u8]) -> anyhow::Result<Signature> {
        let k = self.key(name)?;
        let sig = k.key.sign(&self.rng, &signed_message(envelope)).map_err(|_| anyhow::anyhow!("signing as {name} failed"))?;
        Ok(Signature { signature: sig.as_ref().to_vec(), cert: k.cert.clone() })
    }

    /// Signs `envelope` as whoever must sign it ([`expected_signer`]).
    pub fn sign_envelope(&self, envelope: &[u8]) -> anyhow::Result<Signature> {
        let env = Envelope::decode(envelope).context("decoding the envelope to sign")?;
        let name = expected_signer(&env).map_err(anyhow::Error::new)?;
        self.sign(&name, envelope)
    }

    /// Signs raw bytes (not an envelope) under another context, e.g. the audit store's anchors.
    pub fn sign_bytes(&self, name: &str, context: &[u8], bytes: &[u8]) -> anyhow::Result<Signature> {
        let k = self.key(name)?;
        let mut m = context.to_vec();
        m.extend_from_slice(bytes);
        let sig = k.key.sign(&self.rng, &m).map_err(|_| anyhow::anyhow!("signing as {name} failed"))?;
        Ok(Signature { signature: sig.as_ref().to_vec(), cert: k.cert.clone() })
    }
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

fn common_name(cert: &[u8]) -> Result<String, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| "the certificate has no common name".to_owned())
}

/// A certificate whose chain was checked: who it names and when it is valid.
#[derive(Clone)]
struct Checked {
    name: String,
    not_before: i64,
    not_after: i64,
}

/// Checks signatures against the agencies' CA(s).
pub struct Verifier {
    anchors: Vec<TrustAnchor<'static>>,
    checked: Mutex<HashMap<[u8; 32], Checked>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} trust anchors)", self.anchors.len())
    }
}

impl Verifier {
    /// Trusts every CA certificate in `pem` (one or a bundle).
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let mut anchors = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.context("reading a CA certificate (PEM)")?;
            let anchor = webpki::anchor_from_trusted_cert(&cert).map_err(|e| anyhow::anyhow!("a CA certificate: {e}"))?;
            anchors.push(anchor.to_owned());
        }
        anyhow::ensure!(!anchors.is_empty(), "no CA certificate to trust");
        Ok(Self { anchors, checked: Mutex::new(HashMap::new()) })
    }

    /// Trusts the CA certificate(s) in this file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("trusting {}", path.display()))
    }

    /// Checks `sig` over `bytes` (with `context` before them) and that its certificate chains to
    /// a trusted CA and was valid `at`; returns the signer's common name.
    pub fn verify_bytes(&self, context: &[u8], bytes: &[u8], sig: &Signature, at: DateTime<Utc>) -> Result<String, SignatureError> {
        let name = self.check_cert(&sig.cert, at)?;
        let cert_der = CertificateDer::from(sig.cert.as_slice());
        let cert = webpki::EndEntityCert::try_from(&cert_der).map_err(|e| SignatureError::Untrusted(e.to_string()))?;
        let mut m = context.to_vec();
        m.extend_from_slice(bytes);
        cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, &m, &sig.signature)
            .map_err(|_| SignatureError::BadSignature(name.clone()))?;
        Ok(name)
    }

    /// Checks an envelope (`bytes` as received) against its signature: the signature is good, the
    /// certificate trusted at `at`, and the signer is the one that must sign it
    /// ([`expected_signer`]); a passed-on message's original is checked as well. Returns the
    /// signer's common name.
    pub fn verify_envelope(&self, env: &Envelope, bytes: &[u8], sig: Option<&Signature>, at: DateTime<Utc>) -> Result<String, SignatureError> {
        self.verify_at_depth(env, bytes, sig, at, 0)
    }

    fn verify_at_depth(&self, env: &Envelope, bytes: &[u8], sig: Option<&Signature>, at: DateTime<Utc>, depth: usize) -> Result<String, SignatureError> {
        let sig = sig.ok_or(SignatureError::Unsigned)?;
        let signer = self.verify_bytes(ENVELOPE_CONTEXT, bytes, sig, at)?;
        let expected = expected_signer(env)?;
        if signer != expected {
            return Err(SignatureError::WrongSigner { signer, expected });
        }
        if let Some(p) = &env.passed_on {
            self.check_passed_on(env, p, at, depth)?;
        }
        Ok(signer)
    }

    /// A passed-on message is the original (signed by its sender) with a new id and recipient.
    fn check_passed_on(&self, env: &Envelope, p: &duijie_proto::v1::PassedOn, at: DateTime<Utc>, depth: usize) -> Result<(), SignatureError> {
        let bad = |m: &str| SignatureError::BadPassOn(m.to_owned());
        // Only a referrer's message to a holder is passed on: a referral (a case is handed on
        // with a Referral of its own), a confirmation application or evidence never is.
        if matches!(env.payload, None | Some(Payload::Referral(_) | Payload::ConfirmationRequest(_) | Payload::DeliveryEvidence(_))) {
            return Err(bad("this kind of message is never passed on"));
        }
        // A case handed on a few times at most; a deeper nesting is an attack on the stack.
        if depth >= MAX_PASS_ON_DEPTH {
            return Err(bad("passed on too many times"));
        }
        let original = Envelope::decode(p.original.as_slice()).map_err(|e| SignatureError::BadPassOn(format!("undecodable original: {e}")))?;
        // The original may itself have been passed on (a case handed on twice): it is checked
        // the same way, down to the envelope its sender signed.
        let sig = Signature { signature: p.signature.clone(), cert: p.signer_cert.clone() };
        self.verify_at_depth(&original, &p.original, Some(&sig), at, depth + 1)
            .map_err(|e| SignatureError::BadPassOn(format!("the original: {e}")))?;
        // Everything but its id, recipient, cause and trace is the original's.
        let same = original.sender == env.sender
            && original.case_id == env.case_id
            && original.case_code == env.case_code
            && original.channel == env.channel
            && original.kind == env.kind
            && original.occurred_at == env.occurred_at
            && original.schema_version == env.schema_version
            && original.payload == env.payload;
        if !same {
            return Err(bad("it does not carry what the original says"));
        }
        if env.causation_id != original.message_id {
            return Err(bad("it is not caused by the original"));
        }
        Ok(())
    }

    /// The common name of a certificate that chains to a trusted CA and is valid at `at`.
    fn check_cert(&self, der: &[u8], at: DateTime<Utc>) -> Result<String, SignatureError> {
        let key: [u8; 32] = Sha256::digest(der).into();
        let t = at.timestamp();
        let cached = self.checked.lock().ok().and_then(|m| m.get(&key).cloned());
        if let Some(c) = cached {
            if t < c.not_before || t > c.not_after {
                return Err(SignatureError::Untrusted(format!("the certificate of {} was not valid at {at}", c.name)));
            }
            return Ok(c.name);
        }
        let cert_der = CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&cert_der).map_err(|e| SignatureError::Untrusted(e.to_string()))?;
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0)));
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &[],
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| SignatureError::Untrusted(format!("{e:?}")))?;
        let name = common_name(der).map_err(SignatureError::Untrusted)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der).map_err(|e| SignatureError::Untrusted(e.to_string()))?;
        let validity = parsed.validity();
        let checked = Checked { name: name.clone(), not_before: validity.not_before.timestamp(), not_after: validity.not_after.timestamp() };
        if let Ok(mut m) = self.checked.lock() {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(key, checked);
        }
        Ok(name)
    }
}

/// Signing and checking as a service process is configured for it (`signing:` in its
/// configuration): the CA(s) it trusts and where its nodes' certificates and keys are.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SigningConfig {
    /// The agencies' CA certificate(s), PEM (a bundle to trust several, e.g. during a CA change).
    pub ca: std::path::PathBuf,
    /// A directory with `<kind>-<code>.pem` and `<kind>-<code>-key.pem` for every node the
    /// process sends for (as `duijie-bus certs` writes them), and `service-<name>.pem` /
    /// `service-<name>-key.pem` for a service signing as itself.
    pub keys: std::path::PathBuf,
}

impl SigningConfig {
    /// The verifier for the configured CA(s).
    pub fn verifier(&self) -> anyhow::Result<Verifier> {
        Verifier::from_file(&self.ca)
    }

    /// A signer holding the keys of `nodes`: refuses to start a node without its key (its
    /// envelopes could not go out) or with a certificate naming another agency.
    pub fn signer_for(&self, nodes: &[AgencyNode]) -> anyhow::Result<Signer> {
        let mut signer = Signer::new();
        let keys = crate::client::Pki::new(&self.keys);
        for n in nodes {
            let (cert, key) = keys.node_files(n);
            let name = signer.add_files(&cert, &key)?;
            anyhow::ensure!(name == n.to_string(), "the certificate for {n} names {name}");
        }
        Ok(signer)
    }

    /// A signer for every agency of `kind` (an agency service): the keys of `nodes` (the
    /// directory's agencies of that kind now) are read at once, and any other agency's key of the
    /// kind when it first sends. A missing key is named in the log, not refused: that agency's
    /// envelopes wait unsigned in the outbox until its certificate is installed. A certificate
    /// naming another agency is refused.
    pub fn signer_for_kind(&self, kind: duijie_proto::v1::AgencyKind, nodes: &[AgencyNode]) -> anyhow::Result<Signer> {
        let keys = crate::client::Pki::new(&self.keys);
        let mut signer = Signer::new();
        let mut missing = Vec::new();
        for n in nodes.iter().filter(|n| n.kind() == kind) {
            let (cert, key) = keys.node_files(n);
            if !cert.exists() || !key.exists() {
                missing.push(n.to_string());
                continue;
            }
            let name = signer.add_files(&cert, &key)?;
            anyhow::ensure!(name == n.to_string(), "the certificate for {n} names {name}");
        }
        if !missing.is_empty() {
            tracing::warn!(agencies = missing.len(), first = %missing[0], keys = %self.keys.display(), "agencies of the directory without a signing key here: what they send waits in the outbox until their certificate is installed");
        }
        Ok(signer.with_keys_on_demand(keys, kind))
    }

    /// A signer holding service `name`'s own key (`service-<name>.pem`).
    pub fn signer_for_service(&self, name: &str) -> anyhow::Result<Signer> {
        let mut signer = Signer::new();
        let (cert, key) = crate::client::Pki::new(&self.keys).service_files(name);
        signer.add_files(&cert, &key)?;
        Ok(signer)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // test fixtures: literals that are valid, keys just issued
mod tests {
    use super::*;
    use crate::certs::DevCa;
    use crate::envelope::{Header, build};
    use duijie_proto::v1::{Channel, PassedOn, SupervisionNotice};

    fn node(s: &str) -> AgencyNode {
        s.parse().expect("a valid agency in a test") // a literal of the test
    }

    fn signer(ca: &DevCa, names: &[&str]) -> Signer {
        let mut s = Signer::new();
        for n in names {
            let tls = ca.agency(&node(n)).expect("issuing");
            s.add_pem(&tls.cert, &tls.key).expect("adding the key");
        }
        s
    }

    fn notice(from: &str, to: &str) -> Envelope {
        let header = Header {
            case_id: uuid::Uuid::now_v7(),
            case_code: "JF-1".into(),
            channel: Channel::Court,
            sender: node(from),
            recipient: node(to),
            causation_id: None,
        };
        build(&header, Payload::SupervisionNotice(SupervisionNotice { instructions: "督办".into(), ..Default::default() }))
    }

    #[test]
    fn a_signed_envelope_verifies_and_any_change_does_not() -> anyhow::Result<()> {
        let ca = DevCa::generate("test CA")?;
        let verifier = Verifier::from_pem(ca.cert_pem().as_bytes())?;
        let s = signer(&ca, &["court:431003", "police:431003"]);
        let env = notice("court:431003", "mediation:431003");
        let bytes = env.encode_to_vec();
        let sig = s.sign_envelope(&bytes)?;
        assert_eq!(verifier.verify_envelope(&env, &bytes, Some(&sig), Utc::now()), Ok("court:431003".to_owned()));
        // Unsigned.
        assert_eq!(verifier.verify_envelope(&env, &bytes, None, Utc::now()), Err(SignatureError::Unsigned));
        // One byte changed.
        let mut tampered = bytes.clone();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        assert!(matches!(verifier.verify_envelope(&env, &tampered, Some(&sig), Utc::now()), Err(SignatureError::BadSignature(_))));
        // Another trusted agency's key, claiming to be the court.
        let by_police = s.sign("police:431003", &bytes)?;
        assert!(matches!(
            verifier.verify_envelope(&env, &bytes, Some(&by_police), Utc::now()),
            Err(SignatureError::WrongSigner { ref signer, ref expected }) if signer == "police:431003" && expected == "court:431003"
        ));
        // The court's name on a certificate from another CA.
        let rogue = DevCa::generate("rogue CA")?;
        let forged = signer(&rogue, &["court:431003"]).sign_envelope(&bytes)?;
        assert!(matches!(verifier.verify_envelope(&env, &bytes, Some(&forged), Utc::now()), Err(SignatureError::Untrusted(_))));
        // A certificate used outside its validity.
        let later = Utc::now() + chrono::Duration::days(4000);
        assert!(matches!(verifier.verify_envelope(&env, &bytes, Some(&sig), later), Err(SignatureError::Untrusted(_))));
        Ok(())
    }

    #[test]
    fn a_passed_on_message_proves_its_original() -> anyhow::Result<()> {
        let ca = DevCa::generate("test CA")?;
        let verifier = Verifier::from_pem(ca.cert_pem().as_bytes())?;
        let s = signer(&ca, &["petition:431003", "mediation:431003-102-05", "mediation:431003-102"]);
        let original = notice("petition:431003", "mediation:431003-102-05");
        let original_bytes = original.encode_to_vec();
        let original_sig = s.sign_envelope(&original_bytes)?;
        let pass = |payload_changed: bool| -> anyhow::Result<(Envelope, Vec<u8>)> {
            let mut passed = original.clone();
            passed.message_id = uuid::Uuid::now_v7().to_string();
            passed.causation_id.clone_from(&original.message_id);
            passed.recipient = Some((&node("mediation:431003-102")).into());
            if payload_changed {
                passed.payload = Some(Payload::SupervisionNotice(SupervisionNotice { instructions: "改过".into(), ..Default::default() }));
            }
            passed.passed_on = Some(PassedOn { original: original_bytes.clone(), signature: original_sig.signature.clone(), signer_cert: original_sig.cert.clone() });
            let bytes = passed.encode_to_vec();
            Ok((passed, bytes))
        };
        let (passed, bytes) = pass(false)?;
        assert_eq!(expected_signer(&passed), Ok("mediation:431003-102-05".to_owned()));
        let sig = s.sign_envelope(&bytes)?;
        assert_eq!(verifier.verify_envelope(&passed, &bytes, Some(&sig), Utc::now()), Ok("mediation:431003-102-05".to_owned()));
        // The body that passes it on cannot change what the referrer said.
        let (changed, bytes) = pass(true)?;
        let sig = s.sign_envelope(&bytes)?;
        assert!(matches!(verifier.verify_envelope(&changed, &bytes, Some(&sig), Utc::now()), Err(SignatureError::BadPassOn(_))));
        // Nested deeper than any real hand-over chain: refused, not followed down the stack.
        let (mut env, mut bytes) = pass(false)?;
        let mut sig = s.sign_envelope(&bytes)?;
        for _ in 0..MAX_PASS_ON_DEPTH + 1 {
            let mut outer = env.clone();
            outer.message_id = uuid::Uuid::now_v7().to_string();
            outer.causation_id.clone_from(&env.message_id);
            outer.passed_on = Some(PassedOn { original: bytes.clone(), signature: sig.signature.clone(), signer_cert: sig.cert.clone() });
            outer.recipient = original.recipient.clone();
            bytes = outer.encode_to_vec();
            sig = s.sign_envelope(&bytes)?;
            env = outer;
        }
        assert!(matches!(verifier.verify_envelope(&env, &bytes, Some(&sig), Utc::now()), Err(SignatureError::BadPassOn(_))));
        Ok(())
    }

    #[test]
    fn a_referral_is_never_passed_on() -> anyhow::Result<()> {
        let ca = DevCa::generate("test CA")?;
        let verifier = Verifier::from_pem(ca.cert_pem().as_bytes())?;
        let s = signer(&ca, &["court:431003", "mediation:431003"]);
        let mut referral = notice("court:431003", "mediation:431003");
        referral.payload = Some(Payload::Referral(duijie_proto::v1::Referral::default()));
        let original = referral.encode_to_vec();
        let sig = s.sign_envelope(&original)?;
        let mut passed = referral.clone();
        passed.message_id = uuid::Uuid::now_v7().to_string();
        passed.causation_id.clone_from(&referral.message_id);
        passed.recipient = Some((&node("mediation:431003-102")).into());
        passed.passed_on = Some(PassedOn { original, signature: sig.signature, signer_cert: sig.cert });
        let bytes = passed.encode_to_vec();
        let sig = s.sign_envelope(&bytes)?;
        assert!(matches!(verifier.verify_envelope(&passed, &bytes, Some(&sig), Utc::now()), Err(SignatureError::BadPassOn(_))));
        Ok(())
    }
}
