//! What `/readyz` asks before saying a service may receive traffic.

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::ExposeSecret;

use crate::config::RedisConfig;

/// One dependency the service cannot work without.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Shown in `/readyz`'s answer.
    fn name(&self) -> &'static str;
    /// `Err` carries what is wrong, for the operator.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Redis answers `PING`.
#[derive(Debug, Clone)]
pub struct RedisPing {
    client: redis::Client,
}

impl RedisPing {
    pub fn new(config: &RedisConfig) -> Result<Self, redis::RedisError> {
        Ok(RedisPing {
            client: redis_client(config)?,
        })
    }
}

/// A Redis client with the password (kept apart from the URL) applied.
pub fn redis_client(config: &RedisConfig) -> Result<redis::Client, redis::RedisError> {
    let mut info: redis::ConnectionInfo = config.url.as_str().parse()?;
    if let Some(password) = &config.password {
        info.redis.password = Some(password.expose_secret().to_owned());
    }
    redis::Client::open(info)
}

impl ReadinessCheck for RedisPing {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let ping = async {
                let mut conn = self.client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match tokio::time::timeout(Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer to PING within 2 s".to_owned()),
            }
        })
    }
}
