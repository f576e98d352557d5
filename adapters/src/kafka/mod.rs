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
