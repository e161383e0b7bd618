//! librdkafka client configuration shared by every client this service creates.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::{Guarantee, KafkaSettings};
use crate::stream::error::StreamError;

/// Timeout for broker round trips that block the processor's loop (commits, transactions, restores,
/// metadata).
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Which kind of Kafka client a configuration is for; each gets the shared properties plus its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaClient {
    Consumer,
    Producer,
}

/// The base configuration: brokers, the pass-through properties, then the client kind's properties.
#[must_use]
pub fn client_config(settings: &KafkaSettings, brokers: &str, kind: KafkaClient) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config.set("client.id", "geopromo");
    let specific = match kind {
        KafkaClient::Consumer => &settings.consumer_properties,
        KafkaClient::Producer => &settings.producer_properties,
    };
    for (key, value) in settings.properties.iter().chain(specific) {
        config.set(key, value);
    }
    // A request in flight to a broker that vanished without closing the connection (a crashed host, a
    // partition; librdkafka's mock broker does it too) is given up only after this long, and until then
    // what it carried waits: a consumer's fetch holds the partitions that broker led, a producer's
    // produce request holds its records (librdkafka bounds it by this, not by `request.timeout.ms`).
    // librdkafka's 60 s stalled the failover test's output for 23-60 s after the leaders had moved
    // (docs/operations.md). A fetch waits `fetch.wait.max.ms` on top of it, so long polls are unaffected;
    // an idempotent producer's retry of a request that timed out is deduplicated by the broker.
    set_defaults(&mut config, &[("socket.timeout.ms", SOCKET_TIMEOUT_MS)]);
    config
}

/// librdkafka's `socket.timeout.ms` for every client this service creates, unless configured.
pub const SOCKET_TIMEOUT_MS: &str = "10000";

/// Fails with a clear message when the brokers cannot be reached or a topic is missing, instead of
/// letting librdkafka retry silently forever.
pub fn check_topics(
    settings: &KafkaSettings,
    brokers: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<(String, usize)>, StreamError> {
    let consumer: BaseConsumer = client_config(settings, brokers, KafkaClient::Consumer)
        .create()
        .map_err(StreamError::Client)?;
    // Metadata is asked for in short attempts, polling in between: librdkafka's own log lines (which
    // say why a broker cannot be reached: refused, TLS, SASL) arrive through the client's queue and
    // reach the log only when it is polled.
    let deadline = Instant::now() + timeout;
    let metadata = loop {
        let attempt = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(5));
        match consumer.fetch_metadata(None, attempt) {
            Ok(metadata) => break metadata,
            Err(source) => {
                consumer.poll(Duration::from_millis(50));
                if Instant::now() >= deadline {
                    return Err(StreamError::Unreachable {
                        brokers: brokers.to_owned(),
                        source,
                    });
                }
            }
        }
    };
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

/// Sets each property the operator did not set.
pub(crate) fn set_defaults(config: &mut ClientConfig, defaults: &[(&str, &str)]) {
    for (key, value) in defaults {
        if config.get(key).is_none() {
            config.set(*key, *value);
        }
    }
}

/// The processor's producer: idempotent, batched, and transactional in exactly-once mode (where
/// `transactional_id` must be unique and stable per instance).
pub fn processor_producer_config(
    settings: &KafkaSettings,
    brokers: &str,
    transactional_id: Option<&str>,
) -> Result<ClientConfig, StreamError> {
    let mut config = client_config(settings, brokers, KafkaClient::Producer);
    set_defaults(
        &mut config,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "100000"),
            ("compression.type", "lz4"),
        ],
    );
    if settings.guarantee == Guarantee::ExactlyOnce {
        let id = transactional_id.ok_or_else(|| {
            StreamError::Fatal(
                "exactly_once needs a transactional id unique and stable per instance \
                 (kafka.transactional_id)"
                    .into(),
            )
        })?;
        config.set("transactional.id", id);
    }
    Ok(config)
}

/// The largest record the processor's producer sends (`message.max.bytes`; librdkafka's default unless
/// configured): dead letters are cut to fit it.
#[must_use]
pub fn producer_message_limit(settings: &KafkaSettings, brokers: &str) -> usize {
    client_config(settings, brokers, KafkaClient::Producer)
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000)
}

/// The processor's group consumer. Offsets are committed by the processor only, after the outputs they
/// cover are acknowledged; in exactly-once mode it reads committed records only.
#[must_use]
pub fn processor_consumer_config(settings: &KafkaSettings, brokers: &str) -> ClientConfig {
    let mut config = client_config(settings, brokers, KafkaClient::Consumer);
    let isolation = if settings.guarantee == Guarantee::ExactlyOnce {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    set_defaults(
        &mut config,
        &[
            ("auto.offset.reset", "earliest"),
            ("fetch.max.bytes", "52428800"),
            ("max.partition.fetch.bytes", "4194304"),
            ("queued.min.messages", "200000"),
            // librdkafka's default (1 s) idles the loop after every full local queue.
            ("fetch.queue.backoff.ms", "5"),
            ("statistics.interval.ms", "5000"),
            ("isolation.level", isolation),
            // Incremental rebalances: a member joining or leaving moves only the partitions that change
            // owner, and the others keep flowing (and committing) meanwhile. The revoke callback commits
            // what is done before a partition goes, whichever strategy the operator picks.
            ("partition.assignment.strategy", "cooperative-sticky"),
        ],
    );
    if let Some(instance) = &settings.instance_id {
        set_defaults(&mut config, &[("group.instance.id", instance)]);
    }
    // Not overridable: the processor's correctness depends on them.
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_give_up_a_silent_broker_sooner_unless_configured() {
        let mut settings = KafkaSettings::default();
        let consumer = processor_consumer_config(&settings, "b:9092");
        assert_eq!(consumer.get("socket.timeout.ms"), Some("10000"));
        let producer = processor_producer_config(&settings, "b:9092", None).unwrap();
        assert_eq!(producer.get("socket.timeout.ms"), Some("10000"));
        settings
            .consumer_properties
            .insert("socket.timeout.ms".into(), "30000".into());
        let consumer = client_config(&settings, "b:9092", KafkaClient::Consumer);
        assert_eq!(consumer.get("socket.timeout.ms"), Some("30000"));
        let producer = client_config(&settings, "b:9092", KafkaClient::Producer);
        assert_eq!(producer.get("socket.timeout.ms"), Some("10000"));
    }

    #[test]
    fn the_processor_rebalances_cooperatively_and_joins_statically_when_named() {
        let mut settings = KafkaSettings::default();
        let config = processor_consumer_config(&settings, "b:9092");
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(config.get("group.instance.id"), None, "dynamic by default");

        settings.instance_id = Some("processor-1".into());
        settings
            .consumer_properties
            .insert("partition.assignment.strategy".into(), "range".into());
        settings
            .consumer_properties
            .insert("enable.auto.commit".into(), "true".into());
        let config = processor_consumer_config(&settings, "b:9092");
        assert_eq!(config.get("group.instance.id"), Some("processor-1"));
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("range"),
            "the operator may pick another strategy"
        );
        assert_eq!(
            config.get("enable.auto.commit"),
            Some("false"),
            "but not auto-commit: commits follow acknowledged outputs"
        );
    }
}
