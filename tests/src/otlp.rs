//! A real OTLP/gRPC receiver for tests: the collector's `TraceService` (types from
//! `opentelemetry-proto`) on 127.0.0.1, keeping every span it is sent, and a log sink that keeps
//! the lines in memory. `tests/tests/traces.rs` points the services' telemetry at both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use duijie_common::CancellationToken;
use duijie_common::telemetry::{LogLines, TelemetryConfig, TelemetryGuard};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tonic::{Request, Response, Status};
use tracing_subscriber::fmt::writer::MakeWriterExt as _;

/// One span as the receiver got it: ids in hex, attributes as strings.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The resource's `service.name`.
    pub service: String,
    pub attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    /// The value of attribute `key`, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(&self, req: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| value_string(kv.value.as_ref()))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    attributes: span.attributes.iter().map(|KeyValue { key, value, .. }| (key.clone(), value_string(value.as_ref()))).collect(),
                });
            }
        }
        self.0.lock().map_err(|_| Status::internal("receiver poisoned"))?.extend(got);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_string(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The receiver: serving until dropped.
pub struct Receiver {
    addr: SocketAddr,
    spans: Collected,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let spans = Collected::default();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(spans.clone()))
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("OTLP receiver stopped: {e}");
            }
        });
        Ok(Self { addr, spans, stop })
    }

    /// Its address as an OTLP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Installs the process's telemetry exporting spans to `endpoint` and logging JSON lines (the
/// services' debug lines included) into the returned buffer; also to stdout when `TEST_LOG` is
/// set. Call it first thing in a test, before any bus or stack starts (they would install the
/// quiet test telemetry). One test per process (nextest) keeps each test's choice its own.
pub fn export_to(endpoint: String) -> anyhow::Result<(&'static TelemetryGuard, LogLines)> {
    let lines = LogLines::default();
    let cfg = TelemetryConfig { otlp_endpoint: Some(endpoint), log_json: true };
    let filter = "info,duijie_common=debug,duijie_agency=debug,duijie_audit=debug";
    let guard = if std::env::var_os("TEST_LOG").is_some() {
        let tee = lines.clone().and(std::io::stdout);
        duijie_common::telemetry::init_for_tests_with("duijie-tests", filter, tee, &cfg)?
    } else {
        duijie_common::telemetry::init_for_tests_with("duijie-tests", filter, lines.clone(), &cfg)?
    };
    Ok((guard, lines))
}

/// Exports the spans finished so far (the batch exporter would in its own time), off the async
/// threads: the export itself runs on the runtime this waits on.
pub async fn flush(guard: &'static TelemetryGuard) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || guard.flush()).await.context("the flush task")?
}
