//! The audit service: every envelope that reached an agency (a copy from the bus's tap) is
//! appended to an append-only, hash-chained log in the service's own database (`store`), with
//! projections moved in the same transaction — where each case stands, who took part, its legal
//! time limits. The log is one or more hash chains, a batch of envelopes appended in a few
//! statements; `tree` commits to all chains' heads with one hash. `watch` sends
//! DeadlineWarning/DeadlineBreached notices through the outbox; `stats` defines the supervisors'
//! statistics; `verify` walks the chains; `api` is the `AuditService` gRPC service; `lookup` answers a
//! party's lookup by case code (当事人查询) for the console; `status`
//! tells the agency services' audit gates how far behind the store is; `service` runs it all.

pub mod api;
pub mod keys;
pub mod lookup;
pub mod service;
pub mod stats;
pub mod status;
pub mod store;
pub mod tree;
pub mod verify;
pub mod watch;

/// The migrations of the audit database: the bus tables (inbox for the tap, outbox for the
/// notices) and the log with its projections, one history.
pub fn migrator() -> sqlx::migrate::Migrator {
    static AUDIT: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/audit");
    sqlx::migrate::Migrator::with_migrations(
        duijie_common::db::BUS_MIGRATOR.iter().chain(AUDIT.iter()).cloned().collect(),
    )
}
