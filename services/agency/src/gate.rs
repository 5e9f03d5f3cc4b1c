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

    /// Looks at the tap every `cfg.interval_ms` until `shutdown`.
    pub async fn watch(self, connector: Connector, topology: Topology, cfg: GateConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut conn: Option<(lapin::Connection, lapin::Channel)> = None;
        loop {
            if conn.as_ref().is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected()) {
                conn = match connector.connect("audit gate").await {
                    Ok(c) => match c.create_channel().await {
                        Ok(ch) => Some((c, ch)),
                        Err(e) => {
                            self.set(false, format!("no channel to RabbitMQ: {e}"));
                            None
                        }
                    },
                    Err(e) => {
                        self.set(false, format!("RabbitMQ unreachable: {e:#}"));
                        None
                    }
                };
            }
            if let Some((_, ch)) = &conn {
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                match ch.queue_declare(topology.tap_queue().into(), passive, FieldTable::default()).await {
                    Ok(q) if q.consumer_count() == 0 => self.set(false, "the audit service is not consuming the tap".into()),
                    Ok(q) if q.message_count() > cfg.max_backlog => {
                        self.set(false, format!("the audit service is {} messages behind", q.message_count()));
                    }
                    Ok(_) => self.set(true, String::new()),
                    Err(e) => {
                        self.set(false, format!("cannot see the audit tap: {e}"));
                        conn = None; // a failed passive declare closes the channel
                    }
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
