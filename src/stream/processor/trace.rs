//! The span of one input record: continues the trace of the record's `traceparent` (or starts one,
//! sampled by the configured ratio), carries the user, the fences matched and the outcome, and is the
//! parent of what the record causes (outputs, dead letter, eligibility write).

use opentelemetry::trace::{SpanContext, TraceContextExt as _, Tracer as _};
use opentelemetry::{Array, Context, StringValue, Value};
use rdkafka::message::{BorrowedHeaders, Message, OwnedHeaders};

use crate::otel::{self, KeyValue, Span as _, SpanKind, Status, Tracer};
use crate::promo::Outcome;

pub(super) struct RecordTrace {
    /// `None` for a root the sampler drops: no span is started at all.
    span: Option<opentelemetry_sdk::trace::Span>,
    /// The record's incoming trace context (empty without a `traceparent`); the span's own context is
    /// built from it only when something needs it (outputs are rare next to records).
    parent: Context,
    /// The trace id of an unsampled root; its (not-sampled) span context is only made when an output
    /// needs a `traceparent`, which few records do.
    unsampled: Option<opentelemetry::trace::TraceId>,
}

impl RecordTrace {
    /// `name` is `process <topic>`, made once by the processor. At a low sampling ratio most records
    /// are not sampled: for those without a parent, the decision is made first and no span is started;
    /// attributes are only built for spans that record (the pipeline benchmark measured the eager
    /// version at two thirds of the untraced throughput at 1%).
    pub(super) fn start(
        tracer: &Tracer,
        name: &'static str,
        message: &impl Message<Headers = BorrowedHeaders>,
    ) -> Self {
        let parent = otel::context_from_kafka(message.headers());
        if !parent.span().span_context().is_valid() {
            // When sampled, the span started below gets this trace id (see `otel::root_decision`).
            let (trace_id, sampled) = otel::root_decision();
            if !sampled {
                return Self {
                    span: None,
                    parent,
                    unsampled: Some(trace_id),
                };
            }
        }
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Consumer)
            .start_with_context(tracer, &parent);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", message.topic().to_owned()),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    message.partition().to_string(),
                ),
                KeyValue::new("messaging.kafka.offset", message.offset()),
            ]);
        }
        Self {
            span: Some(span),
            parent,
            unsampled: None,
        }
    }

    /// The span, when it records.
    fn recording(&mut self) -> Option<&mut opentelemetry_sdk::trace::Span> {
        self.span.as_mut().filter(|span| span.is_recording())
    }

    /// The span as a parent, for the headers of what the record causes.
    fn context(&self) -> Context {
        self.parent.with_remote_span_context(self.span_context())
    }

    pub(super) fn decoded(&mut self, user_id: &str) {
        if let Some(span) = self.recording() {
            span.set_attribute(KeyValue::new("enduser.id", user_id.to_owned()));
            span.add_event("decoded", Vec::new());
        }
    }

    pub(super) fn dead_lettered(&mut self, code: &'static str, reason: &str) {
        if let Some(span) = self.recording() {
            span.add_event(
                "dead-lettered",
                vec![
                    KeyValue::new("geopromo.dead_letter.code", code),
                    KeyValue::new("geopromo.dead_letter.reason", reason.to_owned()),
                ],
            );
            span.set_status(Status::error(reason.to_owned()));
        }
    }

    pub(super) fn decided<'a>(
        &mut self,
        outcome: Outcome,
        fences: impl Iterator<Item = &'a str>,
        outputs: usize,
    ) {
        let Some(span) = self.recording() else {
            return;
        };
        let fences: Vec<StringValue> = fences.map(|f| StringValue::from(f.to_owned())).collect();
        let outcome = match outcome {
            Outcome::Applied => "applied",
            Outcome::IgnoredInaccurate => "ignored_inaccurate",
            Outcome::IgnoredLate => "ignored_late",
        };
        span.add_event(
            "matched",
            vec![KeyValue::new("geopromo.fences.count", fences.len() as i64)],
        );
        span.add_event(
            "rules",
            vec![
                KeyValue::new("geopromo.outcome", outcome),
                KeyValue::new("geopromo.outputs", outputs as i64),
            ],
        );
        span.set_attribute(KeyValue::new(
            "geopromo.fences",
            Value::Array(Array::String(fences)),
        ));
        span.set_attribute(KeyValue::new("geopromo.outcome", outcome));
        span.set_attribute(KeyValue::new("geopromo.outputs", outputs as i64));
    }

    /// `headers` with this record's `traceparent`.
    pub(super) fn headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        otel::with_trace_headers(headers, &self.context())
    }

    pub(super) fn span_context(&self) -> SpanContext {
        match (&self.span, &self.unsampled) {
            (Some(span), _) => span.span_context().clone(),
            (None, Some(trace_id)) => otel::unsampled_context(*trace_id),
            (None, None) => SpanContext::empty_context(),
        }
    }
}
