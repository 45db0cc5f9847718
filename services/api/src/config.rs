//! `[api]` configuration.

use secrecy::SecretString;
use serde::Deserialize;
use tocsin_bus::KafkaConfig;
use tocsin_planner::config::PlannerConfig;
use tocsin_renderer::config::RendererConfig;
use tocsin_runtime::{HttpConfig, LogConfig, RedisConfig};

/// The planner's defaults (shared `[planner]` section), the renderer's (shared
/// `[renderer]` section) and the API's own.
pub const DEFAULTS: &str = concat!(
    include_str!("../../../config/planner.toml"),
    "\n",
    include_str!("../../../config/renderer.toml"),
    "\n",
    include_str!("../../../config/api.toml")
);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    /// The planner's settings: the dry run applies the same rules with the same keys.
    pub planner: PlannerConfig,
    /// The renderer's settings: a preview or a test send renders exactly as the renderer
    /// will (same token key, same sender profiles, same SMS limits).
    pub renderer: RendererConfig,
    pub api: ApiConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Who may call the API, and what they may do.
    pub tokens: Vec<TokenConfig>,
    /// Largest segment a dry run walks.
    pub dry_run_limit: usize,
    /// Sequence definitions kept as files (`*.toml`), applied at start: created, or given
    /// a new version when the file changed. Empty: none.
    #[serde(default)]
    pub sequences_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs and recorded as `requestedBy`; never the token itself.
    pub name: String,
    pub token: SecretString,
    pub role: Role,
}

/// What a token allows. Operators can do everything readers can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Lists, reads, dry runs, template previews.
    Reader,
    /// Schedules, pauses, resumes, cancels; uploads, test-sends and deletes templates.
    Operator,
}
