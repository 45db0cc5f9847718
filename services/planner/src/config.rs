//! `[planner]` configuration.

use secrecy::SecretString;
use serde::Deserialize;
use tocsin_bus::KafkaConfig;
use tocsin_runtime::{HttpConfig, LogConfig, RedisConfig};

/// The planner's defaults (`config/planner.toml`), compiled in.
pub const DEFAULTS: &str = include_str!("../../../config/planner.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub planner: PlannerConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerConfig {
    /// Consumer group of the planner instances.
    pub group_id: String,
    /// Names this instance in campaign leases and logs; empty means `planner-<pid>-<random>`.
    #[serde(default)]
    pub instance: String,
    /// Key of the HMAC that turns an address into a suppression entry. Changing it forgets
    /// every suppression: set it once per deployment and keep it.
    pub suppression_key: SecretString,
    /// Segment members examined per fan-out step (one Redis transaction per step).
    pub batch_size: usize,
    /// At most this many messages per contact...
    pub frequency_cap: u32,
    /// ...within this many days, across campaigns. 0 disables the cap.
    pub frequency_window_days: u32,
    /// How often due campaigns and due jobs are looked for.
    pub tick_ms: u64,
    /// How often due sequence steps are looked for (their own task, beside the blasts').
    pub sequence_tick_ms: u64,
    /// How long the trigger and goal indexes of sequences are cached.
    pub sequence_index_refresh_ms: u64,
    /// A campaign's fan-out lease: another instance takes over this long after a crash.
    pub lease_ms: u64,
    /// How long a dispatcher hides the due jobs it claimed from other instances; a crashed
    /// instance's claims come due again after this long.
    pub dispatch_claim_ms: u64,
    /// Default lifetime of a message after its planned time, when the campaign sets none.
    pub default_expiry_s: u64,
    /// Time zone for campaigns that name none.
    pub default_time_zone: String,
    /// Soft bounces (in distinct campaigns) after which an address is suppressed.
    pub soft_bounce_limit: u32,
    /// How long a campaign's per-contact outcome bits are kept (counters stay).
    pub feedback_retention_days: u32,
    /// How often the gauges read from Redis (contacts, segments, schedule, running
    /// campaigns' progress) are refreshed: a few O(1) reads per segment and campaign.
    pub metrics_refresh_ms: u64,
    /// Segments whose size is exported, largest first (`tocsin_planner_segment_contacts`,
    /// one series each): enough to see the audiences that matter, few enough to keep the
    /// series count bounded however many segments the CRM defines.
    pub metrics_top_segments: usize,
}
