//! The consumer's group callbacks: drain and commit before partitions go, restore state when they come,
//! and report the lag librdkafka's statistics carry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::stream::fetch::FetchQueue;
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
    /// Before `assigned` are handed to the consumer: restore their users as of the committed positions,
    /// and return those positions (`None`: nothing committed), which is where fetching then starts.
    fn assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: &[i32],
    ) -> Vec<(i32, Option<i64>)>;
    /// The group's committed offsets of the assigned partitions as librdkafka last saw them (-1: none
    /// known, as until this member's first commit of a newly assigned partition lands).
    fn committed_seen(&mut self, _committed: &[(i32, i64)]) {}
}

/// The consumer's callbacks: drain and commit before partitions go, restore state when they come.
pub struct GroupContext<H> {
    handler: Arc<Mutex<H>>,
    input_topic: String,
    /// Where a partition with no committed offset starts (`auto.offset.reset`), made explicit so that
    /// fetching starts exactly where the restored state belongs (see `rebalance`).
    start_without_commit: Offset,
    metrics: PipelineMetrics,
    /// An asynchronous commit failed since the processor last asked: its positions must be committed
    /// again even if no record arrives (see `take_commit_failure`).
    commit_failed: AtomicBool,
    /// Whether the consumer reads committed records only: its log ends at the last stable offset.
    read_committed: bool,
    /// Where assigned partitions' records go when the processor takes them in batches.
    fetch_queue: OnceLock<Arc<FetchQueue>>,
}

impl<H> GroupContext<H> {
    #[must_use]
    pub fn new(
        handler: Arc<Mutex<H>>,
        input_topic: String,
        offset_reset: Option<&str>,
        metrics: PipelineMetrics,
    ) -> Self {
        Self {
            handler,
            input_topic,
            start_without_commit: start_without_commit(offset_reset),
            metrics,
            commit_failed: AtomicBool::new(false),
            read_committed: false,
            fetch_queue: OnceLock::new(),
        }
    }

    /// From now on, partitions are forwarded to `queue` before they are assigned and back when they
    /// are revoked. Set once, before the consumer's first poll; a second queue is ignored.
    pub fn forward_fetches_to(&self, queue: Arc<FetchQueue>) {
        let _ = self.fetch_queue.set(queue);
    }

    /// Measures lag to the last stable offset, as a consumer with `isolation.level` `read_committed`
    /// sees the log (librdkafka's default, `read_uncommitted`, reads to the high watermark).
    #[must_use]
    pub fn with_isolation(mut self, isolation_level: Option<&str>) -> Self {
        self.read_committed = isolation_level == Some("read_committed");
        self
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
            .filter_map(|p| {
                let end = if self.read_committed {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                partition_lag(p.consumer_lag, p.app_offset, end).map(|lag| (p.partition, lag))
            })
            .collect();
        self.metrics
            .consumer_lag
            .set(lags.iter().map(|(_, lag)| lag).sum());
        self.metrics.set_partition_lags(&lags);
        // The result of an asynchronous commit is not reliably reported back (librdkafka answers it on
        // the main queue; in the failover test no callback ever arrived, and a commit refused during a
        // rebalance left the survivor's positions uncommitted for good). The statistics carry what the
        // group really has committed: the processor compares it with what it believes is durable. A
        // partition assigned at an explicit offset has no committed offset there (-1001) until a
        // commit of this member succeeds, so "none known" counts as behind everything.
        let committed: Vec<(i32, i64)> = assigned
            .iter()
            .map(|p| (p.partition, p.committed_offset.max(-1)))
            .collect();
        if !committed.is_empty() {
            lock(&self.handler).committed_seen(&committed);
        }
    }
}

/// The lag of one assigned partition: librdkafka's (the log's end − the group's committed offset) when
/// it has one. It has none for a partition this member was assigned at an explicit offset until its
/// first commit of it lands (librdkafka reports -1, which used to read as no lag at all, hiding a
/// backlog right after a takeover); then the lag is counted from the position consumed so far (less
/// than the durable lag by the few batches in flight). Unknown (`None`) until the partition's end has
/// been fetched and a record consumed.
fn partition_lag(reported: i64, consumed: i64, end: i64) -> Option<i64> {
    if reported >= 0 {
        return Some(reported);
    }
    (consumed >= 0 && end >= 0).then(|| (end - consumed).max(0))
}

fn unassign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    revoked: &TopicPartitionList,
    cooperative: bool,
) -> KafkaResult<()> {
    if cooperative {
        consumer.incremental_unassign(revoked)
    } else {
        consumer.unassign()
    }
}

/// The explicit start of a partition nobody committed, from `auto.offset.reset` (librdkafka's names
/// and aliases; unset means its default, `latest`). `error` stays librdkafka's to raise.
fn start_without_commit(offset_reset: Option<&str>) -> Offset {
    match offset_reset {
        Some("smallest" | "earliest" | "beginning") => Offset::Beginning,
        Some("error") => Offset::Invalid,
        _ => Offset::End,
    }
}

impl<H: PartitionHandler + Send + 'static> ConsumerContext for GroupContext<H> {
    /// Replaces rust-rdkafka's default so that assigned partitions start at explicit offsets: the ones
    /// the state was restored for. Left to itself, librdkafka fetches the committed offsets on its own,
    /// after this callback; a commit this member sent before its assignment was lost can land in
    /// between, and fetching would then start past records whose effect the restored state lacks (a
    /// user who left and came back in those records would never be told they are eligible again).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let assigned = self.partitions(tpl);
            if let Some(queue) = self.fetch_queue.get() {
                queue.forward(&assigned);
            }
            if !assigned.is_empty() {
                let starts = lock(&self.handler).assign(consumer, &assigned);
                for (partition, committed) in starts {
                    let start = committed.map_or(self.start_without_commit, Offset::Offset);
                    if let Err(error) =
                        tpl.set_partition_offset(&self.input_topic, partition, start)
                    {
                        tracing::error!(%error, partition, "setting where an assigned partition starts");
                    }
                }
            }
            if cooperative {
                consumer.incremental_assign(tpl)
            } else {
                consumer.assign(tpl)
            }
        } else {
            if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                self.metrics.rebalances.inc();
            } else {
                tracing::error!(error = %RDKafkaErrorCode::from(err), "rebalance error");
            }
            let revoked = self.partitions(tpl);
            lock(&self.handler).revoke(consumer, &revoked, consumer.assignment_lost());
            if let Some(queue) = self.fetch_queue.get() {
                queue.unforward(&revoked);
            }
            unassign(consumer, tpl, cooperative)
        };
        if let Err(error) = result {
            tracing::error!(%error, "applying a rebalance");
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::consumer::CommitMode;
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    use super::*;
    use crate::config::KafkaSettings;
    use crate::stream::client::processor_consumer_config;
    use crate::stream::embedded::EmbeddedBroker;

    /// Restores nothing and says each partition's state belongs at a fixed position.
    struct RestoredAt(Vec<(i32, Option<i64>)>);

    impl PartitionHandler for RestoredAt {
        fn revoke<C: ConsumerContext>(&mut self, _: &BaseConsumer<C>, _: &[i32], _: bool) {}

        fn assign<C: ConsumerContext>(
            &mut self,
            _: &BaseConsumer<C>,
            assigned: &[i32],
        ) -> Vec<(i32, Option<i64>)> {
            self.0
                .iter()
                .filter(|(partition, _)| assigned.contains(partition))
                .copied()
                .collect()
        }
    }

    #[test]
    fn fetching_starts_where_the_state_was_restored_not_where_the_group_committed_since() {
        first_offsets_read_with(None);
    }

    /// Operators may choose an eager strategy; the explicit starts hold there too.
    #[test]
    fn the_restored_starts_hold_with_an_eager_assignment_strategy() {
        first_offsets_read_with(Some("range"));
    }

    fn first_offsets_read_with(strategy: Option<&str>) {
        let mut settings = KafkaSettings::default();
        EmbeddedBroker::tune_client_settings(&mut settings);
        if let Some(strategy) = strategy {
            settings
                .consumer_properties
                .insert("partition.assignment.strategy".into(), strategy.into());
        }
        let broker = EmbeddedBroker::start(&settings, 1).unwrap();
        let brokers = broker.bootstrap_servers();
        let topic = settings.input_topic.clone();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        for partition in 0..2 {
            for n in 0..10 {
                producer
                    .send(
                        BaseRecord::<[u8], [u8]>::to(&topic)
                            .partition(partition)
                            .payload(format!("{n}").as_bytes()),
                    )
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        // The group's committed offsets are what a commit landing after the state restore left: not
        // where the restored state belongs.
        let committer: BaseConsumer = processor_consumer_config(&settings, brokers)
            .create()
            .unwrap();
        let mut committed = TopicPartitionList::new();
        committed
            .add_partition_offset(&topic, 0, Offset::Offset(2))
            .unwrap();
        committed
            .add_partition_offset(&topic, 1, Offset::Offset(3))
            .unwrap();
        committer.commit(&committed, CommitMode::Sync).unwrap();
        drop(committer);

        let handler = Arc::new(Mutex::new(RestoredAt(vec![(0, Some(6)), (1, None)])));
        let config = processor_consumer_config(&settings, brokers);
        let consumer: BaseConsumer<GroupContext<RestoredAt>> = config
            .create_with_context(GroupContext::new(
                handler,
                topic.clone(),
                config.get("auto.offset.reset"),
                PipelineMetrics::default(),
            ))
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let mut first_offsets = [None, None];
        let deadline = Instant::now() + Duration::from_secs(30);
        while first_offsets.contains(&None) && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let first = &mut first_offsets[usize::try_from(message.partition()).unwrap()];
                first.get_or_insert(message.offset());
            }
        }
        // Partition 1 has no restored position: it starts as `auto.offset.reset` (earliest) says.
        assert_eq!(first_offsets, [Some(6), Some(0)]);
    }

    #[test]
    fn a_partition_without_a_known_commit_lags_from_its_consumed_position() {
        // The group's commit is known: librdkafka's figure stands.
        assert_eq!(partition_lag(40, 90, 100), Some(40));
        // Assigned at an explicit offset, nothing committed by this member yet: the backlog shows.
        assert_eq!(partition_lag(-1, 30, 100), Some(70));
        // Fetched to the end: no lag, never a negative one.
        assert_eq!(partition_lag(-1, 101, 100), Some(0));
        // Nothing consumed or the end not fetched yet: unknown, not zero.
        assert_eq!(partition_lag(-1, -1001, 100), None);
        assert_eq!(partition_lag(-1, 30, -1001), None);
    }

    #[test]
    fn a_partition_nobody_committed_starts_as_the_offset_reset_says() {
        assert_eq!(start_without_commit(Some("earliest")), Offset::Beginning);
        assert_eq!(start_without_commit(Some("smallest")), Offset::Beginning);
        assert_eq!(start_without_commit(Some("latest")), Offset::End);
        assert_eq!(start_without_commit(None), Offset::End);
        assert_eq!(start_without_commit(Some("error")), Offset::Invalid);
    }
}
