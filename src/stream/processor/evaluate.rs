//! Deciding records: decode → match → rules → serialize the outputs, for a batch of records copied out of
//! the consumer. This is the part of the per-record work that needs no Kafka client, so it can run on
//! other threads than the consumer's ([`super::workers`]); producing, progress and checkpoints stay with
//! the consumer's thread.
//!
//! Every partition is decided by one evaluator, and a batch keeps its records in the order they were
//! polled, so each partition (and so each user) is still decided in order.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::message::{BorrowedHeaders, Message};

use super::trace::RecordTrace;
use crate::geofence::prefetch::prefetch;
use crate::promo::timestamp::SystemClock;
use crate::promo::{
    decode_gps_event, Catalog, DecisionTime, DecodeError, EligibilityEvent, EpochMs, Outcome,
    Scratch, SharedCatalog,
};
use crate::stream::changelog::PartitionUsers;
use crate::stream::lock;
use crate::telemetry::{PipelineMetrics, SecondsCounter};

/// The users of the partitions one evaluator decides. The consumer's thread reads and replaces them only
/// while none of their records is in flight (checkpoints, rewinds and rebalances drain first), so the
/// mutex is only ever held by one side at a time; it exists to make that handover safe.
pub(super) type SharedUsers = Arc<Mutex<HashMap<i32, PartitionUsers>>>;

/// One input record in a batch: where it came from, and where its bytes are in the batch.
pub(super) struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The record's own timestamp: decisions are clamped against it, not the wall clock, so that a
    /// replay after a crash decides exactly as the first run did.
    pub timestamp_ms: Option<i64>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    /// Stage timings are taken for this record.
    pub sampled: bool,
    pub trace: Option<RecordTrace>,
}

/// What was decided for a record.
pub(super) enum Verdict {
    /// Its partition is not decided here (revoked in the meantime): no output, no progress.
    Skipped,
    DeadLetter(DecodeError),
    Decided {
        outcome: Outcome,
        matched_any: bool,
        /// Its outputs: indices into [`Batch::outputs`].
        outputs: Range<usize>,
    },
}

/// Records copied out of the consumer, and after evaluation what was decided for each. Batches are
/// reused: clearing keeps every buffer's capacity.
#[derive(Default)]
pub(super) struct Batch {
    pub records: Vec<Record>,
    bytes: Vec<u8>,
    /// One per record, once evaluated.
    pub verdicts: Vec<Verdict>,
    pub outputs: Vec<EligibilityEvent>,
    /// Each output serialized as the output topic carries it: `encoded[encoded_at[i]]` for output `i`.
    encoded: Vec<u8>,
    encoded_at: Vec<Range<usize>>,
}

impl Batch {
    pub fn push(
        &mut self,
        message: &impl Message<Headers = BorrowedHeaders>,
        sampled: bool,
        trace: Option<RecordTrace>,
    ) {
        let key = message.key().map(|key| self.copy(key));
        let payload = message.payload().map(|payload| self.copy(payload));
        self.records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key,
            payload,
            sampled,
            trace,
        });
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    pub fn key(&self, record: &Record) -> Option<&[u8]> {
        record.key.clone().map(|range| &self.bytes[range])
    }

    pub fn payload(&self, record: &Record) -> Option<&[u8]> {
        record.payload.clone().map(|range| &self.bytes[range])
    }

    /// Output `index` as JSON.
    pub fn encoded(&self, index: usize) -> &[u8] {
        &self.encoded[self.encoded_at[index].clone()]
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
        self.verdicts.clear();
        self.outputs.clear();
        self.encoded.clear();
        self.encoded_at.clear();
    }
}

/// Decides the records of its partitions against the current catalog and its users' state.
pub(super) struct Evaluator {
    catalog: Arc<SharedCatalog>,
    users: SharedUsers,
    metrics: PipelineMetrics,
    busy: SecondsCounter,
    max_event_bytes: usize,
    scratch: Scratch,
}

impl Evaluator {
    #[must_use]
    pub fn new(
        catalog: Arc<SharedCatalog>,
        users: SharedUsers,
        metrics: PipelineMetrics,
        max_event_bytes: usize,
        name: &str,
    ) -> Self {
        Self {
            catalog,
            users,
            busy: metrics.worker_busy(name),
            metrics,
            max_event_bytes,
            scratch: Scratch::default(),
        }
    }

    /// Fills in `batch.verdicts` (one per record, in order), the outputs and their JSON.
    pub fn evaluate(&mut self, batch: &mut Batch) {
        let started = Instant::now();
        let Batch {
            records,
            bytes,
            verdicts,
            outputs,
            encoded,
            encoded_at,
        } = batch;
        verdicts.clear();
        // One catalog for the whole batch: a fence change applies from the next batch on.
        let catalog = self.catalog.load_full();
        let shared = self.users.clone();
        let mut users = lock(&shared);
        // Each record's user looked up once ahead (by the record key, which is the user id for keyed
        // producers) and its standings prefetched: the lookups are independent, so their cache misses
        // overlap here instead of stalling each record's evaluation in turn. A batch holds runs of one
        // partition's records, so the partition's map is looked up once per run.
        let mut run: Option<(i32, Option<&PartitionUsers>)> = None;
        for record in records.iter() {
            let partition_users = match run {
                Some((partition, found)) if partition == record.partition => found,
                _ => {
                    run.insert((record.partition, users.get(&record.partition)))
                        .1
                }
            };
            let user_id = record.key.clone().map(|r| std::str::from_utf8(&bytes[r]));
            if let (Some(partition_users), Some(Ok(user_id))) = (partition_users, user_id) {
                if let Some(user) = partition_users.get(user_id) {
                    prefetch(user.state.standings.as_ptr());
                }
            }
        }
        for record in records.iter_mut() {
            let Some(partition_users) = users.get_mut(&record.partition) else {
                verdicts.push(Verdict::Skipped);
                continue;
            };
            let first_output = outputs.len();
            let payload = record.payload.clone().map_or(&[][..], |r| &bytes[r]);
            let key = record.key.clone().map(|r| &bytes[r]);
            let verdict = self.decide(&catalog, partition_users, record, key, payload, outputs);
            for output in &outputs[first_output..] {
                let start = encoded.len();
                // Serializing plain data into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *encoded, output);
                encoded_at.push(start..encoded.len());
            }
            verdicts.push(verdict);
        }
        self.busy.inc_by(started.elapsed().as_secs_f64());
    }

    fn decide(
        &mut self,
        catalog: &Catalog,
        users: &mut PartitionUsers,
        record: &mut Record,
        key: Option<&[u8]>,
        payload: &[u8],
        outputs: &mut Vec<EligibilityEvent>,
    ) -> Verdict {
        let started = record.sampled.then(Instant::now);
        let decoded = decode_gps_event(key, payload, self.max_event_bytes);
        let decoded_at = record.sampled.then(Instant::now);
        let event = match decoded {
            Ok(event) => event,
            Err(error) => {
                if let Some(trace) = &mut record.trace {
                    trace.dead_lettered(error.code(), &error.to_string());
                }
                return Verdict::DeadLetter(error);
            }
        };
        if let Some(trace) = &mut record.trace {
            trace.decoded(&event.user_id);
        }
        let time = DecisionTime {
            reference: record
                .timestamp_ms
                .map_or_else(EpochMs::now, EpochMs::from_millis),
            clock: SystemClock,
        };
        let user = match users.get_mut(&*event.user_id) {
            Some(user) => user,
            None => users.entry(event.user_id.as_ref().into()).or_default(),
        };
        let first_output = outputs.len();
        let decision = catalog.decide(&mut user.state, &event, time, &mut self.scratch, outputs);
        if decision.outcome == Outcome::Applied {
            user.unflushed_offset = Some(record.offset);
        }
        if let Some(trace) = &mut record.trace {
            trace.decided(
                decision.outcome,
                catalog.matched_fence_ids(&self.scratch),
                outputs.len() - first_output,
            );
        }
        if let (Some(started), Some(decoded_at)) = (started, decoded_at) {
            self.metrics
                .decode_seconds
                .observe((decoded_at - started).as_secs_f64());
            self.metrics
                .evaluate_seconds
                .observe(decoded_at.elapsed().as_secs_f64());
        }
        Verdict::Decided {
            outcome: decision.outcome,
            matched_any: decision.matched_any,
            outputs: first_output..outputs.len(),
        }
    }
}
