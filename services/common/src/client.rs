//! Calling the duijie services as an agency, for the console and the command line: where each
//! service listens ([`Endpoints`]) and which certificate an agency presents ([`Pki`], a
//! directory in the layout `duijie-bus certs` writes: `ca.pem`, `<kind>-<code>.pem`,
//! `<kind>-<code>-key.pem`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use duijie_proto::v1::AgencyKind;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use duijie_domain::AgencyNode;
use crate::server::TlsPem;

/// Where the services listen (`host:port`); the defaults are the local stack's ports.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    pub court: String,
    pub procuratorate: String,
    pub police: String,
    pub petition: String,
    pub mediation: String,
    pub audit: String,
    /// The name the services' certificates are issued for (checked by TLS).
    pub tls_domain: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            court: "127.0.0.1:50051".into(),
            procuratorate: "127.0.0.1:50052".into(),
            police: "127.0.0.1:50053".into(),
            petition: "127.0.0.1:50054".into(),
            mediation: "127.0.0.1:50055".into(),
            audit: "127.0.0.1:50056".into(),
            tls_domain: "localhost".into(),
        }
    }
}

impl Endpoints {
    /// The address of the service an agency of `kind` uses (its own agency's service).
    pub fn of(&self, kind: AgencyKind) -> Option<&str> {
        Some(match kind {
            AgencyKind::Court => &self.court,
            AgencyKind::Procuratorate => &self.procuratorate,
            AgencyKind::Police => &self.police,
            AgencyKind::Petition => &self.petition,
            AgencyKind::Mediation => &self.mediation,
            AgencyKind::Unspecified | AgencyKind::Bus | AgencyKind::Supervisor => return None,
        })
    }

    /// Overrides from a list `court=host:port,audit=host:port,…` (unknown names are an error).
    pub fn with_overrides(mut self, list: &str) -> anyhow::Result<Self> {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, addr) = item.split_once('=').with_context(|| format!("{item:?}: expected service=host:port"))?;
            let slot = match name.trim() {
                "court" => &mut self.court,
                "procuratorate" => &mut self.procuratorate,
                "police" => &mut self.police,
                "petition" => &mut self.petition,
                "mediation" => &mut self.mediation,
                "audit" => &mut self.audit,
                other => anyhow::bail!("unknown service {other:?} (court, procuratorate, police, petition, mediation, audit)"),
            };
            *slot = addr.trim().to_owned();
        }
        Ok(self)
    }

    /// The list form read by [`Endpoints::with_overrides`].
    pub fn to_list(&self) -> String {
        format!(
            "court={},procuratorate={},police={},petition={},mediation={},audit={}",
            self.court, self.procuratorate, self.police, self.petition, self.mediation, self.audit
        )
    }
}

/// A directory of certificates: the CA and one certificate per agency identity.
#[derive(Clone, Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `who`'s certificate and key are: `<kind>-<code>.pem` and `<kind>-<code>-key.pem`.
    pub fn node_files(&self, who: &AgencyNode) -> (PathBuf, PathBuf) {
        let stem = format!("{}-{}", who.kind().as_str(), who.code());
        (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}-key.pem")))
    }

    /// Where service `name`'s own certificate and key are: `service-<name>.pem` and
    /// `service-<name>-key.pem`.
    pub fn service_files(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("service-{name}.pem")), self.dir.join(format!("service-{name}-key.pem")))
    }

    /// Writes the CA and `who`'s certificate and key (tests and the local stack).
    pub fn write(&self, ca_pem: &str, who: &AgencyNode, tls: &TlsPem) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::write(self.dir.join("ca.pem"), ca_pem)?;
        let (cert, key) = self.node_files(who);
        std::fs::write(cert, &tls.cert)?;
        std::fs::write(key, &tls.key)?;
        Ok(())
    }

    /// The CA certificate and `who`'s certificate and key.
    pub fn identity(&self, who: &AgencyNode) -> anyhow::Result<TlsPem> {
        let read = |path: PathBuf| std::fs::read(&path).with_context(|| format!("reading {} (no certificate for {who}?)", path.display()));
        let (cert, key) = self.node_files(who);
        Ok(TlsPem { ca: read(self.dir.join("ca.pem"))?, cert: read(cert)?, key: read(key)? })
    }

    /// The CA certificate and service `name`'s own certificate and key (`service-<name>.pem`,
    /// as `duijie-bus certs --service <name>` writes them; common name `duijie-<name>`): for the
    /// few calls a service makes as itself, such as the console's parties' lookup.
    pub fn service(&self, name: &str) -> anyhow::Result<TlsPem> {
        let read = |path: PathBuf| std::fs::read(&path).with_context(|| format!("reading {} (no certificate for service {name}?)", path.display()));
        let (cert, key) = self.service_files(name);
        Ok(TlsPem { ca: read(self.dir.join("ca.pem"))?, cert: read(cert)?, key: read(key)? })
    }

    /// Every agency identity with a certificate and key in the directory, sorted.
    pub fn identities(&self) -> anyhow::Result<Vec<AgencyNode>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?;
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix("-key.pem") else { continue };
            let Some((kind, code)) = stem.split_once('-') else { continue };
            if let Some(kind) = AgencyKind::parse(kind)
                && kind != AgencyKind::Bus
                && let Ok(node) = AgencyNode::new(kind, code)
                && self.dir.join(format!("{stem}.pem")).exists()
            {
                out.push(node);
            }
        }
        out.sort(); // by kind, then code
        Ok(out)
    }
}

/// A channel to `addr` over mTLS presenting `tls`; connects on first use and reconnects after
/// the service restarts, so a caller can hold it for its lifetime.
pub fn channel(addr: &str, tls_domain: &str, tls: &TlsPem) -> anyhow::Result<Channel> {
    channel_with(addr, tls_domain, tls, Some(Duration::from_secs(30)))
}

/// [`channel`] whose calls wait `timeout` at most for their answer, or for ever with `None`
/// (a long call that shows it is alive by streaming progress, e.g. `VerifyWithProgress`).
pub fn channel_with(addr: &str, tls_domain: &str, tls: &TlsPem, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca))
        .domain_name(tls_domain.to_owned())
        .identity(Identity::from_pem(&tls.cert, &tls.key));
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .with_context(|| format!("service address {addr:?}"))?
        .tls_config(cfg)
        .context("TLS configuration")?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let endpoint = match timeout {
        Some(t) => endpoint.timeout(t),
        None => endpoint,
    };
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_named_services_and_refuse_unknown_ones() -> anyhow::Result<()> {
        let e = Endpoints::default().with_overrides("court=10.0.0.1:1, audit = 10.0.0.2:2")?;
        assert_eq!((e.court.as_str(), e.audit.as_str(), e.police.as_str()), ("10.0.0.1:1", "10.0.0.2:2", "127.0.0.1:50053"));
        assert_eq!(Endpoints::default().with_overrides(&e.to_list())?, e);
        assert!(Endpoints::default().with_overrides("courts=1:1").is_err());
        assert!(Endpoints::default().with_overrides("court").is_err());
        Ok(())
    }
}
