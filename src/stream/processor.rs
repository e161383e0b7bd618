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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Guarantee, KafkaSettings};
use crate::promo::timestamp::SystemClock;
use crate::promo::{
    decode_gps_event, DecisionTime, DecodeError, EligibilityEvent, EpochMs, GpsEvent, Outcome,
    Scratch, SharedCatalog, TransitionKind,
};
use crate::stream::changelog::{self, PartitionUsers};
use crate::stream::checkpoint::{CommitOffsets, Progress};
use crate::stream::client::{
    check_topics, processor_consumer_config, processor_producer_config, producer_message_limit,
    BROKER_TIMEOUT,
};
use crate::stream::dead_letter::{dead_letter_headers, DeadLetter, Origin};
use crate::stream::error::StreamError;
use crate::stream::lock;
use crate::stream::output::{Source, TrackedProducer};
use crate::stream::rebalance::{GroupContext, PartitionHandler};
use crate::telemetry::PipelineMetrics;

/// Stage timings are taken for 1 event in this many, so that timing does not cost more than the work.
const SAMPLE_EVERY: u64 = 64;

/// Totals of one run, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessorReport {
    pub consumed: u64,
    pub emitted: u64,
    pub dead_lettered: u64,
    pub checkpoints: u64,
}

/// Called with every eligibility event produced (for example to materialise it in the store). Must not
/// block for long: it runs on the processing thread.
pub type EmitHook = Box<dyn Fn(&EligibilityEvent) + Send + Sync>;

/// A configured processor; [`Processor::run`] drives it until `stop` is set.
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
    ///
    /// The loop: poll a record → decode → decide → produce outputs (dead letter when it cannot be
    /// decoded) → commit the staged checkpoints whose outputs are acknowledged → every
    /// `commit_interval_ms`, checkpoint (state changelog, then offsets).
    pub fn run(mut self, stop: &AtomicBool) -> Result<ProcessorReport, StreamError> {
        self.check_topics()?;
        let settings = &self.settings;
        let producer = TrackedProducer::create(
            &processor_producer_config(settings, &self.brokers, self.transactional_id.as_deref())?,
            settings.guarantee,
            self.metrics.clone(),
        )?;
        let core = Arc::new(Mutex::new(Core {
            producer,
            settings: settings.clone(),
            brokers: self.brokers.clone(),
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
            users: HashMap::new(),
            progress: Progress::default(),
            fatal: None,
            scratch: Scratch::default(),
            outputs: Vec::new(),
            buffer: Vec::new(),
            report: ProcessorReport::default(),
            last_checkpoint: Instant::now(),
            on_emit: self.on_emit.take(),
            dead_letter_limit: producer_message_limit(settings, &self.brokers),
        }));
        let consumer: BaseConsumer<GroupContext<Core>> =
            processor_consumer_config(settings, &self.brokers)
                .create_with_context(GroupContext::new(
                    core.clone(),
                    settings.input_topic.clone(),
                    self.metrics.clone(),
                ))
                .map_err(StreamError::Client)?;
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
            if core.progress.has_staged() {
                if let Err(error) = core.advance(&consumer) {
                    break Err(error);
                }
            }
            if core.producer.is_doomed() || core.last_checkpoint.elapsed() >= interval {
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

    /// Every topic exists, and the state topic has a partition for each input partition.
    fn check_topics(&self) -> Result<(), StreamError> {
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
        Ok(())
    }
}

/// Everything the loop and the rebalance callbacks share. Only the processor thread touches it (the
/// callbacks run inside `poll`), so the mutex is never contended; it exists to satisfy `Sync`.
pub(crate) struct Core {
    producer: TrackedProducer,
    settings: KafkaSettings,
    brokers: String,
    catalog: Arc<SharedCatalog>,
    metrics: PipelineMetrics,
    /// Users of each assigned input partition.
    users: HashMap<i32, PartitionUsers>,
    progress: Progress,
    /// An error raised inside a callback, surfaced by the loop.
    fatal: Option<StreamError>,
    scratch: Scratch,
    /// The current input event's outputs (reused).
    outputs: Vec<EligibilityEvent>,
    buffer: Vec<u8>,
    report: ProcessorReport,
    last_checkpoint: Instant,
    on_emit: Option<EmitHook>,
    /// The largest record the producer sends (`message.max.bytes`): dead letters are cut to fit.
    dead_letter_limit: usize,
}

/// Commits through the group consumer.
struct GroupCommit<'a, C: ConsumerContext> {
    consumer: &'a BaseConsumer<C>,
    topic: &'a str,
    mode: CommitMode,
}

impl<C: ConsumerContext> CommitOffsets for GroupCommit<'_, C> {
    type Error = KafkaError;

    fn commit(&mut self, positions: &[(i32, i64)]) -> Result<(), KafkaError> {
        let mut offsets = TopicPartitionList::new();
        for &(partition, next) in positions {
            offsets.add_partition_offset(self.topic, partition, Offset::Offset(next))?;
        }
        self.consumer.commit(&offsets, self.mode)
    }
}

impl Core {
    /// Notices when a partition's position jumped over records: the consumer fell out of the retained
    /// log and librdkafka reset it (`auto.offset.reset`). The skipped records are gone; say so loudly.
    /// A gap of one is a transaction marker, not data.
    fn check_position<C: ConsumerContext>(
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

    fn process(&mut self, message: &BorrowedMessage<'_>) -> Result<(), StreamError> {
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
        let payload = message.payload().unwrap_or_default();
        let decoded = decode_gps_event(message.key(), payload, self.settings.max_event_bytes);
        let decoded_at = sampled.then(Instant::now);
        match decoded {
            Err(error) => self.dead_letter(message, &error)?,
            Ok(event) => {
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
    ) -> Result<(), StreamError> {
        // Taken and put back, so the vector's capacity is reused for the next event.
        let outputs = std::mem::take(&mut self.outputs);
        for output in &outputs {
            self.buffer.clear();
            // Serializing plain data into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.buffer, output);
            let record = BaseRecord::with_opaque_to(&self.settings.output_topic, 0)
                .key(event.user_id.as_bytes())
                .payload(&self.buffer[..]);
            self.producer.send(record, Source { partition, offset })?;
            if let Some(hook) = &self.on_emit {
                hook(output);
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
    fn flush_state(&mut self) -> Result<(), StreamError> {
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
    ) -> Result<(), StreamError> {
        let origin = Origin {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let letter = DeadLetter::new(message.key(), message.payload(), self.dead_letter_limit);
        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.settings.dlq_topic, 0)
                .headers(dead_letter_headers(error, origin, &letter));
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

    /// Makes everything processed so far durable, or rewinds to the last durable point.
    pub(crate) fn checkpoint<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mode: CommitMode,
    ) -> Result<(), StreamError> {
        // Timed from here: flushing the state changelog is part of what a checkpoint costs the loop.
        let started = Instant::now();
        self.last_checkpoint = started;
        if self.progress.is_dirty() {
            self.flush_state()?;
        }
        self.metrics
            .users_in_state
            .set(self.users.values().map(|users| users.len() as i64).sum());
        self.producer.clear_doomed();
        let waiting = self.progress.has_staged() && matches!(mode, CommitMode::Sync);
        if !self.progress.is_dirty() && !waiting {
            return Ok(());
        }
        let mut commit = GroupCommit {
            consumer,
            topic: &self.settings.input_topic,
            mode,
        };
        match self.settings.guarantee {
            Guarantee::AtLeastOnce if matches!(mode, CommitMode::Async) => {
                // Commit these positions once everything produced so far is acknowledged, without
                // stalling the loop to wait for that (see `advance`).
                self.progress.stage(self.producer.next_sequence());
                self.metrics
                    .checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Guarantee::AtLeastOnce => {
                if self.producer.flush(BROKER_TIMEOUT)? > 0 {
                    tracing::warn!("deliveries failed; rewinding to the last checkpoint");
                    return self.rewind(consumer);
                }
                let positions = self.progress.positions();
                if !positions.is_empty() {
                    if let Err(error) = commit.commit(&positions) {
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
                let committed = self.producer.commit_transaction(
                    &self.settings.input_topic,
                    &self.progress.positions(),
                    &group,
                )?;
                if !committed {
                    tracing::warn!("transaction aborted; rewinding to the last checkpoint");
                    return self.rewind(consumer);
                }
            }
        }
        self.progress.all_durable();
        self.metrics.checkpoints.inc();
        self.report.checkpoints += 1;
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Commits the staged at-least-once checkpoints whose outputs are all acknowledged; rewinds if a
    /// delivery failed. Cheap enough to call on every loop turn.
    fn advance<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), StreamError> {
        let tracker = self.producer.tracker();
        if tracker.has_failures() {
            tracker.take_failures();
            tracing::warn!("deliveries failed; rewinding to the last checkpoint");
            return self.rewind(consumer);
        }
        let acknowledged_below = tracker.lowest_in_flight().unwrap_or(u64::MAX);
        let mut commit = GroupCommit {
            consumer,
            topic: &self.settings.input_topic,
            mode: CommitMode::Async,
        };
        match self.progress.advance(acknowledged_below, &mut commit) {
            Ok(false) => {}
            Ok(true) => {
                self.metrics.checkpoints.inc();
                self.report.checkpoints += 1;
            }
            Err(error) => {
                tracing::warn!(%error, "offset commit failed; retried at the next checkpoint");
            }
        }
        Ok(())
    }

    /// Seeks every partition back to its last durable position and reloads its users from the changelog.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), StreamError> {
        self.metrics.rewinds.inc();
        let targets = self.progress.rewind_targets();
        let mut restored = self.restore(&targets)?;
        for &(partition, rewind_to) in &targets {
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
            self.users
                .insert(partition, restored.remove(&partition).unwrap_or_default());
        }
        self.progress.rewound();
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

    fn try_assign<C: ConsumerContext>(
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
            self.users.insert(partition, users);
            self.progress.assign(partition, committed);
        }
        self.metrics
            .state_restored_users
            .inc_by(users_restored as u64);
        tracing::info!(partitions = ?assigned, users_restored, elapsed = ?started.elapsed(), "partitions assigned");
        Ok(())
    }
}

impl PartitionHandler for Core {
    /// Partitions are being revoked: checkpoint what they processed (unless the assignment is already
    /// lost, when the next owner replays it), then forget them.
    fn revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        revoked: &[i32],
        lost: bool,
    ) {
        if lost {
            tracing::warn!(partitions = ?revoked, "assignment lost; dropping uncommitted work");
            self.progress.lose_uncommitted();
        } else if let Err(error) = self.checkpoint(consumer, CommitMode::Sync) {
            tracing::error!(%error, "checkpoint on revoke failed");
            self.fatal.get_or_insert(error);
        }
        for &partition in revoked {
            self.progress.revoke(partition);
            self.users.remove(&partition);
        }
        tracing::info!(partitions = ?revoked, "partitions revoked");
    }

    /// Partitions were assigned: load their users from the changelog as of the committed positions.
    fn assign<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, assigned: &[i32]) {
        if let Err(error) = self.try_assign(consumer, assigned) {
            tracing::error!(%error, "restoring state for assigned partitions failed");
            self.fatal.get_or_insert(error);
        }
    }
}
