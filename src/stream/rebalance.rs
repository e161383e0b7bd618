//! The consumer's group callbacks: drain and commit before partitions go, restore state when they come,
//! and report the lag librdkafka's statistics carry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;

use crate::stream::lock;
use crate::telemetry::PipelineMetrics;

/// What happens to the processor's state when partitions come and go (the processor's shared state
/// implements it; the callbacks run inside `poll`, on the processor's thread).
pub trait PartitionHandler {
    /// Before `revoked` go: checkpoint what they processed (unless the assignment is already `lost`,
    /// when the next owner replays it), then forget them.
    fn revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        revoked: &[i32],
        lost: bool,
    );
    /// After `assigned` come: restore their users as of the committed positions.
    fn assign<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, assigned: &[i32]);
    /// The group's committed offsets as librdkafka last saw them (assigned partitions with a commit).
    fn committed_seen(&mut self, _committed: &[(i32, i64)]) {}
}

/// The consumer's callbacks: drain and commit before partitions go, restore state when they come.
pub struct GroupContext<H> {
    handler: Arc<Mutex<H>>,
    input_topic: String,
    metrics: PipelineMetrics,
    /// An asynchronous commit failed since the processor last asked: its positions must be committed
    /// again even if no record arrives (see `take_commit_failure`).
    commit_failed: AtomicBool,
}

impl<H> GroupContext<H> {
    #[must_use]
    pub fn new(handler: Arc<Mutex<H>>, input_topic: String, metrics: PipelineMetrics) -> Self {
        Self {
            handler,
            input_topic,
            metrics,
            commit_failed: AtomicBool::new(false),
        }
    }

    /// Whether an asynchronous commit was reported failed since the last call. Where librdkafka
    /// delivers commit results to the consumer's poll, this catches a failed commit at once; it is not
    /// relied on (in the mock-cluster failover test no result ever arrived): `committed_seen`, from the
    /// statistics, is what makes a lost commit be sent again.
    pub fn take_commit_failure(&self) -> bool {
        self.commit_failed.swap(false, Ordering::Relaxed)
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.input_topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl<H: PartitionHandler + Send + 'static> ClientContext for GroupContext<H> {
    fn stats(&self, statistics: Statistics) {
        // librdkafka keeps reporting partitions it gave up (with their last lag): only the ones
        // assigned now count.
        let assigned: Vec<&rdkafka::statistics::Partition> = statistics
            .topics
            .get(&self.input_topic)
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.desired)
                    .collect()
            })
            .unwrap_or_default();
        let lags: Vec<(i32, i64)> = assigned
            .iter()
            .filter(|p| p.consumer_lag >= 0)
            .map(|p| (p.partition, p.consumer_lag))
            .collect();
        self.metrics
            .consumer_lag
            .set(lags.iter().map(|(_, lag)| lag).sum());
        self.metrics.set_partition_lags(&lags);
        // The result of an asynchronous commit is not reliably reported back (librdkafka answers it on
        // the main queue; in the failover test no callback ever arrived, and a commit refused during a
        // rebalance left the survivor's positions uncommitted for good). The statistics carry what the
        // group really has committed: the processor compares it with what it believes is durable.
        let committed: Vec<(i32, i64)> = assigned
            .iter()
            .filter(|p| p.committed_offset >= 0)
            .map(|p| (p.partition, p.committed_offset))
            .collect();
        if !committed.is_empty() {
            lock(&self.handler).committed_seen(&committed);
        }
    }
}

impl<H: PartitionHandler + Send + 'static> ConsumerContext for GroupContext<H> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.metrics.rebalances.inc();
            let revoked = self.partitions(list);
            lock(&self.handler).revoke(consumer, &revoked, consumer.assignment_lost());
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = self.partitions(list);
                if !assigned.is_empty() {
                    lock(&self.handler).assign(consumer, &assigned);
                }
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        // librdkafka reports a commit whose partitions failed one by one with per-partition errors,
        // not always with an overall one.
        tracing::debug!(?result, offsets = ?offsets.elements().iter().map(|e| (e.partition(), e.offset(), e.error().err())).collect::<Vec<_>>(), "offset commit result");
        let failed_partitions: Vec<i32> = offsets
            .elements()
            .iter()
            .filter(|e| e.error().is_err())
            .map(|e| e.partition())
            .collect();
        match result {
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(%error, "offset commit failed; committed again at the next checkpoint");
                self.commit_failed.store(true, Ordering::Relaxed);
            }
            Ok(()) if !failed_partitions.is_empty() => {
                tracing::warn!(partitions = ?failed_partitions,
                    "offset commit failed for some partitions; committed again at the next checkpoint");
                self.commit_failed.store(true, Ordering::Relaxed);
            }
            Ok(()) => {}
        }
    }
}
