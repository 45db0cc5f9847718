//! The load generator's configuration: the sections every service shares
//! (`config/default.toml`), through the same layers as a service (`TOCSIN_CONFIG`, then
//! `TOCSIN__SECTION__KEY` variables), so that it publishes to the topics the services
//! read, on the broker they use. It has no section of its own; its options are flags.

use serde::Deserialize;
use tocsin_bus::KafkaConfig;
use tocsin_runtime::{ConfigError, ConfigLoader, HttpConfig, LogConfig, RedisConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Brokers and topic names (`[kafka.topics.segments]`), as the planner reads them.
    pub kafka: KafkaConfig,
    /// Shared sections the generator does not use, accepted so that the layers every
    /// service reads are read here too, and a misspelt key in them is still refused.
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

impl Config {
    /// The layers as this process sees them, then `--brokers` if given.
    pub fn load(brokers: Option<&str>) -> Result<Self, ConfigError> {
        let mut config: Config = ConfigLoader::from_process(None).load()?;
        if let Some(brokers) = brokers {
            config.kafka.brokers = brokers.to_owned();
        }
        Ok(config)
    }
}
