//! The Kafka bus every Tocsin service talks through, over rdkafka.
//!
//! Guarantees: the producer is idempotent (no duplicate from a producer retry); a consumer
//! stores a message's offset only once its handler has finished, which includes the
//! acknowledgement of everything the handler produced, and only in partition order
//! (at-least-once). A message whose handler fails permanently is copied to the dead-letter
//! topic with its origin and the reason, and its partition moves on; a transient failure is
//! retried with capped, jittered exponential backoff without holding up other keys.
//!
//! # Layout
//! - [`config`]: `[kafka]` configuration: brokers, tuning, topics (name, partitions,
//!   replication).
//! - [`admin`]: creates missing topics at start-up; the broker's readiness check.
//! - [`headers`]: the headers every message carries (`content-type`, `event-id`,
//!   `traceparent`) and the W3C trace context.
//! - [`producer`]: the idempotent producer; `publish` an event and await its ack.
//! - [`consumer`]: the at-least-once consume loop, the [`Handler`] trait, dead-lettering.
//! - [`offsets`]: which offset of a partition may be stored, given what is still in flight.
//! - [`lag`]: consumer lag per owned partition, from librdkafka's statistics.
//! - [`metrics`]: Prometheus counters and histograms of the above.
//! - [`service`]: what every service starts with (topics, producer, Redis, ops server).

pub mod admin;
pub mod config;
pub mod consumer;
pub mod headers;
pub mod lag;
pub mod metrics;
pub mod offsets;
pub mod producer;
pub mod service;

pub use config::{KafkaConfig, TopicSpec, Topics};
pub use consumer::{HandleError, Handler, Inbound, run_consumer, spawn_consumer};
pub use headers::TraceContext;
pub use metrics::BusMetrics;
pub use producer::{Outbound, Producer};

/// Errors of the bus itself (not of a handler).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("delivery to {topic} was cancelled (producer dropped)")]
    DeliveryCancelled { topic: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("readiness check: {0}")]
    Readiness(String),
}
