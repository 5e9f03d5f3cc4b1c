//! `duijie-bus`: operator commands for the bus itself.
//!
//! * `migrate`  — apply the bus migrations (outbox, inbox) to a service database;
//! * `declare`  — declare the topology (exchanges, dead-letter queue, the audit tap's and every
//!   service kind's partition queues); idempotent; its size does not depend on the agencies;
//! * `status`   — depths and consumers of every queue (partitions), the directory's agencies by
//!   kind and whether their kind's partitions are consumed; how far behind the audit store is and every agency service's audit gate (open or
//!   closed and why), from the reports they publish on `<p>.audit.status`;
//!
//! * `permissions` — each service's own broker user and what it may do (configure, write,
//!   read), one tab-separated line per service, for the script that creates the users;
//!
//! Reading the audit store (timeline, statistics, verify) and dead letters are the operators'
//! CLI, `duijie` (`services/cli`).
//!
//! Exit codes: 0 success, 1 failure (message on stderr), 2 bad arguments.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use duijie_common::amqp::{Connector, Topology};
use duijie_common::config::{AmqpConfig, DatabaseConfig, TopologyConfig};
use duijie_domain::AgencyNode;
use duijie_common::status::{self, AuditLag, GateReport};
use futures::StreamExt as _;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "duijie-bus", about = "Operate the duijie referral bus: migrations, topology, queue status")]
struct Cli {
    /// RabbitMQ URL.
    #[arg(long, global = true, env = "DUIJIE_AMQP_URL", default_value = "amqp://duijie:duijie@127.0.0.1:5672/%2f", hide_env_values = true)]
    amqp_url: String,
    /// Prefix of every exchange and queue name.
    #[arg(long, global = true, env = "DUIJIE_TOPOLOGY__PREFIX", default_value = "duijie")]
    prefix: String,
    /// Inbox partitions per service kind (every service must be configured alike).
    #[arg(long, global = true, env = "DUIJIE_TOPOLOGY__PARTITIONS", default_value_t = 4)]
    partitions: u16,
    /// Partitions of the audit tap.
    #[arg(long, global = true, env = "DUIJIE_TOPOLOGY__TAP_PARTITIONS", default_value_t = 4)]
    tap_partitions: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the bus migrations (outbox, inbox) to a service database, creating it if missing.
    Migrate {
        /// postgres://user:password@host:port/database
        #[arg(long, env = "DUIJIE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Declare the topology: exchanges, the dead-letter queue, the audit tap's partitions and
    /// every service kind's inbox partitions. The same whatever the number of agencies (a new
    /// agency needs a directory entry, not a queue). Agencies given here are ignored (accepted
    /// so that older scripts keep working).
    Declare {
        #[arg(hide = true)]
        nodes: Vec<AgencyNode>,
    },
    /// Print, per service, its broker user's permissions for this prefix:
    /// `<service>\t<configure>\t<write>\t<read>` (RabbitMQ regular expressions; `scripts/run.sh`
    /// gives them to `rabbitmqctl set_permissions`).
    Permissions,
    /// Issue development certificates in DIR: the CA the first time (ca.pem, and its key
    /// ca-key.pem, kept to issue more later), then for each node and `--service` that has none
    /// yet: <kind>-<code>.pem and <kind>-<code>-key.pem, service-<name>.pem. Certificates already
    /// there are kept; a new agency's is signed by the same CA. For the local stack only.
    Certs {
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Services to issue a server certificate for (CN duijie-<name>, valid for localhost).
        #[arg(long = "service")]
        services: Vec<String>,
        #[arg(required = true)]
        nodes: Vec<AgencyNode>,
    },
    /// Show what is configured and how it runs: every agency of the directory (or the given
    /// nodes) with its inbox's depth and consumers, the tap and the dead letters, the audit
    /// store's lag and every agency service's audit gate.
    Status {
        /// Only these nodes (default: every agency of `--directory` that has an inbox).
        nodes: Vec<AgencyNode>,
        /// The agency directory every service reads.
        #[arg(long, env = "DUIJIE_DIRECTORY", default_value = "config/directory.yaml")]
        directory: std::path::PathBuf,
        /// How long to listen for the audit service's and the gates' reports (ms; a gate reports
        /// at every look, by default every 2 s; 0 skips them).
        #[arg(long, default_value_t = 2500)]
        listen_ms: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duijie-bus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let topology = Topology::new(TopologyConfig { prefix: cli.prefix.clone(), partitions: cli.partitions, tap_partitions: cli.tap_partitions, ..Default::default() });
    let connector = Connector::new(AmqpConfig::new(cli.amqp_url.clone(), "duijie-bus"));
    match cli.command {
        Command::Migrate { database_url } => {
            let cfg = DatabaseConfig::from_url(&database_url)?;
            create_database_if_missing(&cfg).await?;
            let pool = duijie_common::db::pool(&cfg);
            duijie_common::db::migrate(&pool).await?;
            println!("migrated database {} on {}:{}", cfg.database, cfg.host, cfg.port);
        }
        Command::Permissions => {
            for service in duijie_common::amqp::SERVICES {
                let p = topology.permissions(service).with_context(|| format!("no permissions for {service}"))?;
                println!("{service}\t{}\t{}\t{}", p.configure, p.write, p.read);
            }
        }
        Command::Declare { nodes: _ } => {
            let conn = connector.connect("declare").await?;
            let started = std::time::Instant::now();
            topology.declare(&conn.create_channel().await?).await?;
            println!(
                "declared exchange {} (topic), {} (fanout), {} queues in {:.0} ms:",
                topology.handoff_exchange(),
                topology.dead_exchange(),
                topology.queues().len(),
                started.elapsed().as_secs_f64() * 1e3
            );
            println!("  audit tap      {} partitions {}", topology.tap_exchange(), topology.tap_queues().join(" "));
            for kind in duijie_common::amqp::KINDS {
                println!("  {:<14} {} partitions {}", kind.as_str(), topology.inbox_exchange(kind), topology.inbox_queues(kind).join(" "));
            }
            let _ = conn.close(200, "done".into()).await;
        }
        Command::Certs { dir, services, nodes } => write_dev_certs(&dir, &nodes, &services)?,
        Command::Status { nodes, directory, listen_ms } => {
            // What is configured: the directory's agencies with an inbox (supervisors have none).
            let configured: Vec<(AgencyNode, String)> = if nodes.is_empty() {
                let d = duijie_common::directory::Directory::load(&directory)
                    .with_context(|| format!("the agency directory {} (or name the nodes)", directory.display()))?;
                d.entries().filter(|(n, _)| duijie_common::amqp::KINDS.contains(&n.kind())).map(|(n, name)| (n.clone(), name.to_owned())).collect()
            } else {
                nodes.into_iter().map(|n| (n, String::new())).collect()
            };
            let conn = connector.connect("status").await?;
            // Listen first, so that the reports arrive while the queues are looked at.
            let listen_ch = conn.create_channel().await?;
            let reports = if listen_ms > 0 { Some(status::listen(&conn, &listen_ch, &topology, "#", "duijie-bus status").await?) } else { None };
            let listening = std::time::Instant::now();
            println!("{:<48} {:>10} {:>10}", "queue", "messages", "consumers");
            // Per kind: whether every partition has a consumer (the kind's agencies are served).
            let mut unserved_kinds = Vec::new();
            let mut queues = vec![(None, topology.dead_queue())];
            queues.extend(topology.tap_queues().into_iter().map(|q| (None, q)));
            for kind in duijie_common::amqp::KINDS {
                queues.extend(topology.inbox_queues(kind).into_iter().map(|q| (Some(kind), q)));
            }
            for (kind, q) in &queues {
                match passive_declare(&conn, q).await {
                    Some((messages, consumers)) => {
                        println!("{q:<48} {messages:>10} {consumers:>10}");
                        if consumers == 0 && let Some(k) = kind && !unserved_kinds.contains(k) {
                            unserved_kinds.push(*k);
                        }
                    }
                    None => anyhow::bail!("queue {q} is not declared; run `duijie-bus declare` first"),
                }
            }
            println!();
            println!("{} agencies configured ({}):", configured.len(), if configured.iter().all(|(_, n)| n.is_empty()) { "as given" } else { "from the directory" });
            println!("  {:<28} {:<14} name", "agency", "state");
            let mut idle = 0;
            for (node, name) in &configured {
                let state = if unserved_kinds.contains(&node.kind()) { "NOT SERVED" } else { "served" };
                if state != "served" {
                    idle += 1;
                }
                println!("  {:<28} {state:<14} {name}", node.to_string());
            }
            if idle > 0 {
                println!("  {idle} not served: a partition of their kind has no consumer (start the service of that kind; messages wait in the partition)");
            }
            if let Some(reports) = reports {
                let window = std::time::Duration::from_millis(listen_ms);
                let heard = hear(reports, window.saturating_sub(listening.elapsed())).await;
                print_reports(&heard, window);
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }
    Ok(())
}

/// A queue's (messages, consumers), or `None` when it is not declared (on a channel of its own:
/// the broker closes a channel that asks passively for a missing queue).
async fn passive_declare(conn: &lapin::Connection, queue: &str) -> Option<(u32, u32)> {
    let ch = conn.create_channel().await.ok()?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let info = ch.queue_declare(queue.into(), passive, FieldTable::default()).await.ok()?;
    let _ = ch.close(200, "done".into()).await;
    Some((info.message_count(), info.consumer_count()))
}

/// The reports heard on the status exchange: the audit service's last, each gate's last.
#[derive(Default)]
struct Heard {
    audit: Option<AuditLag>,
    gates: std::collections::BTreeMap<(String, Vec<String>), GateReport>,
}

/// Collects reports for `window`.
async fn hear(mut reports: lapin::Consumer, window: std::time::Duration) -> Heard {
    let mut heard = Heard::default();
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        let delivery = tokio::select! {
            () = &mut deadline => return heard,
            d = reports.next() => match d {
                Some(Ok(d)) => d,
                _ => return heard,
            },
        };
        if delivery.routing_key.as_str() == status::AUDIT_LAG_KEY {
            heard.audit = status::decode(&delivery.data).or(heard.audit);
        } else if let Some(g) = status::decode::<GateReport>(&delivery.data) {
            heard.gates.insert((g.service.clone(), g.nodes.clone()), g);
        }
    }
}

fn print_reports(heard: &Heard, window: std::time::Duration) {
    let secs = window.as_secs_f64();
    println!();
    match &heard.audit {
        None => println!("audit store: no report within {secs:.1} s (the audit service is down, or older than this tool)"),
        Some(a) => {
            let lag = match a.lag_ms {
                Some(0) => "recording as messages arrive (nothing unrecorded)".to_owned(),
                Some(ms) => format!("the oldest unrecorded message is {:.1} s old", Duration::from_millis(ms).as_secs_f64()),
                None => "cannot tell how far behind (its consumer holds nothing while the tap holds messages)".to_owned(),
            };
            println!("audit store: {lag}; {} recorded since it started", a.recorded);
        }
    }
    if heard.gates.is_empty() {
        println!("audit gates: none reported within {secs:.1} s (no agency service running, or none this new)");
        return;
    }
    println!("audit gates (new referrals):");
    println!("  {:<14} {:<7} {:<20} {:>8}  nodes / reason", "service", "state", "since (UTC)", "closings");
    for g in heard.gates.values() {
        let state = if g.open { "open" } else { "CLOSED" };
        println!("  {:<14} {:<7} {:<20} {:>8}  {}", g.service, state, g.since.format("%Y-%m-%d %H:%M:%S"), g.closings, g.nodes.join(" "));
        if !g.open {
            println!("  {:<52}  {}", "", g.reason);
        }
    }
}

async fn create_database_if_missing(cfg: &DatabaseConfig) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect_with(&cfg.options_for("postgres"))
        .await
        .context("connecting to PostgreSQL (database postgres)")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&cfg.database)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        anyhow::ensure!(
            cfg.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {:?} must be letters, digits and '_'",
            cfg.database
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{}""#, cfg.database))).execute(&mut admin).await?;
    }
    Ok(())
}

/// The development CA's name (its certificate's common name).
const DEV_CA_NAME: &str = "duijie development CA";

/// Issues what is missing in `dir`: the development CA the first time (ca.pem and its key,
/// ca-key.pem), then a certificate per node and per service that has none yet, from the CA
/// already there, so an agency added later is trusted by everything already running.
/// Certificates already issued are kept (re-issuing would invalidate the ones handed out).
fn write_dev_certs(dir: &std::path::Path, nodes: &[AgencyNode], services: &[String]) -> anyhow::Result<()> {
    use duijie_common::certs::DevCa;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let mut wanted: Vec<(String, std::path::PathBuf, std::path::PathBuf)> = Vec::new();
    for node in nodes {
        let stem = format!("{}-{}", node.kind().as_str(), node.code());
        wanted.push((node.to_string(), dir.join(format!("{stem}.pem")), dir.join(format!("{stem}-key.pem"))));
    }
    for name in services {
        wanted.push((format!("service {name}"), dir.join(format!("service-{name}.pem")), dir.join(format!("service-{name}-key.pem"))));
    }
    let missing: Vec<&(String, std::path::PathBuf, std::path::PathBuf)> = wanted.iter().filter(|(_, cert, key)| !(cert.exists() && key.exists())).collect();
    let ca = match (ca_path.exists(), ca_key_path.exists()) {
        (true, true) => {
            let cert = std::fs::read_to_string(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
            let key = std::fs::read_to_string(&ca_key_path).with_context(|| format!("reading {}", ca_key_path.display()))?;
            DevCa::load(DEV_CA_NAME, &cert, &key)?
        }
        (true, false) if missing.is_empty() => {
            println!("development CA in {} (its key is not kept: it can issue nothing more); every certificate asked for is there", dir.display());
            return Ok(());
        }
        (true, false) => anyhow::bail!(
            "{} has a CA certificate but not its key (made by an older duijie-bus), so it cannot issue {}: delete {} and run again (every certificate is then issued anew)",
            dir.display(),
            missing.iter().map(|(what, _, _)| what.as_str()).collect::<Vec<_>>().join(", "),
            dir.display()
        ),
        (false, _) => {
            let ca = DevCa::generate(DEV_CA_NAME)?;
            write_private(&ca_key_path, ca.key_pem().as_bytes())?;
            std::fs::write(&ca_path, ca.cert_pem()).with_context(|| format!("writing {}", ca_path.display()))?;
            println!("development CA {} (key {})", ca_path.display(), ca_key_path.display());
            ca
        }
    };
    for (what, cert_path, key_path) in &wanted {
        if cert_path.exists() && key_path.exists() {
            println!("  kept    {what:<28} {}", cert_path.display());
            continue;
        }
        let (cert, key) = match what.strip_prefix("service ") {
            Some(name) => ca.issue(&format!("duijie-{name}"), &["localhost", "127.0.0.1"])?,
            None => {
                let tls = ca.agency(&what.parse::<AgencyNode>()?)?;
                (String::from_utf8(tls.cert)?, String::from_utf8(tls.key)?)
            }
        };
        write_private(key_path, key.as_bytes())?;
        std::fs::write(cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
        println!("  issued  {what:<28} {}", cert_path.display());
    }
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
