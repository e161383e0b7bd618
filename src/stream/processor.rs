//! The stream processor: consume GPS events → decode → match → promotion rules → produce eligibility events.
//!
//! One thread drives a consumer-group member: it processes messages in the order librdkafka hands them
//! over, so each partition (and so each user) is processed in order. Work in flight is bounded by
//! librdkafka's fetch queue on one side and the producer queue on the other (a full producer queue blocks
//! the loop: backpressure, not an unbounded buffer).
//!
//! Progress is checkpointed every `commit_interval_ms`, on rebalance and on shutdown:
//! - at-least-once: wait until every output, dead letter and state record produced so far is
//!   acknowledged, then commit the input offsets. A failed delivery rewinds to the last checkpoint.
//! - exactly-once: the same records and the input offsets commit in one transaction; an aborted
//!   transaction rewinds to the last checkpoint.
//!
//! Rewinding means seeking each partition back to its last committed offset and reloading its users from
//! the changelog, so the replay decides exactly as the first run did (and produces the same event ids).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Guarantee, KafkaSettings};
use crate::promo::event::{eligibility_event_id, ELIGIBILITY_SCHEMA_VERSION};
use crate::promo::timestamp::{format_rfc3339_ms, now_ms};
use crate::promo::{
    decode_gps_event, DecodeError, EligibilityEvent, GpsEvent, Outcome, Scratch, SharedCatalog,
    Transition, TransitionKind,
};
use crate::stream::changelog::{self, PartitionUsers};
use crate::stream::client::{check_topics, client_config, Role};
use crate::telemetry::PipelineMetrics;

/// Timeout for broker round trips that block the loop (commits, transactions, restores, metadata).
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// Stage timings are taken for 1 event in this many, so that timing does not cost more than the work.
const SAMPLE_EVERY: u64 = 64;

/// Why the processor could not start or had to stop. The cause chain is kept.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create a Kafka client")]
    Client(#[source] KafkaError),
    #[error("cannot reach the Kafka brokers at {brokers} (check kafka.brokers and the security properties)")]
    Unreachable {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "topic {topic:?} does not exist on {brokers}: create it (the state topic with cleanup.policy=compact \
         and as many partitions as the input topic)"
    )]
    MissingTopic { topic: String, brokers: String },
    #[error("state topic {state:?} has {state_partitions} partitions but input topic {input:?} has {input_partitions}; they must match")]
    StatePartitions {
        state: String,
        state_partitions: usize,
        input: String,
        input_partitions: usize,
    },
    #[error("Kafka failed while {context}")]
    Kafka {
        context: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("{0}")]
    Fatal(String),
}

impl StreamError {
    pub(crate) fn kafka(context: &'static str, source: KafkaError) -> Self {
        Self::Kafka { context, source }
    }
}

/// Totals of one run, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessorReport {
    pub consumed: u64,
    pub emitted: u64,
    pub dead_lettered: u64,
    pub checkpoints: u64,
}

/// A configured processor; [`Processor::run`] drives it until `stop` is set.
/// Called with every eligibility event produced (for example to materialise it in the store). Must not
/// block for long: it runs on the processing thread.
pub type EmitHook = Box<dyn Fn(&EligibilityEvent) + Send + Sync>;

pub struct Processor {
    on_emit: Option<EmitHook>,
    settings: KafkaSettings,
    brokers: String,
    transactional_id: Option<String>,
    catalog: Arc<SharedCatalog>,
    metrics: PipelineMetrics,
}

impl Processor {
    #[must_use]
    pub fn new(
        settings: KafkaSettings,
        brokers: impl Into<String>,
        catalog: Arc<SharedCatalog>,
        metrics: PipelineMetrics,
    ) -> Self {
        let transactional_id = settings.transactional_id.clone();
        Self {
            on_emit: None,
            settings,
            brokers: brokers.into(),
            transactional_id,
            catalog,
            metrics,
        }
    }

    /// Calls `hook` with every eligibility event produced.
    #[must_use]
    pub fn on_emit(mut self, hook: EmitHook) -> Self {
        self.on_emit = Some(hook);
        self
    }

    /// The transactional id used in exactly-once mode: unique and stable per instance.
    #[must_use]
    pub fn with_transactional_id(mut self, id: impl Into<String>) -> Self {
        self.transactional_id = Some(id.into());
        self
    }

    /// Runs until `stop` becomes true, then checkpoints and leaves the group. Returns an error for
    /// problems a restart cannot fix by itself being quiet about them (unreachable brokers, missing topics,
    /// a fenced transactional producer).
    pub fn run(mut self, stop: &AtomicBool) -> Result<ProcessorReport, StreamError> {
        let settings = &self.settings;
        let found = check_topics(
            settings,
            &self.brokers,
            &[
                &settings.input_topic,
                &settings.output_topic,
                &settings.dlq_topic,
                &settings.state_topic,
            ],
            BROKER_TIMEOUT,
        )?;
        let (input_partitions, state_partitions) = (found[0].1, found[3].1);
        if state_partitions < input_partitions {
            return Err(StreamError::StatePartitions {
                state: settings.state_topic.clone(),
                state_partitions,
                input: settings.input_topic.clone(),
                input_partitions,
            });
        }

        let producer = self.create_producer()?;
        let core = Arc::new(Mutex::new(Core {
            producer,
            settings: settings.clone(),
            brokers: self.brokers.clone(),
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
            partitions: HashMap::new(),
            dirty: false,
            fatal: None,
            scratch: Scratch::default(),
            transitions: Vec::new(),
            buffer: Vec::new(),
            report: ProcessorReport::default(),
            last_checkpoint: Instant::now(),
            next_sequence: Cell::new(0),
            doomed: Cell::new(false),
            on_emit: self.on_emit.take(),
            pending: VecDeque::new(),
            dead_letter_limit: self.producer_message_limit(),
        }));
        let consumer = self.create_consumer(core.clone())?;
        consumer
            .subscribe(&[&settings.input_topic])
            .map_err(|source| StreamError::kafka("subscribing to the input topic", source))?;
        tracing::info!(
            brokers = %self.brokers,
            input = %settings.input_topic,
            output = %settings.output_topic,
            group = %settings.group_id,
            guarantee = ?settings.guarantee,
            "processor started"
        );

        let interval = Duration::from_millis(settings.commit_interval_ms);
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            if let Some(error) = lock(&core).fatal.take() {
                break Err(error);
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => tracing::warn!(%error, "consumer error"),
                Some(Ok(message)) => {
                    let mut core = lock(&core);
                    core.check_position(&consumer, message.partition(), message.offset());
                    if let Err(error) = core.process(&message) {
                        break Err(error);
                    }
                }
            }
            let mut core = lock(&core);
            if !core.pending.is_empty() {
                if let Err(error) = core.advance(&consumer) {
                    break Err(error);
                }
            }
            if core.doomed.get() || core.last_checkpoint.elapsed() >= interval {
                if let Err(error) = core.checkpoint(&consumer, CommitMode::Async) {
                    break Err(error);
                }
            }
        };
        let final_checkpoint = lock(&core).checkpoint(&consumer, CommitMode::Sync);
        // Leaving the group runs the revoke callback, which checkpoints again (a no-op by now).
        consumer.unsubscribe();
        for _ in 0..10 {
            if consumer.poll(Duration::from_millis(50)).is_none() {
                break;
            }
        }
        drop(consumer);
        let report = lock(&core).report;
        tracing::info!(?report, "processor stopped");
        result.and(final_checkpoint).map(|()| report)
    }

    /// The producer's `message.max.bytes` (librdkafka's default unless configured).
    fn producer_message_limit(&self) -> usize {
        client_config(&self.settings, &self.brokers, Role::Producer)
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1_000_000)
    }

    fn create_producer(&self) -> Result<ThreadedProducer<DeliveryTracker>, StreamError> {
        let mut config = client_config(&self.settings, &self.brokers, Role::Producer);
        let defaults = [
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "100000"),
            ("compression.type", "lz4"),
        ];
        for (key, value) in defaults {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        if self.settings.guarantee == Guarantee::ExactlyOnce {
            let id = self.transactional_id.as_deref().ok_or_else(|| {
                StreamError::Fatal(
                    "exactly_once needs a transactional id unique and stable per instance \
                     (kafka.transactional_id)"
                        .into(),
                )
            })?;
            config.set("transactional.id", id);
        }
        let producer: ThreadedProducer<DeliveryTracker> = config
            .create_with_context(DeliveryTracker::new(self.metrics.clone()))
            .map_err(StreamError::Client)?;
        if self.settings.guarantee == Guarantee::ExactlyOnce {
            producer
                .init_transactions(BROKER_TIMEOUT)
                .map_err(|source| StreamError::kafka("initialising transactions", source))?;
            producer
                .begin_transaction()
                .map_err(|source| StreamError::kafka("beginning a transaction", source))?;
        }
        Ok(producer)
    }

    fn create_consumer(
        &self,
        core: Arc<Mutex<Core>>,
    ) -> Result<BaseConsumer<GroupContext>, StreamError> {
        let mut config = client_config(&self.settings, &self.brokers, Role::Consumer);
        let read_committed = self.settings.guarantee == Guarantee::ExactlyOnce;
        let defaults = [
            ("auto.offset.reset", "earliest"),
            ("fetch.max.bytes", "52428800"),
            ("max.partition.fetch.bytes", "4194304"),
            ("queued.min.messages", "200000"),
            // librdkafka's default (1 s) idles the loop after every full local queue.
            ("fetch.queue.backoff.ms", "5"),
            ("statistics.interval.ms", "5000"),
            (
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            ),
        ];
        for (key, value) in defaults {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        // Not overridable: the processor's correctness depends on them.
        config
            .set("group.id", &self.settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "range,roundrobin");
        config
            .create_with_context(GroupContext {
                core,
                input_topic: self.settings.input_topic.clone(),
                metrics: self.metrics.clone(),
            })
            .map_err(StreamError::Client)
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One assigned input partition.
struct PartitionState {
    users: PartitionUsers,
    /// Offset to commit next: one past the last processed message.
    next_offset: Option<i64>,
    /// Where a rewind goes: the last committed offset (or the first offset seen, before any commit).
    rewind_to: Option<i64>,
}

/// Everything the loop and the rebalance callbacks share. Only the processor thread touches it (the
/// callbacks run inside `poll`), so the mutex is never contended; it exists to satisfy `Sync`.
struct Core {
    producer: ThreadedProducer<DeliveryTracker>,
    settings: KafkaSettings,
    brokers: String,
    catalog: Arc<SharedCatalog>,
    metrics: PipelineMetrics,
    partitions: HashMap<i32, PartitionState>,
    /// Progress since the last checkpoint.
    dirty: bool,
    /// An error raised inside a callback, surfaced by the loop.
    fatal: Option<StreamError>,
    scratch: Scratch,
    transitions: Vec<Transition>,
    buffer: Vec<u8>,
    report: ProcessorReport,
    last_checkpoint: Instant,
    /// Sequence number of the next produced record (its delivery opaque).
    next_sequence: Cell<u64>,
    on_emit: Option<EmitHook>,
    /// Exactly-once: the open transaction can only be aborted; checkpoint (and so abort) as soon as possible.
    doomed: Cell<bool>,
    /// At-least-once checkpoints waiting for their outputs to be acknowledged, oldest first.
    pending: VecDeque<PendingCheckpoint>,
    /// The largest record the producer sends (`message.max.bytes`): dead letters are cut to fit.
    dead_letter_limit: usize,
}

/// Input positions that may be committed once every record with a lower sequence number is acknowledged.
struct PendingCheckpoint {
    bound: u64,
    offsets: TopicPartitionList,
    positions: Vec<(i32, i64)>,
}

impl Core {
    /// Sends one record, tracking it until its delivery report arrives. A record the brokers can never
    /// take (too large, invalid, not authorised) is counted and logged with the input record it came
    /// from, and the loop goes on: one bad record must not stop every processor the partition moves to.
    fn send<K, P>(
        &self,
        mut record: BaseRecord<'_, K, P, usize>,
        source: Source,
    ) -> Result<(), StreamError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let sequence = self.next_sequence.get();
        self.next_sequence.set(sequence + 1);
        let tracker = self.producer.context();
        tracker.register(sequence, source);
        record.delivery_opaque = sequence as usize;
        let topic = record.topic;
        match send(&self.producer, record) {
            Ok(()) => Ok(()),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::State))
                if self.settings.guarantee == Guarantee::ExactlyOnce =>
            {
                // The transaction already failed in the background; everything since the last commit is
                // replayed after the abort, so this record is not lost by skipping it now.
                tracker.forget(sequence);
                self.doomed.set(true);
                Ok(())
            }
            Err(error) if is_permanent(&error) => {
                tracker.forget(sequence);
                self.metrics.undeliverable(topic);
                tracing::error!(
                    %error,
                    topic,
                    source.partition = source.partition,
                    source.offset = source.offset,
                    "record can never be delivered; skipped"
                );
                Ok(())
            }
            Err(source) => {
                tracker.forget(sequence);
                Err(StreamError::kafka("producing", source))
            }
        }
    }

    /// Notices when a partition's position jumped over records: the consumer fell out of the retained
    /// log and librdkafka reset it (`auto.offset.reset`). The skipped records are gone; say so loudly.
    /// A gap of one is a transaction marker, not data.
    fn check_position<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        offset: i64,
    ) {
        let Some(expected) = self
            .partitions
            .get(&partition)
            .and_then(|p| p.next_offset.or(p.rewind_to))
        else {
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

    fn process(&mut self, message: &BorrowedMessage<'_>) -> Result<(), StreamError> {
        let partition = message.partition();
        let offset = message.offset();
        if !self.partitions.contains_key(&partition) {
            // Fetched before a revoke took effect; another member owns it now.
            return Ok(());
        }
        self.metrics.consumed.inc();
        self.report.consumed += 1;
        let sampled = self.report.consumed % SAMPLE_EVERY == 0;
        let started = sampled.then(Instant::now);
        let payload = message.payload().unwrap_or_default();
        let decoded = decode_gps_event(message.key(), payload, self.settings.max_event_bytes);
        let decoded_at = sampled.then(Instant::now);
        match decoded {
            Err(error) => self.dead_letter(message, &error)?,
            Ok(event) => {
                // The record's own timestamp, not the wall clock: a replay after a crash must clamp
                // future-skewed points exactly as the first run did.
                let now = message.timestamp().to_millis().unwrap_or_else(now_ms);
                // A guard, not an Arc clone: no reference-count traffic per event.
                let outcome = {
                    let catalog = self.catalog.load();
                    let Some(users) = self.partitions.get_mut(&partition).map(|p| &mut p.users)
                    else {
                        return Ok(());
                    };
                    let user = match users.get_mut(&*event.user_id) {
                        Some(user) => user,
                        None => users.entry(event.user_id.as_ref().into()).or_default(),
                    };
                    self.transitions.clear();
                    let outcome = catalog.evaluate(
                        &mut user.state,
                        &event,
                        now,
                        &mut self.scratch,
                        &mut self.transitions,
                    );
                    if outcome == Outcome::Applied {
                        user.unflushed_offset = Some(offset);
                    }
                    outcome
                };
                let evaluated_at = sampled.then(Instant::now);
                match outcome {
                    Outcome::IgnoredInaccurate => {
                        self.metrics.ignored_inaccurate.inc();
                    }
                    Outcome::IgnoredLate => {
                        self.metrics.ignored_late.inc();
                    }
                    Outcome::Applied => {
                        if self.scratch.matched_any() {
                            self.metrics.matched.inc();
                        }
                    }
                }
                if !self.transitions.is_empty() {
                    self.emit(&event, partition, offset)?;
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
                            .observe((now_ms() - created).max(0) as f64 / 1000.0);
                    }
                }
            }
        }
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.next_offset = Some(offset + 1);
            state.rewind_to.get_or_insert(offset);
        }
        self.dirty = true;
        Ok(())
    }

    /// Produces the transitions of one event. The user's new state reaches the changelog at the next
    /// checkpoint ([`Core::flush_state`]).
    fn emit(
        &mut self,
        event: &GpsEvent<'_>,
        partition: i32,
        offset: i64,
    ) -> Result<(), StreamError> {
        let now = now_ms();
        let emitted_at = format_rfc3339_ms(now);
        let event_ts = format_rfc3339_ms(event.ts_ms);
        for transition in std::mem::take(&mut self.transitions) {
            let output = EligibilityEvent {
                schema_version: ELIGIBILITY_SCHEMA_VERSION,
                event_id: eligibility_event_id(event, &transition.promotion_id, transition.kind),
                kind: transition.kind,
                user_id: event.user_id.to_string(),
                promotion_id: transition.promotion_id.to_string(),
                fence_id: transition.fence_id.to_string(),
                fence_name: transition.fence_name.to_string(),
                inside: transition.inside,
                distance_m: transition.distance_m.map(|d| (d * 10.0).round() / 10.0),
                lat: event.point.lat(),
                lon: event.point.lon(),
                event_ts: event_ts.clone(),
                emitted_at: emitted_at.clone(),
                source_event_id: event.event_id.as_deref().map(str::to_owned),
            };
            self.buffer.clear();
            // Serializing plain data into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.buffer, &output);
            let record = BaseRecord::with_opaque_to(&self.settings.output_topic, 0)
                .key(event.user_id.as_bytes())
                .payload(&self.buffer[..]);
            self.send(record, Source { partition, offset })?;
            if let Some(hook) = &self.on_emit {
                hook(&output);
            }
            match transition.kind {
                TransitionKind::Enter => self.metrics.emitted_enter.inc(),
                TransitionKind::Exit => self.metrics.emitted_exit.inc(),
            };
            self.report.emitted += 1;
        }
        Ok(())
    }

    /// Writes the state of every user changed since the last checkpoint to the changelog, so that a
    /// restore at the offsets this checkpoint commits finds exactly the state the run had there.
    fn flush_state(&mut self) -> Result<(), StreamError> {
        let mut partitions = std::mem::take(&mut self.partitions);
        let result = (|| {
            for (&partition, partition_state) in &mut partitions {
                for (user_id, user) in &mut partition_state.users {
                    let Some(offset) = user.unflushed_offset.take() else {
                        continue;
                    };
                    self.buffer.clear();
                    changelog::encode_state(&mut self.buffer, offset, &user.state);
                    let record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(
                        &self.settings.state_topic,
                        0,
                    )
                    .key(user_id.as_bytes())
                    .partition(partition)
                    .payload(&self.buffer[..]);
                    self.send(record, Source { partition, offset })?;
                }
            }
            Ok(())
        })();
        self.partitions = partitions;
        result
    }

    /// Sends the original message to the dead-letter topic with the reason and its origin in headers. An
    /// original too large for a record is cut to fit, and the headers say so (with its size and SHA-256),
    /// so that a dead letter is always deliverable.
    fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        error: &DecodeError,
    ) -> Result<(), StreamError> {
        let source = Source {
            partition: message.partition(),
            offset: message.offset(),
        };
        let reason = error.to_string();
        let letter = DeadLetter::new(message.key(), message.payload(), self.dead_letter_limit);
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        let mut headers = vec![
            ("dlq.reason", error.code().to_owned()),
            ("dlq.error", reason.clone()),
            ("dlq.source.topic", message.topic().to_owned()),
            ("dlq.source.partition", partition),
            ("dlq.source.offset", offset),
        ];
        headers.extend(letter.truncation_headers());
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                })
            });
        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.settings.dlq_topic, 0)
                .headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        self.send(record, source)?;
        self.metrics.dead_lettered(error.code());
        self.report.dead_lettered += 1;
        tracing::debug!(code = error.code(), %reason, partition = source.partition, offset = source.offset, truncated = letter.truncated, "dead-lettered");
        Ok(())
    }

    /// Makes everything processed so far durable, or rewinds to the last durable point.
    fn checkpoint<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mode: CommitMode,
    ) -> Result<(), StreamError> {
        // Timed from here: flushing the state changelog is part of what a checkpoint costs the loop.
        let started = Instant::now();
        self.last_checkpoint = started;
        if self.dirty {
            self.flush_state()?;
        }
        self.metrics
            .users_in_state
            .set(self.partitions.values().map(|p| p.users.len() as i64).sum());
        self.doomed.set(false);
        let waiting = !self.pending.is_empty() && matches!(mode, CommitMode::Sync);
        if !self.dirty && !waiting {
            return Ok(());
        }
        let offsets = self.progress()?;
        match self.settings.guarantee {
            Guarantee::AtLeastOnce if matches!(mode, CommitMode::Async) => {
                // Commit these offsets once everything produced so far is acknowledged, without
                // stalling the loop to wait for that (see `advance`).
                let bound = self.next_sequence.get();
                let positions = self
                    .partitions
                    .iter()
                    .filter_map(|(p, s)| Some((*p, s.next_offset?)))
                    .collect();
                self.pending.push_back(PendingCheckpoint {
                    bound,
                    offsets,
                    positions,
                });
                self.dirty = false;
                self.metrics
                    .checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Guarantee::AtLeastOnce => {
                self.producer.flush(BROKER_TIMEOUT).map_err(|source| {
                    StreamError::kafka("waiting for outputs to be acknowledged", source)
                })?;
                let failures = self.producer.context().take_failures();
                if failures > 0 {
                    tracing::warn!(
                        failures,
                        "deliveries failed; rewinding to the last checkpoint"
                    );
                    return self.rewind(consumer);
                }
                self.pending.clear();
                if offsets.count() > 0 {
                    if let Err(error) = consumer.commit(&offsets, mode) {
                        // The outputs are safe; the commit is retried at the next checkpoint.
                        tracing::warn!(%error, "offset commit failed");
                        return Ok(());
                    }
                }
            }
            Guarantee::ExactlyOnce => {
                let group = consumer.group_metadata().ok_or_else(|| {
                    StreamError::Fatal("the consumer has no group metadata".into())
                })?;
                let result = self
                    .producer
                    .send_offsets_to_transaction(&offsets, &group, BROKER_TIMEOUT)
                    .and_then(|()| self.producer.commit_transaction(BROKER_TIMEOUT));
                if let Err(error) = result {
                    let abortable =
                        matches!(&error, KafkaError::Transaction(e) if e.txn_requires_abort());
                    if !abortable {
                        return Err(StreamError::kafka("committing a transaction", error));
                    }
                    tracing::warn!(%error, "transaction aborted; rewinding to the last checkpoint");
                    self.producer
                        .abort_transaction(BROKER_TIMEOUT)
                        .map_err(|source| StreamError::kafka("aborting a transaction", source))?;
                    self.producer.context().take_failures();
                    self.producer
                        .begin_transaction()
                        .map_err(|source| StreamError::kafka("beginning a transaction", source))?;
                    return self.rewind(consumer);
                }
                self.producer
                    .begin_transaction()
                    .map_err(|source| StreamError::kafka("beginning a transaction", source))?;
            }
        }
        for state in self.partitions.values_mut() {
            if state.next_offset.is_some() {
                state.rewind_to = state.next_offset;
            }
        }
        self.dirty = false;
        self.metrics.checkpoints.inc();
        self.report.checkpoints += 1;
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Commits the pending at-least-once checkpoints whose outputs are all acknowledged; rewinds if a
    /// delivery failed. Cheap enough to call on every loop turn.
    fn advance<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), StreamError> {
        let tracker = self.producer.context();
        if tracker.failures.load(Ordering::Relaxed) > 0 {
            tracker.take_failures();
            tracing::warn!("deliveries failed; rewinding to the last checkpoint");
            return self.rewind(consumer);
        }
        let acknowledged_below = tracker.lowest_in_flight().unwrap_or(u64::MAX);
        let mut newest = None;
        while self
            .pending
            .front()
            .is_some_and(|p| p.bound <= acknowledged_below)
        {
            newest = self.pending.pop_front();
        }
        let Some(checkpoint) = newest else {
            return Ok(());
        };
        if checkpoint.offsets.count() > 0 {
            if let Err(error) = consumer.commit(&checkpoint.offsets, CommitMode::Async) {
                tracing::warn!(%error, "offset commit failed; retried at the next checkpoint");
                return Ok(());
            }
        }
        for (partition, offset) in checkpoint.positions {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.rewind_to = Some(offset);
            }
        }
        self.metrics.checkpoints.inc();
        self.report.checkpoints += 1;
        Ok(())
    }

    fn progress(&self) -> Result<TopicPartitionList, StreamError> {
        let mut offsets = TopicPartitionList::new();
        for (&partition, state) in &self.partitions {
            if let Some(next) = state.next_offset {
                offsets
                    .add_partition_offset(
                        &self.settings.input_topic,
                        partition,
                        Offset::Offset(next),
                    )
                    .map_err(|source| StreamError::kafka("recording offsets", source))?;
            }
        }
        Ok(offsets)
    }

    /// Seeks every partition back to its last checkpoint and reloads its users from the changelog.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), StreamError> {
        self.metrics.rewinds.inc();
        let targets: Vec<(i32, Option<i64>)> = self
            .partitions
            .iter()
            .map(|(p, s)| (*p, s.rewind_to))
            .collect();
        let mut restored = self.restore(&targets)?;
        for (partition, rewind_to) in targets {
            if let Some(offset) = rewind_to {
                consumer
                    .seek(
                        &self.settings.input_topic,
                        partition,
                        Offset::Offset(offset),
                        BROKER_TIMEOUT,
                    )
                    .map_err(|source| {
                        StreamError::kafka("seeking back to the last checkpoint", source)
                    })?;
            }
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.users = restored.remove(&partition).unwrap_or_default();
                state.next_offset = None;
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Users of `partitions` (partition, committed input offset) as of that offset, from the changelog.
    fn restore(
        &self,
        partitions: &[(i32, Option<i64>)],
    ) -> Result<HashMap<i32, PartitionUsers>, StreamError> {
        changelog::restore(
            &self.settings,
            &self.brokers,
            self.settings.guarantee == Guarantee::ExactlyOnce,
            partitions,
            BROKER_TIMEOUT,
        )
    }

    /// Loads the state of newly assigned partitions from the changelog.
    fn assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: &[i32],
    ) -> Result<(), StreamError> {
        let mut query = TopicPartitionList::new();
        for &partition in assigned {
            query.add_partition(&self.settings.input_topic, partition);
        }
        let committed = consumer
            .committed_offsets(query, BROKER_TIMEOUT)
            .map_err(|source| StreamError::kafka("reading committed offsets", source))?;
        let targets: Vec<(i32, Option<i64>)> = committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect();
        let started = Instant::now();
        let mut restored = self.restore(&targets)?;
        let mut users_restored = 0;
        for (partition, committed) in targets {
            let users = restored.remove(&partition).unwrap_or_default();
            users_restored += users.len();
            self.partitions.insert(
                partition,
                PartitionState {
                    users,
                    next_offset: None,
                    rewind_to: committed,
                },
            );
        }
        self.metrics
            .state_restored_users
            .inc_by(users_restored as u64);
        tracing::info!(partitions = ?assigned, users_restored, elapsed = ?started.elapsed(), "partitions assigned");
        Ok(())
    }
}

/// Sends one record, waiting while the producer queue is full: the loop's backpressure.
fn send<K, P>(
    producer: &ThreadedProducer<DeliveryTracker>,
    mut record: BaseRecord<'_, K, P, usize>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                // The producer's own thread serves delivery reports and frees queue space.
                std::thread::sleep(Duration::from_micros(500));
            }
            Err((source, _)) => return Err(source),
        }
    }
}

/// The input record an output was produced for, for logs about that output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub partition: i32,
    pub offset: i64,
}

/// Whether a produce error is about the record itself, so that retrying it (or replaying the input that
/// made it) can never succeed.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::BadMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::UnsupportedForMessageFormat
        )
    )
}

/// Room kept in a dead-letter record for the key, headers and the record overhead.
const DEAD_LETTER_OVERHEAD: usize = 8 * 1024;
/// Longest key kept whole in a dead letter; longer keys are cut like payloads.
const DEAD_LETTER_MAX_KEY: usize = 1024;

/// The key and payload a dead letter carries: the original's, or their first bytes when the original
/// would not fit in a record.
struct DeadLetter<'a> {
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    truncated: bool,
    original_key: Option<&'a [u8]>,
    original_payload: Option<&'a [u8]>,
}

impl<'a> DeadLetter<'a> {
    /// `limit`: the largest record the producer may send.
    fn new(key: Option<&'a [u8]>, payload: Option<&'a [u8]>, limit: usize) -> Self {
        let key_len = key.map_or(0, <[u8]>::len);
        let payload_len = payload.map_or(0, <[u8]>::len);
        let room = limit.saturating_sub(DEAD_LETTER_OVERHEAD);
        if key_len + payload_len <= room {
            return Self {
                key,
                payload,
                truncated: false,
                original_key: key,
                original_payload: payload,
            };
        }
        let key_room = DEAD_LETTER_MAX_KEY.min(room);
        let cut_key = key.map(|k| &k[..k.len().min(key_room)]);
        let payload_room = room.saturating_sub(cut_key.map_or(0, <[u8]>::len));
        Self {
            key: cut_key,
            payload: payload.map(|p| &p[..p.len().min(payload_room)]),
            truncated: true,
            original_key: key,
            original_payload: payload,
        }
    }

    fn truncation_headers(&self) -> Vec<(&'static str, String)> {
        if !self.truncated {
            return Vec::new();
        }
        let sha256 = |bytes: Option<&[u8]>| {
            let digest = ring::digest::digest(&ring::digest::SHA256, bytes.unwrap_or_default());
            digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        vec![
            ("dlq.truncated", "true".to_owned()),
            (
                "dlq.original.size",
                self.original_payload.map_or(0, <[u8]>::len).to_string(),
            ),
            ("dlq.original.sha256", sha256(self.original_payload)),
            (
                "dlq.original.key.size",
                self.original_key.map_or(0, <[u8]>::len).to_string(),
            ),
            ("dlq.original.key.sha256", sha256(self.original_key)),
        ]
    }
}

/// Tracks deliveries: which records are still in flight (so that checkpoints know when everything
/// before them is acknowledged) and how many failed in a way a replay can fix (a checkpoint that sees
/// any rewinds instead of committing). Failures a replay cannot fix are counted and logged, not replayed.
pub struct DeliveryTracker {
    failures: AtomicU64,
    /// Sequence numbers produced and not yet reported delivered (or failed), with their input record.
    in_flight: Mutex<BTreeMap<u64, Source>>,
    metrics: PipelineMetrics,
}

impl DeliveryTracker {
    fn new(metrics: PipelineMetrics) -> Self {
        Self {
            failures: AtomicU64::new(0),
            in_flight: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    fn in_flight(&self) -> MutexGuard<'_, BTreeMap<u64, Source>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, sequence: u64, source: Source) {
        self.in_flight().insert(sequence, source);
    }

    fn forget(&self, sequence: u64) -> Option<Source> {
        self.in_flight().remove(&sequence)
    }

    fn lowest_in_flight(&self) -> Option<u64> {
        self.in_flight().first_key_value().map(|(s, _)| *s)
    }

    fn take_failures(&self) -> u64 {
        self.failures.swap(0, Ordering::Relaxed)
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sequence: usize) {
        let source = self.forget(sequence as u64);
        if let Err((error, message)) = result {
            if is_permanent(error) {
                self.metrics.undeliverable(message.topic());
                tracing::error!(
                    %error,
                    topic = message.topic(),
                    source.partition = source.map(|s| s.partition),
                    source.offset = source.map(|s| s.offset),
                    "the brokers refused a record for good; skipped"
                );
                return;
            }
            if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(%error, topic = message.topic(), "delivery failed");
            }
            self.metrics.delivery_failures.inc();
        }
    }
}

/// The consumer's callbacks: drain and commit before partitions go, restore state when they come.
pub struct GroupContext {
    core: Arc<Mutex<Core>>,
    input_topic: String,
    metrics: PipelineMetrics,
}

impl GroupContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.input_topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .get(&self.input_topic)
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(|p| p.consumer_lag)
                    .sum()
            })
            .unwrap_or(0);
        self.metrics.consumer_lag.set(lag);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.metrics.rebalances.inc();
            let mut core = lock(&self.core);
            let revoked = self.partitions(list);
            if consumer.assignment_lost() {
                tracing::warn!(partitions = ?revoked, "assignment lost; dropping uncommitted work");
                core.dirty = false;
            } else if let Err(error) = core.checkpoint(consumer, CommitMode::Sync) {
                tracing::error!(%error, "checkpoint on revoke failed");
                core.fatal.get_or_insert(error);
            }
            for partition in &revoked {
                core.partitions.remove(partition);
            }
            tracing::info!(partitions = ?revoked, "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = self.partitions(list);
                if assigned.is_empty() {
                    return;
                }
                let mut core = lock(&self.core);
                if let Err(error) = core.assign(consumer, &assigned) {
                    tracing::error!(%error, "restoring state for assigned partitions failed");
                    core.fatal.get_or_insert(error);
                }
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result {
            if !matches!(
                error,
                KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)
            ) {
                tracing::warn!(%error, "offset commit failed");
            }
        }
    }
}
