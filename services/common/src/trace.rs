//! W3C trace context across the bus: captured from the current span when an envelope is
//! staged, stored with the outbox row, sent as AMQP headers, and restored as the parent of the
//! consumer's span so one trace shows the handoff crossing agencies.

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// AMQP header carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// AMQP header carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// The W3C trace context of a span, as header strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct W3cContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl W3cContext {
    /// The context of the current `tracing` span (empty when no OpenTelemetry layer is installed).
    pub fn current() -> Self {
        Self::of(&tracing::Span::current())
    }

    /// The context of `span`, to hand on as its child's parent (empty when no OpenTelemetry
    /// layer is installed or the span is disabled).
    pub fn of(span: &tracing::Span) -> Self {
        let cx = span.context();
        let mut carrier: HashMap<String, String> = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
        Self {
            traceparent: carrier.remove(TRACEPARENT).filter(|s| !s.is_empty()),
            tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
        }
    }

    /// Reads the context from AMQP message headers.
    pub fn from_headers(headers: Option<&FieldTable>) -> Self {
        let get = |key: &str| {
            headers.and_then(|h| h.inner().get(key)).and_then(|v| match v {
                AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
        };
        Self { traceparent: get(TRACEPARENT), tracestate: get(TRACESTATE) }
    }

    /// Writes the context into AMQP message headers.
    pub fn write_headers(&self, headers: &mut FieldTable) {
        if let Some(tp) = &self.traceparent {
            headers.insert(TRACEPARENT.into(), AMQPValue::LongString(tp.clone().into()));
        }
        if let Some(ts) = &self.tracestate {
            headers.insert(TRACESTATE.into(), AMQPValue::LongString(ts.clone().into()));
        }
    }

    /// Reads the context from HTTP headers (a gRPC call's metadata).
    pub fn from_http_headers(headers: &tonic::codegen::http::HeaderMap) -> Self {
        let get = |key: &str| headers.get(key).and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty()).map(str::to_owned);
        Self { traceparent: get(TRACEPARENT), tracestate: get(TRACESTATE) }
    }

    /// Makes this context the parent of `span`, continuing the sender's trace.
    pub fn set_as_parent_of(&self, span: &tracing::Span) {
        let Some(tp) = &self.traceparent else { return };
        let mut carrier: HashMap<String, String> = HashMap::new();
        carrier.insert(TRACEPARENT.into(), tp.clone());
        if let Some(ts) = &self.tracestate {
            carrier.insert(TRACESTATE.into(), ts.clone());
        }
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        if let Err(e) = span.set_parent(parent) {
            tracing::debug!(error = %e, "could not continue the sender's trace");
        }
    }

    /// The 32-hex-digit trace id inside `traceparent`, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|tp| tp.split('-').nth(1))
    }
}

/// The span of one gRPC call (`Server::trace_fn`): named as OpenTelemetry's RPC conventions name
/// it, `<package.Service>/<Method>` (e.g. `duijie.v1.ReferralsService/SubmitReferral`), with
/// `rpc.system`, `rpc.service`, `rpc.method`, and `case_id` once the handler knows the case
/// ([`record_case_id`]). It continues the caller's trace when the call carries a `traceparent`
/// header, so a client that traces sees the bus's spans under its own.
pub fn grpc_span(req: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.call",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        case_id = tracing::field::Empty,
    );
    W3cContext::from_http_headers(req.headers()).set_as_parent_of(&span);
    span
}

/// Notes the case a call is about on the call's span ([`grpc_span`]), so its trace can be found
/// by case. Does nothing outside a call's span.
pub fn record_case_id(case_id: impl std::fmt::Display) {
    tracing::Span::current().record("case_id", tracing::field::display(case_id));
}
