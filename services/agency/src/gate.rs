//! The X-Road rule: if the audit store cannot record, the bus takes no new referrals, and
//! `SubmitReferral` answers `UNAVAILABLE` naming the reason until the gate opens again by itself.
//! Messages about cases already on the bus still flow: stopping them would strand cases
//! mid-handoff, and the tap keeps their copies until the audit store catches up.
//!
//! The gate closes when the audit service is not consuming the tap, when more than
//! `close_backlog` messages wait in the tap, or when the oldest message the audit store has not
//! recorded is older than `close_lag_ms`. It reopens only once the backlog is down to
//! `open_backlog` and the lag to `open_lag_ms` — lower marks, so that a backlog hovering at one
//! mark does not open and close the gate every few seconds ([`decide`], pure and unit-tested).
//!
//! The backlog and the consumers are read from the tap (a passive declare, which does not touch
//! its messages); the lag comes from the audit service itself, which knows the publish time of
//! what its consumer holds and reports it on `<p>.audit.status` ([`duijie_common::status`]).
//! No fresh report means "cannot tell": after the audit service's consumer has been on the tap
//! for `status_stale_ms` without one, the consumers and the backlog decide alone.
//!
//! The gate's state is in the service's gRPC health as `duijie.audit_gate` (NOT_SERVING while
//! closed; the server's own status stays SERVING) and, with its reason, in a report on the status
//! exchange at every look, which `duijie-bus status` shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use duijie_common::CancellationToken;
use duijie_common::amqp::{Connector, Topology};
use duijie_common::backoff::Backoff;
use duijie_common::reconnect::run_sessions;
use duijie_common::server::ApiError;
use duijie_common::status::{self, AUDIT_LAG_KEY, AuditLag, GateReport};
use duijie_domain::AgencyNode;
use futures::StreamExt as _;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Deserialize;
use tokio::sync::watch;

/// The name under which the gate's state is in the gRPC health service.
pub const HEALTH_SERVICE: &str = "duijie.audit_gate";

/// `audit_gate:` in an agency service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GateConfig {
    /// Refuse new referrals while the audit store cannot record (default true).
    pub enabled: bool,
    /// The gate closes when more messages than this wait in the audit tap (default 10,000;
    /// `max_backlog` in earlier configurations).
    #[serde(alias = "max_backlog")]
    pub close_backlog: u32,
    /// A closed gate reopens once at most this many wait (default 5,000; below `close_backlog`).
    pub open_backlog: u32,
    /// The gate closes when the oldest unrecorded message is older than this (ms, default 60 s).
    #[serde(with = "duijie_common::config::duration_ms")]
    pub close_lag_ms: Duration,
    /// A closed gate reopens once it is at most this old (ms, default 15 s; below `close_lag_ms`).
    #[serde(with = "duijie_common::config::duration_ms")]
    pub open_lag_ms: Duration,
    /// How often the tap is looked at and the gate decided (ms, default 2 s).
    #[serde(with = "duijie_common::config::duration_ms")]
    pub interval_ms: Duration,
    /// A lag report of the audit service older than this is not used, and a closed gate waits this
    /// long for one after the audit service's consumer came back before it goes by the counts
    /// alone (ms, default 5 s; the audit service reports every `audit.status_interval_ms`, 1 s).
    #[serde(with = "duijie_common::config::duration_ms")]
    pub status_stale_ms: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            close_backlog: 10_000,
            open_backlog: 5_000,
            close_lag_ms: Duration::from_secs(60),
            open_lag_ms: Duration::from_secs(15),
            interval_ms: Duration::from_secs(2),
            status_stale_ms: Duration::from_secs(5),
        }
    }
}

impl GateConfig {
    /// The four marks.
    pub fn marks(&self) -> Marks {
        Marks { close_backlog: self.close_backlog, open_backlog: self.open_backlog, close_lag: self.close_lag_ms, open_lag: self.open_lag_ms }
    }

    /// Refuses marks that would not give hysteresis (each low mark must be below its high mark)
    /// and intervals of zero.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.open_backlog < self.close_backlog,
            "audit_gate.open_backlog ({}) must be below audit_gate.close_backlog ({})",
            self.open_backlog,
            self.close_backlog
        );
        anyhow::ensure!(
            self.open_lag_ms < self.close_lag_ms,
            "audit_gate.open_lag_ms ({}) must be below audit_gate.close_lag_ms ({})",
            self.open_lag_ms.as_millis(),
            self.close_lag_ms.as_millis()
        );
        anyhow::ensure!(!self.interval_ms.is_zero(), "audit_gate.interval_ms must be above 0");
        anyhow::ensure!(!self.status_stale_ms.is_zero(), "audit_gate.status_stale_ms must be above 0");
        Ok(())
    }
}

/// Where the gate closes (above the `close_` marks) and reopens (at or below the `open_` marks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub close_backlog: u32,
    pub open_backlog: u32,
    pub close_lag: Duration,
    pub open_lag: Duration,
}

/// What the gate knows of the audit store's lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// A fresh report: the oldest unrecorded message is this old.
    Known(Duration),
    /// No fresh report that tells, but the audit service's consumer appeared on the tap less than
    /// `status_stale_ms` ago: its report is awaited before a closed gate reopens (otherwise a
    /// restarted audit service would reopen the gate on the backlog, and its first report of an
    /// old message close it again).
    Awaited,
    /// No fresh report that tells for longer: cannot tell; the consumers and the backlog decide.
    Unknown,
}

/// One look at the audit store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The tap could not be looked at (RabbitMQ unreachable, the tap missing).
    Blind(String),
    /// The tap's consumers and the messages waiting in it, and the audit service's lag.
    Tap { consumers: u32, backlog: u32, lag: Lag },
}

/// Why the gate is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Nothing looked at yet (a gate starts closed).
    Unchecked,
    /// The tap could not be seen.
    Blind(String),
    /// Nobody consumes the tap: the audit service is down.
    NoConsumer,
    /// Too many messages wait in the tap.
    Backlog { messages: u32, close: u32, open: u32 },
    /// The oldest unrecorded message is too old.
    Lag { lag: Duration, close: Duration, open: Duration },
    /// Closed, and the audit service's consumer came back; its lag report is awaited.
    AwaitingLag,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unchecked => f.write_str("the audit store has not been checked yet"),
            Self::Blind(e) => write!(f, "cannot see the audit tap: {e}"),
            Self::NoConsumer => f.write_str("the audit service is not consuming the tap"),
            Self::Backlog { messages, close, open } => {
                write!(f, "the audit service is {messages} messages behind; the gate closes above {close} and reopens at {open}")
            }
            Self::Lag { lag, close, open } => write!(
                f,
                "the oldest message the audit service has not recorded is {:.1} s old; the gate closes above {} s and reopens at {} s",
                lag.as_secs_f64(),
                close.as_secs_f64(),
                open.as_secs_f64()
            ),
            Self::AwaitingLag => f.write_str("the audit service is back; waiting for its report of how far behind it is"),
        }
    }
}

/// The hysteresis: whether a gate that is `open` now stays (or becomes) open after `seen`;
/// `None` for open, else why it is closed. No tap, or no consumer on it, closes at once. Otherwise
/// an open gate closes only above a high mark (backlog or lag), and a closed gate reopens only at
/// or below both low marks, with the lag known or, after waiting for a report, not to be known.
/// Between the marks the gate stays as it is.
pub fn decide(marks: &Marks, open: bool, seen: &Seen) -> Option<Why> {
    let (consumers, backlog, lag) = match seen {
        Seen::Blind(e) => return Some(Why::Blind(e.clone())),
        Seen::Tap { consumers, backlog, lag } => (*consumers, *backlog, *lag),
    };
    if consumers == 0 {
        return Some(Why::NoConsumer);
    }
    let (backlog_limit, lag_limit) = if open { (marks.close_backlog, marks.close_lag) } else { (marks.open_backlog, marks.open_lag) };
    if backlog > backlog_limit {
        return Some(Why::Backlog { messages: backlog, close: marks.close_backlog, open: marks.open_backlog });
    }
    match lag {
        Lag::Known(lag) if lag > lag_limit => Some(Why::Lag { lag, close: marks.close_lag, open: marks.open_lag }),
        Lag::Awaited if !open => Some(Why::AwaitingLag),
        _ => None,
    }
}

/// What the gate last decided.
#[derive(Debug, Clone)]
pub struct GateState {
    /// Whether new referrals are taken.
    pub open: bool,
    /// Why not (`None` while open).
    pub why: Option<Why>,
    /// When it last opened or closed (or started).
    pub since: DateTime<Utc>,
    /// How often it closed since it started (it starts closed; that is not counted).
    pub closings: u64,
    /// How often it opened since it started (the first opening included).
    pub openings: u64,
    /// How often it decided (once per look at the tap, and after a failed connection).
    pub looks: u64,
    /// The last look.
    pub seen: Option<Seen>,
}

/// Whether new referrals are taken now, and why not. Clones share one gate.
#[derive(Clone)]
pub struct AuditGate {
    state: watch::Sender<GateState>,
    service: Arc<str>,
    nodes: Arc<[String]>,
    /// Believes only lag reports the audit service signed (none: any report, for tests of the
    /// gate alone).
    verifier: Option<Arc<duijie_common::signing::Verifier>>,
}

impl AuditGate {
    /// The gate of service `service` serving `nodes`; it starts closed until its first look.
    pub fn new(service: &str, nodes: &[AgencyNode]) -> Self {
        let state = GateState { open: false, why: Some(Why::Unchecked), since: Utc::now(), closings: 0, openings: 0, looks: 0, seen: None };
        Self { state: watch::Sender::new(state), service: service.into(), nodes: nodes.iter().map(ToString::to_string).collect(), verifier: None }
    }

    /// Believes only the lag reports signed by the audit service (`duijie-audit`): every service
    /// may write to the status exchange, and a forged report could close every gate or hold them
    /// open while the audit store is down.
    #[must_use]
    pub fn with_verifier(mut self, verifier: Arc<duijie_common::signing::Verifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// `UNAVAILABLE` while closed.
    pub fn check(&self) -> Result<(), ApiError> {
        let state = self.state.borrow();
        match &state.why {
            None => Ok(()),
            Some(why) => Err(ApiError::Unavailable(format!("new referrals are paused because the audit store cannot record ({why}); retry later"))),
        }
    }

    /// The gate's state now.
    pub fn state(&self) -> GateState {
        self.state.borrow().clone()
    }

    /// Its state now and each change after.
    pub fn subscribe(&self) -> watch::Receiver<GateState> {
        self.state.subscribe()
    }

    /// Decides after `seen` ([`decide`]) and logs an opening or a closing.
    pub fn apply(&self, marks: &Marks, seen: Seen) {
        self.state.send_modify(|s| {
            let why = decide(marks, s.open, &seen);
            let open = why.is_none();
            if open != s.open {
                s.since = Utc::now();
                if open {
                    s.openings += 1;
                    tracing::info!("audit store recording again: taking new referrals");
                } else {
                    s.closings += 1;
                    tracing::warn!(reason = %why.as_ref().map(ToString::to_string).unwrap_or_default(), "audit store cannot record: refusing new referrals");
                }
            }
            (s.open, s.why, s.seen) = (open, why, Some(seen));
            s.looks += 1;
        });
    }

    /// The report `duijie-bus status` shows.
    pub fn report(&self) -> GateReport {
        let s = self.state.borrow();
        let (consumers, backlog, lag_ms) = match &s.seen {
            Some(Seen::Tap { consumers, backlog, lag }) => {
                let lag_ms = match lag {
                    Lag::Known(l) => Some(u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
                    Lag::Awaited | Lag::Unknown => None,
                };
                (Some(*consumers), Some(*backlog), lag_ms)
            }
            _ => (None, None, None),
        };
        GateReport {
            service: self.service.to_string(),
            nodes: self.nodes.to_vec(),
            open: s.open,
            reason: s.why.as_ref().map(ToString::to_string).unwrap_or_default(),
            since: s.since,
            closings: s.closings,
            consumers,
            backlog,
            lag_ms,
            at: Utc::now(),
        }
    }

    /// Keeps `health`'s [`HEALTH_SERVICE`] at SERVING while the gate is open and NOT_SERVING
    /// while it is closed, until `shutdown`.
    pub async fn mirror_health(self, health: tonic_health::server::HealthReporter, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut rx = self.subscribe();
        let mut told = None;
        loop {
            let open = rx.borrow_and_update().open;
            // Every look changes the state; health watchers hear only openings and closings.
            if told != Some(open) {
                let status = if open { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
                health.set_service_status(HEALTH_SERVICE, status).await;
                told = Some(open);
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                // The gate lives as long as this task holds it, so the channel cannot close.
                r = rx.changed() => r?,
            }
        }
    }

    /// Looks at the tap every `cfg.interval_ms` until `shutdown`, and listens to the audit
    /// service's lag reports meanwhile. The connection to RabbitMQ is a session of the shared
    /// reconnect loop ([`run_sessions`]); its backoff starts at 100 ms and grows no further than
    /// the interval, so a dropped connection is replaced within a moment and an unreachable broker
    /// is tried once per interval.
    pub async fn watch(self, connector: Connector, topology: Topology, cfg: GateConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
        let backoff = Backoff::new(Duration::from_millis(100).min(cfg.interval_ms), cfg.interval_ms);
        let (gate, connector, topology, cfg, token) = (&self, &connector, &topology, &cfg, &shutdown);
        run_sessions("audit gate", token, backoff, move |_| gate.session(connector, topology, cfg, token)).await;
        Ok(())
    }

    /// One connection's lifetime. Ends with an error when the connection fails (the gate is
    /// closed, except for a connection found dropped between two looks: the next session decides)
    /// and `Ok` on shutdown.
    async fn session(&self, connector: &Connector, topology: &Topology, cfg: &GateConfig, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let marks = cfg.marks();
        let blind = |e: &anyhow::Error| self.apply(&marks, Seen::Blind(format!("{e:#}")));
        let conn = connector.connect("audit gate").await.inspect_err(blind)?;
        let ch = conn.create_channel().await.map_err(|e| anyhow::Error::new(e).context("opening the audit gate channel")).inspect_err(blind)?;
        let mut reports = status::listen(&conn, &ch, topology, AUDIT_LAG_KEY, "audit gate").await.inspect_err(blind)?;
        let mut lag = LagWatch::new(cfg.status_stale_ms);
        let mut tick = tokio::time::interval(cfg.interval_ms);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                report = reports.next() => {
                    let delivery = report.ok_or_else(|| anyhow::anyhow!("the broker ended the status consumer"))?.inspect_err(|e| blind(&anyhow::anyhow!("{e}")))?;
                    let report = match &self.verifier {
                        Some(v) => status::decode_signed::<AuditLag>(&delivery, v, duijie_common::signing::AUDIT_SIGNER),
                        None => status::decode::<AuditLag>(&delivery.data),
                    };
                    if let Some(report) = report {
                        lag.heard(&report, Instant::now());
                    }
                }
                _ = tick.tick() => {
                    if !conn.status().connected() || !ch.status().connected() {
                        anyhow::bail!("the connection to RabbitMQ was lost");
                    }
                    // The tap is its partitions: recorded only while every one has a consumer;
                    // the backlog is theirs together.
                    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                    let (mut consumers, mut backlog) = (u32::MAX, 0u32);
                    for tap in topology.tap_queues() {
                        match ch.queue_declare(tap.as_str().into(), passive, FieldTable::default()).await {
                            Ok(q) => {
                                consumers = consumers.min(q.consumer_count());
                                backlog = backlog.saturating_add(q.message_count());
                            }
                            Err(e) => {
                                // A failed passive declare closes the channel: start over on a new connection.
                                let e = anyhow::Error::new(e).context(format!("looking at the audit tap ({tap})"));
                                blind(&e);
                                return Err(e);
                            }
                        }
                    }
                    let now = Instant::now();
                    lag.consumers(consumers, now);
                    self.apply(&marks, Seen::Tap { consumers, backlog, lag: lag.seen(now) });
                    status::publish(&ch, topology, &status::gate_key(&self.service), &self.report()).await?;
                }
            }
        }
    }
}

/// What a gate session heard from the audit service, and since when the tap has a consumer.
struct LagWatch {
    stale: Duration,
    /// The last report of each audit replica: when it came and the lag it told (`None`: that
    /// replica could not tell). Replicas share the tap's partitions, so the audit store is as
    /// far behind as the furthest behind of them.
    last: std::collections::HashMap<String, (Instant, Option<Duration>)>,
    /// Since when the tap has had a consumer without a break (as far as this session saw).
    consumed_since: Option<Instant>,
    /// Whether the last [`LagWatch::seen`] knew the lag (to log when that changes).
    knew: bool,
}

impl LagWatch {
    fn new(stale: Duration) -> Self {
        Self { stale, last: std::collections::HashMap::new(), consumed_since: None, knew: false }
    }

    fn heard(&mut self, report: &AuditLag, now: Instant) {
        self.last.insert(report.replica.clone(), (now, report.lag_ms.map(Duration::from_millis)));
    }

    fn consumers(&mut self, consumers: u32, now: Instant) {
        self.consumed_since = if consumers == 0 { None } else { self.consumed_since.or(Some(now)) };
    }

    fn seen(&mut self, now: Instant) -> Lag {
        // A report from before the consumer (re)appeared speaks of a consumer that has gone.
        let current = |at: Instant| now.duration_since(at) <= self.stale && self.consumed_since.is_some_and(|since| at >= since);
        self.last.retain(|_, (at, _)| now.duration_since(*at) <= self.stale);
        let known = self.last.values().filter(|(at, _)| current(*at)).filter_map(|(_, lag)| *lag).max();
        let seen = match known {
            Some(lag) => Lag::Known(lag),
            _ if self.consumed_since.is_some_and(|since| now.duration_since(since) < self.stale) => Lag::Awaited,
            _ => Lag::Unknown,
        };
        let knows = matches!(seen, Lag::Known(_));
        if knows != self.knew {
            if knows {
                tracing::info!("the audit service reports its lag: the audit gate goes by it again");
            } else {
                tracing::warn!(stale_ms = self.stale.as_millis(), "no usable lag report from the audit service: the audit gate goes by the tap's consumers and backlog");
            }
            self.knew = knows;
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: Marks = Marks { close_backlog: 100, open_backlog: 40, close_lag: Duration::from_secs(60), open_lag: Duration::from_secs(15) };

    fn tap(backlog: u32, lag: Lag) -> Seen {
        Seen::Tap { consumers: 1, backlog, lag }
    }

    fn secs(s: u64) -> Lag {
        Lag::Known(Duration::from_secs(s))
    }

    /// Feeds `looks` to a gate that starts `open` and returns the open/closed sequence.
    fn run(open: bool, looks: &[Seen]) -> Vec<bool> {
        let mut open = open;
        looks
            .iter()
            .map(|seen| {
                open = decide(&MARKS, open, seen).is_none();
                open
            })
            .collect()
    }

    #[test]
    fn a_backlog_closes_above_the_high_mark_and_reopens_only_at_the_low_one() {
        let backlog = [0, 99, 100, 101, 120, 99, 60, 41, 40, 39, 99, 100, 101];
        let looks: Vec<Seen> = backlog.iter().map(|&b| tap(b, secs(0))).collect();
        assert_eq!(run(true, &looks), [true, true, true, false, false, false, false, false, true, true, true, true, false]);
        assert_eq!(
            decide(&MARKS, true, &tap(101, secs(0))),
            Some(Why::Backlog { messages: 101, close: 100, open: 40 })
        );
    }

    #[test]
    fn a_backlog_hovering_at_one_mark_does_not_flap() {
        // The old gate opened and closed at every crossing of one threshold.
        let looks: Vec<Seen> = (0..40).map(|i| tap(if i % 2 == 0 { 95 } else { 105 }, secs(1))).collect();
        let states = run(true, &looks);
        let transitions = states.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(!states[0]);
        assert_eq!(transitions, 1, "one closing, no reopening while the backlog stays above the low mark: {states:?}");
    }

    #[test]
    fn the_age_of_the_oldest_unrecorded_message_closes_and_reopens_at_its_own_marks() {
        let ages = [5, 60, 61, 30, 16, 15, 59, 60, 90];
        let looks: Vec<Seen> = ages.iter().map(|&a| tap(0, secs(a))).collect();
        assert_eq!(run(true, &looks), [true, true, false, false, false, true, true, true, false]);
        let why = decide(&MARKS, true, &tap(0, Lag::Known(Duration::from_millis(61_500))));
        assert_eq!(why, Some(Why::Lag { lag: Duration::from_millis(61_500), close: MARKS.close_lag, open: MARKS.open_lag }));
        assert!(why.is_some_and(|w| w.to_string().contains("61.5 s old")));
    }

    #[test]
    fn reopening_needs_both_the_backlog_and_the_age_at_their_low_marks() {
        assert!(decide(&MARKS, false, &tap(10, secs(20))).is_some(), "backlog low, lag between the marks");
        assert!(decide(&MARKS, false, &tap(50, secs(1))).is_some(), "lag low, backlog between the marks");
        assert_eq!(decide(&MARKS, false, &tap(40, secs(15))), None);
    }

    #[test]
    fn no_tap_or_no_consumer_closes_at_once_whatever_the_marks() {
        assert_eq!(decide(&MARKS, true, &Seen::Tap { consumers: 0, backlog: 0, lag: secs(0) }), Some(Why::NoConsumer));
        assert_eq!(decide(&MARKS, true, &Seen::Blind("refused".into())), Some(Why::Blind("refused".into())));
    }

    #[test]
    fn without_a_lag_report_the_counts_decide_but_a_returning_audit_service_is_heard_first() {
        // Cannot tell: an open gate stays open, a closed one reopens on the backlog alone.
        assert_eq!(decide(&MARKS, true, &tap(100, Lag::Unknown)), None);
        assert_eq!(decide(&MARKS, false, &tap(40, Lag::Unknown)), None);
        assert!(decide(&MARKS, false, &tap(41, Lag::Unknown)).is_some());
        // Its consumer just came back: a closed gate waits for the first report, an open one
        // does not close for want of it.
        assert_eq!(decide(&MARKS, false, &tap(0, Lag::Awaited)), Some(Why::AwaitingLag));
        assert_eq!(decide(&MARKS, true, &tap(0, Lag::Awaited)), None);
    }

    #[test]
    fn a_report_is_used_while_fresh_and_awaited_for_a_while_after_the_consumer_returns() {
        let stale = Duration::from_secs(5);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = LagWatch::new(stale);
        w.consumers(1, at(0));
        assert_eq!(w.seen(at(0)), Lag::Awaited);
        assert_eq!(w.seen(at(5)), Lag::Unknown, "no report within the stale window: cannot tell");
        w.heard(&AuditLag { at: Utc::now(), lag_ms: Some(2_000), recorded: 1, replica: String::new() }, at(6));
        assert_eq!(w.seen(at(6)), Lag::Known(Duration::from_secs(2)));
        assert_eq!(w.seen(at(11)), Lag::Known(Duration::from_secs(2)));
        assert_eq!(w.seen(at(12)), Lag::Unknown, "stale");
        // The consumer goes and comes back: its next report is awaited again, even while the
        // last one from before would still be fresh.
        w.heard(&AuditLag { at: Utc::now(), lag_ms: Some(0), recorded: 1, replica: String::new() }, at(13));
        w.consumers(0, at(13));
        w.consumers(1, at(14));
        assert_eq!(w.seen(at(15)), Lag::Awaited);
        w.heard(&AuditLag { at: Utc::now(), lag_ms: None, recorded: 1, replica: String::new() }, at(16));
        assert_eq!(w.seen(at(16)), Lag::Awaited, "a report that cannot tell is no answer");
    }

    #[test]
    fn the_gate_counts_its_transitions_and_says_why_it_is_closed() {
        let gate = AuditGate::new("court", &[]);
        assert!(gate.check().is_err(), "closed until the first look");
        gate.apply(&MARKS, tap(0, secs(0)));
        gate.apply(&MARKS, tap(150, secs(0)));
        let refused = gate.check().map_err(|e| e.to_string());
        assert!(refused.as_ref().is_err_and(|e| e.contains("150 messages behind")), "{refused:?}");
        gate.apply(&MARKS, tap(60, secs(0)));
        assert!(gate.check().is_err(), "between the marks a closed gate stays closed");
        gate.apply(&MARKS, tap(10, secs(0)));
        let s = gate.state();
        assert!(s.open && s.why.is_none());
        assert_eq!((s.openings, s.closings), (2, 1));
        let report = gate.report();
        assert_eq!((report.open, report.closings, report.backlog, report.lag_ms), (true, 1, Some(10), Some(0)));
    }

    #[test]
    fn the_services_config_files_set_valid_marks() -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Only {
            audit_gate: GateConfig,
        }
        for service in ["court", "procuratorate", "police", "petition", "mediation"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config").join(service);
            let only: Only = duijie_common::config::load(&dir)?;
            only.audit_gate.validate()?;
            assert_eq!(only.audit_gate.marks(), GateConfig::default().marks(), "{service}: the file says what the defaults say");
        }
        Ok(())
    }

    #[test]
    fn marks_without_hysteresis_are_refused() {
        assert!(GateConfig::default().validate().is_ok());
        let same = GateConfig { open_backlog: 10_000, ..GateConfig::default() };
        assert!(same.validate().is_err_and(|e| e.to_string().contains("open_backlog")));
        let inverted = GateConfig { open_lag_ms: Duration::from_secs(90), ..GateConfig::default() };
        assert!(inverted.validate().is_err_and(|e| e.to_string().contains("open_lag_ms")));
    }
}
