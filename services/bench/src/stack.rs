//! The real stack as production runs it: the audit service and the five agency services as
//! separate processes (the release binaries next to the benchmark's own), each started from its
//! configuration file in `config/<service>` as `scripts/run.sh` does, with what must differ
//! from the local stack given through `DUIJIE_*` variables: a fresh database per service, a fresh
//! topology prefix, a development CA of its own and any free port. Logs go to
//! `target/<plan>/<id>/<service>.log` (`target/sysbench/…` for the system benchmark; a
//! [`StackPlan`] names the services, the agencies with keys and the directory file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use duijie_cli::demo::{Agencies, Agent};
use duijie_common::amqp::{Connector, Topology};
use duijie_common::certs::DevCa;
use duijie_common::config::{AmqpConfig, DatabaseConfig, TopologyConfig};
use duijie_domain::AgencyNode;
use duijie_proto::v1::AgencyKind;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::ExposeSecret as _;
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// The services of the stack, the audit service first (agency services take new referrals
/// only while it records). The console is left out: it serves browsers and does nothing on its
/// own.
pub const SERVICES: [&str; 6] = ["audit", "court", "procuratorate", "police", "petition", "mediation"];

/// The agencies the services act for (`config/<service>/base.yaml`) and the demo drives.
pub fn demo_nodes() -> anyhow::Result<Vec<AgencyNode>> {
    [
        (AgencyKind::Court, "431003"),
        (AgencyKind::Procuratorate, "431003"),
        (AgencyKind::Police, "431003-01"),
        (AgencyKind::Petition, "431003"),
        (AgencyKind::Mediation, "431003"),
        (AgencyKind::Mediation, "431003-102"),
        (AgencyKind::Mediation, "431003-102-05"),
    ]
    .into_iter()
    .map(|(kind, code)| Ok(AgencyNode::new(kind, code)?))
    .collect()
}

/// What a stack runs: which services, the agencies given signing keys, the agency directory, and
/// the names of its databases, topology and log directory.
#[derive(Debug, Clone)]
pub struct StackPlan {
    /// Names the run: databases `<name>_<id>_<service>`, prefix `<name><id>`, logs in
    /// `target/<name>/<id>/`.
    pub name: &'static str,
    /// The services to start, in order; the audit service first (the others ask it for keys).
    pub services: Vec<&'static str>,
    /// The agencies whose certificates and signing keys are written to the stack's `keys/`.
    pub nodes: Vec<AgencyNode>,
    /// The agency directory file the agency services read (`None`: `config/directory.yaml`, as
    /// their configuration says).
    pub directory: Option<PathBuf>,
    /// The topology prefix (`None`: `<name><id>`). It is declared (again) either way.
    pub prefix: Option<String>,
}

impl StackPlan {
    /// The system benchmark's stack: every service, the demo agencies, `config/directory.yaml`.
    pub fn demo() -> anyhow::Result<Self> {
        Ok(Self { name: "sysbench", services: SERVICES.to_vec(), nodes: demo_nodes()?, directory: None, prefix: None })
    }
}

/// Where the stack runs and what it runs on.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The directory holding the service binaries (`duijie-<service>`).
    pub bin_dir: PathBuf,
    /// The repository root: `config/<service>` and `config/directory.yaml` are read from here.
    pub root: PathBuf,
    pub amqp_url: String,
    pub database_url: String,
}

/// The flags the benchmarks that run the service binaries share.
#[derive(clap::Args, Debug, Clone)]
pub struct StackArgs {
    /// Where the service binaries are (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// RabbitMQ URL (an operator's user: the benchmark declares and deletes its topology).
    #[arg(long, env = "DUIJIE_AMQP_URL", default_value = "amqp://duijie:duijie@127.0.0.1:5672/%2f", hide_env_values = true)]
    pub amqp_url: String,
    /// PostgreSQL URL of a database the benchmark may create its own databases from.
    #[arg(long, env = "DUIJIE_DATABASE_URL", default_value = "postgres://duijie:duijie@127.0.0.1:5432/duijie", hide_env_values = true)]
    pub database_url: String,
}

impl StackArgs {
    /// The stack's options, run from the repository root (its `config/` is read).
    pub fn options(&self) -> anyhow::Result<StackOptions> {
        let bin_dir = match &self.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?.parent().context("the benchmark binary has no directory")?.to_owned(),
        };
        let root = std::env::current_dir()?;
        let config = root.join("config");
        anyhow::ensure!(
            config.join("court").is_dir() && config.join("directory.yaml").is_file(),
            "run from the repository root (config/ is read from there)"
        );
        Ok(StackOptions { bin_dir, root, amqp_url: self.amqp_url.clone(), database_url: self.database_url.clone() })
    }
}

/// One running service process.
#[derive(Debug)]
pub struct ServiceProcess {
    pub name: &'static str,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// Its database.
    pub pool: PgPool,
    /// How long it took from its start until it listened (migrations, the directory, keys).
    pub started: Duration,
    child: tokio::process::Child,
}

/// The running stack.
#[derive(Debug)]
pub struct ProcessStack {
    /// How the stack was started (a replica starts the same way).
    opts: StackOptions,
    /// The plan's agency directory file, if not the demo's (a replica reads the same).
    directory: Option<PathBuf>,
    /// Names this run's databases (`<name>_<id>_<service>`), prefix and directory.
    pub id: String,
    /// The plan's name (`sysbench` for the system benchmark).
    pub name: &'static str,
    /// The topology prefix, `<name><id>` unless the plan named one.
    pub prefix: String,
    pub topology: Topology,
    pub connector: Connector,
    pub dir: PathBuf,
    pub services: Vec<ServiceProcess>,
    pub ca: DevCa,
    admin: DatabaseConfig,
    databases: Vec<String>,
    /// The audit service's master key for this run (64 hex digits).
    master_key: String,
}

impl ProcessStack {
    /// The system benchmark's stack ([`StackPlan::demo`]).
    pub async fn start(opts: &StackOptions) -> anyhow::Result<Self> {
        Self::start_plan(opts, &StackPlan::demo()?).await
    }

    /// Creates the databases, declares the topology, writes the certificates and starts every
    /// service of `plan`; returns once each listens.
    pub async fn start_plan(opts: &StackOptions, plan: &StackPlan) -> anyhow::Result<Self> {
        anyhow::ensure!(plan.services.first() == Some(&"audit"), "the audit service starts first (the agency services ask it for case keys)");
        for svc in &plan.services {
            let bin = opts.bin_dir.join(format!("duijie-{svc}"));
            anyhow::ensure!(
                bin.is_file(),
                "{} is missing: build the services first (cargo build --release -p duijie-{svc}; scripts/bench.sh --system does)",
                bin.display()
            );
        }
        let name = plan.name;
        let id = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = opts.root.join("target").join(name).join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let admin = DatabaseConfig::from_url(&opts.database_url)?;
        let mut conn = PgConnection::connect_with(&admin.connect_options()).await.context("connecting to PostgreSQL")?;
        let mut databases = Vec::new();
        for svc in &plan.services {
            let db = format!("{name}_{id}_{svc}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{db}""#))).execute(&mut conn).await?;
            databases.push(db);
        }
        let _ = conn.close().await;

        let connector = Connector::new(AmqpConfig::new(opts.amqp_url.clone(), format!("duijie-{name}")));
        let prefix = plan.prefix.clone().unwrap_or_else(|| format!("{name}{id}"));
        let topology = Topology::new(TopologyConfig { prefix: prefix.clone(), ..Default::default() });
        // Queues first, so the first referral is routable whichever consumer starts first.
        let amqp = connector.connect(&format!("{name} declare")).await?;
        let ch = amqp.create_channel().await?;
        topology.declare(&ch).await?;
        let _ = ch.close(200, "declared".into()).await;
        let _ = amqp.close(200, "declared".into()).await;

        let ca = DevCa::generate(&format!("duijie {name} benchmark CA"))?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem())?;
        // Signing keys of the plan's nodes and of the audit service (signed handoffs); the
        // services read a node's key when it first needs it.
        let keys = duijie_common::client::Pki::new(dir.join("keys"));
        for n in &plan.nodes {
            keys.write(ca.cert_pem(), n, &ca.agency(n)?)?;
        }
        let (cert, key) = ca.issue(duijie_common::signing::AUDIT_SIGNER, &["localhost", "127.0.0.1"])?;
        let (cert_path, key_path) = keys.service_files("audit");
        std::fs::write(cert_path, cert)?;
        std::fs::write(key_path, key)?;
        let master_key: String = duijie_common::sealing::Key::generate()?.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let mut stack = Self {
            opts: opts.clone(),
            directory: plan.directory.clone(),
            id,
            name,
            prefix,
            topology,
            connector,
            dir,
            services: Vec::new(),
            ca,
            admin,
            databases,
            master_key,
        };
        for (svc, database) in plan.services.iter().copied().zip(stack.databases.clone()) {
            let process = stack.spawn(opts, svc, &database, &ca_path).await;
            match process {
                Ok(p) => stack.services.push(p),
                Err(e) => {
                    stack.stop().await;
                    stack.cleanup().await;
                    return Err(e);
                }
            }
        }
        Ok(stack)
    }

    async fn spawn(&self, opts: &StackOptions, svc: &'static str, database: &str, ca_path: &Path) -> anyhow::Result<ServiceProcess> {
        self.spawn_logging(opts, svc, database, ca_path, &format!("{svc}.log")).await
    }

    async fn spawn_logging(&self, opts: &StackOptions, svc: &'static str, database: &str, ca_path: &Path, log_name: &str) -> anyhow::Result<ServiceProcess> {
        let (cert, key) = self.ca.issue(&format!("duijie-{svc}"), &["localhost", "127.0.0.1"])?;
        let (cert_path, key_path) = (self.dir.join(format!("service-{svc}.pem")), self.dir.join(format!("service-{svc}-key.pem")));
        std::fs::write(&cert_path, cert)?;
        std::fs::write(&key_path, key)?;
        let log = self.dir.join(log_name);
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut command = tokio::process::Command::new(opts.bin_dir.join(format!("duijie-{svc}")));
        if let Some(d) = self.directory.as_deref().filter(|_| svc != "audit") {
            // The agency services' directory (the audit service reads none).
            command.env("DUIJIE_DIRECTORY", d);
        }
        let started = Instant::now();
        let child = command
            .current_dir(&opts.root)
            .env("DUIJIE_CONFIG_DIR", opts.root.join("config").join(svc))
            .env("DUIJIE_DATABASE__HOST", &self.admin.host)
            .env("DUIJIE_DATABASE__PORT", self.admin.port.to_string())
            .env("DUIJIE_DATABASE__USERNAME", &self.admin.username)
            .env("DUIJIE_DATABASE__PASSWORD", self.admin.password.expose_secret())
            .env("DUIJIE_DATABASE__DATABASE", database)
            .env("DUIJIE_AMQP__URL", &opts.amqp_url)
            .env("DUIJIE_TOPOLOGY__PREFIX", &self.prefix)
            .env("DUIJIE_GRPC__LISTEN", "127.0.0.1:0")
            // config/<svc> names the local stack's fixed metrics port; replicas and the stack
            // beside run.sh's each need their own.
            .env("DUIJIE_METRICS__LISTEN", "127.0.0.1:0")
            .env("DUIJIE_GRPC__TLS__CA", ca_path)
            .env("DUIJIE_GRPC__TLS__CERT", &cert_path)
            .env("DUIJIE_GRPC__TLS__KEY", &key_path)
            .env("DUIJIE_SIGNING__CA", ca_path)
            .env("DUIJIE_SIGNING__KEYS", self.dir.join("keys"))
            // The audit service starts first; the agency services ask it for case keys.
            .env("DUIJIE_KEY_SERVICE__ENDPOINT", self.services.first().map(|a| a.addr.to_string()).unwrap_or_default())
            .env("DUIJIE_AUDIT__KEYS__MASTER_KEY", &self.master_key)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting duijie-{svc}"))?;
        let pid = child.id().context("the service exited at once")?;
        let pool = duijie_common::db::pool(&DatabaseConfig { database: database.to_owned(), max_connections: 2, ..self.admin.clone() });
        let mut process = ServiceProcess { name: svc, pid, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log, pool, started: Duration::ZERO, child };
        process.addr = process.wait_listening(Duration::from_secs(60)).await?;
        process.started = started.elapsed();
        Ok(process)
    }

    /// Starts one more replica of service `name` on the same database and queues, and puts it
    /// first: [`ProcessStack::service`] and the agencies' channels ([`ProcessStack::agencies`])
    /// go to it from now on. Returns its pid.
    pub async fn spawn_replica(&mut self, name: &str) -> anyhow::Result<u32> {
        let svc = SERVICES.into_iter().find(|s| *s == name).with_context(|| format!("no service {name}"))?;
        let database = format!("{}_{}_{svc}", self.name, self.id);
        let (opts, ca_path) = (self.opts.clone(), self.dir.join("ca.pem"));
        let n = self.services.iter().filter(|s| s.name == svc).count() + 1;
        let replica = self.spawn_logging(&opts, svc, &database, &ca_path, &format!("{svc}-{n}.log")).await?;
        let pid = replica.pid;
        self.services.insert(0, replica);
        Ok(pid)
    }

    /// Kills the service process `pid` with SIGKILL (no drain, no goodbye to the broker or the
    /// database) and waits for it to be gone; it stays out of the stack.
    pub async fn kill(&mut self, pid: u32) -> anyhow::Result<()> {
        let i = self.services.iter().position(|s| s.pid == pid).with_context(|| format!("no service process {pid}"))?;
        let mut s = self.services.remove(i);
        let status = tokio::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().await?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        s.child.wait().await?;
        Ok(())
    }

    /// The demo agencies, each calling its own service with its own certificate.
    pub fn agencies(&self) -> anyhow::Result<Agencies> {
        let agent = |kind: AgencyKind, code: &str| -> anyhow::Result<Agent> {
            let who = AgencyNode::new(kind, code)?;
            let service = self.service(kind.as_str())?;
            let ch = duijie_common::client::channel(&service.addr.to_string(), "localhost", &self.ca.agency(&who)?)?;
            Ok(Agent { who, ch })
        };
        Ok(Agencies {
            court: agent(AgencyKind::Court, "431003")?,
            police: agent(AgencyKind::Police, "431003-01")?,
            petition: agent(AgencyKind::Petition, "431003")?,
            procuratorate: agent(AgencyKind::Procuratorate, "431003")?,
            centre: agent(AgencyKind::Mediation, "431003")?,
            town: agent(AgencyKind::Mediation, "431003-102")?,
            village: agent(AgencyKind::Mediation, "431003-102-05")?,
        })
    }

    /// The service process named `name`.
    pub fn service(&self, name: &str) -> anyhow::Result<&ServiceProcess> {
        self.services.iter().find(|s| s.name == name).with_context(|| format!("no service {name}"))
    }

    /// Messages ready in `queue` (not counting those a consumer holds unacked).
    pub async fn queue_depth(&self, ch: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        Ok(ch.queue_declare(queue.into(), passive, FieldTable::default()).await?.message_count())
    }

    /// Whether the audit store has recorded everything the services sent: no outbox row left in
    /// any service, nothing waiting in the tap or an inbox queue, and the audit store's inbox
    /// holds at least as many messages as the agencies' inboxes together (every message that
    /// reached an agency also reached the tap; a dead-lettered one reached only the tap).
    pub async fn audit_caught_up(&self, ch: &lapin::Channel) -> anyhow::Result<bool> {
        let mut delivered = 0;
        let mut recorded = 0;
        let mut seen = std::collections::HashSet::new();
        // Replicas share their service's database: count each database once.
        for s in self.services.iter().filter(|s| seen.insert(s.name)) {
            let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&s.pool).await?;
            if unsent > 0 {
                return Ok(false);
            }
            let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox").fetch_one(&s.pool).await?;
            if s.name == "audit" { recorded = inbox } else { delivered += inbox }
        }
        for q in self.topology.queues().into_iter().filter(|q| *q != self.topology.dead_queue()) {
            if self.queue_depth(ch, &q).await? > 0 {
                return Ok(false);
            }
        }
        Ok(recorded >= delivered)
    }

    /// Stops every service (SIGTERM: each drains its calls and tasks; SIGKILL after 20 s).
    pub async fn stop(&mut self) {
        for s in self.services.iter_mut().rev() {
            s.stop().await;
        }
    }

    /// Drops the databases and deletes the queues and exchanges (the logs stay).
    pub async fn cleanup(&self) {
        for s in &self.services {
            s.pool.close().await;
        }
        if let Err(e) = self.delete_topology().await {
            eprintln!("{}: deleting the queues of prefix {}: {e:#}", self.name, self.prefix);
        }
        let dropped = async {
            let mut conn = PgConnection::connect_with(&self.admin.connect_options()).await?;
            for db in &self.databases {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{db}" WITH (FORCE)"#))).execute(&mut conn).await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = dropped.await {
            eprintln!("{}: dropping the databases {}_{}_*: {e:#}", self.name, self.name, self.id);
        }
    }

    async fn delete_topology(&self) -> anyhow::Result<()> {
        let conn = self.connector.connect(&format!("{} cleanup", self.name)).await?;
        let ch = conn.create_channel().await?;
        self.topology.delete(&ch).await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }
}

impl ServiceProcess {
    /// Waits for the line `<name> listening on <addr>` the process prints once it serves.
    async fn wait_listening(&mut self, within: Duration) -> anyhow::Result<SocketAddr> {
        let started = Instant::now();
        let marker = format!("{} listening on ", self.name);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| l.strip_prefix(&marker)) {
                return addr.trim().parse().with_context(|| format!("duijie-{} printed a bad address {addr:?}", self.name));
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("duijie-{} exited ({status}) before it listened:\n{}", self.name, tail(&text, 20));
            }
            anyhow::ensure!(started.elapsed() < within, "duijie-{} did not listen within {within:?}:\n{}", self.name, tail(&text, 20));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The length of its log now (to read only what it writes from here on).
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Lines of its log written after `from` (a [`ServiceProcess::log_len`]) that contain `needle`.
    pub fn log_lines_since(&self, from: u64, needle: &str) -> usize {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
        String::from_utf8_lossy(&text[start..]).lines().filter(|l| l.contains(needle)).count()
    }

    async fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // `kill -TERM`: the services shut down gracefully on SIGTERM (tokio's Child only kills).
        let _ = tokio::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            eprintln!("stack: duijie-{} did not stop within 20 s; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
