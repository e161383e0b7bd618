//! librdkafka client configuration shared by every client this service creates.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::KafkaSettings;
use crate::stream::processor::StreamError;

/// Which client a configuration is for; each gets the shared properties plus its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
}

/// The base configuration: brokers, the pass-through properties, then the role's properties.
#[must_use]
pub fn client_config(settings: &KafkaSettings, brokers: &str, role: Role) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config.set("client.id", "geopromo");
    let specific = match role {
        Role::Consumer => &settings.consumer_properties,
        Role::Producer => &settings.producer_properties,
    };
    for (key, value) in settings.properties.iter().chain(specific) {
        config.set(key, value);
    }
    config
}

/// Fails with a clear message when the brokers cannot be reached or a topic is missing, instead of
/// letting librdkafka retry silently forever.
pub fn check_topics(
    settings: &KafkaSettings,
    brokers: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<(String, usize)>, StreamError> {
    let consumer: BaseConsumer = client_config(settings, brokers, Role::Consumer)
        .create()
        .map_err(StreamError::Client)?;
    let metadata =
        consumer
            .fetch_metadata(None, timeout)
            .map_err(|source| StreamError::Unreachable {
                brokers: brokers.to_owned(),
                source,
            })?;
    let mut found = Vec::new();
    for &topic in topics {
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                found.push((topic.to_owned(), t.partitions().len()));
            }
            _ => {
                return Err(StreamError::MissingTopic {
                    topic: topic.to_owned(),
                    brokers: brokers.to_owned(),
                })
            }
        }
    }
    Ok(found)
}
