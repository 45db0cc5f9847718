//! Topic creation and the broker's readiness check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use tocsin_runtime::RedisConfig;
use tocsin_runtime::readiness::{ReadinessCheck, RedisPing};

use crate::BusError;
use crate::config::{KafkaConfig, TopicSpec};

/// Creates the topics that do not exist yet (existing ones are left as they are), then
/// waits until the broker's metadata shows all of them with their partitions.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[&TopicSpec]) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = config.client_config("tocsin-admin").create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            t.settings.iter().fold(
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication),
                ),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    wait_for_metadata(config, topics).await
}

async fn wait_for_metadata(config: &KafkaConfig, topics: &[&TopicSpec]) -> Result<(), BusError> {
    let probe: BaseConsumer = config.client_config("tocsin-admin-probe").create()?;
    let wanted: Vec<(String, usize)> = topics
        .iter()
        .map(|t| (t.name.clone(), usize::try_from(t.partitions).unwrap_or(0)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    tokio::task::spawn_blocking(move || {
        loop {
            let metadata = probe.fetch_metadata(None, Duration::from_secs(5))?;
            let missing = wanted.iter().find(|(name, partitions)| {
                !metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == name && t.partitions().len() >= *partitions)
            });
            match missing {
                None => return Ok(()),
                Some((name, _)) if Instant::now() > deadline => {
                    return Err(BusError::CreateTopic {
                        topic: name.clone(),
                        reason: "not visible in the broker's metadata after 30 s".to_owned(),
                    });
                }
                Some(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .await
    .map_err(|e| BusError::CreateTopic {
        topic: String::new(),
        reason: e.to_string(),
    })?
}

/// The broker answers a metadata request.
#[derive(Clone)]
pub struct BrokerReachable {
    probe: Arc<BaseConsumer>,
}

impl std::fmt::Debug for BrokerReachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerReachable")
    }
}

impl BrokerReachable {
    pub fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        Ok(BrokerReachable {
            probe: Arc::new(config.client_config("tocsin-readiness").create()?),
        })
    }
}

impl ReadinessCheck for BrokerReachable {
    fn name(&self) -> &'static str {
        "broker"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let probe = self.probe.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                probe
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// What `/readyz` checks for a service that uses the broker and Redis.
pub fn readiness_checks(
    kafka: &KafkaConfig,
    redis: &RedisConfig,
) -> Result<Vec<Box<dyn ReadinessCheck>>, BusError> {
    Ok(vec![
        Box::new(BrokerReachable::new(kafka)?),
        Box::new(RedisPing::new(redis).map_err(|e| BusError::Readiness(e.to_string()))?),
    ])
}
