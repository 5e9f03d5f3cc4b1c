//! duijie's web console: the screens the people at the desks work in, in Simplified Chinese.
//!
//! Server-rendered pages (axum + maud, no front-end build) that call the agency and audit
//! services over gRPC with **the signed-in agency's own certificate**, so every right the
//! services enforce applies to the person at the desk; the console holds no case data.
//!
//! * Sign-in: `demo` mode lists the identities of the PKI directory to choose from (local
//!   stack); `client_certificate` mode serves HTTPS, requires a browser certificate of the
//!   agencies' CA and takes the agency from its common name (`<kind>:<code>`), as the services do.
//! * Pages: `/cases` (a referrer's cases or a mediation body's inbox), `/cases/new` (send a
//!   referral), `/cases/{id}` (the case with its audit timeline and the actions its state
//!   allows), `/search?code=`, `/dashboard` (statistics with charts and the overdue list).
//! * Public, no sign-in: `/lookup` and `POST /api/lookup`, a party's lookup by case code and a
//!   second factor (`lookup.rs`), asked of the audit service with the console's own certificate.

mod backend;
mod charts;
mod csp;
mod forms;
mod labels;
mod live;
mod lookup;
mod pages;
mod session;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post};
use duijie_common::directory::LiveDirectory;
use duijie_domain::AgencyNode;
use duijie_common::client::{Endpoints, Pki};
use duijie_common::config::duration_ms;
use duijie_common::CancellationToken;
use serde::Deserialize;

pub use backend::UiError;
pub use session::SessionConfig;

/// How people sign in to the console (no default: a deployment says which).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignIn {
    /// Pick any identity of the PKI directory: the local stack and demonstrations only, so
    /// the console refuses it on anything but a loopback address.
    Demo,
    /// HTTPS with a required browser certificate; its common name is the agency.
    ClientCertificate,
}

/// HTTPS settings for `client_certificate` sign-in.
#[derive(Clone, Debug, Deserialize)]
pub struct ConsoleTls {
    /// The console's own certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that issues the agencies' browser certificates.
    pub client_ca: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ConsoleConfig {
    /// Where the console listens, e.g. `127.0.0.1:8080` (port 0: any free port).
    pub listen: SocketAddr,
    /// Where the agency and audit services listen.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// The certificates the console presents on behalf of each agency (`ca.pem`,
    /// `<kind>-<code>.pem`, `<kind>-<code>-key.pem`).
    pub pki: PathBuf,
    pub sign_in: SignIn,
    /// Required for `client_certificate` sign-in.
    #[serde(default)]
    pub tls: Option<ConsoleTls>,
    /// The deployment's agency directory file, the one every service reads (`config/directory.yaml`
    /// locally): the agencies' names, and its mediation bodies are the referral form's choices.
    pub directory: PathBuf,
    /// How often the directory file (and, for demo sign-in, the PKI directory) is looked at
    /// again, so an agency added to them appears without a restart.
    #[serde(default = "default_reload", with = "duration_ms")]
    pub directory_reload_ms: Duration,
    /// How long requests in flight get to finish on shutdown.
    #[serde(default = "default_grace", with = "duration_ms")]
    pub grace_ms: Duration,
    /// The signed session cookie of `demo` sign-in (secret, lifetime).
    #[serde(default)]
    pub session: SessionConfig,
    /// Where `/metrics` is served (README, "Metrics"): the console's requests by route.
    #[serde(default)]
    pub metrics: duijie_common::metrics::MetricsConfig,
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

fn default_reload() -> Duration {
    Duration::from_secs(5)
}

/// What every page handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub backend: backend::Backend,
    pub sign_in: SignIn,
    pub names: LiveDirectory,
    /// `demo` sign-in: the identities with a certificate in the PKI directory, read once at
    /// start (empty otherwise).
    pub demo_identities: Arc<std::sync::RwLock<Arc<Vec<AgencyNode>>>>,
    /// Signs and checks the session cookie.
    pub sessions: session::Sessions,
    /// Cancelled when the console stops: the live event streams end.
    pub stopping: CancellationToken,
}

impl AppState {
    /// The display name of an agency, or its kind and code.
    pub fn name_of(&self, node: &AgencyNode) -> String {
        if node.kind() == duijie_proto::v1::AgencyKind::Bus {
            return "对接平台".into(); // delivery evidence and deadline notices
        }
        self.names
            .current()
            .name_of(node)
            .map_or_else(|| format!("{}（{}）", labels::agency_kind(node.kind()), node.code()), ToOwned::to_owned)
    }

    /// Every agency of the directory, with its name.
    pub fn agencies(&self) -> Vec<(AgencyNode, String)> {
        self.names.current().entries().map(|(n, name)| (n.clone(), name.to_owned())).collect()
    }

    /// The identities demo sign-in offers: those the console holds a certificate for.
    pub fn demo_identities(&self) -> Arc<Vec<AgencyNode>> {
        // A poisoned lock still holds a whole list (it is only ever replaced at once).
        self.demo_identities.read().map_or_else(|p| Arc::clone(&p.into_inner()), |d| Arc::clone(&d))
    }

    /// The mediation bodies a case can be sent or handed to.
    pub fn mediation_bodies(&self) -> Vec<(AgencyNode, String)> {
        self.names
            .current()
            .entries()
            .filter(|(n, _)| n.kind() == duijie_proto::v1::AgencyKind::Mediation)
            .map(|(n, name)| (n.clone(), name.to_owned()))
            .collect()
    }
}

/// A running console.
pub struct Running {
    /// The bound address (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// Where `/metrics` is served (`metrics.listen`), if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// Ends when the console stopped; an error says why.
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Counts and times every request by its route's pattern (`/cases/{id}`, never the id) and
/// status (a route layer: a path no route matches, answered by the fallback, is not counted).
async fn measure(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    metrics::histogram!("duijie_http_request_seconds", "route" => route.clone()).record(started.elapsed().as_secs_f64());
    metrics::counter!("duijie_http_requests_total", "route" => route, "status" => res.status().as_u16().to_string()).increment(1);
    res
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/signin", get(pages::signin_page).post(pages::signin))
        .route("/signout", post(pages::signout))
        .route("/cases", get(pages::list))
        .route("/cases/new", get(pages::new_referral).post(pages::submit_referral))
        .route("/cases/{id}", get(pages::case_page))
        .route("/cases/{id}/act", post(pages::act))
        .route("/search", get(pages::search))
        .route("/dashboard", get(pages::dashboard))
        .route("/events", get(live::events))
        // Public: the parties' lookup, no sign-in (the audit service limits and records it).
        .route("/lookup", get(lookup::page_form).post(lookup::page_submit))
        .route("/api/lookup", post(lookup::api))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(guard))
        .route_layer(axum::middleware::from_fn(measure))
        .with_state(state)
}

/// Cross-site requests may not act: a browser presents the agency's certificate (or the
/// sign-in cookie) to any site that posts a form here, so a POST must come from the console's
/// own pages (`Origin` / `Sec-Fetch-Site`; browsers send them, other clients hold no
/// credential of the clerk's). Every response gets the strict policy of [`csp`] with a fresh
/// nonce, which the pages rendered inside give their scripts and styles.
async fn guard(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{HeaderValue, Method, StatusCode, header};
    use axum::response::IntoResponse as _;
    if req.method() == Method::POST {
        let h = req.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let site_ok = text("sec-fetch-site").is_none_or(|v| v == "same-origin" || v == "none");
        let origin_ok = match (text("origin"), text("host")) {
            (None, _) => true,
            (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, authority)| authority == host),
            (Some(_), None) => false,
        };
        if !(site_ok && origin_ok) {
            tracing::warn!(origin = text("origin").unwrap_or(""), site = text("sec-fetch-site").unwrap_or(""), "cross-site form refused");
            return (StatusCode::FORBIDDEN, axum::response::Html("<!DOCTYPE html><html lang=\"zh-CN\"><meta charset=\"utf-8\"><title>已拒绝</title><p id=\"error\">来自其他网站的提交已被拒绝。请在本控制台页面中操作。</p></html>")).into_response();
        }
    }
    let nonce = csp::fresh();
    let mut resp = csp::scope(nonce.clone(), next.run(req)).await;
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The nonce is hex: always a valid header value; should it ever not be, no policy would be
    // worse than a response refused, so it is the fallback that forbids every script.
    let policy = HeaderValue::from_str(&csp::policy(&nonce))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"));
    h.insert(header::CONTENT_SECURITY_POLICY, policy);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // Case pages carry parties' data: not kept in shared caches or the back-forward cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Binds the listener and serves until `shutdown` is cancelled.
pub async fn start(cfg: ConsoleConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    anyhow::ensure!(
        cfg.sign_in != SignIn::Demo || cfg.listen.ip().is_loopback(),
        "sign_in demo lets anyone act as any agency: it listens on loopback only (listen is {}); use client_certificate",
        cfg.listen
    );
    let pki = Pki::new(&cfg.pki);
    anyhow::ensure!(!cfg.directory_reload_ms.is_zero(), "directory_reload_ms must be above 0");
    let names = LiveDirectory::load(&cfg.directory)?;
    let demo_identities = match cfg.sign_in {
        SignIn::Demo => pki.identities().with_context(|| format!("the demo identities in {}", pki.dir().display()))?,
        SignIn::ClientCertificate => Vec::new(),
    };
    let demo_identities = Arc::new(std::sync::RwLock::new(Arc::new(demo_identities)));
    // The directory and the certificates issued since start (an agency added while running).
    {
        let (names, ids, pki, every, stop, demo) =
            (names.clone(), Arc::clone(&demo_identities), pki.clone(), cfg.directory_reload_ms, shutdown.clone(), cfg.sign_in == SignIn::Demo);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                names.refresh();
                if demo && let Ok(now) = pki.identities() {
                    *ids.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(now);
                }
            }
        });
    }
    // Only HTTPS (client_certificate) is served over TLS: its cookies are `Secure`.
    let sessions = session::Sessions::new(&cfg.session, cfg.sign_in == SignIn::ClientCertificate)?;
    let state = AppState {
        sessions,
        backend: backend::Backend::new(cfg.endpoints.clone(), pki),
        sign_in: cfg.sign_in,
        names,
        demo_identities,
        stopping: shutdown.clone(),
    };
    let app = router(state);
    let metrics_addr = match duijie_common::metrics::bind(&cfg.metrics, duijie_common::metrics::Samplers::default(), shutdown.clone()).await? {
        Some((addr, serve)) => {
            tokio::spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = format!("{e:#}"), "the console's metrics server stopped");
                }
            });
            Some(addr)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let handle = match cfg.sign_in {
        SignIn::Demo => {
            let grace = cfg.grace_ms;
            tokio::spawn(async move {
                let stop = shutdown.clone();
                // The peer address reaches the handlers (the parties' lookup counts by it).
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
                let mut serve = std::pin::pin!(serve.into_future());
                tokio::select! {
                    r = &mut serve => r.context("serving the console"),
                    () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => Ok(()),
                }
            })
        }
        SignIn::ClientCertificate => {
            let tls_cfg = cfg.tls.as_ref().context("sign_in client_certificate needs tls (cert, key, client_ca)")?;
            let acceptor = tls::acceptor(tls_cfg)?;
            tokio::spawn(tls::serve(listener, acceptor, app, shutdown, cfg.grace_ms))
        }
    };
    tracing::info!(%addr, sign_in = ?cfg.sign_in, "console listening");
    Ok(Running { addr, metrics_addr, handle })
}
