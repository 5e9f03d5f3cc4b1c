//! The one reconnect loop. lapin does not reconnect by itself, so every task that lives on a
//! broker connection (the outbox relay, the inbox consumers, the agency services' audit gate)
//! runs its connection's lifetime as a *session* and lets [`run_sessions`] start the next one
//! after a backoff when it fails.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, HEALTHY_SESSION};

/// Runs `session` again and again until `shutdown` is cancelled.
///
/// `session(attempt)` is one connection's lifetime; `attempt` counts the sessions that failed
/// before it (0 for the first). A session returns `Ok(())` only when it stopped for shutdown,
/// which ends the loop; an error is logged at WARN with `task = name` and the next session
/// starts after `backoff`'s next delay (cut short by shutdown). The backoff starts over only
/// after a session that stayed up for [`HEALTHY_SESSION`] (10 s): a broker that accepts the
/// connection and then fails every publish is not retried in a tight loop.
pub async fn run_sessions<F, Fut>(name: &str, shutdown: &CancellationToken, backoff: Backoff, session: F)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    sessions(name, shutdown, backoff, HEALTHY_SESSION, session).await;
}

/// [`run_sessions`], counting each session that failed in `restarts` (the relay's and the
/// consumers' statistics).
pub async fn run_counted_sessions<F, Fut>(name: &str, shutdown: &CancellationToken, backoff: Backoff, restarts: &AtomicU64, mut session: F)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    run_sessions(name, shutdown, backoff, |attempt| {
        let ended = session(attempt);
        async move {
            let ended = ended.await;
            if ended.is_err() {
                restarts.fetch_add(1, Ordering::Relaxed);
            }
            ended
        }
    })
    .await;
}

/// [`run_sessions`] with the healthy threshold as a parameter (tests shorten it).
async fn sessions<F, Fut>(name: &str, shutdown: &CancellationToken, mut backoff: Backoff, healthy: Duration, mut session: F)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut attempt: u32 = 0;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let Err(e) = session(attempt).await else { break };
        if started.elapsed() > healthy {
            backoff.reset();
        }
        tracing::warn!(task = %name, attempt, error = format!("{e:#}"), "{name} lost its broker session; reconnecting");
        attempt = attempt.saturating_add(1);
        if !backoff.wait(shutdown).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Runs `sessions` whose outcome `outcome(attempt)` decides, after sleeping `lasts(attempt)`;
    /// returns each session's attempt number and start time.
    async fn record(
        backoff: Backoff,
        healthy: Duration,
        lasts: impl Fn(u32) -> Duration,
        outcome: impl Fn(u32) -> anyhow::Result<()>,
        shutdown: &CancellationToken,
    ) -> Vec<(u32, Instant)> {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let s = starts.clone();
        sessions("test", shutdown, backoff, healthy, |attempt| {
            let s = s.clone();
            let (lasts, outcome) = (lasts(attempt), outcome(attempt));
            async move {
                s.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((attempt, Instant::now()));
                tokio::time::sleep(lasts).await;
                outcome
            }
        })
        .await;
        starts.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn gaps(starts: &[(u32, Instant)]) -> Vec<Duration> {
        starts.windows(2).map(|w| w[1].1 - w[0].1).collect()
    }

    /// Failing sessions are retried after the backoff's growing delays, each told how many failed
    /// before it; a session that ends `Ok` (it stopped for shutdown) ends the loop.
    #[tokio::test]
    async fn retries_with_growing_delays_until_a_session_ends_for_shutdown() {
        let shutdown = CancellationToken::new();
        let starts = record(
            Backoff::new(Duration::from_millis(20), Duration::from_secs(1)),
            HEALTHY_SESSION,
            |_| Duration::ZERO,
            |a| if a < 3 { Err(anyhow::anyhow!("broker gone")) } else { Ok(()) },
            &shutdown,
        )
        .await;
        assert_eq!(starts.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [0, 1, 2, 3]);
        for (gap, base) in gaps(&starts).into_iter().zip([20, 40, 80]) {
            assert!(gap >= Duration::from_millis(base), "waited {gap:?}, at least {base} ms expected");
        }
    }

    /// Short sessions keep growing the delay; one that stayed up past the healthy threshold
    /// starts it over.
    #[tokio::test]
    async fn backoff_starts_over_only_after_a_healthy_session() {
        let shutdown = CancellationToken::new();
        let session_len = Duration::from_millis(100);
        let starts = record(
            Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            Duration::from_millis(50),
            |a| if a == 2 { session_len } else { Duration::ZERO },
            |a| if a < 3 { Err(anyhow::anyhow!("broker gone")) } else { Ok(()) },
            &shutdown,
        )
        .await;
        let gaps = gaps(&starts);
        assert_eq!(gaps.len(), 3);
        assert!(gaps[1] >= Duration::from_millis(400), "a short session does not reset: {:?}", gaps[1]);
        // Reset: 200 ms (+ jitter ≤ 50 ms) after the session; not reset it would be ≥ 800 ms.
        let delay = gaps[2] - session_len;
        assert!(delay >= Duration::from_millis(200) && delay < Duration::from_millis(600), "after a healthy session: {delay:?}");
    }

    /// Shutdown during the backoff ends the loop without another session.
    #[tokio::test]
    async fn shutdown_during_the_backoff_stops() {
        let shutdown = CancellationToken::new();
        let sd = shutdown.clone();
        let starts = record(
            Backoff::new(Duration::from_secs(600), Duration::from_secs(600)),
            HEALTHY_SESSION,
            |_| Duration::ZERO,
            move |_| {
                sd.cancel();
                Err(anyhow::anyhow!("broker gone"))
            },
            &shutdown,
        )
        .await;
        assert_eq!(starts.len(), 1);
    }
}
