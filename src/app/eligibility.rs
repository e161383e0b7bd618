//! The store's view of who is eligible now, written from the processor's output events.

use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt as _};

use crate::error::error_chain;
use opentelemetry::trace::Tracer as _;

use crate::otel::{KeyValue, Span as _, SpanKind, Status};
use crate::promo::{EligibilityEvent, EpochMs, TransitionKind};
use crate::store::{Eligibility, EligibilityChange, Store};
use crate::stream::processor::EmitHook;

/// Materialises eligibility events in the store, in batches, off the processing thread.
/// Returns the hook to give the processor and the writer task, which ends once the hook is dropped (the
/// processor has stopped) and every change sent through it is written.
pub fn eligibility_writer(store: Store) -> (EmitHook, tokio::task::JoinHandle<()>) {
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<(EligibilityChange, Option<SpanContext>)>(10_000);
    let hook: EmitHook = Box::new(
        move |event: &EligibilityEvent, cause: Option<SpanContext>| {
            let change = match event.kind {
                TransitionKind::Enter => EligibilityChange::Enter(Eligibility {
                    user_id: event.user_id.clone(),
                    promotion_id: event.promotion_id.clone(),
                    fence_id: event.fence_id.clone(),
                    since_ms: event.event_ts.as_millis(),
                    event_id: event.event_id.clone(),
                }),
                TransitionKind::Exit => EligibilityChange::Exit {
                    user_id: event.user_id.clone(),
                    promotion_id: event.promotion_id.clone(),
                },
            };
            // Blocks the processor when the store falls 10k changes behind: backpressure, not loss.
            let _ = sender.blocking_send((change, cause));
        },
    );
    let writer = tokio::spawn(async move {
        let mut received = Vec::with_capacity(500);
        let mut batch = Vec::with_capacity(500);
        while receiver.recv_many(&mut received, 500).await > 0 {
            let started = std::time::SystemTime::now();
            let causes: Vec<SpanContext> = received
                .iter()
                .filter_map(|(_, cause)| cause.clone().filter(SpanContext::is_sampled))
                .collect();
            batch.extend(received.drain(..).map(|(change, _)| change));
            // While the database is unreachable the batch is retried (the bounded channel then holds
            // the processor back): an outage delays the store's view, it does not lose changes.
            let mut wait = Duration::from_millis(100);
            let outcome = loop {
                match store
                    .record_eligibility(&batch, EpochMs::now().as_millis())
                    .await
                {
                    Ok(()) => break Ok(()),
                    Err(error) if error.is_unavailable() => {
                        tracing::warn!(error = %error_chain(&error), changes = batch.len(),
                            "database unavailable; retrying the eligibility batch in {wait:?}");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    Err(error) => {
                        tracing::error!(error = %error_chain(&error), changes = batch.len(),
                            "cannot record eligibility; batch dropped");
                        break Err(error_chain(&error));
                    }
                }
            };
            trace_write(&causes, started, batch.len(), outcome);
            batch.clear();
        }
    });
    (hook, writer)
}

/// One span per traced change, child of the processor span of the record that caused it, covering the
/// batch write it was part of (from `started` until now).
fn trace_write(
    causes: &[SpanContext],
    started: std::time::SystemTime,
    batch: usize,
    outcome: Result<(), String>,
) {
    let Some(tracer) = crate::otel::tracer() else {
        return;
    };
    for cause in causes {
        let parent = opentelemetry::Context::new().with_remote_span_context(cause.clone());
        let mut span = tracer
            .span_builder("record eligibility")
            .with_kind(SpanKind::Client)
            .with_start_time(started)
            .with_attributes([
                KeyValue::new("db.operation.name", "record_eligibility"),
                KeyValue::new("geopromo.batch.size", batch as i64),
            ])
            .start_with_context(tracer, &parent);
        if let Err(error) = &outcome {
            span.set_status(Status::error(error.clone()));
        }
        span.end();
    }
}
