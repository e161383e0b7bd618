//! Dev mode: librdkafka's in-process mock cluster, reachable over TCP by any Kafka client. Not durable:
//! it keeps only a bounded tail of each partition and forgets everything on exit.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::KafkaSettings;
use crate::stream::error::StreamError;

/// A running mock cluster with the service's topics created.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts `brokers` mock brokers on 127.0.0.1 and creates the input, output, dead-letter and state
    /// topics with `settings.embedded_partitions` partitions each.
    pub fn start(settings: &KafkaSettings, brokers: i32) -> Result<Self, StreamError> {
        let cluster = MockCluster::new(brokers).map_err(StreamError::Client)?;
        let bootstrap = cluster.bootstrap_servers();
        for topic in [
            &settings.input_topic,
            &settings.output_topic,
            &settings.dlq_topic,
            &settings.state_topic,
        ] {
            cluster
                .create_topic(topic, settings.embedded_partitions, 1)
                .map_err(StreamError::Client)?;
        }
        Ok(Self { cluster, bootstrap })
    }

    /// Client settings the mock cluster needs: it answers a fetch with no data only after
    /// `fetch.wait.max.ms` (it does not wake a waiting fetch when data arrives), so the default 500 ms
    /// would become the pipeline's latency. Properties already set are left alone.
    pub fn tune_client_settings(settings: &mut KafkaSettings) {
        settings
            .consumer_properties
            .entry("fetch.wait.max.ms".into())
            .or_insert_with(|| "5".into());
    }

    #[must_use]
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// For fault-injection tests and experiments.
    #[must_use]
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
