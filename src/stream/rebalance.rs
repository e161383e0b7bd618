//! The consumer's group callbacks: drain and commit before partitions go, restore state when they come,
//! and report the lag librdkafka's statistics carry.

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;

use crate::stream::processor::{lock, Core};
use crate::telemetry::PipelineMetrics;

/// The consumer's callbacks: drain and commit before partitions go, restore state when they come.
pub struct GroupContext {
    pub(crate) core: Arc<Mutex<Core>>,
    pub(crate) input_topic: String,
    pub(crate) metrics: PipelineMetrics,
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
            let revoked = self.partitions(list);
            lock(&self.core).revoke(consumer, &revoked, consumer.assignment_lost());
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = self.partitions(list);
                if !assigned.is_empty() {
                    lock(&self.core).assign(consumer, &assigned);
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
