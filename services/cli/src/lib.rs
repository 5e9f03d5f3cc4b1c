//! `duijie`, the operators' command line: send a referral from a file, read and watch a case's
//! audit timeline, list open handoffs and overdue cases, show the supervisors' statistics,
//! verify the audit chain, list and replay dead-lettered messages, and drive a demo load through
//! the services.
//!
//! The command-line types and the dispatch are here; each command lives in its own module.
//! [`demo`] is usable as a library (the console's demo data and tests call it).

pub mod audit;
pub mod dead;
pub mod demo;
pub mod error;
pub mod feed;
pub mod output;
pub mod send;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use duijie_domain::AgencyNode;
use duijie_common::client::{Endpoints, Pki};
use tonic::transport::Channel;

pub use error::{CliError, CliResult};

const EXIT_CODES: &str = "\
Exit codes (退出码):
  0  success
  1  unexpected failure (broker connection, I/O, internal error of a service)
  2  bad usage, or a file that cannot be read or is not a valid referral
  3  refused by a service (invalid argument, wrong state, not permitted, not found,
     not authenticated), or nothing matched
  4  a service is unavailable or a wait timed out: retry later
  5  the audit chain does not verify

Every option can also be set in the environment (shown as [env: …]).";

/// The `duijie` command line.
#[derive(Parser, Debug)]
#[command(
    name = "duijie",
    version,
    about = "duijie (对接) operators' tool: referrals, timelines, statistics, audit verification, dead letters, demo load",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Certificate directory: ca.pem, <kind>-<code>.pem and <kind>-<code>-key.pem (as `duijie-bus certs` writes it).
    #[arg(long, global = true, env = "DUIJIE_PKI", default_value = "target/pki")]
    pub pki: PathBuf,
    /// Where the services listen, overriding the local stack's ports: `court=host:port,audit=host:port,…`.
    #[arg(long, global = true, env = "DUIJIE_ENDPOINTS", default_value = "")]
    pub endpoints: String,
    /// Act as this agency (kind:code), e.g. `supervisor:431003` (the default for audit reads)
    /// or `court:431003`; `send` defaults to the file's `from`.
    #[arg(long = "as", global = true, env = "DUIJIE_AS", value_name = "KIND:CODE")]
    pub as_agency: Option<AgencyNode>,
    /// RabbitMQ URL (for `dead`).
    #[arg(
        long,
        global = true,
        env = "DUIJIE_AMQP_URL",
        default_value = "amqp://duijie:duijie@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name (for `dead`).
    #[arg(long, global = true, env = "DUIJIE_TOPOLOGY__PREFIX", default_value = "duijie")]
    pub prefix: String,
    /// Machine-readable output (JSON) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send a referral described in a file (JSON or YAML) (移送).
    Send(send::SendArgs),
    /// Register a dispute a mediation body took in itself, described in a file (自行受理).
    Intake(send::SendArgs),
    /// Every recorded message of a case, from the audit store (案件全流程记录).
    Timeline {
        /// A case id (UUID) or a case code (e.g. JF-431003-2026-000123).
        case: String,
    },
    /// Follow a case live in the audit store until a state is reached; or, without a case, every
    /// case of the `--as` agency as they change (its live feed).
    Watch(audit::WatchArgs),
    /// Open cases with a legal time limit past due (超期案件).
    Overdue,
    /// Handoffs waiting for the next agency, oldest first (待办移交).
    Open {
        /// Only those waiting at least this many hours.
        #[arg(long, default_value_t = 0)]
        min_hours: u64,
    },
    /// The supervisors' statistics for a period (统计).
    Stats(audit::StatsArgs),
    /// Walk the audit hash chains and report the first broken record (完整性校验); exit 5 if broken.
    Verify {
        /// Only this case (id or code); the whole log if absent.
        #[arg(long)]
        case: Option<String>,
        /// Also check the log against this anchor (saved by `duijie anchor --save`): a log
        /// rewritten since it was taken does not verify (exit 5).
        #[arg(long, value_name = "FILE", conflicts_with = "case")]
        anchor: Option<PathBuf>,
    },
    /// The audit store's latest signed tree head (anchor, 存证锚点), checked against the CA:
    /// keep it outside the audit database and pass it to `verify --anchor` later.
    Anchor {
        /// Save it to this file: protobuf binary if the name ends in `.pb` or `.bin`, else JSON.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Messages in the dead-letter queue: list them, replay them after a fix (死信).
    Dead {
        #[command(subcommand)]
        command: dead::DeadCommand,
    },
    /// Drive N generated referrals through the services to closure, with random outcomes (演示数据).
    Demo(demo::DemoArgs),
}

/// The district supervisor of the local stack: who reads the audit store unless `--as` says otherwise.
pub const DEFAULT_AUDIT_READER: &str = "supervisor:431003";

/// What every command needs: certificates, addresses, the broker, output mode.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub pki: Pki,
    pub endpoints: Endpoints,
    pub as_agency: Option<AgencyNode>,
    pub amqp_url: String,
    pub prefix: String,
    pub json: bool,
}

impl Ctx {
    /// The context from the global options.
    pub fn from_global(g: &Global) -> CliResult<Self> {
        let endpoints = Endpoints::default().with_overrides(&g.endpoints).map_err(|e| CliError::Usage(format!("--endpoints: {e:#}")))?;
        Ok(Self {
            pki: Pki::new(&g.pki),
            endpoints,
            as_agency: g.as_agency.clone(),
            amqp_url: g.amqp_url.clone(),
            prefix: g.prefix.clone(),
            json: g.json,
        })
    }

    /// A (lazy) mTLS channel to `addr` presenting `who`'s certificate. A missing certificate is
    /// a usage error (wrong `--pki` or `--as`).
    pub fn channel(&self, who: &AgencyNode, addr: &str) -> CliResult<Channel> {
        let tls = self.pki.identity(who).map_err(|e| CliError::Usage(format!("{e:#}")))?;
        duijie_common::client::channel(addr, &self.endpoints.tls_domain, &tls).map_err(|e| CliError::Usage(format!("{e:#}")))
    }

    /// A channel to `who`'s own agency service.
    pub fn agency_channel(&self, who: &AgencyNode) -> CliResult<Channel> {
        let addr = self.endpoints.of(who.kind()).ok_or_else(|| CliError::Usage(format!("{who} has no agency service")))?.to_owned();
        self.channel(who, &addr)
    }

    /// Who reads the audit store: `--as`, else the district supervisor.
    pub fn audit_reader(&self) -> CliResult<AgencyNode> {
        match &self.as_agency {
            Some(a) => Ok(a.clone()),
            None => DEFAULT_AUDIT_READER.parse().map_err(|e: duijie_domain::agency::AgencyError| CliError::Usage(e.to_string())),
        }
    }

    /// An Audit client as [`Ctx::audit_reader`].
    pub fn audit(&self) -> CliResult<duijie_proto::v1::audit_service_client::AuditServiceClient<Channel>> {
        let who = self.audit_reader()?;
        Ok(duijie_proto::v1::audit_service_client::AuditServiceClient::new(self.channel(&who, &self.endpoints.audit)?))
    }

    /// [`Ctx::audit`] with no deadline on its calls: for `VerifyWithProgress`, which streams
    /// progress for as long as the log takes to walk.
    pub fn audit_unbounded(&self) -> CliResult<duijie_proto::v1::audit_service_client::AuditServiceClient<Channel>> {
        let who = self.audit_reader()?;
        let tls = self.pki.identity(&who).map_err(|e| CliError::Usage(format!("{e:#}")))?;
        let channel = duijie_common::client::channel_with(&self.endpoints.audit, &self.endpoints.tls_domain, &tls, None)
            .map_err(|e| CliError::Usage(format!("{e:#}")))?;
        Ok(duijie_proto::v1::audit_service_client::AuditServiceClient::new(channel))
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> CliResult<()> {
    let ctx = Ctx::from_global(&cli.global)?;
    match cli.command {
        Command::Send(args) => send::run(&ctx, args).await,
        Command::Intake(args) => send::run_intake(&ctx, args).await,
        Command::Timeline { case } => audit::timeline(&ctx, &case).await,
        Command::Watch(args) => audit::watch(&ctx, args).await,
        Command::Overdue => audit::overdue(&ctx).await,
        Command::Open { min_hours } => audit::open(&ctx, min_hours).await,
        Command::Stats(args) => audit::stats(&ctx, args).await,
        Command::Verify { case, anchor } => audit::verify(&ctx, case.as_deref(), anchor.as_deref()).await,
        Command::Anchor { save } => audit::anchor(&ctx, save.as_deref()).await,
        Command::Dead { command } => dead::run(&ctx, command).await,
        Command::Demo(args) => demo::run_cli(&ctx, args).await,
    }
}

/// The program: parses the command line, runs the command, prints the error and returns the
/// exit code.
pub fn main_entry() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("duijie: starting the runtime: {e}");
            return std::process::ExitCode::from(error::exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duijie: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agencies_parse_as_kind_and_code() {
        let parse = |args: &[&str]| Cli::try_parse_from(["duijie"].iter().chain(args)).map(|c| c.global.as_agency.map(|n| n.to_string()));
        assert_eq!(parse(&["--as", "mediation:431003-102", "overdue"]).ok(), Some(Some("mediation:431003-102".to_owned())));
        for bad in ["judge:1", "court", "court:43.1"] {
            let e = parse(&["--as", bad, "overdue"]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(bad), "--as {bad} is refused naming it: {e}");
        }
        assert!(Cli::try_parse_from(["duijie", "stats", "--agency", "police:431003-01"]).is_ok());
    }
}
