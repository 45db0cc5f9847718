//! The idempotent producer.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tocsin_contracts::Event;
use tocsin_contracts::codec::{self, CONTENT_TYPE_PROTOBUF};

use crate::BusError;
use crate::config::KafkaConfig;
use crate::headers::{self, TraceContext};
use crate::metrics::BusMetrics;

pub use rdkafka::producer::future_producer::Delivery;

/// One message to produce, with the headers every Tocsin message carries.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub content_type: &'a str,
    pub event_id: &'a str,
    pub trace: &'a TraceContext,
}

/// Cheap to clone: every clone shares one librdkafka producer.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    metrics: BusMetrics,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producer")
    }
}

impl Producer {
    /// An idempotent producer (`enable.idempotence`: acks from all in-sync replicas, at most
    /// five requests in flight, no duplicate or reordering from its own retries).
    pub fn new(
        config: &KafkaConfig,
        client_id: &str,
        metrics: BusMetrics,
    ) -> Result<Self, BusError> {
        let inner: FutureProducer = config
            .client_config(client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .set("linger.ms", config.linger_ms.to_string())
            .create()?;
        Ok(Producer { inner, metrics })
    }

    /// Produces one message and resolves when the broker has acknowledged it.
    pub async fn send(&self, out: Outbound<'_>) -> Result<Delivery, BusError> {
        let trace = out.trace.to_header();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: headers::CONTENT_TYPE,
                value: Some(out.content_type),
            })
            .insert(Header {
                key: headers::EVENT_ID,
                value: Some(out.event_id),
            })
            .insert(Header {
                key: headers::TRACEPARENT,
                value: Some(&trace),
            });
        let record = FutureRecord::to(out.topic)
            .key(out.key)
            .payload(out.payload)
            .headers(headers);
        match self.inner.send(record, Timeout::Never).await {
            Ok(delivery) => {
                self.metrics.produced.with_label_values(&[out.topic]).inc();
                Ok(delivery)
            }
            Err((error, _message)) => {
                self.metrics
                    .produce_errors
                    .with_label_values(&[out.topic])
                    .inc();
                Err(BusError::Kafka(error))
            }
        }
    }

    /// Produces an event as protobuf, its `meta.event_id` (or `event_id`) as header.
    pub async fn publish<E: Event>(
        &self,
        topic: &str,
        key: &str,
        event_id: &str,
        event: &E,
        trace: &TraceContext,
    ) -> Result<Delivery, BusError> {
        let payload = codec::to_protobuf(event);
        self.send(Outbound {
            topic,
            key: key.as_bytes(),
            payload: &payload,
            content_type: CONTENT_TYPE_PROTOBUF,
            event_id,
            trace,
        })
        .await
    }

    /// Waits until every queued message is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner.flush(Timeout::After(timeout))?;
        Ok(())
    }
}
