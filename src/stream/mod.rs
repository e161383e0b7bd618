//! The Kafka adapter: everything that talks to brokers.

pub mod changelog;
pub mod client;
pub mod embedded;
pub mod processor;
pub mod simulate;

pub use embedded::EmbeddedBroker;
pub use processor::{Processor, ProcessorReport, StreamError};
