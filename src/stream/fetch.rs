//! Fetched records taken from librdkafka many at a time.
//!
//! rust-rdkafka's `poll` returns one record per call, and each call pays a queue lock, an event
//! allocation and four or five clock reads (librdkafka times every consumer poll for
//! `max.poll.interval.ms`, rust-rdkafka times it again). A profile of the pipeline benchmark put
//! that at a fifth of the processor thread, the clock reads alone at 18%. So the assigned
//! partitions' fetch queues are forwarded into a queue of our own, which
//! `rd_kafka_consume_batch_queue` drains up to a batch at a time: one lock and two clock reads per
//! batch.
//!
//! The consumer's own queue still carries rebalances, commit results and errors, and the processor
//! polls it every turn. A record that reaches it anyway (fetched before its partition was forwarded)
//! is handled there as before, so forwarding only ever changes how fast records arrive, not which.
//!
//! rust-rdkafka 0.39 has no batch consume, hence the few lines of FFI here; every pointer they touch
//! is owned by this module and released before the consumer is destroyed (see [`FetchQueue::close`]).

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Message, Timestamp};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};

/// A queue the assigned partitions of one topic forward their fetched records to.
///
/// Used from the consumer's thread only (the rebalance callbacks run inside its `poll`); the atomic
/// pointer is there to make it `Sync` for the consumer's context, not for concurrent use.
pub struct FetchQueue {
    /// Null once closed.
    queue: AtomicPtr<rdsys::rd_kafka_queue_t>,
    /// The consumer's handle, for looking partitions up.
    client: *mut rdsys::rd_kafka_t,
    topic: CString,
    /// How many partitions forward here now.
    forwarded: AtomicUsize,
    /// The consumer's own queue (a handle of ours): its length says whether events wait there.
    consumer_queue: AtomicPtr<rdsys::rd_kafka_queue_t>,
}

// SAFETY: librdkafka's queue and client handles may be used from any thread.
unsafe impl Send for FetchQueue {}
unsafe impl Sync for FetchQueue {}

impl FetchQueue {
    /// A queue for `topic`'s partitions of `consumer`. It must be closed before the consumer is
    /// dropped: librdkafka does not destroy a client whose application queues are still open.
    ///
    /// # Errors
    /// When the topic name holds a NUL byte.
    pub fn new<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &str,
    ) -> Result<Self, std::ffi::NulError> {
        let client = consumer.client().native_ptr();
        let topic = CString::new(topic)?;
        // SAFETY: `client` is a live consumer handle.
        let (queue, consumer_queue) = unsafe {
            (
                rdsys::rd_kafka_queue_new(client),
                rdsys::rd_kafka_queue_get_consumer(client),
            )
        };
        Ok(Self {
            queue: AtomicPtr::new(queue),
            client,
            topic,
            forwarded: AtomicUsize::new(0),
            consumer_queue: AtomicPtr::new(consumer_queue),
        })
    }

    /// Sends `partitions`' records here from now on. Called before they are assigned, so that
    /// fetching starts with the forwarding in place (librdkafka keeps an application's forwarding).
    pub fn forward(&self, partitions: &[i32]) {
        self.set_forwarding(partitions, self.queue.load(Ordering::Acquire));
        self.forwarded
            .fetch_add(partitions.len(), Ordering::Relaxed);
    }

    /// Sends `partitions`' records back to the consumer's queue (they are being revoked).
    pub fn unforward(&self, partitions: &[i32]) {
        // Not a null destination: that would leave the records in the partition's own queue, which
        // nobody reads (librdkafka no longer forwards a queue the application has forwarded).
        // SAFETY: a live consumer handle; the consumer queue's handle is released after use.
        unsafe {
            let consumer_queue = rdsys::rd_kafka_queue_get_consumer(self.client);
            if !consumer_queue.is_null() {
                self.set_forwarding(partitions, consumer_queue);
                rdsys::rd_kafka_queue_destroy(consumer_queue);
            }
        }
        let _ = self
            .forwarded
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                Some(count.saturating_sub(partitions.len()))
            });
    }

    /// Whether any partition forwards here: until one does, records (and the assignment that
    /// brings them) can only arrive through the consumer's own queue.
    #[must_use]
    pub fn has_partitions(&self) -> bool {
        self.forwarded.load(Ordering::Relaxed) > 0 && !self.queue.load(Ordering::Acquire).is_null()
    }

    fn set_forwarding(&self, partitions: &[i32], destination: *mut rdsys::rd_kafka_queue_t) {
        if self.queue.load(Ordering::Acquire).is_null() {
            return;
        }
        for &partition in partitions {
            // SAFETY: a live client and a NUL-terminated topic; the partition's handle is released
            // at once (the forwarding stays with the partition's queue, not with the handle).
            unsafe {
                let partition_queue = rdsys::rd_kafka_queue_get_partition(
                    self.client,
                    self.topic.as_ptr(),
                    partition,
                );
                if !partition_queue.is_null() {
                    rdsys::rd_kafka_queue_forward(partition_queue, destination);
                    rdsys::rd_kafka_queue_destroy(partition_queue);
                }
            }
        }
    }

    /// How many events (rebalances, commit results, errors, statistics) wait on the consumer's own
    /// queue. A `poll` with no wait serves one at most and says nothing of the rest, so the processor
    /// asks this to keep polling while they queue up (a broker outage raises many errors at once).
    #[must_use]
    pub fn consumer_backlog(&self) -> usize {
        let consumer_queue = self.consumer_queue.load(Ordering::Acquire);
        if consumer_queue.is_null() {
            return 0;
        }
        // SAFETY: our own handle of the consumer queue, released only by `close`.
        unsafe { rdsys::rd_kafka_queue_length(consumer_queue) }
    }

    /// Moves up to `into`'s capacity of waiting records into it, waiting up to `wait` for the first
    /// when none is there. Returns how many arrived.
    pub fn fill(&self, into: &mut FetchedBatch, wait: Duration) -> usize {
        into.clear();
        let queue = self.queue.load(Ordering::Acquire);
        if queue.is_null() {
            return 0;
        }
        let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // librdkafka's batch call waits for the whole batch when given a timeout, so when nothing is
        // there, wait for one record only, then take whatever else has arrived with it.
        if into.take_from(queue, 0, usize::MAX) == 0
            && wait_ms > 0
            && into.take_from(queue, wait_ms, 1) == 1
        {
            into.take_from(queue, 0, usize::MAX);
        }
        into.records.len()
    }

    /// Destroys the queue; the records still in it are dropped (they are fetched again from the last
    /// checkpoint by whoever owns their partition next). Idempotent.
    pub fn close(&self) {
        for handle in [&self.queue, &self.consumer_queue] {
            let queue = handle.swap(ptr::null_mut(), Ordering::AcqRel);
            if !queue.is_null() {
                // SAFETY: both handles are ours (`rd_kafka_queue_new`, `rd_kafka_queue_get_consumer`)
                // and each is destroyed once (the swap).
                unsafe { rdsys::rd_kafka_queue_destroy(queue) };
            }
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        self.close();
    }
}

/// Records taken from a [`FetchQueue`], released when cleared or dropped.
pub struct FetchedBatch {
    records: Vec<*mut rdsys::rd_kafka_message_t>,
}

// SAFETY: the messages are owned by the batch; librdkafka lets any thread read and destroy them.
unsafe impl Send for FetchedBatch {}

impl FetchedBatch {
    #[must_use]
    pub fn with_capacity(records: usize) -> Self {
        Self {
            records: Vec::with_capacity(records.max(1)),
        }
    }

    fn take_from(
        &mut self,
        queue: *mut rdsys::rd_kafka_queue_t,
        timeout_ms: i32,
        most: usize,
    ) -> usize {
        let most = most.min(self.records.capacity() - self.records.len());
        if most == 0 {
            return 0;
        }
        let start = self.records.len();
        // SAFETY: librdkafka writes at most `most` pointers into the spare capacity, and returns how
        // many (or -1 on an invalid queue, taken as none).
        let taken = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                queue,
                timeout_ms,
                self.records.as_mut_ptr().add(start),
                most,
            )
        };
        let taken = usize::try_from(taken).unwrap_or(0).min(most);
        // SAFETY: the first `taken` spare slots were just written.
        unsafe { self.records.set_len(start + taken) };
        // Only fetched records and consumer errors are returned; anything else would be a null.
        self.records.retain(|record| !record.is_null());
        self.records.len() - start
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records in the order their partitions' fetches delivered them (each partition in order).
    pub fn iter(&self) -> impl Iterator<Item = FetchedRecord<'_>> {
        self.records.iter().map(|&ptr| FetchedRecord {
            ptr,
            _batch: PhantomData,
        })
    }

    pub fn clear(&mut self) {
        for record in self.records.drain(..) {
            // SAFETY: each message came from `rd_kafka_consume_batch_queue` and is destroyed once.
            unsafe { rdsys::rd_kafka_message_destroy(record) };
        }
    }
}

impl Drop for FetchedBatch {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One record of a [`FetchedBatch`], read in place.
pub struct FetchedRecord<'a> {
    ptr: *mut rdsys::rd_kafka_message_t,
    _batch: PhantomData<&'a FetchedBatch>,
}

impl FetchedRecord<'_> {
    fn message(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: non-null (filtered when taken) and alive as long as the batch borrowed by `'a`.
        unsafe { &*self.ptr }
    }

    /// The consumer error this entry carries instead of a record (end of partition, fetch failure).
    #[must_use]
    pub fn error(&self) -> Option<KafkaError> {
        let err = self.message().err;
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            None
        } else if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF {
            Some(KafkaError::PartitionEOF(self.message().partition))
        } else {
            Some(KafkaError::MessageConsumption(RDKafkaErrorCode::from(err)))
        }
    }
}

fn bytes<'a>(data: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: librdkafka's pointer and length of a key or payload, alive with the message.
    (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

impl Message for FetchedRecord<'_> {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        let message = self.message();
        bytes(message.key, message.key_len)
    }

    fn payload(&self) -> Option<&[u8]> {
        let message = self.message();
        bytes(message.payload, message.len)
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let message = &*self.ptr;
        (!message.payload.is_null())
            .then(|| std::slice::from_raw_parts_mut(message.payload.cast::<u8>(), message.len))
    }

    fn topic(&self) -> &str {
        // SAFETY: the topic handle lives as long as the message.
        unsafe {
            let name = rdsys::rd_kafka_topic_name(self.message().rkt);
            if name.is_null() {
                return "";
            }
            CStr::from_ptr(name).to_str().unwrap_or("")
        }
    }

    fn partition(&self) -> i32 {
        self.message().partition
    }

    fn offset(&self) -> i64 {
        self.message().offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message.
        let millis = unsafe { rdsys::rd_kafka_message_timestamp(self.ptr, &mut kind) };
        match kind {
            _ if millis == -1 => Timestamp::NotAvailable,
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(millis)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(millis)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => {
                Timestamp::NotAvailable
            }
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        let mut headers = ptr::null_mut();
        // SAFETY: a live message; `BorrowedHeaders` is rust-rdkafka's zero-sized view of a native
        // header list, made from its pointer exactly as rust-rdkafka makes it.
        unsafe {
            let found = rdsys::rd_kafka_message_headers(self.ptr, &mut headers);
            (found == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && !headers.is_null())
                .then(|| &*(headers as *const BorrowedHeaders))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rdkafka::consumer::Consumer;
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use crate::config::KafkaSettings;
    use crate::stream::client::processor_consumer_config;
    use crate::stream::embedded::EmbeddedBroker;

    /// Ten records in each of two partitions, the third of each with a header and a timestamp.
    fn broker_with_records() -> (EmbeddedBroker, KafkaSettings) {
        let mut settings = KafkaSettings::default();
        EmbeddedBroker::tune_client_settings(&mut settings);
        let broker = EmbeddedBroker::start(&settings, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .unwrap();
        for partition in 0..2 {
            for n in 0..10 {
                let key = format!("user-{partition}");
                let payload = format!("{partition}:{n}");
                let mut record = BaseRecord::to(&settings.input_topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&payload);
                if n == 2 {
                    record =
                        record
                            .timestamp(1_700_000_000_000)
                            .headers(OwnedHeaders::new().insert(Header {
                                key: "traceparent",
                                value: Some("00-abc-def-01"),
                            }));
                }
                producer.send(record).unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        (broker, settings)
    }

    /// A consumer of the input topic (not yet assigned anything) and its fetch queue.
    fn consumer_with_queue(
        broker: &EmbeddedBroker,
        settings: &KafkaSettings,
    ) -> (BaseConsumer, FetchQueue) {
        let consumer: BaseConsumer =
            processor_consumer_config(settings, broker.bootstrap_servers())
                .create()
                .unwrap();
        let queue = FetchQueue::new(&consumer, &settings.input_topic).unwrap();
        (consumer, queue)
    }

    fn assign_both(consumer: &BaseConsumer, topic: &str) {
        let mut list = TopicPartitionList::new();
        for partition in 0..2 {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
    }

    #[test]
    fn forwarded_partitions_arrive_in_batches_in_order_with_their_fields() {
        let (broker, settings) = broker_with_records();
        let topic = &settings.input_topic;
        let (consumer, queue) = consumer_with_queue(&broker, &settings);
        queue.forward(&[0, 1]);
        assert!(queue.has_partitions());
        assign_both(&consumer, topic);

        let mut batch = FetchedBatch::with_capacity(8);
        let mut seen: Vec<(i32, i64, String)> = Vec::new();
        let mut largest_batch = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 20 && Instant::now() < deadline {
            // Nothing may come through the consumer's own queue: the partitions forward.
            if let Some(Ok(message)) = consumer.poll(Duration::ZERO) {
                panic!(
                    "record at offset {} bypassed the fetch queue",
                    message.offset()
                );
            }
            largest_batch = largest_batch.max(queue.fill(&mut batch, Duration::from_millis(100)));
            for record in batch.iter() {
                if record.error().is_some() {
                    continue;
                }
                let payload = String::from_utf8(record.payload().unwrap().to_vec()).unwrap();
                assert_eq!(record.topic(), topic);
                assert_eq!(
                    record.key(),
                    Some(format!("user-{}", record.partition()).as_bytes())
                );
                if record.offset() == 2 {
                    assert_eq!(record.timestamp(), Timestamp::CreateTime(1_700_000_000_000));
                    let header = record.headers().unwrap().get(0);
                    assert_eq!(header.key, "traceparent");
                    assert_eq!(header.value, Some(b"00-abc-def-01".as_slice()));
                } else {
                    assert!(record.headers().is_none());
                }
                seen.push((record.partition(), record.offset(), payload));
            }
        }
        assert_eq!(seen.len(), 20, "every record arrives once: {seen:?}");
        assert!(largest_batch > 1, "records came one at a time");
        assert!(largest_batch <= 8, "a batch overflowed its capacity");
        for partition in 0..2 {
            let in_partition: Vec<String> = seen
                .iter()
                .filter(|(p, _, _)| *p == partition)
                .map(|(_, _, payload)| payload.clone())
                .collect();
            let expected: Vec<String> = (0..10).map(|n| format!("{partition}:{n}")).collect();
            assert_eq!(in_partition, expected, "partition {partition} out of order");
        }
        drop(batch);
        queue.close();
        queue.close();
        assert!(!queue.has_partitions());
    }

    #[test]
    fn unforwarded_partitions_go_back_to_the_consumer() {
        let (broker, settings) = broker_with_records();
        let topic = &settings.input_topic;
        let (consumer, queue) = consumer_with_queue(&broker, &settings);
        queue.forward(&[0, 1]);
        queue.unforward(&[1]);
        assert!(queue.has_partitions());
        assign_both(&consumer, topic);

        let mut batch = FetchedBatch::with_capacity(32);
        let (mut forwarded, mut polled) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        while forwarded.len() + polled.len() < 20 && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(10)) {
                polled.push(message.partition());
            }
            queue.fill(&mut batch, Duration::from_millis(10));
            forwarded.extend(
                batch
                    .iter()
                    .filter(|record| record.error().is_none())
                    .map(|record| record.partition()),
            );
        }
        assert_eq!(forwarded, vec![0; 10]);
        assert_eq!(polled, vec![1; 10]);
        queue.unforward(&[0]);
        assert!(!queue.has_partitions());
        batch.clear();
        queue.close();
    }
}
