//! Exponential backoff with jitter for the reconnect loops (lapin does not reconnect by itself).

use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

/// Delay generator: `base`, doubling up to `max`, each with up to 25 % random jitter so
/// replicas that lost the same broker do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The defaults used for broker and database reconnects: 100 ms doubling to 5 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let d = exp.min(self.max);
        let jitter = rand::rng().random_range(0.0..0.25);
        d.mul_f64(1.0 + jitter).min(self.max)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for the next delay; returns `false` when shutdown was requested meanwhile.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

/// A connection that stayed up this long counts as recovered: the next failure starts the
/// backoff from its first delay again.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Delay before the `attempts`-th republish of an outbox row.
pub fn retry_delay(base: Duration, max: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1u32 << attempts.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
        assert_eq!(retry_delay(Duration::from_millis(200), Duration::from_secs(60), 3), Duration::from_millis(1600));
        assert_eq!(retry_delay(Duration::from_millis(200), Duration::from_secs(60), 40), Duration::from_secs(60));
    }
}
