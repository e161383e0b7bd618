//! Producing: one send with backpressure for every producer in the service, the classification of produce
//! errors, and the delivery tracking checkpoints wait on.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Guarantee;
use crate::stream::client::BROKER_TIMEOUT;
use crate::stream::error::StreamError;
use crate::stream::lock;
use crate::telemetry::PipelineMetrics;

/// A record librdkafka's queue did not take, with why (it is handed back for a retry).
pub type Refused<'a, K, P, O> = (KafkaError, BaseRecord<'a, K, P, O>);

/// A producer a record can be offered to: librdkafka's base producer (whose owner polls it) or the
/// threaded one (which polls itself).
pub trait Enqueue<C: ProducerContext> {
    /// Offers the record to librdkafka's queue; gives it back when the queue refuses it.
    #[allow(clippy::result_large_err)]
    fn enqueue<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    ) -> Result<(), Refused<'a, K, P, C::DeliveryOpaque>>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized;

    /// Waits a moment for delivery reports to free queue space.
    fn make_room(&self);
}

impl<C: ProducerContext> Enqueue<C> for BaseProducer<C> {
    fn enqueue<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    ) -> Result<(), Refused<'a, K, P, C::DeliveryOpaque>>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.send(record)
    }

    fn make_room(&self) {
        // Serving the delivery reports is what frees the queue.
        self.poll(Duration::from_millis(1));
    }
}

impl<C: ProducerContext + 'static> Enqueue<C> for ThreadedProducer<C> {
    fn enqueue<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    ) -> Result<(), Refused<'a, K, P, C::DeliveryOpaque>>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.send(record)
    }

    fn make_room(&self) {
        // The producer's own thread serves the delivery reports.
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Sends one record, waiting while the producer queue is full: backpressure, not an unbounded buffer.
/// Every other error is returned (see [`is_permanent`] for which ones a retry cannot fix).
pub fn send_with_backpressure<C, Q, K, P>(
    producer: &Q,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: ProducerContext,
    Q: Enqueue<C>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.enqueue(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.make_room();
            }
            Err((source, _)) => return Err(source),
        }
    }
}

/// The processor's producer: every record gets a sequence number and is tracked until its delivery
/// report, so checkpoints know when everything before them is acknowledged. In exactly-once mode it
/// always has a transaction open.
pub struct TrackedProducer {
    producer: ThreadedProducer<DeliveryTracker>,
    guarantee: Guarantee,
    metrics: PipelineMetrics,
    /// Sequence number of the next produced record (its delivery opaque).
    next_sequence: Cell<u64>,
    /// Exactly-once: the open transaction can only be aborted; checkpoint (and so abort) as soon as possible.
    doomed: Cell<bool>,
}

impl TrackedProducer {
    /// Creates the producer (and, in exactly-once mode, opens the first transaction).
    pub fn create(
        config: &ClientConfig,
        guarantee: Guarantee,
        metrics: PipelineMetrics,
    ) -> Result<Self, StreamError> {
        let producer: ThreadedProducer<DeliveryTracker> = config
            .create_with_context(DeliveryTracker::new(metrics.clone()))
            .map_err(StreamError::Client)?;
        if guarantee == Guarantee::ExactlyOnce {
            producer
                .init_transactions(BROKER_TIMEOUT)
                .map_err(|source| StreamError::kafka("initialising transactions", source))?;
            producer
                .begin_transaction()
                .map_err(|source| StreamError::kafka("beginning a transaction", source))?;
        }
        Ok(Self {
            producer,
            guarantee,
            metrics,
            next_sequence: Cell::new(0),
            doomed: Cell::new(false),
        })
    }

    /// Sends one record, tracking it until its delivery report arrives. A record the brokers can never
    /// take (too large, invalid, not authorised) is counted and logged with the input record it came
    /// from, and the loop goes on: one bad record must not stop every processor the partition moves to.
    pub fn send<K, P>(
        &self,
        mut record: BaseRecord<'_, K, P, usize>,
        source: Source,
    ) -> Result<(), StreamError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let sequence = self.next_sequence.get();
        self.next_sequence.set(sequence + 1);
        let tracker = self.producer.context();
        tracker.register(sequence, source);
        record.delivery_opaque = sequence as usize;
        let topic = record.topic;
        match send_with_backpressure(&self.producer, record) {
            Ok(()) => Ok(()),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::State))
                if self.guarantee == Guarantee::ExactlyOnce =>
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
            Err(error) => {
                tracker.forget(sequence);
                Err(StreamError::kafka("producing", error))
            }
        }
    }

    /// The sequence number the next record will get: every record below it was produced already.
    #[must_use]
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence.get()
    }

    #[must_use]
    pub fn tracker(&self) -> &DeliveryTracker {
        self.producer.context()
    }

    /// Whether the open transaction failed and can only be aborted.
    #[must_use]
    pub fn is_doomed(&self) -> bool {
        self.doomed.get()
    }

    pub fn clear_doomed(&self) {
        self.doomed.set(false);
    }

    /// Waits until every record is acknowledged; returns how many deliveries failed (in a way a replay
    /// can fix) since the last call.
    pub fn flush(&self, timeout: Duration) -> Result<u64, StreamError> {
        self.producer.flush(timeout).map_err(|source| {
            StreamError::kafka("waiting for outputs to be acknowledged", source)
        })?;
        Ok(self.tracker().take_failures())
    }

    /// Commits the open transaction with the input `positions` of `topic`, then opens the next one.
    /// `Ok(false)`: the transaction had to be aborted (the caller rewinds); an error is fatal (fenced).
    pub fn commit_transaction(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        group: &ConsumerGroupMetadata,
    ) -> Result<bool, StreamError> {
        let mut offsets = TopicPartitionList::new();
        for &(partition, next) in positions {
            offsets
                .add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(|source| StreamError::kafka("recording offsets", source))?;
        }
        let result = self
            .producer
            .send_offsets_to_transaction(&offsets, group, BROKER_TIMEOUT)
            .and_then(|()| self.producer.commit_transaction(BROKER_TIMEOUT));
        let committed = match result {
            Ok(()) => true,
            Err(error) => {
                let abortable =
                    matches!(&error, KafkaError::Transaction(e) if e.txn_requires_abort());
                if !abortable {
                    return Err(StreamError::kafka("committing a transaction", error));
                }
                tracing::warn!(%error, "transaction failed; aborting it");
                self.producer
                    .abort_transaction(BROKER_TIMEOUT)
                    .map_err(|source| StreamError::kafka("aborting a transaction", source))?;
                self.tracker().take_failures();
                false
            }
        };
        self.producer
            .begin_transaction()
            .map_err(|source| StreamError::kafka("beginning a transaction", source))?;
        Ok(committed)
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
pub fn is_permanent(error: &KafkaError) -> bool {
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

/// Tracks deliveries: which records are still in flight (so that checkpoints know when everything
/// before them is acknowledged) and how many failed in a way a replay can fix (a checkpoint that sees
/// any rewinds instead of committing). Failures a replay cannot fix are counted and logged, not replayed.
pub struct DeliveryTracker {
    failures: AtomicU64,
    /// Sequence numbers produced and not yet reported delivered (or failed), with their input record.
    in_flight: Mutex<InFlight>,
    metrics: PipelineMetrics,
}

/// Records in flight by sequence number. Sequences are registered in increasing order and mostly
/// reported in that order, so they are kept in a sorted queue: a registration is a push at the back, a
/// report a binary search and a mark, and the delivered records at the front are dropped. Marked
/// records behind one that is still in flight (a partition whose leader is away) are swept out once
/// they outnumber the live ones, so the queue stays within a few times what is in flight. A `BTreeMap`
/// did the same with an allocation per record: 1% of the pipeline's CPU, on the consumer's thread.
#[derive(Default)]
struct InFlight {
    records: VecDeque<(u64, Option<Source>)>,
    live: usize,
}

impl InFlight {
    fn insert(&mut self, sequence: u64, source: Source) {
        if self
            .records
            .back()
            .is_some_and(|&(last, _)| last >= sequence)
        {
            // Not in order (never from `TrackedProducer`): keep the queue sorted anyway.
            let at = self.records.partition_point(|&(s, _)| s < sequence);
            if self.records.get(at).is_some_and(|&(s, _)| s == sequence) {
                if self.records[at].1.replace(source).is_none() {
                    self.live += 1;
                }
                return;
            }
            self.records.insert(at, (sequence, Some(source)));
        } else {
            self.records.push_back((sequence, Some(source)));
        }
        self.live += 1;
    }

    fn remove(&mut self, sequence: u64) -> Option<Source> {
        let at = self
            .records
            .binary_search_by_key(&sequence, |&(s, _)| s)
            .ok()?;
        let source = self.records[at].1.take()?;
        self.live -= 1;
        while self.records.front().is_some_and(|(_, s)| s.is_none()) {
            self.records.pop_front();
        }
        if self.records.len() > 2 * self.live + 1024 {
            self.records.retain(|(_, s)| s.is_some());
        }
        Some(source)
    }

    fn lowest(&self) -> Option<u64> {
        // Delivered records at the front are always dropped, so the front is in flight.
        self.records.front().map(|&(s, _)| s)
    }
}

impl DeliveryTracker {
    #[must_use]
    pub fn new(metrics: PipelineMetrics) -> Self {
        Self {
            failures: AtomicU64::new(0),
            in_flight: Mutex::new(InFlight::default()),
            metrics,
        }
    }

    fn in_flight(&self) -> MutexGuard<'_, InFlight> {
        lock(&self.in_flight)
    }

    pub fn register(&self, sequence: u64, source: Source) {
        self.in_flight().insert(sequence, source);
    }

    pub fn forget(&self, sequence: u64) -> Option<Source> {
        self.in_flight().remove(sequence)
    }

    pub fn lowest_in_flight(&self) -> Option<u64> {
        self.in_flight().lowest()
    }

    pub fn take_failures(&self) -> u64 {
        self.failures.swap(0, Ordering::Relaxed)
    }

    /// Whether a delivery failed (in a way a replay can fix) since the last [`Self::take_failures`].
    #[must_use]
    pub fn has_failures(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn source(sequence: u64) -> Source {
        Source {
            partition: (sequence % 7) as i32,
            offset: sequence as i64 * 3,
        }
    }

    proptest! {
        /// Registrations in order (as the producer makes them), reports in any order, some twice or for
        /// sequences never registered: the queue answers as a sorted map would.
        #[test]
        fn in_flight_answers_as_a_sorted_map(
            steps in proptest::collection::vec((any::<bool>(), 0u64..64, 1u64..4), 1..3000),
        ) {
            let (mut queue, mut map) = (InFlight::default(), BTreeMap::new());
            let mut next = 0u64;
            for (register, back, stride) in steps {
                if register {
                    queue.insert(next, source(next));
                    map.insert(next, source(next));
                    next += stride;
                } else {
                    let sequence = next.saturating_sub(back);
                    prop_assert_eq!(queue.remove(sequence), map.remove(&sequence));
                }
                prop_assert_eq!(queue.lowest(), map.keys().next().copied());
                prop_assert_eq!(queue.live, map.len());
                prop_assert!(queue.records.len() <= 2 * map.len() + 1024 + 1);
            }
        }
    }

    #[test]
    fn a_record_stuck_in_flight_does_not_keep_the_delivered_ones() {
        let mut queue = InFlight::default();
        for sequence in 0..100_000 {
            queue.insert(sequence, source(sequence));
        }
        for sequence in 1..100_000 {
            assert_eq!(queue.remove(sequence), Some(source(sequence)));
        }
        assert_eq!(queue.lowest(), Some(0));
        assert!(queue.records.len() <= 1025, "{}", queue.records.len());
        assert_eq!(queue.remove(0), Some(source(0)));
        assert_eq!(queue.lowest(), None);
        assert_eq!(queue.remove(0), None);
        // Out of order and repeated registrations keep it sorted.
        queue.insert(10, source(10));
        queue.insert(5, source(5));
        queue.insert(5, source(6));
        assert_eq!(queue.lowest(), Some(5));
        assert_eq!(queue.remove(5), Some(source(6)));
        assert_eq!(queue.lowest(), Some(10));
    }
}
