//! One shutdown signal fanned out to every task, and a supervisor that reports which task
//! stopped and why.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                    let _ = ctrl_c.await;
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// Runs named tasks until the first one ends (or `shutdown` fires), then cancels the rest and
/// gives them `grace` to finish. The first task to end early is reported as the reason.
pub async fn supervise(
    mut tasks: JoinSet<(String, anyhow::Result<()>)>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let first = tokio::select! {
        () = shutdown.cancelled() => None,
        r = tasks.join_next() => r,
    };
    let outcome = match first {
        None => Ok(()),
        Some(Ok((name, Ok(())))) if shutdown.is_cancelled() => {
            tracing::info!(task = %name, "stopped");
            Ok(())
        }
        Some(Ok((name, Ok(())))) => Err(anyhow::anyhow!("task {name} stopped unexpectedly")),
        Some(Ok((name, Err(e)))) => Err(e.context(format!("task {name} failed"))),
        Some(Err(e)) => Err(anyhow::anyhow!("a task panicked or was aborted: {e}")),
    };
    shutdown.cancel();
    let drain = async {
        while let Some(r) = tasks.join_next().await {
            if let Ok((name, res)) = r {
                match res {
                    Ok(()) => tracing::info!(task = %name, "stopped"),
                    Err(e) => tracing::warn!(task = %name, error = format!("{e:#}"), "stopped with an error"),
                }
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("grace period over; aborting the remaining tasks");
        tasks.abort_all();
    }
    outcome
}
