//! What the loop does with each input record: notice position jumps, hand it to its evaluation worker,
//! produce what was decided (outputs or a dead letter), and write changed users to the changelog at
//! checkpoints.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::evaluate::{Batch, Record, Verdict};
use super::trace::RecordTrace;
use super::{Core, SAMPLE_EVERY};
use crate::promo::{DecodeError, EpochMs, Outcome, TransitionKind};
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
        let expected = self
            .dispatch
            .next_offset(partition)
            .or_else(|| self.progress.expected(partition));
        let Some(expected) = expected else {
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

    /// Takes what either queue gave: a record is checked against its partition's position and handed
    /// over (`Ok(true)`); the end of a partition is nothing, other consumer errors are logged.
    pub(super) fn take<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        polled: Result<&impl Message<Headers = BorrowedHeaders>, KafkaError>,
    ) -> Result<bool, StreamError> {
        match polled {
            Ok(record) => {
                self.check_position(consumer, record.partition(), record.offset());
                self.accept(record).map(|()| true)
            }
            Err(KafkaError::PartitionEOF(_)) => Ok(false),
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                Ok(false)
            }
        }
    }

    /// Hands a polled record to its partition's evaluation worker.
    pub(super) fn accept(
        &mut self,
        message: &impl Message<Headers = BorrowedHeaders>,
    ) -> Result<(), StreamError> {
        if !self.progress.owns(message.partition()) {
            // Fetched before a revoke took effect; another member owns it now.
            return Ok(());
        }
        self.metrics.consumed.inc();
        self.report.consumed += 1;
        let sampled = self.report.consumed % SAMPLE_EVERY == 0;
        let trace = self
            .tracer
            .map(|tracer| RecordTrace::start(tracer, self.trace_name, message));
        self.dispatch.push(message, sampled, trace)
    }

    /// Produces the results of every evaluated batch that is back (with `wait`: of every batch handed
    /// over, waiting for them). A failure leaves nothing of later records to be applied: what follows
    /// the failed record is read again from the last checkpoint.
    pub(super) fn apply_finished(&mut self, wait: bool) -> Result<(), StreamError> {
        if wait {
            self.dispatch.send_pending()?;
        }
        while let Some(batch) = self.dispatch.finished(wait)? {
            let applied = self.apply(&batch);
            self.dispatch.recycle(batch);
            if let Err(error) = applied {
                // Later records must not move any position past the failed one. Their users were
                // decided already, so from here on the users are ahead of the positions: nothing more
                // may be checkpointed, and the processor stops (a restart replays from the last commit).
                self.dispatch.discard()?;
                self.diverged = true;
                self.fatal.get_or_insert(StreamError::Fatal(format!(
                    "producing a decided record failed: {}",
                    crate::error::error_chain(&error)
                )));
                return Err(error);
            }
        }
        Ok(())
    }

    /// Produces the outputs (or dead letters) of one evaluated batch, in order, and moves the positions.
    /// Every record here was owned when accepted, and still is: a revoke applies (or, when the assignment
    /// is lost, discards) everything in flight before its partitions go.
    fn apply(&mut self, batch: &Batch) -> Result<(), StreamError> {
        for (record, verdict) in batch.records.iter().zip(&batch.verdicts) {
            let (partition, offset) = (record.partition, record.offset);
            let started = record.sampled.then(Instant::now);
            match verdict {
                Verdict::Skipped => continue,
                Verdict::DeadLetter(error) => self.dead_letter(batch, record, error)?,
                Verdict::Decided {
                    outcome,
                    matched_any,
                    outputs,
                } => {
                    match outcome {
                        Outcome::IgnoredInaccurate => {
                            self.metrics.ignored_inaccurate.inc();
                        }
                        Outcome::IgnoredLate => {
                            self.metrics.ignored_late.inc();
                        }
                        Outcome::Applied if *matched_any => {
                            self.metrics.matched.inc();
                        }
                        Outcome::Applied => {}
                    }
                    if !outputs.is_empty() {
                        self.emit(batch, record, outputs.clone())?;
                    }
                }
            }
            if let Some(started) = started {
                self.metrics
                    .produce_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let Some(created) = record.timestamp_ms {
                    self.metrics
                        .event_age_seconds
                        .observe((EpochMs::now().as_millis() - created).max(0) as f64 / 1000.0);
                }
            }
            self.progress.processed(partition, offset);
        }
        Ok(())
    }

    /// Produces the output events of one input record, keyed by its user (the record's key: decoding
    /// refuses a key that differs from `user_id`). The user's new state reaches the changelog at the next
    /// checkpoint ([`Core::encode_states`]).
    fn emit(
        &mut self,
        batch: &Batch,
        record: &Record,
        outputs: std::ops::Range<usize>,
    ) -> Result<(), StreamError> {
        let source = Source {
            partition: record.partition,
            offset: record.offset,
        };
        let user_id = batch.key(record).unwrap_or_default();
        for index in outputs {
            let output = &batch.outputs[index];
            let mut produced = BaseRecord::with_opaque_to(&self.settings.output_topic, 0)
                .key(user_id)
                .payload(batch.encoded(index));
            if let Some(trace) = &record.trace {
                produced = produced.headers(trace.headers(OwnedHeaders::new()));
            }
            self.producer.send(produced, source)?;
            if let Some(hook) = &self.on_emit {
                hook(output, record.trace.as_ref().map(RecordTrace::span_context));
            }
            match output.kind {
                TransitionKind::Enter => self.metrics.emitted_enter.inc(),
                TransitionKind::Exit => self.metrics.emitted_exit.inc(),
            };
            self.report.emitted += 1;
        }
        Ok(())
    }

    /// Encodes the state of every user changed since the last checkpoint for the changelog, so that a
    /// restore at the offsets this checkpoint commits finds exactly the state the run had there. They
    /// are produced by [`Core::write_states`], at once or over the next loop turns.
    pub(super) fn encode_states(&mut self) {
        for mut shard in self.dispatch.shards() {
            for (&partition, users) in shard.iter_mut() {
                for (user_id, user) in users.iter_mut() {
                    if let Some(offset) = user.unflushed_offset.take() {
                        self.states.push(partition, offset, user_id, &user.state);
                    }
                }
            }
        }
    }

    /// Produces up to `limit` of the encoded state records; once none is left, seals the positions
    /// staged for them.
    pub(super) fn write_states(&mut self, limit: usize) -> Result<(), StreamError> {
        // One create time for the whole flush, given to librdkafka: left to it, it reads the wall clock
        // for every record, and a flush writes one per user a point was applied to.
        let written_at = EpochMs::now().as_millis();
        for _ in 0..limit {
            let Some((source, key, payload)) = self.states.next() else {
                break;
            };
            let record =
                BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.settings.state_topic, 0)
                    .key(key)
                    .partition(source.partition)
                    .timestamp(written_at)
                    .payload(payload);
            self.producer.send(record, source)?;
        }
        if self.states.is_empty() {
            self.states.clear();
            self.progress.seal(self.producer.next_sequence());
        }
        Ok(())
    }

    /// Sends the original record to the dead-letter topic with the reason and its origin in headers
    /// (cut to fit when it is too large for a record: a dead letter is always deliverable).
    fn dead_letter(
        &mut self,
        batch: &Batch,
        record: &Record,
        error: &DecodeError,
    ) -> Result<(), StreamError> {
        let origin = Origin {
            topic: &self.settings.input_topic,
            partition: record.partition,
            offset: record.offset,
        };
        let letter = DeadLetter::new(
            batch.key(record),
            batch.payload(record),
            self.dead_letter_limit,
        );
        let mut headers = dead_letter_headers(error, origin, &letter);
        if let Some(trace) = &record.trace {
            headers = trace.headers(headers);
        }
        let mut produced =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.settings.dlq_topic, 0)
                .headers(headers);
        if let Some(key) = letter.key {
            produced = produced.key(key);
        }
        if let Some(payload) = letter.payload {
            produced = produced.payload(payload);
        }
        let source = Source {
            partition: origin.partition,
            offset: origin.offset,
        };
        self.producer.send(produced, source)?;
        self.metrics.dead_lettered(error.code());
        self.report.dead_lettered += 1;
        tracing::debug!(code = error.code(), reason = %error, partition = origin.partition, offset = origin.offset, truncated = letter.truncated, "dead-lettered");
        Ok(())
    }
}

/// A checkpoint's state records, encoded at once while the workers wait and produced afterwards, a
/// slice per loop turn: producing is two thirds of a flush (one Kafka record per changed user), and
/// done inline it stopped the loop for 130–180 ms a checkpoint in `benches/pipeline.rs` (100 k users).
#[derive(Default)]
pub(super) struct EncodedStates {
    /// Each record's key then value.
    bytes: Vec<u8>,
    /// Per record: its partition and input offset, and where its key and its value end in `bytes`.
    records: Vec<(Source, usize, usize)>,
    /// Records before this one are produced.
    sent: usize,
}

impl EncodedStates {
    fn push(
        &mut self,
        partition: i32,
        offset: i64,
        user_id: &str,
        state: &crate::promo::UserState,
    ) {
        self.bytes.extend_from_slice(user_id.as_bytes());
        let key_end = self.bytes.len();
        changelog::encode_state(&mut self.bytes, offset, state);
        self.records
            .push((Source { partition, offset }, key_end, self.bytes.len()));
    }

    /// The next record to produce: its origin, key and value.
    fn next(&mut self) -> Option<(Source, &[u8], &[u8])> {
        let &(source, key_end, end) = self.records.get(self.sent)?;
        let start = self.sent.checked_sub(1).map_or(0, |i| self.records[i].2);
        self.sent += 1;
        Some((
            source,
            &self.bytes[start..key_end],
            &self.bytes[key_end..end],
        ))
    }

    /// Every record is produced.
    pub fn is_empty(&self) -> bool {
        self.sent == self.records.len()
    }

    /// Forgets every record, produced or not (after they are all produced, or on a rewind).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
        self.sent = 0;
    }
}
