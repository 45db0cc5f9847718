//! What every Tocsin service does before its own work: its topics created, an idempotent
//! producer, a Redis connection, the ops server (`/metrics`, `/healthz`, `/readyz` for the
//! broker and Redis) on `[http] listen`, and a name for this instance.

use std::net::SocketAddr;

use prometheus::Registry;
use redis::aio::ConnectionManager;
use tocsin_runtime::shutdown::CancellationToken;
use tocsin_runtime::{HttpConfig, RedisConfig, http};

use crate::{BusError, BusMetrics, KafkaConfig, Producer, TopicSpec, admin};

/// A started service's shared parts. Register the service's own metrics in `registry`:
/// the ops server already serves it.
pub struct Base {
    pub registry: Registry,
    pub bus_metrics: BusMetrics,
    pub producer: Producer,
    pub redis: ConnectionManager,
    /// `configured`, or `<service>-<pid>-<8 random hex>` when that is empty.
    pub instance: String,
    /// Where the ops server listens.
    pub address: SocketAddr,
    /// The ops server; it stops with the shutdown token.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base")
            .field("instance", &self.instance)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating topics: {0}")]
    Topics(#[source] BusError),
    #[error("{0}")]
    Bus(#[from] BusError),
    #[error("connecting to Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("ops server on {listen}: {source}")]
    Http {
        listen: String,
        source: std::io::Error,
    },
}

/// Everything [`Base::start`] needs.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// `planner`, `renderer`, ...: names the instance when `instance` is empty.
    pub service: &'a str,
    pub instance: &'a str,
    pub kafka: &'a KafkaConfig,
    pub redis: &'a RedisConfig,
    pub http: &'a HttpConfig,
    /// The topics this service reads or writes, created when missing.
    pub topics: &'a [&'a TopicSpec],
}

/// A service's connections, before it serves anything: for a service that serves its
/// own routes beside the ops routes (the tracker), see [`Connected::ops_router`].
pub struct Connected {
    pub registry: Registry,
    pub bus_metrics: BusMetrics,
    pub producer: Producer,
    pub redis: ConnectionManager,
    pub instance: String,
    checks: Vec<Box<dyn tocsin_runtime::readiness::ReadinessCheck>>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Connected {
    /// Creates the topics, the producer and the Redis connection.
    pub async fn connect(spec: Spec<'_>) -> Result<Self, StartError> {
        let registry = Registry::new();
        let bus_metrics = BusMetrics::register(&registry).map_err(BusError::from)?;
        bus_metrics.declare_topics(spec.topics.iter().map(|t| t.name.as_str()));
        admin::ensure_topics(spec.kafka, spec.topics)
            .await
            .map_err(StartError::Topics)?;
        let instance = if spec.instance.is_empty() {
            // Unique even where every replica is PID 1 (containers): instances must never
            // share a name, they hold claims and leases under it.
            let random = uuid::Uuid::new_v4().simple().to_string();
            format!("{}-{}-{}", spec.service, std::process::id(), &random[..8])
        } else {
            spec.instance.to_owned()
        };
        let producer = Producer::new(spec.kafka, &instance, bus_metrics.clone())?;
        let redis =
            ConnectionManager::new(tocsin_runtime::readiness::redis_client(spec.redis)?).await?;
        let checks = admin::readiness_checks(spec.kafka, spec.redis)?;
        Ok(Connected {
            registry,
            bus_metrics,
            producer,
            redis,
            instance,
            checks,
        })
    }

    /// `/metrics`, `/healthz` and `/readyz` (broker and Redis), to serve, or to merge into
    /// a service's own router. Register the service's metrics in `registry` first or
    /// after: the router serves whatever the registry holds.
    pub fn ops_router(&mut self) -> axum::Router {
        http::ops_router(self.registry.clone(), std::mem::take(&mut self.checks))
    }
}

impl Base {
    /// Connects ([`Connected::connect`]) and serves the ops routes on `[http] listen`.
    pub async fn start(spec: Spec<'_>, shutdown: &CancellationToken) -> Result<Self, StartError> {
        let mut connected = Connected::connect(spec).await?;
        let (address, server) =
            http::spawn(&spec.http.listen, connected.ops_router(), shutdown.clone())
                .await
                .map_err(|source| StartError::Http {
                    listen: spec.http.listen.clone(),
                    source,
                })?;
        let Connected {
            registry,
            bus_metrics,
            producer,
            redis,
            instance,
            ..
        } = connected;
        tracing::info!(%address, instance, "{} listening", spec.service);
        Ok(Base {
            registry,
            bus_metrics,
            producer,
            redis,
            instance,
            address,
            server,
        })
    }
}
