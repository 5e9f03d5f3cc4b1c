//! Logs and traces for every service: one subscriber with an env filter, a log layer
//! (JSON when `DUIJIE_LOG_JSON` is set), and an OpenTelemetry layer so every span has a W3C
//! trace id that travels in AMQP headers. Spans are exported over OTLP/gRPC only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; otherwise ids are still generated for propagation.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Flushes and shuts the span exporter down when dropped (end of `main`).
#[must_use = "dropping the guard immediately stops trace export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// Installs the global subscriber and propagator. `default_filter` applies when `RUST_LOG`
/// is unset. `sink` receives the log lines (stdout in services, a sink in quiet tests).
pub fn init<W>(service_name: &str, default_filter: &str, sink: W) -> anyhow::Result<TelemetryGuard>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        // Built here, inside the tokio runtime, as the tonic exporter requires.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("building the OTLP span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service_name.to_owned());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = if std::env::var_os("DUIJIE_LOG_JSON").is_some() {
        tracing_subscriber::fmt::layer().json().with_writer(sink).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(sink).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// For tests: logs to stdout only when `TEST_LOG` is set, but always generates trace ids.
/// The provider lives for the rest of the process; calling again does nothing.
pub fn init_for_tests(name: &str) {
    static INSTALLED: std::sync::OnceLock<Option<TelemetryGuard>> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let result = if std::env::var_os("TEST_LOG").is_some() {
            init(name, "info,duijie_common=debug", std::io::stdout)
        } else {
            init(name, "info", std::io::sink)
        };
        result.map_err(|e| eprintln!("telemetry not installed: {e:#}")).ok()
    });
}
