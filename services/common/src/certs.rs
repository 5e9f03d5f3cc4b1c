//! A development certificate authority: one CA, one certificate per agency (subject common name
//! `<kind>:<code>`, usable as client and server certificate), for the local stack and tests.
//! Production certificates come from the agencies' real PKI; only the common-name convention
//! is shared.

use anyhow::Context as _;
use chrono::Datelike as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use duijie_domain::AgencyNode;
use crate::server::TlsPem;

/// A CA that issues agency certificates.
pub struct DevCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa { .. }")
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let from = chrono::Utc::now() - chrono::Duration::days(1);
    let to = chrono::Utc::now() + chrono::Duration::days(days);
    // Month and day from chrono are always valid calendar values.
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(to.year(), to.month() as u8, to.day() as u8);
}

/// The CA's parameters: what its certificate says about it and what its issuer stamps into the
/// certificates it signs (subject, key usages, key identifier), the same for a CA made now and
/// one read back from its files.
fn ca_params(name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "duijie development CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

impl DevCa {
    /// A new CA named `name`, valid ten years.
    pub fn generate(name: &str) -> anyhow::Result<Self> {
        let mut params = ca_params(name)?;
        validity(&mut params, 3650);
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA named `name` from its certificate and private key (PEM), as [`DevCa::key_pem`] and
    /// [`DevCa::cert_pem`] gave them: it issues certificates that chain to the same CA
    /// certificate, so an agency added later is trusted by everything already running.
    pub fn load(name: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("reading the CA key")?;
        Ok(Self { cert_pem: cert_pem.to_owned(), issuer: Issuer::new(ca_params(name)?, key) })
    }

    /// The CA's private key (PEM): keep it (readable by its owner only) to issue more later.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate (PEM), to trust on both sides.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `common_name` with DNS/IP `hosts`, for client and server use.
    /// Returns (certificate PEM, private key PEM).
    pub fn issue(&self, common_name: &str, hosts: &[&str]) -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
            .context("certificate parameters")?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, 825);
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params.signed_by(&key, &self.issuer).with_context(|| format!("signing {common_name}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// TLS material for an agency node (common name `<kind>:<code>`, valid for localhost).
    pub fn agency(&self, node: &AgencyNode) -> anyhow::Result<TlsPem> {
        let (cert, key) = self.issue(&node.to_string(), &["localhost", "127.0.0.1"])?;
        Ok(TlsPem { ca: self.cert_pem.clone().into_bytes(), cert: cert.into_bytes(), key: key.into_bytes() })
    }
}
