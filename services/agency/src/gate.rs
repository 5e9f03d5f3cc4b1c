//! The X-Road rule: if the audit store cannot record, the bus takes no new referrals. The gate
//! watches the audit tap queue — no consumer (the audit service is down) or a backlog above the
//! threshold (it is far behind) closes it, and `SubmitReferral` answers `UNAVAILABLE` until it
//! opens again by itself. Messages about cases already on the bus still flow: stopping them
//! would strand cases mid-handoff, and the tap keeps their copies until the audit catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use duijie_common::CancellationToken;
use duijie_common::amqp::{Connector, Topology};
use duijie_common::backoff::Backoff;
use duijie_common::reconnect::run_sessions;
use duijie_common::server::ApiError;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GateConfig {
    /// Refuse new referrals while the audit store cannot record (default true).
    pub enabled: bool,
    /// Messages waiting in the audit tap above which the audit store counts as far behind.
    pub max_backlog: u32,
    /// How often the tap is looked at (ms).
    #[serde(with = "duijie_common::config::duration_ms")]
    pub interval_ms: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self { enabled: true, max_backlog: 10_000, interval_ms: Duration::from_secs(2) }
    }
}

/// Whether new referrals are taken now, and why not.
#[derive(Clone)]
pub struct AuditGate {
    open: Arc<AtomicBool>,
    reason: Arc<std::sync::Mutex<String>>,
}

impl AuditGate {
    /// A gate that starts closed until the first look at the tap.
    pub fn new() -> Self {
        Self { open: Arc::new(AtomicBool::new(false)), reason: Arc::new(std::sync::Mutex::new("the audit store has not been checked yet".into())) }
    }

    fn set(&self, open: bool, reason: String) {
        let was = self.open.swap(open, Ordering::SeqCst);
        if was != open {
            if open {
                tracing::info!("audit store recording again: taking new referrals");
            } else {
                tracing::warn!(%reason, "audit store cannot record: refusing new referrals");
            }
        }
        if let Ok(mut r) = self.reason.lock() {
            *r = reason;
        }
    }

    /// `UNAVAILABLE` while closed.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.open.load(Ordering::SeqCst) {
            return Ok(());
        }
        let reason = self.reason.lock().map(|r| r.clone()).unwrap_or_default();
        Err(ApiError::Unavailable(format!("new referrals are paused because the audit store cannot record ({reason}); retry later")))
    }

    /// Looks at the tap every `cfg.interval_ms` until `shutdown`. The connection to RabbitMQ is
    /// a session of the shared reconnect loop ([`run_sessions`]); its backoff starts at 100 ms
    /// and grows no further than the interval, so a dropped connection is replaced within a
    /// moment and an unreachable broker is tried once per interval, as before the loop was shared.
    pub async fn watch(self, connector: Connector, topology: Topology, cfg: GateConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
        let backoff = Backoff::new(Duration::from_millis(100).min(cfg.interval_ms), cfg.interval_ms);
        let (gate, connector, topology, cfg, token) = (&self, &connector, &topology, &cfg, &shutdown);
        run_sessions("audit gate", token, backoff, move |_| gate.session(connector, topology, cfg, token)).await;
        Ok(())
    }

    /// One connection's lifetime: opens a channel and looks at the tap every interval. Ends with
    /// an error when the connection fails (the gate is closed, except for a connection found
    /// dropped between two looks: the next session decides) and `Ok` on shutdown.
    async fn session(&self, connector: &Connector, topology: &Topology, cfg: &GateConfig, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = match connector.connect("audit gate").await {
            Ok(c) => c,
            Err(e) => {
                self.set(false, format!("RabbitMQ unreachable: {e:#}"));
                return Err(e);
            }
        };
        let ch = match conn.create_channel().await {
            Ok(ch) => ch,
            Err(e) => {
                self.set(false, format!("no channel to RabbitMQ: {e}"));
                return Err(anyhow::Error::new(e).context("opening the audit gate channel"));
            }
        };
        loop {
            if !conn.status().connected() || !ch.status().connected() {
                anyhow::bail!("the connection to RabbitMQ was lost");
            }
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            match ch.queue_declare(topology.tap_queue().into(), passive, FieldTable::default()).await {
                Ok(q) if q.consumer_count() == 0 => self.set(false, "the audit service is not consuming the tap".into()),
                Ok(q) if q.message_count() > cfg.max_backlog => {
                    self.set(false, format!("the audit service is {} messages behind", q.message_count()));
                }
                Ok(_) => self.set(true, String::new()),
                Err(e) => {
                    self.set(false, format!("cannot see the audit tap: {e}"));
                    // A failed passive declare closes the channel: start over on a new connection.
                    return Err(anyhow::Error::new(e).context("looking at the audit tap"));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(cfg.interval_ms) => {}
            }
        }
    }
}

impl Default for AuditGate {
    fn default() -> Self {
        Self::new()
    }
}
