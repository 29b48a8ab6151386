//! Traces through the queue, with W3C trace context. Every message carries a
//! `traceparent` (and a `tracestate` when there is one): a new trace per
//! webhook, or the trace a trusted proxy (`ingress.trusted_proxies`) started,
//! so that a consumer continues it (`hookrelay::consumer` does). The sender
//! itself is not trusted with it: it would only name traces nobody has.
//!
//! With `telemetry.otlp_endpoint` set, the relay also records its own spans
//! and exports them over OTLP/HTTP (JSON), in batches, from the SDK's own
//! thread: the request (a server span), the publish (a producer span with
//! OpenTelemetry's messaging attributes for RabbitMQ, whose context is the
//! `traceparent` the message carries) and, when RabbitMQ could not take it,
//! the spool write. Unset, no span is made: the message's `traceparent` is
//! written from two random ids, flagged "sampled" so that consumers (whose
//! samplers follow their parent's flag) record their side; the relay's span
//! it names is then absent from the backend, its trace id present.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use tracing::{info, warn};
use uuid::Uuid;

use crate::broker::Topology;
use crate::config::Settings;
use crate::delivery::{Delivered, DeliveryError};
use crate::metrics::Metrics;
use crate::wire::envelope::{Kind, TraceContext};
use crate::wire::headers::{TRACEPARENT, TRACESTATE};

/// How long a shutdown waits for the last spans to be exported.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The relay's tracing: what every webhook's trace is made with.
pub struct Traces {
    export: Option<Export>,
    ids: RandomIdGenerator,
    propagator: TraceContextPropagator,
    topology: Topology,
    /// `http.route` of the server spans: the webhook path, never its token.
    route: String,
}

struct Export {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Builds the OTLP exporter when `telemetry.otlp_endpoint` is set.
    pub(crate) fn new(
        settings: &Settings,
        topology: Topology,
        metrics: Metrics,
    ) -> anyhow::Result<Traces> {
        let export = match &settings.telemetry.otlp_endpoint {
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpJson)
                    .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                    .build()
                    .map_err(|err| anyhow::anyhow!("telemetry.otlp_endpoint {endpoint}: {err}"))?;
                let resource = Resource::builder()
                    .with_service_name("hookrelay")
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build();
                let exporter = Watched {
                    inner: exporter,
                    endpoint: endpoint.clone(),
                    metrics,
                    failing: AtomicBool::new(false),
                };
                let provider = SdkTracerProvider::builder()
                    .with_resource(resource)
                    .with_batch_exporter(exporter)
                    .build();
                let tracer = provider.tracer("hookrelay");
                Some(Export { provider, tracer })
            }
            None => None,
        };
        Ok(Traces {
            export,
            ids: RandomIdGenerator::default(),
            propagator: TraceContextPropagator::new(),
            topology,
            route: settings.server.webhook_path.clone(),
        })
    }

    /// A webhook's trace, from its handler's start: under `parent` (a trusted
    /// proxy's trace context), else a new trace.
    pub fn webhook(&self, parent: Option<&TraceContext>, started: SystemTime) -> WebhookTrace<'_> {
        let parent = parent.map_or_else(Context::new, |trace| self.extract(trace));
        let server = self.export.as_ref().map(|export| {
            let span = export
                .tracer
                .span_builder(format!("POST {}", self.route))
                .with_kind(SpanKind::Server)
                .with_start_time(started)
                .with_attributes([
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("http.route", self.route.clone()),
                ])
                .start_with_context(&export.tracer, &parent);
            parent.with_span(span)
        });
        WebhookTrace {
            traces: self,
            parent,
            server,
            producer: None,
        }
    }

    /// Exports what is buffered and stops the exporter's thread. Blocks: call
    /// it off the async runtime.
    pub fn shutdown(&self) {
        if let Some(export) = &self.export {
            let _ = export.provider.shutdown_with_timeout(SHUTDOWN_WAIT);
        }
    }

    fn extract(&self, trace: &TraceContext) -> Context {
        self.propagator.extract(&trace.carrier())
    }

    fn inject(&self, span: &SpanContext) -> TraceContext {
        inject(&self.propagator, span)
    }
}

/// A new trace, flagged sampled and recorded by no span of the relay's: for
/// an event the relay publishes outside any request (a body an older relay
/// quarantined without a trace context, redriven now), so that it carries a
/// `traceparent` as every event does.
pub fn new_trace() -> TraceContext {
    let ids = RandomIdGenerator::default();
    let span = SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        TraceFlags::SAMPLED,
        false,
        Default::default(),
    );
    inject(&TraceContextPropagator::new(), &span)
}

fn inject(propagator: &TraceContextPropagator, span: &SpanContext) -> TraceContext {
    let context = Context::new().with_remote_span_context(span.clone());
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    propagator.inject_context(&context, &mut carrier);
    TraceContext {
        traceparent: carrier.remove(TRACEPARENT).unwrap_or_default(),
        tracestate: carrier.remove(TRACESTATE).filter(|state| !state.is_empty()),
    }
}

/// The OTLP exporter, watched: every export counted by result in
/// `hookrelay_trace_exports_total`, and a failure said once, until an export
/// succeeds again (the SDK itself would drop the batch without a word).
struct Watched<E> {
    inner: E,
    endpoint: String,
    metrics: Metrics,
    failing: AtomicBool,
}

impl<E> fmt::Debug for Watched<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.metrics.trace_export(result.is_ok());
        let was_failing = self.failing.swap(result.is_err(), Ordering::Relaxed);
        match (&result, was_failing) {
            (Err(err), false) => warn!(
                endpoint = %self.endpoint,
                error = %err,
                spans,
                "cannot export traces to telemetry.otlp_endpoint: spans are dropped until it \
                 answers (webhooks are not affected; hookrelay_trace_exports_total counts)"
            ),
            (Ok(()), true) => info!(endpoint = %self.endpoint, "traces are exported again"),
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// One webhook's spans while it is handled.
pub struct WebhookTrace<'a> {
    traces: &'a Traces,
    /// The trusted proxy's trace, or none.
    parent: Context,
    /// The server span, when exporting.
    server: Option<Context>,
    /// The publish's span, between [`WebhookTrace::publish`] and
    /// [`PublishSpan::delivered`].
    producer: Option<Context>,
}

/// The publish's span, taken from a [`WebhookTrace`] by the task that
/// stores the message (see [`crate::ingress`]'s copies): it ends when the
/// message is stored, whatever became of the request.
#[derive(Default)]
pub struct PublishSpan {
    producer: Option<Context>,
    server: Option<Context>,
}

impl PublishSpan {
    /// Ends the publish's span with where the message is now, and records
    /// the spool write, if there was one.
    pub fn delivered(self, traces: &Traces, result: Result<&Delivered, &DeliveryError>) {
        let Some(producer) = self.producer else {
            return;
        };
        let span = producer.span();
        let (delivered, write) = match result {
            Ok(Delivered::Published) => ("published", None),
            Ok(Delivered::Spooled { write, .. }) => ("spooled", Some(*write)),
            Ok(Delivered::Refused { why, write }) => {
                span.set_status(Status::error(why.to_string()));
                ("refused", Some(*write))
            }
            Err(err) => {
                span.set_status(Status::error(err.to_string()));
                ("not stored", None)
            }
        };
        span.set_attribute(KeyValue::new("hookrelay.delivered", delivered));
        span.end();
        if let (Some(write), Some(export), Some(server)) = (write, &traces.export, &self.server) {
            let mut span = export
                .tracer
                .span_builder("spool write")
                .with_kind(SpanKind::Internal)
                .with_start_time(write.started)
                .start_with_context(&export.tracer, server);
            span.end_with_timestamp(write.started + write.took);
        }
    }
}

impl WebhookTrace<'_> {
    /// The trace context for the message about to be delivered, and the
    /// publish's span when exporting.
    /// `kind` is asked for only when exporting (the span names where the
    /// message goes): building a routing key costs an allocation.
    pub fn publish(&mut self, kind: impl FnOnce() -> Kind, message_id: Uuid) -> TraceContext {
        let traces = self.traces;
        let (Some(export), Some(server)) = (&traces.export, &self.server) else {
            return traces.inject(&self.unrecorded());
        };
        let kind = kind();
        let address = traces.topology.address(&kind);
        let span = export
            .tracer
            .span_builder(format!("publish {}", address.exchange))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "publish"),
                KeyValue::new("messaging.destination.name", address.exchange.to_owned()),
                KeyValue::new(
                    "messaging.rabbitmq.destination.routing_key",
                    address.routing_key.to_owned(),
                ),
                KeyValue::new("messaging.message.id", message_id.to_string()),
            ])
            .start_with_context(&export.tracer, server);
        let producer = server.with_span(span);
        let trace = traces.inject(&producer.span().span_context().clone());
        self.producer = Some(producer);
        trace
    }

    /// The publish's span, to end once the message is stored.
    pub fn take_publish(&mut self) -> PublishSpan {
        PublishSpan {
            producer: self.producer.take(),
            server: self.server.clone(),
        }
    }

    /// Ends the publish's span with where the message is now.
    pub fn delivered(&mut self, result: Result<&Delivered, &DeliveryError>) {
        self.take_publish().delivered(self.traces, result);
    }

    /// Ends the request's span with the answer.
    pub fn end(self, status: u16, outcome: &'static str) {
        let Some(server) = self.server else {
            return;
        };
        let span = server.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        span.set_attribute(KeyValue::new("hookrelay.outcome", outcome));
        if status >= 500 {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }

    /// The publish's context when nothing is recorded: the trusted parent's
    /// trace and flags, or a new trace flagged sampled (for the consumers'
    /// sake, see the module's doc); a new span id either way.
    fn unrecorded(&self) -> SpanContext {
        let ids = &self.traces.ids;
        let parent = self.parent.span();
        let parent = parent.span_context();
        let (trace_id, flags, state) = if parent.is_valid() {
            (
                parent.trace_id(),
                parent.trace_flags(),
                parent.trace_state().clone(),
            )
        } else {
            (ids.new_trace_id(), TraceFlags::SAMPLED, Default::default())
        };
        SpanContext::new(trace_id, ids.new_span_id(), flags, false, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn traces() -> Traces {
        let env = [("HOOKRELAY__INGRESS__CLIENT_IDS", "app-1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let settings = Settings::load_with_env(None, env).unwrap();
        Traces::new(&settings, Topology::of(&settings), Metrics::new()).unwrap()
    }

    fn kind() -> Kind {
        Kind::Event("sync.account".parse().unwrap())
    }

    #[test]
    fn without_a_parent_each_webhook_starts_a_new_trace_for_consumers_to_record() {
        let traces = traces();
        let first = traces
            .webhook(None, SystemTime::now())
            .publish(kind, Uuid::now_v7());
        let second = traces
            .webhook(None, SystemTime::now())
            .publish(kind, Uuid::now_v7());
        let parts: Vec<&str> = first.traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{first:?}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01", "sampled: consumers record their spans");
        assert_ne!(first.traceparent[3..35], second.traceparent[3..35]);
        assert_eq!(first.tracestate, None);
    }

    #[test]
    fn a_trusted_parent_is_continued_with_its_flags_and_state() {
        let traces = traces();
        let parent = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: Some("vendor=value".to_owned()),
        };
        let trace = traces
            .webhook(Some(&parent), SystemTime::now())
            .publish(kind, Uuid::now_v7());
        assert!(
            trace
                .traceparent
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{trace:?}"
        );
        assert!(trace.traceparent.ends_with("-01"));
        assert!(
            !trace.traceparent.contains("00f067aa0ba902b7"),
            "a span of its own"
        );
        assert_eq!(trace.tracestate.as_deref(), Some("vendor=value"));
    }

    #[test]
    fn a_malformed_parent_is_ignored() {
        let traces = traces();
        let parent = TraceContext {
            traceparent: "00-not-a-trace-01".to_owned(),
            tracestate: None,
        };
        let trace = traces
            .webhook(Some(&parent), SystemTime::now())
            .publish(kind, Uuid::now_v7());
        assert_eq!(trace.traceparent.len(), 55, "{trace:?}");
        assert!(!trace.traceparent.contains("not-a-trace"));
    }
}
