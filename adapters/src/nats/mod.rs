//! NATS, whole: the `nats` source ([`source`]: core NATS or a durable
//! JetStream consumer, acked after commit), the `nats` target ([`target`]:
//! core or JetStream publish with `Nats-Msg-Id`) and the pure CloudEvents
//! NATS protocol binding they share ([`mapping`]).

pub mod mapping;
pub mod source;
pub mod target;

pub use target::{NatsSettings, NatsTarget};
