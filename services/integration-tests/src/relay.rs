//! The relay fixture: `tocsin.segments` in, one `Feedback(queued)` per event out.

use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;
use tocsin_bus::admin;
use tocsin_bus::consumer::ConsumerSpec;
use tocsin_bus::{BusMetrics, HandleError, Handler, Inbound, KafkaConfig, Producer};
use tocsin_contracts::v1;
use tocsin_runtime::http;
use tocsin_runtime::shutdown::CancellationToken;
use tocsin_runtime::{HttpConfig, LogConfig, RedisConfig};

/// The shape every service's configuration shares, plus `[relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub relay: RelaySection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Consumer group.
    pub group_id: String,
    /// Written into every output's `meta.source`, so a test knows which instance handled
    /// which message.
    pub instance: String,
}

/// The relay's own defaults (what `config/<service>.toml` is for a real service).
pub const DEFAULTS: &str = r#"
[relay]
group_id = "tocsin-relay"
instance = "relay"
"#;

struct Relay {
    producer: Producer,
    output_topic: String,
    instance: String,
}

impl Handler for Relay {
    async fn handle(&self, message: &Inbound) -> Result<(), HandleError> {
        let event: v1::SegmentEvent = message.decode()?;
        let event_id = event.meta.map(|m| m.event_id).unwrap_or_default();
        let feedback = v1::Feedback {
            meta: Some(v1::EventMeta {
                event_id: event_id.clone(),
                occurred_at: Some(tocsin_contracts::timestamp_now()),
                source: self.instance.clone(),
            }),
            kind: v1::FeedbackKind::Queued.into(),
            contact_id: event.contact_id.clone(),
            detail: format!("{}:{}", message.partition, message.offset),
            ..Default::default()
        };
        self.producer
            .publish(
                &self.output_topic,
                &event.contact_id,
                &event_id,
                &feedback,
                &message.trace(),
            )
            .await
            .map_err(HandleError::transient)?;
        Ok(())
    }
}

/// Runs the relay until `shutdown`: creates missing topics, serves `/metrics`, `/healthz`
/// and `/readyz`, consumes, and on shutdown finishes in-flight messages and commits.
pub async fn run(
    config: RelayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = tocsin_runtime::shutdown::token(shutdown);
    let registry = prometheus::Registry::new();
    let metrics = BusMetrics::register(&registry)?;
    let topics = &config.kafka.topics;
    admin::ensure_topics(
        &config.kafka,
        &[&topics.segments, &topics.feedback, &topics.dlq],
    )
    .await
    .context("creating topics")?;
    let producer = Producer::new(&config.kafka, &config.relay.instance, metrics.clone())?;

    let checks = admin::readiness_checks(&config.kafka, &config.redis)?;
    let (address, server) = http::spawn(
        &config.http.listen,
        http::ops_router(registry, checks),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%address, "ops server listening");

    let spec = ConsumerSpec {
        group_id: config.relay.group_id.clone(),
        client_id: config.relay.instance.clone(),
        topics: vec![topics.segments.name.clone()],
        dlq_topic: topics.dlq.name.clone(),
        low_latency: false,
    };
    let handler = Arc::new(Relay {
        producer: producer.clone(),
        output_topic: topics.feedback.name.clone(),
        instance: config.relay.instance.clone(),
    });
    let consumed = tocsin_bus::run_consumer(
        &config.kafka,
        &spec,
        handler,
        producer,
        metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    server.await??;
    consumed?;
    Ok(())
}

/// For tests that want the relay in-process.
pub fn spawn(
    config: RelayConfig,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = CancellationToken::new();
    let wait = stop.clone();
    let handle = tokio::spawn(run(config, async move { wait.cancelled().await }));
    (stop, handle)
}
