//! The span of one input record: continues the trace of the record's `traceparent` (or starts one,
//! sampled by the configured ratio), carries the user, the fences matched and the outcome, and is the
//! parent of what the record causes (outputs, dead letter, eligibility write).

use opentelemetry::trace::{SpanContext, TraceContextExt as _, Tracer as _};
use opentelemetry::{Array, Context, StringValue, Value};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};

use crate::otel::{self, KeyValue, Span as _, SpanKind, Status, Tracer};
use crate::promo::Outcome;

pub(super) struct RecordTrace {
    span: opentelemetry_sdk::trace::Span,
    /// The record's incoming trace context (empty without a `traceparent`); the span's own context is
    /// built from it only when something needs it (outputs are rare next to records).
    parent: Context,
}

impl RecordTrace {
    /// `name` is `process <topic>`, made once by the processor. At a low sampling ratio most spans do
    /// not record: they are started bare, and the attributes are only built for the ones that do (the
    /// pipeline benchmark measured the eager version at a third of the throughput at 1%).
    pub(super) fn start(
        tracer: &Tracer,
        name: &'static str,
        message: &BorrowedMessage<'_>,
    ) -> Self {
        let parent = otel::context_from_kafka(message.headers());
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
        Self { span, parent }
    }

    /// The span as a parent, for the headers of what the record causes.
    fn context(&self) -> Context {
        self.parent
            .with_remote_span_context(self.span.span_context().clone())
    }

    pub(super) fn decoded(&mut self, user_id: &str) {
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("enduser.id", user_id.to_owned()));
            self.span.add_event("decoded", Vec::new());
        }
    }

    pub(super) fn dead_lettered(&mut self, code: &'static str, reason: &str) {
        if self.span.is_recording() {
            self.span.add_event(
                "dead-lettered",
                vec![
                    KeyValue::new("geopromo.dead_letter.code", code),
                    KeyValue::new("geopromo.dead_letter.reason", reason.to_owned()),
                ],
            );
            self.span.set_status(Status::error(reason.to_owned()));
        }
    }

    pub(super) fn decided<'a>(
        &mut self,
        outcome: Outcome,
        fences: impl Iterator<Item = &'a str>,
        outputs: usize,
    ) {
        if !self.span.is_recording() {
            return;
        }
        let fences: Vec<StringValue> = fences.map(|f| StringValue::from(f.to_owned())).collect();
        let outcome = match outcome {
            Outcome::Applied => "applied",
            Outcome::IgnoredInaccurate => "ignored_inaccurate",
            Outcome::IgnoredLate => "ignored_late",
        };
        self.span.add_event(
            "matched",
            vec![KeyValue::new("geopromo.fences.count", fences.len() as i64)],
        );
        self.span.add_event(
            "rules",
            vec![
                KeyValue::new("geopromo.outcome", outcome),
                KeyValue::new("geopromo.outputs", outputs as i64),
            ],
        );
        self.span.set_attribute(KeyValue::new(
            "geopromo.fences",
            Value::Array(Array::String(fences)),
        ));
        self.span
            .set_attribute(KeyValue::new("geopromo.outcome", outcome));
        self.span
            .set_attribute(KeyValue::new("geopromo.outputs", outputs as i64));
    }

    /// `headers` with this record's `traceparent`.
    pub(super) fn headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        otel::with_trace_headers(headers, &self.context())
    }

    pub(super) fn span_context(&self) -> SpanContext {
        self.span.span_context().clone()
    }
}
