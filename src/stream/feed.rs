//! The API's live feed: reads the output topic into the [`LiveHub`] that `GET /v1/events/stream` and the
//! activity counts are served from.
//!
//! Every API instance reads every partition itself (assigned, not subscribed: no consumer group, no
//! commits), starting one window back (`offsets_for_times`), so any instance can resume any reader and
//! each one's counts cover the whole fleet's output.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::client::{client_config, set_defaults, KafkaClient};
use crate::config::{Guarantee, KafkaSettings};
use crate::error::error_chain;
use crate::live::LiveHub;
use crate::promo::{EligibilityEvent, EpochMs};

/// How long metadata and offset lookups may take before the feed retries.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `kafka.output_topic` into `hub` until `shutdown`, retrying (with a warning) while the topic or
/// the brokers are not there yet.
pub async fn run_live_feed(
    kafka: KafkaSettings,
    brokers: String,
    hub: Arc<LiveHub>,
    shutdown: CancellationToken,
) {
    let mut wait = Duration::from_millis(200);
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            attempt = start(&kafka, &brokers, &hub) => attempt,
        };
        match attempt {
            Ok(consumer) => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = read(&consumer, &hub) => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, topic = %kafka.output_topic,
                    "live feed cannot start yet; retrying in {wait:?}");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn start(
    kafka: &KafkaSettings,
    brokers: &str,
    hub: &Arc<LiveHub>,
) -> Result<StreamConsumer, String> {
    let hub = hub.clone();
    let mut config = client_config(kafka, brokers, KafkaClient::Consumer);
    let isolation = if kafka.guarantee == Guarantee::ExactlyOnce {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    set_defaults(&mut config, &[("isolation.level", isolation)]);
    // Never joins the group (partitions are assigned) and never commits: the id only labels the client.
    config
        .set("group.id", format!("{}-live-feed", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest");
    let consumer: StreamConsumer = config
        .create()
        .map_err(|e| format!("cannot create the feed consumer: {}", error_chain(&e)))?;
    let topic = kafka.output_topic.clone();
    let window_ms = hub.limits().window_ms;
    // Metadata and offset lookups block: off the runtime's threads.
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), LOOKUP_TIMEOUT)
            .map_err(|e| format!("cannot read metadata: {}", error_chain(&e)))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!("topic {topic} does not exist (yet)"));
        }
        // High watermarks first: a partition with no record newer than the window start resumes from
        // here, so records produced while the lookups run are read, not skipped.
        let mut high = std::collections::HashMap::new();
        for &partition in &partitions {
            let (_, end) = consumer
                .fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT)
                .map_err(|e| format!("cannot read watermarks: {}", error_chain(&e)))?;
            high.insert(partition, end);
        }
        let since = EpochMs::now().as_millis() - window_ms;
        let mut wanted = TopicPartitionList::new();
        for &partition in &partitions {
            wanted
                .add_partition_offset(&topic, partition, Offset::Offset(since))
                .map_err(|e| e.to_string())?;
        }
        let found = consumer
            .offsets_for_times(wanted, LOOKUP_TIMEOUT)
            .map_err(|e| format!("cannot look up offsets by time: {}", error_chain(&e)))?;
        let mut assignment = TopicPartitionList::new();
        for element in found.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) if offset >= 0 => offset,
                // No record newer than the window start when looked up.
                _ => high.get(&element.partition()).copied().unwrap_or(0),
            };
            hub.start_partition(element.partition(), offset);
            assignment
                .add_partition_offset(&topic, element.partition(), Offset::Offset(offset))
                .map_err(|e| e.to_string())?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| format!("cannot assign partitions: {}", error_chain(&e)))?;
        tracing::info!(%topic, partitions = partitions.len(), window_s = window_ms / 1000,
            "live feed reading the output topic");
        Ok(consumer)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn read(consumer: &StreamConsumer, hub: &LiveHub) {
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let Some(payload) = message.payload() else {
                    continue;
                };
                match serde_json::from_slice::<EligibilityEvent>(payload) {
                    Ok(event) => {
                        let json = String::from_utf8_lossy(payload).into_owned();
                        hub.push(message.partition(), message.offset(), event, json);
                    }
                    Err(error) => tracing::warn!(
                        partition = message.partition(), offset = message.offset(), %error,
                        "live feed skipped a record that is not an eligibility event"
                    ),
                }
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "live feed read error; continuing");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
