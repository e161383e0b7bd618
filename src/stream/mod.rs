//! The Kafka adapter: everything that talks to brokers.
//!
//! The processor ([`processor`]) is a shell around the pure core ([`crate::promo`]): [`client`] configures
//! the librdkafka clients, [`output`] produces with backpressure and tracks deliveries, [`dead_letter`]
//! shapes refused inputs, [`checkpoint`] decides what to commit and where to rewind, [`changelog`] keeps
//! per-user state, and [`rebalance`] reacts to the group. [`feed`] reads the output topic back for the
//! API's live stream.

pub mod changelog;
pub mod checkpoint;
pub mod client;
pub mod dead_letter;
pub mod embedded;
pub mod error;
pub mod feed;
pub mod fetch;
pub mod output;
pub mod processor;
pub mod rebalance;
pub mod simulate;
pub mod topics;

pub use embedded::EmbeddedBroker;
pub use error::StreamError;
pub use processor::{Processor, ProcessorReport};

/// Locks a mutex whose holder may have panicked: the data is plain bookkeeping, still usable.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
