//! Kafka, whole: the `kafka` source ([`source`]: a consumer group whose
//! offsets are committed after the events are), the `kafka` target
//! ([`target`]: an idempotent producer) and the pure CloudEvents Kafka
//! protocol binding they share ([`mapping`]). The client is librdkafka
//! (the `rdkafka` crate), built from source without OpenSSL.

pub mod mapping;
pub mod source;
pub mod target;

pub use source::{KafkaCredential, KafkaCredentials};
pub use target::{KafkaSettings, KafkaTarget};

/// Holds a librdkafka client and drops it off the async threads: closing a
/// consumer (leaving its group) or a producer (flushing) blocks, for as long
/// as the brokers take to answer, or time out when they are down.
pub(crate) struct DropOffThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DropOffThread<T> {
    pub(crate) fn new(v: T) -> Self {
        DropOffThread(Some(v))
    }
}

impl<T: Send + 'static> std::ops::Deref for DropOffThread<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Some(v) => v,
            // Only `drop` takes it.
            None => unreachable!("used after drop"),
        }
    }
}

impl<T: Send + 'static> Drop for DropOffThread<T> {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || drop(v));
                }
                Err(_) => drop(v),
            }
        }
    }
}
