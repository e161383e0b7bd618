//! The stream processor: consume GPS events → decode → match → promotion rules → produce eligibility events.
//!
//! One thread drives a consumer-group member: it polls records, hands them in batches to evaluation
//! workers that each own a share of the assigned partitions (decode → match → rules → serialize, see
//! `workers`), and produces what comes back. A partition is decided by one worker, in order, and its
//! results are produced in order, so each partition (and so each user) is processed in order. Work in
//! flight is bounded by librdkafka's fetch queue, a few batches per worker and the producer queue (a full
//! producer queue blocks the loop: backpressure, not an unbounded buffer).
//!
//! Progress is checkpointed every `commit_interval_ms`, on rebalance and on shutdown:
//! - at-least-once: wait until every output, dead letter and state record produced so far is
//!   acknowledged, then commit the input offsets. A failed delivery rewinds to the last checkpoint. The
//!   state records are encoded at the checkpoint and produced over the next loop turns, so that records
//!   keep flowing meanwhile; the commit waits for them too.
//! - exactly-once: the same records and the input offsets commit in one transaction; an aborted
//!   transaction rewinds to the last checkpoint.
//!
//! Rewinding means seeking each partition back to its last committed offset and reloading its users from
//! the changelog, so the replay decides exactly as the first run did (and produces the same event ids).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

use opentelemetry::trace::SpanContext;

use crate::config::KafkaSettings;
use crate::promo::{EligibilityEvent, SharedCatalog};
use crate::stream::checkpoint::Progress;
use crate::stream::client::{
    check_topics, processor_consumer_config, processor_producer_config, producer_message_limit,
    BROKER_TIMEOUT,
};
use crate::stream::error::StreamError;
use crate::stream::fetch::{FetchQueue, FetchedBatch};
use crate::stream::lock;
use crate::stream::output::TrackedProducer;
use crate::stream::rebalance::GroupContext;
use crate::telemetry::PipelineMetrics;
use workers::{default_workers, Dispatcher};

mod durability;
mod evaluate;
mod records;
mod trace;
mod workers;

/// Stage timings are taken for 1 event in this many, so that timing does not cost more than the work.
const SAMPLE_EVERY: u64 = 64;

/// State records a loop turn produces after an at-least-once checkpoint: a millisecond or two of the
/// consumer's thread, so that records keep flowing while a checkpoint's ~100 k are written.
const STATES_PER_TURN: usize = 1024;

/// Totals of one run, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessorReport {
    pub consumed: u64,
    pub emitted: u64,
    pub dead_lettered: u64,
    pub checkpoints: u64,
}

/// Called with every eligibility event produced (for example to materialise it in the store), and the
/// span of the input record that caused it when tracing is on. Must not block for long: it runs on the
/// processing thread.
pub type EmitHook = Box<dyn Fn(&EligibilityEvent, Option<SpanContext>) + Send + Sync>;

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
        let workers = settings.processor_threads.unwrap_or_else(default_workers);
        let dispatch = Dispatcher::start(
            workers,
            &self.catalog,
            &self.metrics,
            settings.max_event_bytes,
        )?;
        let core = Arc::new(Mutex::new(Core {
            producer,
            settings: settings.clone(),
            brokers: self.brokers.clone(),
            metrics: self.metrics.clone(),
            dispatch,
            progress: Progress::default(),
            fatal: None,
            diverged: false,
            states: records::EncodedStates::default(),
            report: ProcessorReport::default(),
            last_checkpoint: Instant::now(),
            on_emit: self.on_emit.take(),
            tracer: crate::otel::tracer(),
            // One small string per processor for its lifetime: spans take their name as `'static`.
            trace_name: Box::leak(format!("process {}", settings.input_topic).into_boxed_str()),
            dead_letter_limit: producer_message_limit(settings, &self.brokers),
        }));
        let consumer_config = processor_consumer_config(settings, &self.brokers);
        let consumer: BaseConsumer<GroupContext<Core>> = consumer_config
            .create_with_context(
                GroupContext::new(
                    core.clone(),
                    settings.input_topic.clone(),
                    consumer_config.get("auto.offset.reset"),
                    self.metrics.clone(),
                )
                .with_isolation(consumer_config.get("isolation.level")),
            )
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
            workers,
            "processor started"
        );

        // Records come in batches from a queue of their own (see `stream::fetch`); the consumer's
        // queue is polled every turn for rebalances, commit results and errors. Both the queue and
        // the batch must go before the consumer does: `fetch_guard` is dropped first, on every path.
        let fetch_queue = Arc::new(
            FetchQueue::new(&consumer, &settings.input_topic).map_err(|_| {
                StreamError::Fatal("the input topic's name holds a NUL byte".into())
            })?,
        );
        consumer
            .context()
            .forward_fetches_to(Arc::clone(&fetch_queue));
        let mut fetch_guard = FetchGuard {
            queue: fetch_queue,
            batch: FetchedBatch::with_capacity(FETCH_BATCH),
        };

        let interval = Duration::from_millis(settings.commit_interval_ms);
        // Not taken under the lock: the rebalance callbacks run inside `poll` and take it.
        let mut timeout = Duration::from_millis(100);
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let FetchGuard { queue, batch } = &mut fetch_guard;
            // Wait on the fetch queue while partitions forward to it, but not for long: a
            // rebalance arriving on the consumer's queue meanwhile waits for the next turn.
            let (poll_wait, fetch_wait) = if queue.has_partitions() {
                (Duration::ZERO, timeout.min(MAX_FETCH_WAIT))
            } else {
                (timeout, Duration::ZERO)
            };
            let mut polled = consumer.poll(poll_wait);
            // Events served one per call: keep going while more wait (a turn's bound keeps the
            // records moving even if they keep coming).
            let mut served = 1;
            while polled.is_none() && served < MAX_EVENTS_PER_TURN && queue.consumer_backlog() > 0 {
                polled = consumer.poll(Duration::ZERO);
                served += 1;
            }
            let fetch_wait = if polled.is_some() {
                Duration::ZERO
            } else {
                fetch_wait
            };
            queue.fill(batch, fetch_wait);
            // One lock per turn: the records, the results back from the workers and the checkpoints.
            let mut core = lock(&core);
            if let Some(error) = core.fatal.take() {
                break Err(error);
            }
            let mut received = false;
            let mut handed_over = match polled {
                Some(polled) => core
                    .take(&consumer, polled.as_ref().map_err(Clone::clone))
                    .map(|taken| received |= taken),
                None => Ok(()),
            };
            for record in batch.iter() {
                if handed_over.is_err() {
                    break;
                }
                let record = record.error().map_or(Ok(&record), Err);
                handed_over = core.take(&consumer, record).map(|taken| received |= taken);
            }
            batch.clear();
            if !received {
                // Nothing more for now: what was handed over goes to the workers.
                handed_over = handed_over.and_then(|()| core.dispatch.send_pending());
            }
            if let Err(error) = handed_over.and_then(|()| core.apply_finished(false)) {
                break Err(error);
            }
            if consumer.context().take_commit_failure() {
                core.progress.commit_failed();
            }
            if core.progress.has_staged() {
                if let Err(error) = core.advance(&consumer) {
                    break Err(error);
                }
            }
            if !core.states.is_empty() {
                if let Err(error) = core.write_states(STATES_PER_TURN) {
                    break Err(error);
                }
            }
            if core.producer.is_doomed() || core.last_checkpoint.elapsed() >= interval {
                if let Err(error) = core.checkpoint(&consumer, CommitMode::Async) {
                    break Err(error);
                }
            }
            timeout = if core.states.is_empty() {
                core.dispatch.poll_timeout()
            } else {
                Duration::ZERO
            };
        };
        let final_checkpoint = lock(&core).checkpoint(&consumer, CommitMode::Sync);
        // Leaving the group runs the revoke callback, which checkpoints again (a no-op by now).
        consumer.unsubscribe();
        for _ in 0..10 {
            if consumer.poll(Duration::from_millis(50)).is_none() {
                break;
            }
        }
        drop(fetch_guard);
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

/// Records taken from the fetch queue per turn: enough to spread a turn's fixed costs thin, few enough
/// that a turn stays short (the evaluation workers' batches are 256 records).
const FETCH_BATCH: usize = 512;

/// The most events taken from the consumer's queue in one turn.
const MAX_EVENTS_PER_TURN: usize = 256;

/// The longest wait on the fetch queue: how late a rebalance may be seen while records are quiet.
const MAX_FETCH_WAIT: Duration = Duration::from_millis(10);

/// The processor's fetch queue and its batch, closed and released when dropped: before the consumer,
/// whose destruction waits for its application queues.
struct FetchGuard {
    queue: Arc<FetchQueue>,
    batch: FetchedBatch,
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        self.batch.clear();
        self.queue.close();
    }
}

/// Everything the loop and the rebalance callbacks share. Only the processor thread touches it (the
/// callbacks run inside `poll`), so the mutex is never contended; it exists to satisfy `Sync`.
pub(crate) struct Core {
    producer: TrackedProducer,
    settings: KafkaSettings,
    brokers: String,
    metrics: PipelineMetrics,
    /// The evaluation workers, and through them the users of each assigned input partition.
    dispatch: Dispatcher,
    progress: Progress,
    /// An error raised inside a callback, surfaced by the loop.
    fatal: Option<StreamError>,
    /// Producing a decided record failed and the records after it were dropped: the users hold decisions
    /// no position covers, so no checkpoint may be taken any more.
    diverged: bool,
    /// The last checkpoint's state records, until they are all produced.
    states: records::EncodedStates,
    report: ProcessorReport,
    last_checkpoint: Instant,
    on_emit: Option<EmitHook>,
    /// Set when tracing is on: every record gets a span.
    tracer: Option<&'static crate::otel::Tracer>,
    trace_name: &'static str,
    /// The largest record the producer sends (`message.max.bytes`): dead letters are cut to fit.
    dead_letter_limit: usize,
}
