//! The agency core every agency service shares: the desk's decisions
//! ([`duijie_domain::Case`]) applied to one agency node's copy of its cases, in its database,
//! with its outbox and inbox.
//!
//! | module | what it does |
//! |---|---|
//! | [`outgoing`] | what an agency sends: a referral, a step on a case ([`Agency::submit_referral`], [`Agency::send_once`]) |
//! | [`incoming`] | what reaches it over the bus: the inbox [`Handler`](duijie_common::inbox::Handler), delivery evidence |
//! | [`view`] | what it reads: a case with its timeline and limits, a page of cases |
//! | [`feed`] | its case changes as they happen, from a resumable cursor (`Watch`) |
//! | [`store`] | every SQL statement of the crate |
//! | [`rules`] | input rules of what it sends; refusals mapped to gRPC and to dead-letter reasons |
//! | [`idempotency`] | an action at most once per idempotency key |
//! | [`api`] | the gRPC services (`Cases`, `Referrals`) and helpers for each service's own |
//! | [`service`], [`gate`] | running a service; pausing referrals while the audit store cannot record |

pub mod api;
pub mod feed;
pub mod gate;
pub mod idempotency;
pub mod incoming;
pub mod outgoing;
pub mod rules;
pub mod service;
pub mod store;
pub mod view;

use std::collections::BTreeSet;
use std::sync::Arc;

use duijie_common::CancellationToken;
use duijie_common::amqp::Topology;
use duijie_common::db::ApiPool;
use duijie_common::directory::LiveDirectory;
use duijie_common::outbox::RelayWaker;
use duijie_common::server::ApiError;
use duijie_domain::AgencyNode;
use duijie_domain::calendar::WorkCalendar;

pub use rules::{MAX_EXTENSION_DAYS, validate_referral};
pub use view::{CaseSummary, CaseView, ListFilter, TimelineItem};

/// The migrations of an agency database: the bus tables and the case tables, one history.
pub fn migrator() -> sqlx::migrate::Migrator {
    static AGENCY: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/agency");
    sqlx::migrate::Migrator::with_migrations(duijie_common::db::BUS_MIGRATOR.iter().chain(AGENCY.iter()).cloned().collect())
}

/// Which agencies a service core acts for.
#[derive(Clone, Debug)]
enum Serves {
    /// These (the core's own tests).
    Listed(BTreeSet<AgencyNode>),
    /// Every agency of this kind in the directory, as it is now: a new agency needs a directory
    /// entry and its certificate, no queue and no restart (the service's partitions carry every
    /// agency of its kind).
    Kind(duijie_proto::v1::AgencyKind),
}

/// One agency service's core, serving agencies of one kind.
#[derive(Clone)]
pub struct Agency {
    /// The gRPC calls' connections (the inbox hands its handler a connection of the bus pool).
    db: ApiPool,
    topology: Topology,
    waker: Option<RelayWaker>,
    nodes: Serves,
    /// Agencies a case may be sent or handed to; `None` accepts any well-formed agency.
    directory: Option<LiveDirectory>,
    /// Closed while the audit store cannot record: no new referrals then.
    gate: Option<gate::AuditGate>,
    calendar: WorkCalendar,
    /// Bumped after every commit that changed a case here: wakes the live feeds ([`feed`]).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Cancelled when the service stops: the live feeds end (their clients resume elsewhere).
    stopping: CancellationToken,
    /// Where the case data keys come from (the audit service); without it parties' data is
    /// stored and sent as given (tests of the core alone).
    keys: Option<duijie_common::sealing::KeyClient>,
    /// Checks the proof of who referred a handed-on case (its original referral's signature).
    verifier: Option<Arc<duijie_common::signing::Verifier>>,
}

impl Agency {
    /// The core for `nodes`; its gRPC calls use `api_pool` (migrated with [`migrator`]), which
    /// should be theirs alone ([`duijie_common::db::ServicePools`]; a `PgPool` is taken as an
    /// [`ApiPool`] of its size): a call never waits for a second connection while holding one,
    /// and a call that finds every connection in use is answered "busy".
    pub fn new(api_pool: impl Into<ApiPool>, topology: Topology, nodes: &[AgencyNode], waker: Option<RelayWaker>) -> Self {
        Self {
            db: api_pool.into(),
            topology,
            waker,
            nodes: Serves::Listed(nodes.iter().cloned().collect()),
            directory: None,
            gate: None,
            calendar: WorkCalendar::bundled(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            stopping: CancellationToken::new(),
            keys: None,
            verifier: None,
        }
    }

    /// The core acting for every agency of `kind` in its directory ([`Agency::with_directory`];
    /// without one, for any agency of that kind).
    pub fn for_kind(api_pool: impl Into<ApiPool>, topology: Topology, kind: duijie_proto::v1::AgencyKind, waker: Option<RelayWaker>) -> Self {
        let mut agency = Self::new(api_pool, topology, &[], waker);
        agency.nodes = Serves::Kind(kind);
        agency
    }

    /// Whether this core seals parties' data (and so refuses it in clear from the bus).
    pub(crate) fn seals_parties(&self) -> bool {
        self.keys.is_some()
    }

    /// A handed-on case is taken only with its original referrer's signed referral
    /// (`ForwardedCase.original_envelope`), checked with `verifier`.
    #[must_use]
    pub fn with_verifier(mut self, verifier: Arc<duijie_common::signing::Verifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Seals the parties' identity, contact and address of every case this core opens with the
    /// case's data key from `keys`, and opens them for the holder's `GetCase`
    /// (`duijie_common::sealing`).
    #[must_use]
    pub fn with_keys(mut self, keys: duijie_common::sealing::KeyClient) -> Self {
        self.keys = Some(keys);
        self
    }

    /// `referral` with its parties' data sealed under case `case_id`'s key, which `caller`
    /// (the agency opening or amending the case) gets from the key service.
    pub(crate) async fn sealed(
        &self,
        caller: &AgencyNode,
        case_id: uuid::Uuid,
        holder: &AgencyNode,
        mut referral: duijie_proto::v1::Referral,
    ) -> Result<duijie_proto::v1::Referral, ApiError> {
        let Some(keys) = &self.keys else { return Ok(referral) };
        let key = keys.issue(caller, case_id, holder).await.map_err(key_unavailable)?;
        duijie_common::sealing::seal_referral(&key, case_id, &mut referral).map_err(ApiError::Unexpected)?;
        Ok(referral)
    }

    /// Only agencies in `known` may receive a case from this service (the agency directory of
    /// the deployment); any other recipient is refused as an unknown agency.
    #[must_use]
    pub fn with_directory(mut self, known: impl Into<LiveDirectory>) -> Self {
        self.directory = Some(known.into());
        self
    }

    /// New referrals are refused with `UNAVAILABLE` while `gate` is closed.
    #[must_use]
    pub fn with_gate(mut self, gate: gate::AuditGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The live feeds end when `token` is cancelled (the service's shutdown): a stream would
    /// otherwise hold the gRPC server's graceful shutdown for its whole grace period.
    #[must_use]
    pub fn with_stopping(mut self, token: CancellationToken) -> Self {
        self.stopping = token;
        self
    }

    /// Whether new referrals are taken now (always, without a gate).
    pub fn gate_open(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.check().is_ok())
    }

    /// The audit gate, if the service has one (its state, reason and transitions).
    pub fn gate(&self) -> Option<&gate::AuditGate> {
        self.gate.as_ref()
    }

    fn check_known(&self, node: &AgencyNode, field: &str) -> Result<(), ApiError> {
        match &self.directory {
            Some(d) if !d.current().contains(node) => Err(ApiError::invalid(field, format!("unknown agency {node}"))),
            _ => Ok(()),
        }
    }

    fn serves(&self, node: &AgencyNode) -> bool {
        match &self.nodes {
            Serves::Listed(nodes) => nodes.contains(node),
            Serves::Kind(kind) => node.kind() == *kind && self.directory.as_ref().is_none_or(|d| d.current().contains(node)),
        }
    }

    /// Why `env` may not be staged: its recipient is not in the directory (checked before
    /// staging, so a message addressed to no one never enters the outbox).
    fn unknown_recipient(&self, env: &duijie_proto::v1::Envelope) -> Option<String> {
        let d = self.directory.as_ref()?;
        match AgencyNode::from_ref(env.recipient.as_ref()) {
            Ok(n) if d.current().contains(&n) => None,
            Ok(n) => Some(format!("{n} is not in the agency directory")),
            Err(e) => Some(format!("the recipient: {e}")),
        }
    }

    fn check_serves(&self, caller: &AgencyNode) -> Result<(), ApiError> {
        if self.serves(caller) { Ok(()) } else { Err(ApiError::PermissionDenied(format!("this service does not act for {caller}"))) }
    }

    /// After a commit that changed a case: the relay may have envelopes to send, and the live
    /// feeds something to show.
    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A key the case needs and cannot get: nothing was done.
fn key_unavailable(e: duijie_common::sealing::KeyError) -> ApiError {
    match e {
        duijie_common::sealing::KeyError::Erased => ApiError::FailedPrecondition(e.to_string()),
        // The key service's verdict on this agency's rights: a retry would not change it.
        duijie_common::sealing::KeyError::Refused(why) => ApiError::PermissionDenied(format!("the key service refused the case's data key: {why}")),
        other => ApiError::Unavailable(format!("cannot seal the parties' data: {other}; nothing was done, retry later")),
    }
}
