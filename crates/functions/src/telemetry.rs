//! Trace spans across asynchronous hops: the `tracing` span of an invocation takes its
//! OpenTelemetry parent from its first input's `traceparent` and links to the others, and
//! what it produces carries the span's own context. Spans reach a collector only when the
//! server exports them (`--otlp-endpoint`); without an exporter these calls cost little
//! and the ids of produced events come from the broker's random source instead.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use sluice_broker::context::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of Sluice's trace spans. Logs leave it out (`sluice_trace=off`), so unless
/// spans are exported these spans are disabled and cost next to nothing.
pub const TARGET: &str = sluice_broker::context::TRACE_TARGET;

fn span_context(tp: &TraceParent, tracestate: Option<&str>) -> SpanContext {
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from(tp.trace_id),
        SpanId::from(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        state,
    )
}

/// Makes the span a child of the remote span `parent` names.
pub fn set_parent(span: &tracing::Span, parent: &TraceParent, tracestate: Option<&str>) {
    let cx =
        opentelemetry::Context::new().with_remote_span_context(span_context(parent, tracestate));
    // Fails only when the span is already started or has no OpenTelemetry layer.
    let _ = span.set_parent(cx);
}

/// Links the span to other spans: a batch invocation's other inputs.
pub fn add_links(span: &tracing::Span, links: &[TraceParent]) {
    for l in links {
        span.add_link(span_context(l, None));
    }
}

/// The span's own context as a `traceparent`, when spans are being recorded.
pub fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    })
}
