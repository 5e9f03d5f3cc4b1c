//! The gRPC side every agency service shares: mutual TLS (the client certificate names the
//! calling agency), health and reflection, the `SessionService`, one mapping from errors to
//! `tonic::Status`, and graceful shutdown (health goes NOT_SERVING first).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use duijie_proto::v1::session_service_server::{SessionService, SessionServiceServer};
use duijie_proto::v1::{AgencyKind, AgencyRef, WhoAmIRequest, WhoAmIResponse};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use duijie_domain::AgencyNode;

/// A gRPC service's listener (`grpc:` in its configuration, e.g. `DUIJIE_GRPC__LISTEN`).
#[derive(Debug, Clone, Deserialize)]
pub struct GrpcConfig {
    /// Address to listen on, e.g. `127.0.0.1:50051` (port 0: any free port).
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    /// A plaintext listener serving only `grpc.health.v1` (e.g. `0.0.0.0:8081`): the main port
    /// requires mutual TLS, which Kubernetes' native `grpc` probe cannot present. It reports
    /// the same statuses, and says nothing else.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// How long in-flight calls and tasks get to finish on shutdown.
    #[serde(default = "default_grace", with = "crate::config::duration_ms")]
    pub grace_ms: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// Where a service finds its TLS material (PEM files).
#[derive(Debug, Clone, Deserialize)]
pub struct TlsFiles {
    /// The CA that signs agency certificates; clients must present one it signed.
    pub ca: PathBuf,
    /// This server's certificate.
    pub cert: PathBuf,
    /// This server's private key.
    pub key: PathBuf,
}

/// TLS material in memory.
#[derive(Clone)]
pub struct TlsPem {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem { .. }") // never print key material
    }
}

impl TlsFiles {
    /// Reads the three files.
    pub fn read(&self) -> anyhow::Result<TlsPem> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(TlsPem { ca: read(&self.ca)?, cert: read(&self.cert)?, key: read(&self.key)? })
    }
}

/// The largest request any of our gRPC services decodes ([`duijie_proto::limits::MAX_REQUEST_BYTES`],
/// 512 KiB: a referral at every field's limit fits). Every generated server is built with
/// `.max_decoding_message_size(MAX_REQUEST_BYTES)`; tonic reads the length prefix first and
/// answers a larger request `OUT_OF_RANGE` without reading its body, so a flood of big requests
/// costs no memory.
pub const MAX_REQUEST_BYTES: usize = duijie_proto::limits::MAX_REQUEST_BYTES;

/// An error at the gRPC boundary. Handlers return this; [`From<ApiError> for Status`] is the
/// one place that decides codes and details.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: names the field at fault.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The case's state does not allow this; says the state and what is allowed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's agency may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No such case (or none this caller may see).
    #[error("{0}")]
    NotFound(String),
    /// A dependency is down or the bus is not accepting new work; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The caller (or the address it asks for) made too many attempts; retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Anything else: logged with its cause, reported without internals.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// Shorthand for an invalid field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), message: message.into() }
    }

    /// The same error with its field named inside `parent` (e.g. `amendment.revised.facts`).
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::InvalidArgument { field, message } => Self::InvalidArgument { field: format!("{parent}.{field}"), message },
            other => other,
        }
    }
}

impl From<duijie_proto::limits::Violation> for ApiError {
    /// A field beyond the contract's bounds is the caller's error, named as the limits name it.
    fn from(v: duijie_proto::limits::Violation) -> Self {
        Self::InvalidArgument { field: v.field, message: v.message }
    }
}

/// The longest error message (and field path) sent back, in characters. A message may quote what
/// the caller sent; unbounded, it would become a response header larger than the client takes
/// (h2 refuses it as a protocol error, and the caller never learns what was wrong).
pub const MAX_ERROR_MESSAGE: usize = 500;

fn bounded(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_ERROR_MESSAGE) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument { field, message } => {
                let (field, message) = (bounded(field), bounded(message));
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("{field}: {message}"),
                    ErrorDetails::with_bad_request_violation(field, message),
                )
            }
            ApiError::FailedPrecondition(m) => Status::failed_precondition(bounded(m)),
            ApiError::PermissionDenied(m) => {
                // Refused calls stay in the service log; the message names the caller and what it tried.
                tracing::warn!(reason = %m, "permission denied");
                Status::permission_denied(bounded(m))
            }
            ApiError::NotFound(m) => Status::not_found(bounded(m)),
            ApiError::Unavailable(m) => Status::unavailable(bounded(m)),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(bounded(m)),
            ApiError::Unexpected(e) => {
                // Every connection for calls in use: load, not a fault. Retry in a moment.
                if let Some(busy) = e.chain().find_map(|c| c.downcast_ref::<crate::db::Busy>()) {
                    tracing::warn!(
                        connections = busy.connections,
                        waited_ms = busy.waited.as_millis() as u64,
                        error = format!("{e:#}"),
                        "service busy: no database connection for the call; answered UNAVAILABLE (retry)"
                    );
                    return busy_status();
                }
                // A database that is restarting or unreachable is a reason to retry, not a bug.
                let outage = e.chain().any(|c| c.downcast_ref::<sqlx::Error>().is_some_and(crate::db::is_outage));
                tracing::error!(error = format!("{e:#}"), outage, "request failed");
                if outage {
                    Status::unavailable(OUTAGE_MESSAGE)
                } else {
                    Status::internal("internal error; the request was not completed")
                }
            }
        }
    }
}

/// The answer of a busy service (`UNAVAILABLE`): every database connection for calls stayed in
/// use by other calls for the whole wait ([`crate::db::Busy`]). It carries a
/// `google.rpc.ErrorInfo` with reason [`BUSY_REASON`] and a `google.rpc.RetryInfo`.
pub const BUSY_MESSAGE: &str = "the service is busy; the request was not completed, retry in a moment";

/// `google.rpc.ErrorInfo.reason` of a busy answer (domain `duijie`).
pub const BUSY_REASON: &str = "SERVICE_BUSY";

/// How long a busy answer suggests waiting before the retry (`google.rpc.RetryInfo`).
pub const BUSY_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The answer (`UNAVAILABLE`) when the database cannot be reached or is restarting.
pub const OUTAGE_MESSAGE: &str = "a dependency is unavailable; the request was not completed, retry later";

fn busy_status() -> Status {
    let mut details = ErrorDetails::with_error_info(BUSY_REASON, "duijie", std::collections::HashMap::new());
    details.set_retry_info(Some(BUSY_RETRY_DELAY));
    Status::with_error_details(Code::Unavailable, BUSY_MESSAGE, details)
}

/// Whether `status` is a busy answer ([`BUSY_MESSAGE`]), as opposed to an outage or a closed gate.
pub fn is_busy(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.get_error_details().error_info().is_some_and(|i| i.reason == BUSY_REASON)
}

/// The agency named by the caller's client certificate: subject common name `<kind>:<code>`.
/// Deny by default: no certificate, an unreadable one, or an unknown name is `UNAUTHENTICATED`.
pub fn caller<T>(req: &Request<T>) -> Result<AgencyNode, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let der = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    agency_of_certificate(der.as_ref()).map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
}

/// The subject common name of the caller's client certificate, whatever it names: for the few
/// calls a service (not an agency) makes, such as the console's `LookupCase` (`duijie-console`).
/// No certificate or an unreadable one is `UNAUTHENTICATED`.
pub fn caller_name<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let der = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    common_name_of_certificate(der.as_ref()).map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
}

/// A DER certificate's subject common name.
pub fn common_name_of_certificate(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("unreadable: {e}"))?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(ToOwned::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no subject common name"))
}

/// Reads `<kind>:<code>` from a DER certificate's subject common name.
pub fn agency_of_certificate(der: &[u8]) -> anyhow::Result<AgencyNode> {
    let cn = common_name_of_certificate(der)?;
    let node: AgencyNode = cn.parse().map_err(|e| anyhow::anyhow!("common name: {e}"))?;
    // The bus signs only its own evidence and notices; no caller speaks as the bus.
    anyhow::ensure!(node.kind() != AgencyKind::Bus, "unknown agency kind \"bus\"");
    Ok(node)
}

struct SessionApi {
    service: String,
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let me = caller(&req)?;
        Ok(Response::new(WhoAmIResponse { agency: Some(AgencyRef::from(&me)), service: self.service.clone() }))
    }
}

/// Serves `routes` plus health, reflection and `SessionService` on `listener` with mutual TLS until
/// `shutdown`, then reports NOT_SERVING and drains in-flight calls for at most `grace`.
pub async fn serve(
    service: &str,
    listener: TcpListener,
    routes: Routes,
    tls: &TlsPem,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_service = health_service.max_decoding_message_size(MAX_REQUEST_BYTES);
    serve_with_health(service, listener, routes.add_service(health_service), health, tls, shutdown, grace).await
}

/// [`serve`] with a health service the caller made ([`tonic_health::server::health_reporter`]) and
/// already added to `routes`, so that it can report named services beside the overall status
/// (`""`, which this function sets SERVING, and NOT_SERVING at shutdown): the agency services
/// report their audit gate as `duijie.audit_gate`.
pub async fn serve_with_health(
    service: &str,
    listener: TcpListener,
    routes: Routes,
    health: tonic_health::server::HealthReporter,
    tls: &TlsPem,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(duijie_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let routes = routes
        .add_service(reflection)
        .add_service(SessionServiceServer::new(SessionApi { service: service.to_owned() }).max_decoding_message_size(MAX_REQUEST_BYTES));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert, &tls.key))
        .client_ca_root(Certificate::from_pem(&tls.ca));
    let stopping = CancellationToken::new();
    let stop = stopping.clone();
    let signal = async move {
        shutdown.cancelled().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        stop.cancel();
    };
    // Without TCP_NODELAY small answers wait for the peer's delayed ACK (~40 ms a call).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .tls_config(tls)
        .context("configuring TLS")?
        // Every call in a span of its own, continuing the caller's trace (crate::trace).
        .trace_fn(crate::trace::grpc_span)
        .layer(crate::metrics::GrpcMetricsLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.context("gRPC server failed"),
        () = stopping.cancelled() => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(r) => r.context("gRPC server failed while draining"),
        Err(_) => {
            tracing::warn!(service, "grace period over with calls still running");
            Ok(())
        }
    }
}

/// Serves only `grpc.health.v1`, in plaintext, on `listener` with the statuses of `health`,
/// until `shutdown` (the probes' port: [`GrpcConfig::health_listen`]).
pub async fn serve_health(listener: TcpListener, health: tonic_health::server::HealthReporter, shutdown: CancellationToken) -> anyhow::Result<()> {
    let service = tonic_health::pb::health_server::HealthServer::new(tonic_health::server::HealthService::from_health_reporter(health))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .context("health server failed")
}

/// Binds `cfg.health_listen`, if set, for [`serve_health`].
pub async fn bind_health(cfg: &GrpcConfig) -> anyhow::Result<Option<TcpListener>> {
    let Some(listen) = cfg.health_listen else { return Ok(None) };
    let listener = TcpListener::bind(listen).await.with_context(|| format!("health: listening on {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving plaintext gRPC health for probes");
    Ok(Some(listener))
}

/// The listeners beside a service's gRPC port, spawned into its supervisor's `tasks`: `/metrics`
/// (`metrics.listen`, with `samplers`) and the plaintext health port (`grpc.health_listen`,
/// reporting what `health` reports). Returns where each listens, if it does.
pub async fn spawn_ops_listeners(
    tasks: &mut tokio::task::JoinSet<(String, anyhow::Result<()>)>,
    metrics_cfg: &crate::metrics::MetricsConfig,
    samplers: crate::metrics::Samplers,
    grpc: &GrpcConfig,
    health: &tonic_health::server::HealthReporter,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Option<std::net::SocketAddr>, Option<std::net::SocketAddr>)> {
    let metrics_addr = match crate::metrics::bind(metrics_cfg, samplers, shutdown.clone()).await? {
        Some((addr, serve)) => {
            tasks.spawn(async move { ("metrics".to_owned(), serve.await) });
            Some(addr)
        }
        None => None,
    };
    let health_addr = match bind_health(grpc).await? {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let (h, t) = (health.clone(), shutdown.clone());
            tasks.spawn(async move { ("health".to_owned(), serve_health(listener, h, t).await) });
            Some(addr)
        }
        None => None,
    };
    Ok((metrics_addr, health_addr))
}

/// The agency a request names in `field` (the field path in the error).
pub fn agency_field(r: Option<&duijie_proto::v1::AgencyRef>, field: &str) -> Result<AgencyNode, ApiError> {
    let r = r.ok_or_else(|| ApiError::invalid(field, "is required"))?;
    let kind = AgencyKind::try_from(r.kind)
        .ok()
        .filter(|k| !matches!(k, AgencyKind::Unspecified | AgencyKind::Bus))
        .ok_or_else(|| ApiError::invalid(format!("{field}.kind"), "must be an agency kind"))?;
    AgencyNode::new(kind, r.code.as_str()).map_err(|e| ApiError::invalid(format!("{field}.code"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_status_codes_with_the_field_named() {
        let status = Status::from(ApiError::invalid("parties[0].identity.number", "check digit does not match"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = details.bad_request().map(|b| b.field_violations.clone()).unwrap_or_default();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "parties[0].identity.number");
        assert_eq!(Status::from(ApiError::FailedPrecondition("state SETTLED".into())).code(), Code::FailedPrecondition);
        assert_eq!(Status::from(ApiError::PermissionDenied("no".into())).code(), Code::PermissionDenied);
        let internal = Status::from(ApiError::Unexpected(anyhow::anyhow!("password=secret in a DSN")));
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("secret"), "internals never reach the caller");
    }

    #[test]
    fn a_message_quoting_a_huge_input_is_cut() {
        let status = Status::from(ApiError::invalid("state", format!("unknown state {:?}", "事".repeat(100_000))));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().chars().count() < 2 * MAX_ERROR_MESSAGE + 10, "{}", status.message().len());
        let details = status.get_error_details();
        let violation = details.bad_request().and_then(|b| b.field_violations.first().cloned());
        assert!(violation.is_some_and(|v| v.field == "state" && v.description.ends_with('…')));
    }

    #[test]
    fn a_busy_service_and_an_unreachable_database_answer_differently() {
        let busy = crate::db::Busy { connections: 6, waited: Duration::from_secs(5) };
        let status = Status::from(ApiError::Unexpected(anyhow::Error::new(busy).context("beginning a transaction")));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), BUSY_MESSAGE);
        assert!(is_busy(&status));
        assert_eq!(status.get_error_details().retry_info().and_then(|r| r.retry_delay), Some(BUSY_RETRY_DELAY));

        // With a slot held, a pool that cannot connect times out: the database is down.
        let down = Status::from(ApiError::Unexpected(anyhow::Error::new(sqlx::Error::PoolTimedOut).context("connecting to the database")));
        assert_eq!(down.code(), Code::Unavailable);
        assert_eq!(down.message(), OUTAGE_MESSAGE);
        assert!(!is_busy(&down));
        // A closed audit gate is UNAVAILABLE too, and not "busy".
        assert!(!is_busy(&Status::from(ApiError::Unavailable("new referrals are paused".into()))));
    }
}
