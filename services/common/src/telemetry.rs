//! Logs and traces for every service: one subscriber with an env filter, a log layer
//! (JSON when `DUIJIE_LOG_JSON` is set) whose lines inside a span carry its `trace_id`, and an
//! OpenTelemetry layer so every span has a W3C trace id that travels in AMQP headers. Spans are
//! exported over OTLP/gRPC only when a collector is configured ([`TelemetryConfig`], by default
//! from `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise ids are still generated for propagation.
//!
//! Export never holds up the bus: finished spans go to a bounded queue that a background thread
//! sends in batches, dropping spans when the queue is full (a collector that is down or slow
//! loses spans, not referrals).

use anyhow::Context as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Where spans go and how log lines look. [`TelemetryConfig::from_env`] reads the standard
/// OpenTelemetry variable, so a deployment points every service at its collector the usual way;
/// the test harness builds one pointing at its own receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; `None`: spans are not exported.
    pub otlp_endpoint: Option<String>,
    /// Log lines as JSON objects (one a line) instead of text.
    pub log_json: bool,
}

impl TelemetryConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or else `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector;
    /// unset or empty: no export) and `DUIJIE_LOG_JSON` (set: JSON log lines).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            otlp_endpoint: var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT")),
            log_json: std::env::var_os("DUIJIE_LOG_JSON").is_some(),
        }
    }
}

/// Flushes and shuts the span exporter down when dropped (end of `main`).
#[must_use = "dropping the guard immediately stops trace export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every finished span now, waiting for the collector's answer (at most the
    /// exporter's timeout, 10 s unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise). Blocking:
    /// from async code call it in `spawn_blocking`, since the export itself needs the runtime.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.provider.force_flush().context("flushing spans to the collector")
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Shutting the batch processor down exports what it still holds first.
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// Installs the global subscriber and propagator, configured from the environment
/// ([`TelemetryConfig::from_env`]). `default_filter` applies when `RUST_LOG` is unset. `sink`
/// receives the log lines (stdout in services, a sink in quiet tests).
pub fn init<W>(service_name: &str, default_filter: &str, sink: W) -> anyhow::Result<TelemetryGuard>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    init_with(service_name, default_filter, sink, &TelemetryConfig::from_env())
}

/// [`init`] with an explicit configuration. Call it inside the tokio runtime: the OTLP exporter's
/// gRPC channel is built on it.
pub fn init_with<W>(service_name: &str, default_filter: &str, sink: W, cfg: &TelemetryConfig) -> anyhow::Result<TelemetryGuard>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &cfg.otlp_endpoint {
        // Built here, inside the tokio runtime, as the tonic exporter requires. The channel
        // connects lazily: an unreachable collector fails exports, not start-up.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .context("building the OTLP span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service_name.to_owned());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // No colours: the trace id is spliced into the formatted line, and log lines are read by
    // collectors more often than on terminals.
    // `.json()` first: it also formats span fields as JSON, which the JSON event format embeds.
    let fmt = if cfg.log_json {
        tracing_subscriber::fmt::layer().json().event_format(WithTraceId(tracing_subscriber::fmt::format().json())).with_writer(sink).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(false).event_format(WithTraceId(tracing_subscriber::fmt::format())).with_writer(sink).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        // After the OpenTelemetry layer: it reads the trace id that layer gave the span.
        .with(TraceIdLayer)
        .with(fmt)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// The trace id of a span, kept in its extensions for the log layer.
#[derive(Debug, Clone)]
struct SpanTraceId(String);

/// Notes each span's OpenTelemetry trace id the first time it is entered, so the log layer can
/// put it on the lines logged inside. Not at creation: a span's parent (and so its trace) may be
/// set right after it is created (`W3cContext::set_as_parent_of`), which is also why the id is
/// read only once the span is entered, when the OpenTelemetry layer has started it anyway.
struct TraceIdLayer;

impl<S> Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.extensions().get::<SpanTraceId>().is_some() {
            return;
        }
        // The span being entered is the current one now (the registry entered it first).
        let cx = tracing::Span::current().context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.extensions_mut().insert(SpanTraceId(sc.trace_id().to_string()));
        }
    }
}

/// An event format that adds the trace id of the innermost span that has one: a `trace_id` key
/// in a JSON line, ` trace_id=…` at the end of a text line.
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &tracing::Event<'_>) -> std::fmt::Result {
        let trace_id = ctx.event_scope().and_then(|scope| scope.into_iter().find_map(|span| span.extensions().get::<SpanTraceId>().cloned()));
        let Some(SpanTraceId(trace_id)) = trace_id else { return self.0.format_event(ctx, writer, event) };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        if line.starts_with('{') {
            // A JSON object: the key goes first, the rest of the object follows unchanged.
            let rest = line.get(1..).unwrap_or_default();
            let sep = if rest.trim_start().starts_with('}') { "" } else { "," };
            write!(writer, "{{\"trace_id\":\"{trace_id}\"{sep}{rest}")
        } else {
            let body = line.trim_end_matches('\n');
            writeln!(writer, "{body} trace_id={trace_id}")
        }
    }
}

/// For tests: logs to stdout only when `TEST_LOG` is set, but always generates trace ids.
/// The provider lives for the rest of the process; calling again does nothing.
pub fn init_for_tests(name: &str) {
    let _ = install_for_tests(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            init(name, "info,duijie_common=debug", std::io::stdout)
        } else {
            init(name, "info", std::io::sink)
        }
    });
}

/// For tests that look at what telemetry produced: installs it with `cfg` (e.g. exporting to a
/// test's own OTLP receiver), logging lines that pass `filter` to `sink`. Must come before
/// anything calls [`init_for_tests`] in the process (the test harness does, when it starts a
/// bus): a subscriber is installed once per process, so it fails if one already is.
pub fn init_for_tests_with<W>(name: &str, filter: &str, sink: W, cfg: &TelemetryConfig) -> anyhow::Result<&'static TelemetryGuard>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let mut ran = false;
    let installed = install_for_tests(|| {
        ran = true;
        init_with(name, filter, sink, cfg)
    });
    anyhow::ensure!(ran, "telemetry was already installed in this process (start the test's receiver before its bus)");
    installed.ok_or_else(|| anyhow::anyhow!("telemetry not installed (see the error above)"))
}

/// The process's telemetry, installed by the first caller's `init`.
fn install_for_tests(init: impl FnOnce() -> anyhow::Result<TelemetryGuard>) -> Option<&'static TelemetryGuard> {
    static INSTALLED: std::sync::OnceLock<Option<TelemetryGuard>> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| init().map_err(|e| eprintln!("telemetry not installed: {e:#}")).ok()).as_ref()
}

/// Log lines kept in memory, a `MakeWriter` for a log layer: what a test reads back of what
/// was logged.
#[derive(Clone, Default)]
pub struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("log buffer poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogLines {
    type Writer = LogLines;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogLines {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|b| String::from_utf8_lossy(&b).lines().map(str::to_owned).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber like the services' (without export), scoped to the test.
    fn logged(json: bool, emit: impl FnOnce() -> Option<String>) -> (String, Option<String>) {
        let lines = LogLines::default();
        let provider = SdkTracerProvider::builder().build();
        let fmt = if json {
            tracing_subscriber::fmt::layer().json().event_format(WithTraceId(tracing_subscriber::fmt::format().json())).with_writer(lines.clone()).boxed()
        } else {
            tracing_subscriber::fmt::layer().with_ansi(false).event_format(WithTraceId(tracing_subscriber::fmt::format())).with_writer(lines.clone()).boxed()
        };
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(TraceIdLayer)
            .with(fmt);
        let id = tracing::subscriber::with_default(subscriber, emit);
        (lines.lines().join("\n"), id)
    }

    fn current_trace_id() -> Option<String> {
        let sc = tracing::Span::current().context().span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    #[test]
    fn text_lines_inside_a_span_carry_its_trace_id() {
        let (out, id) = logged(false, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("outer", case_id = "c1");
            let _g = span.enter();
            let inner = tracing::info_span!("inner");
            let _i = inner.enter();
            tracing::info!(n = 1, "inside");
            current_trace_id()
        });
        let id = id.unwrap_or_default();
        assert_eq!(id.len(), 32, "a trace id: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(!lines[0].contains("trace_id"), "no span, no trace id: {}", lines[0]);
        assert!(lines[1].ends_with(&format!(" trace_id={id}")), "{}", lines[1]);
        assert!(lines[1].contains("inside n=1"), "the line is otherwise unchanged: {}", lines[1]);
    }

    #[test]
    fn json_lines_inside_a_span_carry_its_trace_id_and_stay_json() {
        let (out, id) = logged(true, || {
            let span = tracing::info_span!("outer");
            let _g = span.enter();
            tracing::info!(n = 1, "inside");
            current_trace_id()
        });
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        assert_eq!(line["trace_id"].as_str(), id.as_deref(), "{out}");
        assert_eq!(line["fields"]["message"].as_str(), Some("inside"), "{out}");
    }

    #[test]
    fn a_span_continuing_a_remote_trace_logs_the_remote_trace_id() {
        let remote = "0af7651916cd43dd8448eb211c80319c";
        let (out, _) = logged(false, || {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            let span = tracing::info_span!("inbox.apply");
            crate::trace::W3cContext { traceparent: Some(format!("00-{remote}-b7ad6b7169203331-01")), tracestate: None }.set_as_parent_of(&span);
            let _g = span.enter();
            tracing::info!("applied");
            None
        });
        assert!(out.trim_end().ends_with(&format!("trace_id={remote}")), "{out}");
    }
}
