//! What every duijie service needs: configuration, telemetry, shutdown and the process around
//! a service binary, the database pool and bus migrations, the AMQP topology, reliable handoff
//! (transactional outbox + relay, idempotent inbox consumer with dead-lettering) and the one
//! reconnect loop they run in. See ARCHITECTURE.md for the flow.

pub mod amqp;
pub mod anchor;
pub mod backoff;
pub mod certs;
pub mod client;
pub mod config;
pub mod db;
pub mod directory;
pub mod envelope;
pub mod inbox;
pub mod metrics;
pub mod outbox;
pub mod process;
pub mod reconnect;
pub mod server;
pub mod shutdown;
pub mod sealing;
pub mod signing;
pub mod status;
pub mod telemetry;
pub mod trace;

pub use tokio_util::sync::CancellationToken;
