//! Prometheus metrics (README, "Metrics"). Every process records through the `metrics` facade
//! into one Prometheus recorder ([`install`]) and serves it as text on `GET /metrics` at
//! `metrics.listen` ([`serve`]). What changes at an event (a confirm, an applied message, a gRPC
//! call) is recorded where it happens; what is a level (the outbox's depth, the pools, the
//! counters a relay or consumer already keeps) is read on each scrape by the service's
//! [`Samplers`], so a scrape always shows the state now and nothing polls between scrapes.
//!
//! Names and labels are the contract of the chart's `PrometheusRule` and dashboard
//! (`charts/duijie`); labels take only bounded values (queue names, method paths the server
//! implements, fixed reasons), never case ids or free text.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Where a process serves `/metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Plain HTTP address for `GET /metrics` (e.g. `0.0.0.0:9464`); none: not served (the
    /// metrics are still recorded).
    pub listen: Option<SocketAddr>,
}

/// Histogram buckets for every `_seconds` histogram: from a millisecond (a local apply) to
/// half a minute (a confirm behind a broker failover).
const LATENCY_BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How long one scrape waits for a sampler (a database that does not answer) before it renders
/// what it has.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the recorder drains its histograms' samples into their buckets whether or not
/// anything scrapes: unscraped, every call's sample would stay in memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first use. `None` if another recorder was installed
/// first (then nothing of ours is recorded; said once in the log).
pub fn install() -> Option<PrometheusHandle> {
    install_as(None)
}

/// [`install`] for the process of service `name`: every series carries `service="<name>"`
/// (one service per process in a deployment; the in-process test stacks use [`install`]).
pub fn install_for(name: &str) -> Option<PrometheusHandle> {
    install_as(Some(name))
}

fn install_as(service: Option<&str>) -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            if let Some(name) = service {
                builder = builder.add_global_label("service", name);
            }
            let installed = builder.set_buckets(&LATENCY_BUCKETS).and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_EVERY);
                            upkeep.run_upkeep();
                        }
                    });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "no metrics upkeep thread: histograms are drained only when scraped");
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no Prometheus recorder: metrics are not recorded");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("duijie_outbox_depth", "Envelopes staged in the outbox and not yet confirmed by the broker");
    describe_gauge!("duijie_outbox_oldest_age_seconds", Unit::Seconds, "Age of the oldest outbox row (0 when empty)");
    describe_histogram!("duijie_relay_confirm_seconds", Unit::Seconds, "From publishing a relay batch to the broker's last confirm");
    describe_counter!("duijie_relay_published_total", "Envelopes the relay published and the broker confirmed");
    describe_counter!("duijie_relay_failed_total", "Publishes that stay in the outbox for a retry, by outcome (returned, nacked, unsigned)");
    describe_counter!("duijie_relay_restarts_total", "Times the relay lost the broker or its database and started over");
    describe_histogram!("duijie_consumer_apply_seconds", Unit::Seconds, "From taking a batch of deliveries to acking it, per message batch");
    describe_counter!("duijie_consumer_applied_total", "Messages applied and committed, by queue");
    describe_counter!("duijie_consumer_redeliveries_total", "Deliveries the broker flagged as redelivered, by queue");
    describe_counter!("duijie_consumer_duplicates_total", "Deliveries the inbox recognised as already applied, by queue");
    describe_counter!("duijie_consumer_restarts_total", "Consumer sessions restarted after losing the broker, by queue");
    describe_counter!("duijie_consumer_bad_signatures_total", "Messages whose signature was missing, bad or not the sender's, by queue");
    describe_gauge!("duijie_consumer_held", "Messages held because they arrived before their case allowed them");
    describe_counter!("duijie_dead_letters_total", "Messages a consumer sent to the dead-letter queue, by reason (unreadable, refused, expired)");
    describe_gauge!("duijie_audit_gate_open", "1 while the service takes new referrals, 0 while the audit gate is closed");
    describe_gauge!("duijie_audit_lag_seconds", Unit::Seconds, "Audit service: age of the oldest tap message in hand and not yet recorded (0 when caught up)");
    describe_counter!("duijie_audit_appended_total", "Audit service: envelopes recorded in the audit log");
    describe_counter!("duijie_grpc_requests_total", "gRPC calls answered, by method and status code");
    describe_histogram!("duijie_grpc_request_seconds", Unit::Seconds, "gRPC call latency until the last byte of the answer, by method");
    describe_gauge!("duijie_db_pool_connections", "Database connections by pool (api, bus) and state (idle, in_use)");
    describe_counter!("duijie_db_pool_waits_total", "gRPC calls that found every connection of their pool in use and waited");
    describe_counter!("duijie_db_pool_busy_total", "gRPC calls answered busy (UNAVAILABLE) after waiting for a connection");
    describe_counter!("duijie_deadline_warnings_total", "Audit service: time limits near their end, notified");
    describe_counter!("duijie_deadline_breaches_total", "Audit service: time limits passed, notified");
    describe_counter!("duijie_http_requests_total", "Console: requests by route pattern and status");
    describe_histogram!("duijie_http_request_seconds", Unit::Seconds, "Console: request latency by route pattern");
    describe_counter!("duijie_metrics_sampler_timeouts_total", "Scrapes on which a sampler (e.g. the outbox's) did not answer in time; its gauges keep older values");
}

/// What a service reads on every scrape, each bounded by [`SAMPLE_TIMEOUT`].
pub type Sampler = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A service's samplers.
#[derive(Clone, Default)]
pub struct Samplers(Vec<Sampler>);

impl std::fmt::Debug for Samplers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Samplers({})", self.0.len())
    }
}

impl Samplers {
    /// Adds one.
    #[must_use]
    pub fn with(mut self, s: Sampler) -> Self {
        self.0.push(s);
        self
    }

    /// Runs every sampler, each at most [`SAMPLE_TIMEOUT`].
    pub async fn sample(&self) {
        let runs = self.0.iter().map(|s| tokio::time::timeout(SAMPLE_TIMEOUT, s()));
        for r in futures::future::join_all(runs).await {
            if r.is_err() {
                metrics::counter!("duijie_metrics_sampler_timeouts_total").increment(1);
                tracing::debug!("a metrics sampler took longer than {SAMPLE_TIMEOUT:?}; its values are the last ones");
            }
        }
    }
}

/// Outbox rows counted exactly at a scrape; above, the depth is PostgreSQL's estimate.
const OUTBOX_COUNT_CAP: i64 = 10_000;

/// The outbox's depth and oldest row, and the rows held in the inbox, of the service database
/// `pool`.
pub fn outbox_sampler(pool: sqlx::PgPool) -> Sampler {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            // By the primary key only: in a broker outage the outbox grows to many rows of a few
            // KB each, and a scan of it would outlast the scrape. The oldest row is the lowest id
            // (a retried row keeps its id); past OUTBOX_COUNT_CAP rows the depth is the
            // planner's estimate.
            let outbox: Result<(i64, Option<f64>, f64), _> = sqlx::query_as(
                "SELECT (SELECT count(*) FROM (SELECT id FROM outbox ORDER BY id LIMIT $1) s),
                        (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM outbox ORDER BY id LIMIT 1),
                        (SELECT reltuples::float8 FROM pg_class WHERE oid = 'outbox'::regclass)",
            )
            .bind(OUTBOX_COUNT_CAP)
            .fetch_one(&pool)
            .await;
            match outbox {
                Ok((counted, age, estimate)) => {
                    #[allow(clippy::cast_precision_loss)] // at most OUTBOX_COUNT_CAP
                    let depth = if counted >= OUTBOX_COUNT_CAP { estimate.max(counted as f64) } else { counted as f64 };
                    metrics::gauge!("duijie_outbox_depth").set(depth);
                    metrics::gauge!("duijie_outbox_oldest_age_seconds").set(age.unwrap_or(0.0).max(0.0));
                }
                Err(e) => tracing::debug!(error = %e, "metrics: cannot read the outbox"),
            }
            match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM inbox_held").fetch_one(&pool).await {
                Ok(held) => metrics::gauge!("duijie_consumer_held").set(held as f64),
                Err(e) => tracing::debug!(error = %e, "metrics: cannot read the held messages"),
            }
        })
    })
}

/// The relay's own counters.
pub fn relay_sampler(stats: Arc<crate::outbox::RelayStats>) -> Sampler {
    use std::sync::atomic::Ordering::Relaxed;
    Arc::new(move || {
        let s = Arc::clone(&stats);
        Box::pin(async move {
            metrics::counter!("duijie_relay_published_total").absolute(s.published.load(Relaxed));
            metrics::counter!("duijie_relay_failed_total", "outcome" => "returned").absolute(s.returned.load(Relaxed));
            metrics::counter!("duijie_relay_failed_total", "outcome" => "nacked").absolute(s.nacked.load(Relaxed));
            metrics::counter!("duijie_relay_failed_total", "outcome" => "unsigned").absolute(s.unsigned.load(Relaxed));
            metrics::counter!("duijie_relay_restarts_total").absolute(s.restarts.load(Relaxed));
        })
    })
}

/// A consumer's own counters, labelled with its queue.
pub fn consumer_sampler(queue: String, stats: Arc<crate::inbox::ConsumerStats>) -> Sampler {
    use std::sync::atomic::Ordering::Relaxed;
    Arc::new(move || {
        let (s, q) = (Arc::clone(&stats), queue.clone());
        Box::pin(async move {
            metrics::counter!("duijie_consumer_applied_total", "queue" => q.clone()).absolute(s.applied.load(Relaxed));
            metrics::counter!("duijie_consumer_duplicates_total", "queue" => q.clone()).absolute(s.duplicates.load(Relaxed));
            metrics::counter!("duijie_consumer_restarts_total", "queue" => q.clone()).absolute(s.restarts.load(Relaxed));
            metrics::counter!("duijie_consumer_bad_signatures_total", "queue" => q).absolute(s.bad_signatures.load(Relaxed));
        })
    })
}

/// The two pools' connections.
pub fn pools_sampler(pools: crate::db::ServicePools) -> Sampler {
    Arc::new(move || {
        let pools = pools.clone();
        Box::pin(async move {
            for (name, pool) in [("api", pools.api.pool()), ("bus", &pools.bus)] {
                let (size, idle) = (pool.size(), u32::try_from(pool.num_idle()).unwrap_or(u32::MAX));
                metrics::gauge!("duijie_db_pool_connections", "pool" => name, "state" => "idle").set(f64::from(idle));
                metrics::gauge!("duijie_db_pool_connections", "pool" => name, "state" => "in_use").set(f64::from(size.saturating_sub(idle)));
            }
        })
    })
}

/// A gauge of 1 or 0: whether `on()` holds at the scrape.
pub fn flag_sampler(name: &'static str, on: impl Fn() -> bool + Send + Sync + 'static) -> Sampler {
    let on = Arc::new(on);
    Arc::new(move || {
        let value = if on() { 1.0 } else { 0.0 };
        Box::pin(async move { metrics::gauge!(name).set(value) })
    })
}

/// Serves `GET /metrics` on `listener` until `shutdown`: the samplers run, then the recorder
/// renders.
pub async fn serve(listener: tokio::net::TcpListener, samplers: Samplers, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle = install().context("no Prometheus recorder in this process")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, samplers) = (handle.clone(), samplers.clone());
            async move {
                samplers.sample().await;
                handle.run_upkeep();
                ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await.context("metrics server failed")
}

/// Binds `cfg.listen` (if set) and serves there; returns the bound address and the task's
/// future, for the service's supervisor.
pub async fn bind(cfg: &MetricsConfig, samplers: Samplers, shutdown: CancellationToken) -> anyhow::Result<Option<(SocketAddr, BoxFuture<'static, anyhow::Result<()>>)>> {
    let Some(listen) = cfg.listen else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("metrics: listening on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    Ok(Some((addr, Box::pin(serve(listener, samplers, shutdown)))))
}

/// Counts gRPC calls by method and status code and times them until the answer's last byte:
/// a layer for the server ([`crate::server`]). The code is the answer's `grpc-status`, from its
/// headers (an error answered at once) or its trailers. A path the server does not implement
/// is counted as method `unknown`, so a client cannot grow the label set.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            // Dropped before an answer (the caller's deadline ran out, or it went away): counted
            // as `Cancelled`, so the slowest calls are not missing from the figures.
            let mut pending = Pending(Some(Call { method, started, status: None }));
            let res = call.await?;
            let status = grpc_status(res.headers());
            let call = pending.0.take().map(|c| Call { status, ..c });
            Ok(res.map(|inner| MeteredBody { inner, call }))
        })
    }
}

/// A call not answered yet; recorded as `Cancelled` if dropped so.
struct Pending(Option<Call>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            call.record(Some(1)); // 1: CANCELLED
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

struct Call {
    method: String,
    started: Instant,
    /// From the headers, when the answer was trailers-only.
    status: Option<i32>,
}

impl Call {
    fn record(self, status: Option<i32>) {
        // 12: UNIMPLEMENTED, the router's answer to a path it does not serve.
        let code = status.or(self.status);
        let method = if code == Some(12) { "unknown".to_owned() } else { self.method };
        // The code's name as gRPC spells it (`Ok`, `InvalidArgument`, `Unavailable`, …).
        let code = code.map_or_else(|| "none".to_owned(), |c| format!("{:?}", tonic::Code::from_i32(c)));
        metrics::histogram!("duijie_grpc_request_seconds", "method" => method.clone()).record(self.started.elapsed().as_secs_f64());
        metrics::counter!("duijie_grpc_requests_total", "method" => method, "code" => code).increment(1);
    }
}

/// An answer's body that records its call when the trailers pass, or when it ends or is
/// dropped without them (a cancelled call: code `none`).
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.record(None);
        }
    }
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.record(grpc_status(trailers));
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.record(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
