//! The five agency services, started in-process on port 0 against real RabbitMQ and
//! PostgreSQL (one database per service, one topology prefix per test), and gRPC clients that
//! call them as a given agency with its own client certificate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use duijie_agency::gate::GateConfig;
use duijie_agency::service::{self, Running, ServiceConfig};
use duijie_domain::AgencyNode;
use duijie_common::CancellationToken;
use duijie_common::certs::DevCa;
use duijie_common::config::{BusConfig, DatabaseConfig, TopologyConfig};
use duijie_common::server::{GrpcConfig, TlsFiles, TlsPem};
use duijie_proto::answered_case;
use duijie_proto::v1::cases_service_client::CasesServiceClient;
use duijie_proto::v1::court_service_client::CourtServiceClient;
use duijie_proto::v1::mediation_service_client::MediationServiceClient;
use duijie_proto::v1::petition_service_client::PetitionServiceClient;
use duijie_proto::v1::police_service_client::PoliceServiceClient;
use duijie_proto::v1::procuratorate_service_client::ProcuratorateServiceClient;
use duijie_proto::v1::referrals_service_client::ReferralsServiceClient;
use duijie_proto::v1::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{TestBus, node, wait_until};

/// How long a test waits for a message to cross the bus.
pub const WAIT: Duration = Duration::from_secs(30);

/// The demo agencies: one of each referring kind and a district centre with a town and a
/// village committee under it.
pub fn court() -> AgencyNode {
    node(AgencyKind::Court, "431003")
}
pub fn procuratorate() -> AgencyNode {
    node(AgencyKind::Procuratorate, "431003")
}
pub fn police() -> AgencyNode {
    node(AgencyKind::Police, "431003-01")
}
pub fn petition() -> AgencyNode {
    node(AgencyKind::Petition, "431003")
}
pub fn centre() -> AgencyNode {
    node(AgencyKind::Mediation, "431003")
}
pub fn town() -> AgencyNode {
    node(AgencyKind::Mediation, "431003-102")
}
pub fn village() -> AgencyNode {
    node(AgencyKind::Mediation, "431003-102-05")
}

/// The agency directory of the demo agencies, with their names: the local stack's own file,
/// which every service and the console read.
pub fn demo_directory() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/directory.yaml")
}

pub fn demo_nodes() -> Vec<AgencyNode> {
    vec![court(), procuratorate(), police(), petition(), centre(), town(), village()]
}

/// The audit service's access-code secret in a test stack (parties' lookup).
pub const TEST_ACCESS_CODE_SECRET: &str = "duijie test access codes";

/// The five services of one test.
pub struct Stack {
    pub bus: TestBus,
    pub ca: DevCa,
    pub services: Vec<(AgencyKind, Running)>,
    pub audit: Option<duijie_audit::service::Running>,
    /// The audit service's configuration (to start it again after [`Stack::stop_audit`]).
    pub audit_cfg: duijie_audit::service::AuditServiceConfig,
    /// Each agency service's configuration (to start it again, [`Stack::restart_service`]).
    service_cfgs: Vec<(AgencyKind, ServiceConfig)>,
    /// Services started for agencies beyond the demo ones ([`Stack::start_service_for`]), with
    /// their nodes.
    /// Further replicas of a service ([`Stack::start_replica`]).
    extra: Vec<(AgencyKind, Running)>,
    /// Each service's database settings, by service name (see [`Stack::database`]).
    databases: Vec<(String, DatabaseConfig)>,
    dir: PathBuf,
    /// The services' own broker users ([`Stack::start_restricted`]); `None`: every service
    /// connects as the test's admin user.
    pub users: Option<crate::broker::ServiceUsers>,
}

/// How the agency services watch the audit store in tests: every 200 ms, the audit service's lag
/// reports (every 200 ms here) stale after 1 s; the default marks, which a test's few messages
/// never reach.
pub fn test_gate() -> GateConfig {
    GateConfig { interval_ms: Duration::from_millis(200), status_stale_ms: Duration::from_secs(1), ..GateConfig::default() }
}

impl Stack {
    /// Starts the five services for the demo agencies.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(test_gate(), |_, _| {}).await
    }

    /// Starts the five services for the demo agencies with their audit gates set to `gate` and
    /// `tune` changing the database settings of each (called with the service's name: `audit`,
    /// `court`, …, `mediation`).
    pub async fn start_with(gate: GateConfig, tune: impl Fn(&str, &mut DatabaseConfig)) -> anyhow::Result<Self> {
        Self::start_inner(gate, tune, false).await
    }

    /// Starts the five services and the audit service each with its own restricted broker
    /// user ([`crate::broker::ServiceUsers`]), as `scripts/run.sh` runs them; the test's admin
    /// user declared the topology first, as the operator does.
    pub async fn start_restricted() -> anyhow::Result<Self> {
        Self::start_inner(test_gate(), |_, _| {}, true).await
    }

    /// Starts the five services for the demo agencies against brokers of the test's choosing (a
    /// RabbitMQ cluster: [`crate::cluster`]): `amqp(name)` gives each its connection settings,
    /// `amqp.url` and `amqp.cluster_urls` — `test` for the test's own connections (declaring and
    /// removing the topology), then `audit`, `court`, `procuratorate`, `police`, `petition`,
    /// `mediation`. Every service connects as the test's admin user.
    pub async fn start_on_brokers(amqp: impl Fn(&str) -> duijie_common::config::AmqpConfig) -> anyhow::Result<Self> {
        Self::start_inner_on(test_gate(), |_, _| {}, false, Some(&amqp)).await
    }

    async fn start_inner(gate: GateConfig, tune: impl Fn(&str, &mut DatabaseConfig), restricted: bool) -> anyhow::Result<Self> {
        Self::start_inner_on(gate, tune, restricted, None).await
    }

    async fn start_inner_on(
        gate: GateConfig,
        tune: impl Fn(&str, &mut DatabaseConfig),
        restricted: bool,
        brokers: Option<&dyn Fn(&str) -> duijie_common::config::AmqpConfig>,
    ) -> anyhow::Result<Self> {
        let mut bus = TestBus::new().await?;
        if let Some(brokers) = brokers {
            bus.amqp_cfg = brokers("test");
            bus.connector = duijie_common::amqp::Connector::new(bus.amqp_cfg.clone());
        }
        let users = if restricted {
            Some(crate::broker::ServiceUsers::create(&bus.topology, &bus.prefix, secrecy::ExposeSecret::expose_secret(&bus.amqp_cfg.url)).await?)
        } else {
            None
        };
        let ca = DevCa::generate("duijie test CA")?;
        let dir = std::env::temp_dir().join(format!("duijie-{}", bus.prefix));
        std::fs::create_dir_all(&dir)?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem())?;
        // Queues first, so the first referral is routable however the consumers race.
        bus.declare(&demo_nodes()).await?;
        // The test's own copy of the directory: a test may add agencies to it while it runs.
        let directory = dir.join("directory.yaml");
        std::fs::copy(demo_directory(), &directory).context("copying the agency directory")?;
        let (amqp_cfg, prefix) = (bus.amqp_cfg.clone(), bus.prefix.clone());
        let amqp_for = |service: &str| match (&users, brokers) {
            (Some(u), _) => u.amqp(service),
            (None, Some(brokers)) => Ok(brokers(service)),
            (None, None) => Ok(amqp_cfg.clone()),
        };
        let topology = bus.topology.config().clone();
        let bus_cfg = |service: &str, database| -> anyhow::Result<BusConfig> {
            Ok(BusConfig {
                database,
                amqp: amqp_for(service)?,
                topology: TopologyConfig { prefix: prefix.clone(), ..topology.clone() },
                relay: TestBus::relay_config(),
                consumer: TestBus::consumer_config(),
                // One recorder per process: every in-process service serves the same figures.
                metrics: duijie_common::metrics::MetricsConfig { listen: Some("127.0.0.1:0".parse()?) },
            })
        };
        let grpc = |name: &str| -> anyhow::Result<GrpcConfig> {
            let (cert, key) = ca.issue(&format!("duijie-{name}"), &["localhost", "127.0.0.1"])?;
            let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
            std::fs::write(&cert_path, cert)?;
            std::fs::write(&key_path, key)?;
            Ok(GrpcConfig {
                listen: "127.0.0.1:0".parse()?,
                // Every service of a test stack has its probes' port (tests/tests/ops.rs).
                health_listen: Some("127.0.0.1:0".parse()?),
                tls: TlsFiles { ca: ca_path.clone(), cert: cert_path, key: key_path },
                grace_ms: Duration::from_secs(5),
            })
        };
        // The audit store first: agency services take referrals only while it records.
        let mut databases = Vec::new();
        let mut database = async |name: &str, bus: &mut TestBus| -> anyhow::Result<DatabaseConfig> {
            let mut cfg = bus.extra_database_config().await?;
            tune(name, &mut cfg);
            databases.push((name.to_owned(), cfg.clone()));
            Ok(cfg)
        };
        // Signing keys: each agency node's certificate and key, and the audit service's own.
        let signing = write_signing_keys(&ca, &dir, &demo_nodes())?;
        let (cert, key) = ca.issue(duijie_common::signing::AUDIT_SIGNER, &["localhost", "127.0.0.1"])?;
        let (cert_path, key_path) = duijie_common::client::Pki::new(&signing.keys).service_files("audit");
        std::fs::write(cert_path, cert)?;
        std::fs::write(key_path, key)?;
        let audit_cfg = duijie_audit::service::AuditServiceConfig {
            signing: signing.clone(),
            bus: bus_cfg("audit", database("audit", &mut bus).await?)?,
            grpc: grpc("audit")?,
            audit: duijie_audit::service::AuditConfig {
                deadline_scan_ms: Duration::from_millis(200),
                status_interval_ms: Duration::from_millis(200),
                lookup: duijie_audit::lookup::LookupConfig { access_code_secret: Some(TEST_ACCESS_CODE_SECRET.into()), ..Default::default() },
                keys: duijie_audit::keys::KeysConfig { master_key: Some(test_master_key()?.into()) },
                ..Default::default()
            },
        };
        let mut audit_cfg = audit_cfg;
        let audit = duijie_audit::service::start(audit_cfg.clone(), bus.shutdown.child_token()).await.context("starting the audit service")?;
        // A restarted audit service comes back where the agency services ask for case keys.
        audit_cfg.grpc.listen = audit.addr;
        let mut services = Vec::new();
        let mut service_cfgs = Vec::new();
        for kind in [AgencyKind::Court, AgencyKind::Procuratorate, AgencyKind::Police, AgencyKind::Petition, AgencyKind::Mediation] {
            let name = kind.as_str();
            let cfg = ServiceConfig {
                bus: bus_cfg(name, database(name, &mut bus).await?)?,
                grpc: grpc(name)?,
                nodes: None,
                directory: directory.clone(),
                directory_reload_ms: Duration::from_millis(200),
                audit_gate: gate.clone(),
                signing: signing.clone(),
                key_service: duijie_common::sealing::KeyServiceConfig { endpoint: audit.addr.to_string(), tls_domain: "localhost".into() },
            };
            let running = start_service(kind, cfg.clone(), bus.shutdown.child_token()).await?;
            service_cfgs.push((kind, cfg));
            services.push((kind, running));
        }
        let stack = Self { bus, ca, services, service_cfgs, extra: Vec::new(), audit: Some(audit), audit_cfg, databases, dir, users };
        // The gates open once they saw the audit service consuming the tap.
        for (_, s) in &stack.services {
            let agency = s.agency.clone();
            wait_until("the audit gate to open", WAIT, || {
                let a = agency.clone();
                async move { Ok(a.gate_open()) }
            })
            .await?;
        }
        Ok(stack)
    }

    /// Stops the agency service of `kind` (it drains, as on SIGTERM) and starts it again on its
    /// database and queues, on a new port: clerks of it must connect again.
    pub async fn restart_service(&mut self, kind: AgencyKind) -> anyhow::Result<()> {
        let i = self.services.iter().position(|(k, _)| *k == kind).ok_or_else(|| anyhow::anyhow!("no {kind:?} service"))?;
        let (_, old) = self.services.remove(i);
        old.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), old.handle).await.with_context(|| format!("{kind:?} did not stop"))???;
        let cfg = self.service_cfgs.iter().find(|(k, _)| *k == kind).map(|(_, c)| c.clone()).ok_or_else(|| anyhow::anyhow!("no {kind:?} config"))?;
        let running = start_service(kind, cfg, self.bus.shutdown.child_token()).await?;
        self.services.push((kind, running));
        Ok(())
    }

    /// Where the stack's signing keys and CA are (every node's certificate and key, as
    /// `duijie-bus certs` writes them): for a test that signs envelopes itself.
    pub fn signing(&self) -> duijie_common::signing::SigningConfig {
        duijie_common::signing::SigningConfig { ca: self.dir.join("ca.pem"), keys: self.dir.join("keys") }
    }

    /// The CA the stack's certificates come from (to issue a rotated or a foreign key).
    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// The test's agency directory file, which every service of the stack reads (and reads
    /// again when it changes).
    pub fn directory_file(&self) -> PathBuf {
        self.dir.join("directory.yaml")
    }

    /// Onboards `nodes` (a new region's agencies of `kind`): installs their certificates and
    /// keys where the services read them. Their directory entries are the caller's (the file
    /// is read again by the running services); no queue is declared and nothing restarts: the
    /// running service of their kind acts for them. Returns where that service listens.
    pub async fn onboard(&mut self, kind: AgencyKind, nodes: Vec<AgencyNode>) -> anyhow::Result<std::net::SocketAddr> {
        anyhow::ensure!(nodes.iter().all(|n| n.kind() == kind), "onboard: every agency must be a {kind:?}");
        write_signing_keys(&self.ca, &self.dir, &nodes)?;
        Ok(self.service(kind)?.addr)
    }

    /// Stops the running `kind` service (it drains, as on SIGTERM) and does not start it again
    /// (its replicas, if any, go on).
    pub async fn stop_service(&mut self, kind: AgencyKind) -> anyhow::Result<()> {
        let i = self.services.iter().position(|(k, _)| *k == kind).ok_or_else(|| anyhow::anyhow!("no {kind:?} service"))?;
        let (_, old) = self.services.remove(i);
        old.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), old.handle).await.with_context(|| format!("{kind:?} did not stop"))???;
        Ok(())
    }

    /// Starts one more replica of the `kind` service: the same configuration and database as
    /// the running one, on a port of its own; the two share the kind's partitions (one active
    /// consumer each) and the outbox. Returns where it listens.
    pub async fn start_replica(&mut self, kind: AgencyKind) -> anyhow::Result<std::net::SocketAddr> {
        let mut cfg = self.service_cfgs.iter().find(|(k, _)| *k == kind).map(|(_, c)| c.clone()).ok_or_else(|| anyhow::anyhow!("no {kind:?} config"))?;
        cfg.grpc.listen = "127.0.0.1:0".parse()?;
        let running = start_service(kind, cfg, self.bus.shutdown.child_token()).await?;
        let addr = running.addr;
        self.extra.push((kind, running));
        Ok(addr)
    }

    /// A clerk of `who` on the service listening at `addr`.
    pub async fn clerk_at(&self, who: &AgencyNode, addr: std::net::SocketAddr) -> anyhow::Result<Clerk> {
        Ok(Clerk { who: who.clone(), ch: self.connect(addr, Some(&self.ca.agency(who)?)).await? })
    }

    /// Stops the audit service (graceful), leaving the agency services running.
    pub async fn stop_audit(&mut self) -> anyhow::Result<()> {
        if let Some(a) = self.audit.take() {
            a.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(20), a.handle).await.context("audit did not stop")???;
        }
        Ok(())
    }

    /// Starts the audit service again on its database and its address.
    pub async fn start_audit(&mut self) -> anyhow::Result<()> {
        let cfg = self.audit_cfg.clone();
        self.audit = Some(duijie_audit::service::start(cfg, self.bus.shutdown.child_token()).await?);
        Ok(())
    }

    /// A connection to the audit service as `who` (an agency or `supervisor:<region>`).
    pub async fn auditor(&self, who: &AgencyNode) -> anyhow::Result<duijie_proto::v1::audit_service_client::AuditServiceClient<Channel>> {
        let addr = self.audit.as_ref().map(|a| a.addr).ok_or_else(|| anyhow::anyhow!("the audit service is stopped"))?;
        let ch = self.connect(addr, Some(&self.ca.agency(who)?)).await?;
        Ok(duijie_proto::v1::audit_service_client::AuditServiceClient::new(ch))
    }

    /// A connection to the audit service presenting a certificate with common name `name`
    /// (e.g. `duijie-console`, the console's own identity), not an agency's.
    pub async fn auditor_named(&self, name: &str) -> anyhow::Result<duijie_proto::v1::audit_service_client::AuditServiceClient<Channel>> {
        let addr = self.audit.as_ref().map(|a| a.addr).ok_or_else(|| anyhow::anyhow!("the audit service is stopped"))?;
        let (cert, key) = self.ca.issue(name, &["localhost", "127.0.0.1"])?;
        let tls = TlsPem { ca: self.ca.cert_pem().as_bytes().to_vec(), cert: cert.into_bytes(), key: key.into_bytes() };
        Ok(duijie_proto::v1::audit_service_client::AuditServiceClient::new(self.connect(addr, Some(&tls)).await?))
    }

    /// Where this stack's services listen, for the console and the command line.
    pub fn endpoints(&self) -> anyhow::Result<duijie_common::client::Endpoints> {
        let addr = |kind| self.service(kind).map(|s| s.addr.to_string());
        Ok(duijie_common::client::Endpoints {
            court: addr(AgencyKind::Court)?,
            procuratorate: addr(AgencyKind::Procuratorate)?,
            police: addr(AgencyKind::Police)?,
            petition: addr(AgencyKind::Petition)?,
            mediation: addr(AgencyKind::Mediation)?,
            audit: self.audit.as_ref().map(|a| a.addr.to_string()).ok_or_else(|| anyhow::anyhow!("the audit service is stopped"))?,
            tls_domain: "localhost".into(),
        })
    }

    /// A certificate directory (as `duijie-bus certs` writes it) with the demo agencies and the
    /// district supervisor, for the console and the command line.
    pub fn pki(&self) -> anyhow::Result<duijie_common::client::Pki> {
        let pki = duijie_common::client::Pki::new(self.dir.join("pki"));
        let mut who = demo_nodes();
        who.push(node(AgencyKind::Supervisor, "431003"));
        for n in &who {
            pki.write(self.ca.cert_pem(), n, &self.ca.agency(n)?)?;
        }
        // The console's own certificate, as `duijie-bus certs --service console` issues it: the
        // parties' lookup is asked with it.
        let (cert, key) = self.ca.issue("duijie-console", &["localhost", "127.0.0.1"])?;
        std::fs::write(pki.dir().join("service-console.pem"), cert)?;
        std::fs::write(pki.dir().join("service-console-key.pem"), key)?;
        Ok(pki)
    }

    /// The database settings of service `name` (`audit`, `court`, …, `mediation`), for a test
    /// that looks into or locks that service's database.
    pub fn database(&self, name: &str) -> anyhow::Result<&DatabaseConfig> {
        self.databases.iter().find(|(n, _)| n == name).map(|(_, c)| c).ok_or_else(|| anyhow::anyhow!("no {name} service"))
    }

    /// This test's topology prefix (exchange and queue names).
    pub fn prefix(&self) -> &str {
        &self.bus.prefix
    }

    /// The service of agency `kind`.
    pub fn service(&self, kind: AgencyKind) -> anyhow::Result<&Running> {
        self.services.iter().find(|(k, _)| *k == kind).map(|(_, r)| r).ok_or_else(|| anyhow::anyhow!("no {kind:?} service"))
    }

    /// A connection to the service of `service_kind`, presenting `cert` (or none).
    pub async fn channel(&self, service_kind: AgencyKind, cert: Option<&TlsPem>) -> anyhow::Result<Channel> {
        self.connect(self.service(service_kind)?.addr, cert).await
    }

    /// A connection to the service listening at `addr`, presenting `cert` (or none).
    async fn connect(&self, addr: std::net::SocketAddr, cert: Option<&TlsPem>) -> anyhow::Result<Channel> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca.cert_pem())).domain_name("localhost");
        if let Some(c) = cert {
            tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
        }
        Ok(Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?)
    }

    /// A clerk of agency `who`, connected to its own agency's service with its certificate.
    pub async fn clerk(&self, who: &AgencyNode) -> anyhow::Result<Clerk> {
        self.clerk_on(who, who.kind()).await
    }

    /// A clerk of agency `who` calling the service of `service_kind` (another agency's, to test
    /// what it may not do).
    pub async fn clerk_on(&self, who: &AgencyNode, service_kind: AgencyKind) -> anyhow::Result<Clerk> {
        let cert = self.ca.agency(who)?;
        Ok(Clerk { who: who.clone(), ch: self.channel(service_kind, Some(&cert)).await? })
    }

    /// Stops the services (they drain) and removes the test's databases, queues and files.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_audit().await?;
        for (_, s) in &self.services {
            s.shutdown.cancel();
        }
        for (_, s) in &self.extra {
            s.shutdown.cancel();
        }
        for (kind, s) in self.services {
            tokio::time::timeout(Duration::from_secs(20), s.handle)
                .await
                .with_context(|| format!("{kind:?} did not stop"))???;
        }
        for (kind, s) in self.extra {
            tokio::time::timeout(Duration::from_secs(20), s.handle).await.with_context(|| format!("a replica of {kind:?} did not stop"))???;
        }
        let nodes = demo_nodes();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(users) = self.users.take() {
            users.delete().await?;
        }
        self.bus.cleanup(&nodes).await
    }
}

/// The header of a court-channel message of case `case_id` from `sender` to the district centre
/// (for tests that build and publish envelopes themselves).
pub fn to_centre(case_id: uuid::Uuid, code: &str, sender: &AgencyNode) -> duijie_common::envelope::Header {
    duijie_common::envelope::Header {
        case_id,
        case_code: code.into(),
        channel: duijie_proto::v1::Channel::Court,
        sender: sender.clone(),
        recipient: centre(),
        causation_id: None,
    }
}

/// Starts the agency service of `kind` with `cfg`.
async fn start_service(kind: AgencyKind, cfg: ServiceConfig, token: CancellationToken) -> anyhow::Result<Running> {
    match kind {
        AgencyKind::Court => service::start("court", kind, cfg, duijie_court::routes, token).await,
        AgencyKind::Procuratorate => service::start("procuratorate", kind, cfg, duijie_procuratorate::routes, token).await,
        AgencyKind::Police => service::start("police", kind, cfg, duijie_police::routes, token).await,
        AgencyKind::Petition => service::start("petition", kind, cfg, duijie_petition::routes, token).await,
        _ => service::start("mediation", kind, cfg, duijie_mediation::routes, token).await,
    }
    .with_context(|| format!("starting the {} service", kind.as_str()))
}

/// One agency's gRPC clients.
#[derive(Clone)]
pub struct Clerk {
    pub who: AgencyNode,
    pub ch: Channel,
}

impl Clerk {
    pub fn cases(&self) -> CasesServiceClient<Channel> {
        CasesServiceClient::new(self.ch.clone())
    }
    pub fn referrals(&self) -> ReferralsServiceClient<Channel> {
        ReferralsServiceClient::new(self.ch.clone())
    }
    pub fn mediation(&self) -> MediationServiceClient<Channel> {
        MediationServiceClient::new(self.ch.clone())
    }
    pub fn court(&self) -> CourtServiceClient<Channel> {
        CourtServiceClient::new(self.ch.clone())
    }
    pub fn police(&self) -> PoliceServiceClient<Channel> {
        PoliceServiceClient::new(self.ch.clone())
    }
    pub fn procuratorate(&self) -> ProcuratorateServiceClient<Channel> {
        ProcuratorateServiceClient::new(self.ch.clone())
    }
    pub fn petition(&self) -> PetitionServiceClient<Channel> {
        PetitionServiceClient::new(self.ch.clone())
    }

    /// Sends `referral` to `to` as case `case_code`; returns the new case's id.
    pub async fn submit(&self, to: &AgencyNode, case_code: &str, referral: Referral) -> anyhow::Result<String> {
        let view = self
            .referrals()
            .submit_referral(SubmitReferralRequest { to: Some(agency_ref(to)), case_code: case_code.into(), referral: Some(referral) })
            .await
            .and_then(answered_case)?;
        Ok(view.case_id)
    }

    /// The case as this agency sees it.
    pub async fn case(&self, case_id: &str) -> Result<CaseView, tonic::Status> {
        self.cases().get_case(GetCaseRequest { case_id: case_id.to_owned() }).await.and_then(answered_case)
    }

    /// Waits until this agency sees `case_id` in `state`, and returns that view.
    pub async fn wait_for(&self, case_id: &str, state: &str) -> anyhow::Result<CaseView> {
        let mut last = None;
        wait_until(&format!("{} to see case {case_id} as {state}", self.who), WAIT, || {
            let this = self.clone();
            let id = case_id.to_owned();
            async move {
                match this.case(&id).await {
                    Ok(v) => Ok(v.state == state),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                    Err(s) => Err(anyhow::anyhow!("{s}")),
                }
            }
        })
        .await?;
        if let Ok(v) = self.case(case_id).await {
            last = Some(v);
        }
        last.ok_or_else(|| anyhow::anyhow!("case {case_id} vanished"))
    }
}

/// A valid referral for `clock` (identity numbers with correct check digits).
pub fn referral(request_id: &str, clock: ClockPolicyKind) -> Referral {
    let id = |n: &str| Some(IdentityDocument { document_type: IdDocumentType::ResidentIdCard as i32, number: n.into() });
    Referral {
        legal_basis: "《人民调解法》第十八条".into(),
        mode: ReferralMode::Delegated as i32,
        registered_at: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() - 3600, nanos: 0 }),
        parties: vec![
            Party { party_id: "p1".into(), role: PartyRole::Applicant as i32, name: "张三".into(), identity: id("11010519491231002X"), ..Default::default() },
            Party { party_id: "p2".into(), role: PartyRole::Respondent as i32, name: "李四".into(), identity: id("440524188001010014"), ..Default::default() },
        ],
        category: DisputeCategory::Neighbour as i32,
        cause_of_action: "相邻关系纠纷".into(),
        facts: "双方因院墙排水问题发生争执。".into(),
        claims: vec!["排除妨碍".into()],
        amount: Some(Money { currency: "CNY".into(), minor_units: 300_000 }),
        consents: vec![
            PartyConsent { party_id: "p1".into(), consented: true, ..Default::default() },
            PartyConsent { party_id: "p2".into(), consented: true, ..Default::default() },
        ],
        clock_policy: Some(ClockPolicy { kind: clock as i32, ..Default::default() }),
        client_request_id: request_id.into(),
        ..Default::default()
    }
}

/// A settled outcome with its agreement digest.
pub fn settled(confirmation_intended: bool) -> Outcome {
    Outcome {
        kind: Some(outcome::Kind::Settled(outcome::Settled {
            agreement: Some(AttachmentDigest {
                name: "调解协议书.pdf".into(),
                media_type: "application/pdf".into(),
                sha256_hex: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                size_bytes: 48_213,
                ..Default::default()
            }),
            terms: vec!["李四于三十日内修复排水沟".into(), "张三放弃其他请求".into()],
            confirmation_intended,
            ..Default::default()
        })),
    }
}

pub fn agency_ref(n: &AgencyNode) -> AgencyRef {
    AgencyRef::from(n)
}

/// Writes a certificate and key for each of `nodes` (those it has not written yet) into
/// `<dir>/keys`, as `duijie-bus certs` does, and returns the signing configuration over them
/// (trusting `<dir>/ca.pem`).
pub fn write_signing_keys(ca: &DevCa, dir: &std::path::Path, nodes: &[AgencyNode]) -> anyhow::Result<duijie_common::signing::SigningConfig> {
    let keys = duijie_common::client::Pki::new(dir.join("keys"));
    for n in nodes {
        if !keys.node_files(n).1.exists() {
            keys.write(ca.cert_pem(), n, &ca.agency(n)?)?;
        }
    }
    Ok(duijie_common::signing::SigningConfig { ca: dir.join("ca.pem"), keys: keys.dir().to_owned() })
}

/// A random master key for a test's audit service (64 hex digits).
pub fn test_master_key() -> anyhow::Result<String> {
    let key = duijie_common::sealing::Key::generate()?;
    Ok(key.as_bytes().iter().map(|b| format!("{b:02x}")).collect())
}
