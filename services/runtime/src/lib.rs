//! What every Tocsin service runs on.
//!
//! # Layout
//! - [`config`]: layered configuration (`config/default.toml` → the service's defaults → an
//!   environment-specific file named by `TOCSIN_CONFIG` → `TOCSIN__SECTION__KEY` variables),
//!   unknown keys refused at start-up.
//! - [`telemetry`]: JSON `tracing` logs whose every line is scrubbed of e-mail addresses and
//!   phone numbers (replaced by a keyed hash, so lines about one person still correlate).
//! - [`http`]: the small HTTP server every service exposes: `/metrics`, `/healthz`,
//!   `/readyz`, plus the service's own routes.
//! - [`readiness`]: the checks behind `/readyz` (Redis here; the bus crate adds the broker).
//! - [`shutdown`]: SIGINT / SIGTERM as a future, and the token services pass around.

pub mod config;
pub mod http;
pub mod readiness;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, ConfigLoader, HttpConfig, LogConfig, RedisConfig};
