//! What the loop does with each input record: notice position jumps, decode, decide, produce the outputs
//! (or a dead letter), and write changed users to the changelog at checkpoints.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::trace::RecordTrace;
use super::{Core, SAMPLE_EVERY};
use crate::promo::timestamp::SystemClock;
use crate::promo::{
    decode_gps_event, DecisionTime, DecodeError, EpochMs, GpsEvent, Outcome, TransitionKind,
};
use crate::stream::changelog;
use crate::stream::dead_letter::{dead_letter_headers, DeadLetter, Origin};
use crate::stream::error::StreamError;
use crate::stream::output::Source;

impl Core {
    /// Notices when a partition's position jumped over records: the consumer fell out of the retained
    /// log and librdkafka reset it (`auto.offset.reset`). The skipped records are gone; say so loudly.
    /// A gap of one is a transaction marker, not data.
    pub(super) fn check_position<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        offset: i64,
    ) {
        let Some(expected) = self.progress.expected(partition) else {
            return;
        };
        if offset <= expected + 1 {
            return;
        }
        let low = consumer
            .fetch_watermarks(
                &self.settings.input_topic,
                partition,
                Duration::from_secs(5),
            )
            .map(|(low, _)| low);
        match low {
            Ok(low) if low <= expected => {
                // Aborted transactions or compaction, not lost data.
                tracing::debug!(
                    partition,
                    expected,
                    offset,
                    "offset gap within the retained log"
                );
            }
            _ => {
                let skipped = offset - expected;
                self.metrics.offset_resets.inc();
                self.metrics.offsets_skipped.inc_by(skipped as u64);
                tracing::error!(
                    topic = %self.settings.input_topic,
                    partition,
                    position = expected,
                    resumed_at = offset,
                    skipped,
                    low_watermark = low.ok(),
                    "OFFSET RESET: the position fell out of the retained log; {skipped} input records were \
                     never processed (the consumer is too far behind the broker's retention)"
                );
            }
        }
    }

    pub(super) fn process(&mut self, message: &BorrowedMessage<'_>) -> Result<(), StreamError> {
        let partition = message.partition();
        let offset = message.offset();
        if !self.progress.owns(partition) {
            // Fetched before a revoke took effect; another member owns it now.
            return Ok(());
        }
        self.metrics.consumed.inc();
        self.report.consumed += 1;
        let sampled = self.report.consumed % SAMPLE_EVERY == 0;
        let started = sampled.then(Instant::now);
        let mut trace = self
            .tracer
            .map(|tracer| RecordTrace::start(tracer, self.trace_name, message));
        let payload = message.payload().unwrap_or_default();
        let decoded = decode_gps_event(message.key(), payload, self.settings.max_event_bytes);
        let decoded_at = sampled.then(Instant::now);
        match decoded {
            Err(error) => {
                if let Some(trace) = &mut trace {
                    trace.dead_lettered(error.code(), &error.to_string());
                }
                self.dead_letter(message, &error, trace.as_ref())?;
            }
            Ok(event) => {
                if let Some(trace) = &mut trace {
                    trace.decoded(&event.user_id);
                }
                // The record's own timestamp, not the wall clock: a replay after a crash must clamp
                // future-skewed points exactly as the first run did.
                let reference = message
                    .timestamp()
                    .to_millis()
                    .map_or_else(EpochMs::now, EpochMs::from_millis);
                let time = DecisionTime {
                    reference,
                    clock: SystemClock,
                };
                self.outputs.clear();
                // A guard, not an Arc clone: no reference-count traffic per event.
                let decision = {
                    let catalog = self.catalog.load();
                    let Some(users) = self.users.get_mut(&partition) else {
                        return Ok(());
                    };
                    let user = match users.get_mut(&*event.user_id) {
                        Some(user) => user,
                        None => users.entry(event.user_id.as_ref().into()).or_default(),
                    };
                    let decision = catalog.decide(
                        &mut user.state,
                        &event,
                        time,
                        &mut self.scratch,
                        &mut self.outputs,
                    );
                    if decision.outcome == Outcome::Applied {
                        user.unflushed_offset = Some(offset);
                    }
                    if let Some(trace) = &mut trace {
                        trace.decided(
                            decision.outcome,
                            catalog.matched_fence_ids(&self.scratch),
                            self.outputs.len(),
                        );
                    }
                    decision
                };
                let evaluated_at = sampled.then(Instant::now);
                match decision.outcome {
                    Outcome::IgnoredInaccurate => {
                        self.metrics.ignored_inaccurate.inc();
                    }
                    Outcome::IgnoredLate => {
                        self.metrics.ignored_late.inc();
                    }
                    Outcome::Applied if decision.matched_any => {
                        self.metrics.matched.inc();
                    }
                    Outcome::Applied => {}
                }
                if !self.outputs.is_empty() {
                    self.emit(&event, partition, offset, trace.as_ref())?;
                }
                if let (Some(started), Some(decoded_at), Some(evaluated_at)) =
                    (started, decoded_at, evaluated_at)
                {
                    self.metrics
                        .decode_seconds
                        .observe((decoded_at - started).as_secs_f64());
                    self.metrics
                        .evaluate_seconds
                        .observe((evaluated_at - decoded_at).as_secs_f64());
                    self.metrics
                        .produce_seconds
                        .observe(evaluated_at.elapsed().as_secs_f64());
                    if let Some(created) = message.timestamp().to_millis() {
                        self.metrics
                            .event_age_seconds
                            .observe((EpochMs::now().as_millis() - created).max(0) as f64 / 1000.0);
                    }
                }
            }
        }
        self.progress.processed(partition, offset);
        Ok(())
    }

    /// Produces the output events of one input event. The user's new state reaches the changelog at the
    /// next checkpoint ([`Core::flush_state`]).
    fn emit(
        &mut self,
        event: &GpsEvent<'_>,
        partition: i32,
        offset: i64,
        trace: Option<&RecordTrace>,
    ) -> Result<(), StreamError> {
        // Taken and put back, so the vector's capacity is reused for the next event.
        let outputs = std::mem::take(&mut self.outputs);
        for output in &outputs {
            self.buffer.clear();
            // Serializing plain data into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.buffer, output);
            let mut record = BaseRecord::with_opaque_to(&self.settings.output_topic, 0)
                .key(event.user_id.as_bytes())
                .payload(&self.buffer[..]);
            if let Some(trace) = trace {
                record = record.headers(trace.headers(OwnedHeaders::new()));
            }
            self.producer.send(record, Source { partition, offset })?;
            if let Some(hook) = &self.on_emit {
                hook(output, trace.map(RecordTrace::span_context));
            }
            match output.kind {
                TransitionKind::Enter => self.metrics.emitted_enter.inc(),
                TransitionKind::Exit => self.metrics.emitted_exit.inc(),
            };
            self.report.emitted += 1;
        }
        self.outputs = outputs;
        Ok(())
    }

    /// Writes the state of every user changed since the last checkpoint to the changelog, so that a
    /// restore at the offsets this checkpoint commits finds exactly the state the run had there.
    pub(super) fn flush_state(&mut self) -> Result<(), StreamError> {
        for (&partition, users) in &mut self.users {
            for (user_id, user) in users.iter_mut() {
                let Some(offset) = user.unflushed_offset.take() else {
                    continue;
                };
                self.buffer.clear();
                changelog::encode_state(&mut self.buffer, offset, &user.state);
                let record =
                    BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.settings.state_topic, 0)
                        .key(user_id.as_bytes())
                        .partition(partition)
                        .payload(&self.buffer[..]);
                self.producer.send(record, Source { partition, offset })?;
            }
        }
        Ok(())
    }

    /// Sends the original message to the dead-letter topic with the reason and its origin in headers
    /// (cut to fit when it is too large for a record: a dead letter is always deliverable).
    fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        error: &DecodeError,
        trace: Option<&RecordTrace>,
    ) -> Result<(), StreamError> {
        let origin = Origin {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let letter = DeadLetter::new(message.key(), message.payload(), self.dead_letter_limit);
        let mut headers = dead_letter_headers(error, origin, &letter);
        if let Some(trace) = trace {
            headers = trace.headers(headers);
        }
        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.settings.dlq_topic, 0)
                .headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        let source = Source {
            partition: origin.partition,
            offset: origin.offset,
        };
        self.producer.send(record, source)?;
        self.metrics.dead_lettered(error.code());
        self.report.dead_lettered += 1;
        tracing::debug!(code = error.code(), reason = %error, partition = origin.partition, offset = origin.offset, truncated = letter.truncated, "dead-lettered");
        Ok(())
    }
}
