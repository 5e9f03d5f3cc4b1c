//! The process around any duijie service binary: telemetry, configuration, a shutdown token
//! cancelled on SIGINT or SIGTERM, and the exit status.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::{config, shutdown, telemetry};

/// The process around any duijie service: telemetry, its configuration `C` from
/// `DUIJIE_CONFIG_DIR` (default `config/<name>`), `start` with a token cancelled on SIGINT or
/// SIGTERM, then waiting for the service's supervisor; exit status 1 with the reason on failure.
pub async fn run_process<C, F, Fut>(name: &'static str, start: F) -> std::process::ExitCode
where
    C: serde::de::DeserializeOwned,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)>>,
{
    // Recording starts with the process, whether or not `/metrics` is served.
    let _ = crate::metrics::install_for(name);
    with_configuration(name, None, |cfg: C| async move {
        let (addr, handle) = start(cfg, shutdown::on_signal()).await?;
        println!("{name} listening on {addr}");
        handle.await.context("supervisor")?
    })
    .await
}

/// A service binary's `main`: [`run_process`] with `start`, or with `migrate` as
/// [`run_once`] when the command line says `migrate`; a usage line and exit status 2 for
/// anything else.
pub async fn run_service<C, S, SFut, M, MFut>(name: &'static str, start: S, migrate: M) -> std::process::ExitCode
where
    C: serde::de::DeserializeOwned,
    S: FnOnce(C, CancellationToken) -> SFut,
    SFut: std::future::Future<Output = anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)>>,
    M: FnOnce(C) -> MFut,
    MFut: std::future::Future<Output = anyhow::Result<()>>,
{
    match Command::from_args(name) {
        Ok(Command::Serve) => run_process(name, start).await,
        Ok(Command::Migrate) => run_once(name, "migrate", migrate).await,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A one-shot command of service `name` (e.g. `duijie-court migrate`): telemetry, the same
/// configuration as the service, `task`, and exit status 0 or 1 with the reason.
pub async fn run_once<C, F, Fut>(name: &'static str, what: &str, task: F) -> std::process::ExitCode
where
    C: serde::de::DeserializeOwned,
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    with_configuration(name, Some(what), task).await
}

/// Telemetry, the configuration of `name`, `body`, and the exit status; `what` names a one-shot
/// command (its success is said, its failure prefixed with it).
async fn with_configuration<C, F, Fut>(name: &'static str, what: Option<&str>, body: F) -> std::process::ExitCode
where
    C: serde::de::DeserializeOwned,
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let telemetry = match telemetry::init(name, "info", std::io::stdout) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{name}: telemetry: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let dir = std::env::var_os("DUIJIE_CONFIG_DIR").map_or_else(|| PathBuf::from("config").join(name), PathBuf::from);
    let run = async {
        let cfg: C = config::load(&dir).with_context(|| format!("configuration in {}", dir.display()))?;
        body(cfg).await
    };
    let code = match (run.await, what) {
        (Ok(()), None) => std::process::ExitCode::SUCCESS,
        (Ok(()), Some(what)) => {
            println!("{name}: {what}: done");
            std::process::ExitCode::SUCCESS
        }
        (Err(e), None) => {
            tracing::error!(error = format!("{e:#}"), "{name} stopped");
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
        (Err(e), Some(what)) => {
            eprintln!("{name}: {what}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // The last spans are exported as the guard shuts the exporter down: off the async threads,
    // since that export runs on this runtime (blocking a worker could stall it until timeout).
    let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
    code
}

/// What the command line asks of a service binary: run (no argument), or `migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Serve until SIGINT/SIGTERM.
    Serve,
    /// Apply the database migrations and exit (a deployment's pre-install/pre-upgrade job).
    Migrate,
}

impl Command {
    /// From the process's arguments; `Err` with a usage line for anything else.
    pub fn from_args(name: &str) -> Result<Self, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [] => Ok(Self::Serve),
            ["migrate"] => Ok(Self::Migrate),
            _ => Err(format!("usage: duijie-{name} [migrate]\n  (no argument) serve; migrate: apply the database migrations and exit")),
        }
    }
}
