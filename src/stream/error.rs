//! Why the stream side could not start or had to stop.

use rdkafka::error::KafkaError;

/// Why the processor could not start or had to stop. The cause chain is kept.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create a Kafka client")]
    Client(#[source] KafkaError),
    #[error("cannot reach the Kafka brokers at {brokers} (check kafka.brokers and the security properties)")]
    Unreachable {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "topic {topic:?} does not exist on {brokers}: create the topics with `geopromo topics create` (the \
         state topic compacted, with as many partitions as the input topic)"
    )]
    MissingTopic { topic: String, brokers: String },
    #[error("state topic {state:?} has {state_partitions} partitions but input topic {input:?} has {input_partitions}; they must match")]
    StatePartitions {
        state: String,
        state_partitions: usize,
        input: String,
        input_partitions: usize,
    },
    #[error("Kafka failed while {context}")]
    Kafka {
        context: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("{0}")]
    Fatal(String),
}

impl StreamError {
    pub(crate) fn kafka(context: &'static str, source: KafkaError) -> Self {
        Self::Kafka { context, source }
    }
}
