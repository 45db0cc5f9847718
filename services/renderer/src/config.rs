//! `[renderer]` configuration.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;
use tocsin_bus::KafkaConfig;
use tocsin_runtime::{HttpConfig, LogConfig, RedisConfig};

use crate::compliance::SenderProfile;

/// The renderer's defaults (`config/renderer.toml`), compiled in.
pub const DEFAULTS: &str = include_str!("../../../config/renderer.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub renderer: RendererConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RendererConfig {
    /// Consumer group of the renderer instances.
    pub group_id: String,
    /// Names this instance in logs and as Kafka client id; empty means `renderer-<pid>`.
    #[serde(default)]
    pub instance: String,
    /// Key of the signed unsubscribe, open and click links (the tracker holds the same).
    pub token_key: SecretString,
    /// Largest number of SMS parts when the job sets none.
    pub default_max_sms_parts: u32,
    /// Keep French SMS in GSM-7 where a look-alike exists (’ « » non-breaking spaces).
    pub normalise_sms: bool,
    /// How long a campaign's state is cached before it is read from Redis again.
    pub campaign_state_ttl_ms: u64,
    /// Template versions kept compiled.
    pub compiled_templates: usize,
    /// Sender identities by name; jobs name one, `default` otherwise.
    pub sender_profiles: BTreeMap<String, SenderProfile>,
}
