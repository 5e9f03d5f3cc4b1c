//! Typed, layered configuration: an optional base file, an optional environment file, then
//! `DUIJIE_`-prefixed environment variables (`__` separates levels, e.g.
//! `DUIJIE_DATABASE__PASSWORD`). Secrets are `SecretString` so they never reach a log line.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// Everything the shared library needs to run a service on the bus.
#[derive(Debug, Clone, Deserialize)]
pub struct BusConfig {
    /// PostgreSQL database of this service (cases as it sees them, outbox, inbox).
    pub database: DatabaseConfig,
    /// RabbitMQ broker.
    pub amqp: AmqpConfig,
    /// Exchange/queue naming and the reliability knobs of relay and consumers.
    #[serde(default)]
    pub topology: TopologyConfig,
    /// Outbox relay tuning.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Inbox consumer tuning.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// Where `/metrics` is served (README, "Metrics").
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
}

/// PostgreSQL connection settings; kept as parts, not a URL, so the password stays secret.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: SecretString,
    pub database: String,
    #[serde(default)]
    pub require_ssl: bool,
    /// Every connection this process may hold to the database. A service splits them into two
    /// pools ([`crate::db::ServicePools`]): `bus_connections` for the bus work and the rest for
    /// its gRPC calls; a tool or test with one pool ([`crate::db::pool`]) uses them all.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Of `max_connections`, the connections a service reserves for the bus work (outbox relay,
    /// inbox consumers, inbox pruning; the audit service's deadline watcher and retention), so
    /// that gRPC calls cannot starve it. At least 1, less than `max_connections`.
    #[serde(default = "default_bus_connections")]
    pub bus_connections: u32,
    /// How long a bus task waits for a connection, and a connection may take to open, before
    /// the database counts as unreachable (ms).
    #[serde(default = "default_acquire_timeout", with = "duration_ms")]
    pub acquire_timeout_ms: Duration,
    /// How long a gRPC call waits for its turn at a connection of the calls' pool, every one
    /// being in use by other calls, before it is answered "busy" (`UNAVAILABLE`, retry; ms). See
    /// [`crate::db::ApiPool`].
    #[serde(default = "default_acquire_timeout", with = "duration_ms")]
    pub busy_after_ms: Duration,
}

fn default_max_connections() -> u32 {
    10
}

fn default_bus_connections() -> u32 {
    3
}

fn default_acquire_timeout() -> Duration {
    Duration::from_secs(5)
}

impl DatabaseConfig {
    /// Connection options for this database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options_for(&self.database)
    }

    /// Connection options for another database on the same server (used to create test databases).
    pub fn options_for(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.username)
            .password(self.password.expose_secret())
            .database(database)
            .ssl_mode(if self.require_ssl { PgSslMode::Require } else { PgSslMode::Prefer })
    }

    /// The sizes of a service's two pools ([`crate::db::ServicePools`]): `(calls, bus)`, that is
    /// `(max_connections - bus_connections, bus_connections)`; refused if either would be empty.
    pub fn pool_sizes(&self) -> anyhow::Result<(u32, u32)> {
        let (max, bus) = (self.max_connections, self.bus_connections);
        anyhow::ensure!(
            bus >= 1 && bus < max,
            "database.bus_connections ({bus}) must be at least 1 and less than database.max_connections ({max}), \
             which leaves the gRPC calls the rest"
        );
        Ok((max - bus, bus))
    }

    /// Parses `postgres://user:password@host:port/database`, the form the stack script prints.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let opts: PgConnectOptions = url.parse().context("parsing a PostgreSQL URL")?;
        let password = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default();
        Ok(Self {
            host: opts.get_host().to_owned(),
            port: opts.get_port(),
            username: opts.get_username().to_owned(),
            password: SecretString::from(password),
            database: opts.get_database().unwrap_or("postgres").to_owned(),
            require_ssl: false,
            max_connections: default_max_connections(),
            bus_connections: default_bus_connections(),
            acquire_timeout_ms: default_acquire_timeout(),
            busy_after_ms: default_acquire_timeout(),
        })
    }
}

/// RabbitMQ connection settings.
#[derive(Debug, Clone, Deserialize)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost`; secret because it carries the password.
    pub url: SecretString,
    /// Further nodes of the same RabbitMQ cluster (same form as `url`), tried in turn after
    /// `url` when a connection cannot be made: a node that is down or cut off does not keep a
    /// service away from the others (README, "Running N replicas").
    #[serde(default)]
    pub cluster_urls: Vec<SecretString>,
    /// Connection name shown in the broker's management tools.
    #[serde(default = "default_connection_name")]
    pub connection_name: String,
    /// AMQP heartbeat in seconds, asked for when a URL names none (`?heartbeat=`). A node that
    /// stops answering without closing the socket (frozen, cut off) is given up after two
    /// missed heartbeats and the service reconnects, to another node with `cluster_urls`; the
    /// broker's own default (60 s) kept services waiting on a frozen node for two minutes.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u16,
}

impl AmqpConfig {
    /// One broker node at `url`, the default heartbeat.
    pub fn new(url: impl Into<SecretString>, connection_name: impl Into<String>) -> Self {
        Self { url: url.into(), cluster_urls: Vec::new(), connection_name: connection_name.into(), heartbeat_secs: default_heartbeat_secs() }
    }
}

fn default_connection_name() -> String {
    "duijie".into()
}

fn default_heartbeat_secs() -> u16 {
    10
}

/// Names and queue arguments of the bus topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TopologyConfig {
    /// Prefix of every exchange and queue name; tests use a unique one each.
    pub prefix: String,
    /// Quorum queue `x-delivery-limit`: after this many redeliveries the broker dead-letters
    /// a message (a consumer that crashes on it every time).
    pub delivery_limit: i64,
    /// Use `x-dead-letter-strategy=at-least-once` (RabbitMQ ≥ 3.10).
    pub at_least_once_dead_lettering: bool,
    /// Inbox partitions per service kind (queues `<p>.inbox.<kind>.p<i>`): how many replicas of
    /// a service can work at once. Fixed for a deployment: every service and the operator's
    /// `duijie-bus declare` must agree (ARCHITECTURE.md, "Scale-out").
    pub partitions: u16,
    /// Partitions of the audit tap (`<p>.audit.tap.p<i>`): how many audit replicas can work at once.
    pub tap_partitions: u16,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self { prefix: "duijie".into(), delivery_limit: 10, at_least_once_dead_lettering: true, partitions: 4, tap_partitions: 4 }
    }
}

/// Outbox relay tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RelayConfig {
    /// Rows claimed and published per transaction.
    pub batch_size: i64,
    /// How long the relay waits for a batch's publisher confirms before it gives up on the
    /// connection (a broker in a memory or disk alarm, or a queue without quorum, stops
    /// confirming); the batch is then published again after reconnecting.
    #[serde(with = "duration_ms")]
    pub confirm_timeout: Duration,
    /// How often an idle relay looks for rows nobody woke it for: staged by another process on
    /// the same database or left by a relay that crashed. Its own process's commits wake it at
    /// once ([`crate::outbox::RelayWaker`]), and a full batch is followed by the next one at once.
    #[serde(with = "duration_ms")]
    pub poll_interval: Duration,
    /// First delay before republishing a row the broker returned or refused; doubles per attempt.
    #[serde(with = "duration_ms")]
    pub retry_base: Duration,
    /// Upper bound of that delay.
    #[serde(with = "duration_ms")]
    pub retry_max: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 250,
            confirm_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// Inbox consumer tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConsumerConfig {
    /// `basic.qos` prefetch: messages in flight per consumer.
    pub prefetch: u16,
    /// Most deliveries applied in one database transaction.
    pub batch_max: usize,
    /// Inbox records (the deduplication memory) are kept this long, then deleted.
    #[serde(with = "duration_ms")]
    pub inbox_retention: Duration,
    /// How long a message that arrived before its case's state allowed it is held and tried
    /// again before it goes to the dead letters (ms, default 2 min; `inbox_held`).
    #[serde(with = "duration_ms")]
    pub hold_for: Duration,
    /// How often held messages are tried again when nothing else moved their case (ms, default
    /// 1 s; a batch that touches a case tries that case's held messages at once).
    #[serde(with = "duration_ms")]
    pub hold_retry: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            prefetch: 256,
            batch_max: 128,
            inbox_retention: Duration::from_secs(30 * 24 * 3600),
            hold_for: Duration::from_secs(120),
            hold_retry: Duration::from_secs(1),
        }
    }
}

/// Durations written as milliseconds in files and environment variables.
pub mod duration_ms {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Reads a whole number of milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Loads `T` from `<dir>/base.yaml`, `<dir>/<DUIJIE_ENV>.yaml` (both optional) and `DUIJIE_*`
/// environment variables, later layers winning.
pub fn load<T: serde::de::DeserializeOwned>(dir: &Path) -> anyhow::Result<T> {
    let env = std::env::var("DUIJIE_ENV").unwrap_or_else(|_| "local".into());
    config::Config::builder()
        .add_source(config::File::from(dir.join("base.yaml")).required(false))
        .add_source(config::File::from(dir.join(format!("{env}.yaml"))).required(false))
        .add_source(
            config::Environment::with_prefix("DUIJIE")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .context("reading configuration")?
        .try_deserialize()
        .context("configuration does not match the expected shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The six services of the local stack hold at most 41 connections, each split so that its
    /// calls and its bus work both have some (README, "Database connections").
    #[test]
    fn the_local_stack_keeps_to_its_connection_budget() -> anyhow::Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut total = 0;
        for service in ["audit", "court", "procuratorate", "police", "petition", "mediation"] {
            let db: DatabaseConfig = config::Config::builder()
                .add_source(config::File::from(dir.join(service).join("base.yaml")))
                .set_override("database.password", "not read from the file")?
                .build()?
                .get("database")?;
            let (calls, bus) = db.pool_sizes().with_context(|| service.to_owned())?;
            assert!(calls >= 4 && bus >= 2, "{service}: {calls} for calls, {bus} for the bus");
            total += db.max_connections;
        }
        assert_eq!(total, 41);
        Ok(())
    }

    #[test]
    fn a_split_that_leaves_a_side_without_connections_is_refused() -> anyhow::Result<()> {
        let mut db = DatabaseConfig::from_url("postgres://u:p@localhost:5432/d")?;
        assert_eq!(db.pool_sizes()?, (7, 3));
        db.bus_connections = 10;
        assert!(db.pool_sizes().is_err());
        db.bus_connections = 0;
        assert!(db.pool_sizes().is_err());
        Ok(())
    }
}
