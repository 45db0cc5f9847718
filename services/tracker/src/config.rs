//! `[tracker]` configuration.

use secrecy::SecretString;
use serde::Deserialize;
use tocsin_bus::KafkaConfig;
use tocsin_runtime::{HttpConfig, LogConfig, RedisConfig};

/// The tracker's defaults (`config/tracker.toml`), compiled in.
pub const DEFAULTS: &str = include_str!("../../../config/tracker.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    /// The public routes and the ops routes share this listener.
    pub http: HttpConfig,
    pub log: LogConfig,
    pub tracker: TrackerConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerConfig {
    /// Names this instance in logs and as Kafka client id; empty means `tracker-<pid>`.
    #[serde(default)]
    pub instance: String,
    /// The renderer's `token_key`: links signed with another key do not verify.
    pub token_key: SecretString,
    /// How the world reaches the tracker; Twilio's signature covers the full URL it called,
    /// which the tracker cannot see behind a proxy.
    pub public_base_url: String,
    /// Repeats of one pixel or link by one client within this many seconds are one event.
    pub repeat_window_s: u64,
    /// Opens and clicks this many seconds or less after the provider accepted the message
    /// are flagged as a machine's.
    pub machine_window_s: u64,
    /// Case-insensitive user-agent substrings of proxies, scanners and scripts.
    pub machine_user_agents: Vec<String>,
    /// Whether `X-Forwarded-For` names the client (only true behind a proxy that sets it;
    /// otherwise any client could choose its address).
    pub trust_forwarded_for: bool,
    /// How long an unsubscribe or a webhook waits for the broker before answering with an
    /// error, so that the client or provider retries instead of waiting for minutes.
    pub publish_timeout_ms: u64,
    pub twilio: TwilioSection,
    pub sendgrid: SendGridSection,
    pub brevo: BrevoSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSection {
    /// The account's auth token, the HMAC key of `X-Twilio-Signature`. Without it every
    /// Twilio webhook is refused.
    #[serde(default)]
    pub auth_token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridSection {
    /// The signed event webhook's verification key, base64 of a DER SubjectPublicKeyInfo
    /// (what SendGrid's settings show). Without it every SendGrid webhook is refused.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Largest distance, in seconds, between the signed timestamp and now.
    pub timestamp_tolerance_s: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrevoSection {
    /// Expected as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<SecretString>,
    /// HTTP Basic credentials, the alternative Brevo offers (`https://user:password@host/`
    /// as the webhook URL).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
}
