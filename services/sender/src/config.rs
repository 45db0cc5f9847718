//! `[sender]` configuration: providers, routes, budgets, retries.
//!
//! Secrets (passwords, API keys, DKIM keys) have no default and are never in files of the
//! repository: a deployment sets them in the environment, as
//! `TOCSIN__SENDER__PROVIDERS__<NAME>__API__<FIELD>`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tocsin_bus::KafkaConfig;
use tocsin_runtime::{HttpConfig, LogConfig, RedisConfig};

use crate::breaker::BreakerConfig;
use crate::providers::brevo::BrevoConfig;
use crate::providers::sendgrid::SendGridConfig;
use crate::providers::smtp::SmtpConfig;
use crate::providers::twilio::TwilioConfig;
use crate::providers::webhook::WebhookConfig;
use crate::throttle::{Limit, ThrottleConfig};

/// The sender's defaults (`config/sender.toml`), compiled in.
pub const DEFAULTS: &str = include_str!("../../../config/sender.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub sender: SenderConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Consumer groups: `<group_id>-email`, `<group_id>-sms`, and for the triggered lane
    /// `<group_id>-email-triggered`, `<group_id>-sms-triggered`.
    pub group_id: String,
    /// Names this instance in the ledger and logs; empty means `sender-<pid>-<random>`.
    /// Two live instances must never share a name: set it only to something unique.
    #[serde(default)]
    pub instance: String,
    /// Heartbeat period; an instance silent for 3 periods is dead and its claims are
    /// taken over.
    pub heartbeat_ms: u64,
    /// A claim older than this is taken over even from a live instance (longer than any
    /// one attempt).
    pub claim_stale_ms: u64,
    /// How long ledger records are kept (longer than any message's lifetime).
    pub ledger_ttl_s: u64,
    /// Retries of transient failures: exponential from `backoff_initial_ms`, capped at
    /// `backoff_max_ms`, full jitter, until the message's expiry or `max_attempts`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub max_attempts: u32,
    /// How long a campaign's state is cached.
    pub campaign_state_ttl_ms: u64,
    pub throttle: ThrottleConfig,
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelName {
    Email,
    Sms,
}

impl ChannelName {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelName::Email => "email",
            ChannelName::Sms => "sms",
        }
    }
}

/// `[sender.providers.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub channel: ChannelName,
    /// The provider's limit, in messages (e-mail) or parts (SMS) per second.
    #[serde(default = "unlimited")]
    pub rate: Limit,
    /// The limit of each sender identity (From address, SMS sender) at this provider.
    #[serde(default = "unlimited")]
    pub identity_rate: Limit,
    /// Calls to this provider in flight at once, per sender instance, both lanes; bulk
    /// messages hold at most all but `triggered_share` of them. It also bounds the
    /// duplicates a crash can cause (see `ledger`): at most this many messages per
    /// provider can be at the provider, unrecorded, when an instance dies.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    pub api: ProviderApi,
}

fn default_in_flight() -> u32 {
    32
}

fn unlimited() -> Limit {
    Limit::UNLIMITED
}

/// Which API a provider speaks, and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderApi {
    /// E-mail over SMTP (lettre), with DKIM.
    Smtp(SmtpConfig),
    /// E-mail through SendGrid's v3 API.
    Sendgrid(SendGridConfig),
    /// E-mail or SMS through Brevo's transactional APIs.
    Brevo(BrevoConfig),
    /// SMS through Twilio's Messages API.
    Twilio(TwilioConfig),
    /// Either channel, as a signed JSON POST to the organisation's own endpoint.
    Webhook(WebhookConfig),
}

/// `[[sender.routes]]`: which providers serve a channel (and sender profile).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub channel: ChannelName,
    /// A sender profile, or `*` for any.
    #[serde(default = "any_profile")]
    pub sender_profile: String,
    pub providers: Vec<RouteProvider>,
}

fn any_profile() -> String {
    "*".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteProvider {
    pub name: String,
    /// Lower first; a higher priority is used when every lower one is open (failover).
    #[serde(default = "one")]
    pub priority: u32,
    /// Share of traffic among providers of the same priority.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
