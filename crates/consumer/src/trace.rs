//! The consumer's side of the trace the relay started.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use hookrelay_wire::envelope::TraceContext;

/// A `process <queue>` span (kind consumer) whose parent is the publish the
/// message names, made by the global tracer provider, the app's own (a no-op
/// one until the app installs one: the context still carries the trace on).
/// Without a `traceparent`, a new trace.
pub(crate) fn consumer_context(
    trace: Option<&TraceContext>,
    queue: &str,
    routing_key: &str,
    message_id: &str,
) -> Context {
    let parent = trace.map_or_else(Context::new, |trace| {
        TraceContextPropagator::new().extract(&trace.carrier())
    });
    let tracer = opentelemetry::global::tracer("hookrelay::consumer");
    let span = tracer
        .span_builder(format!("process {queue}"))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", queue.to_owned()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                routing_key.to_owned(),
            ),
            KeyValue::new("messaging.message.id", message_id.to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}
