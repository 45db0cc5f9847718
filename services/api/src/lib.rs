//! The control API: what the communications team (and the `tocsin` CLI) call.
//!
//! # Layout
//! - [`config`]: `[api]` (tokens and roles) plus the `[planner]` settings the dry run shares
//!   and the `[renderer]` settings previews and test sends share.
//! - [`auth`]: bearer tokens, compared in constant time; roles reader < operator.
//! - [`campaigns`]: schedule (validated field by field), list, read with counters, pause,
//!   resume, cancel (applied in Redis before the answer), dry run.
//! - [`segments`]: sizes and masked samples.
//! - [`sequences`]: define (a new immutable version each time, templates pinned, running
//!   enrolments migrated only on request), list, read with the funnel, retire; the
//!   definition files of `[api] sequences_dir`, applied at start.
//! - [`templates`]: upload (validated, a new version each time), list, read, delete (refused
//!   while a campaign still to send uses the template).
//! - [`preview`]: a template rendered for a sample, stored or given contact by the
//!   renderer's own [`Composer`]; a test send, which publishes one job through the real
//!   pipeline.
//! - [`error`]: every error is a status and `{"error", "field"}` (`"class"` too when the
//!   renderer refuses a preview or a test send).
//! - [`openapi`]: the OpenAPI document, served at `/openapi.json` and kept in the repo.

pub mod auth;
pub mod campaigns;
pub mod config;
pub mod error;
pub mod openapi;
pub mod preview;
pub mod segments;
pub mod sequences;
pub mod templates;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use tocsin_bus::admin;
use tocsin_bus::{BusMetrics, Producer};
use tocsin_planner::store::AddressHasher;
use tocsin_renderer::compose::Composer;
use tocsin_runtime::http;
use tocsin_runtime::readiness::redis_client;

pub use config::Config;

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub redis: redis::aio::ConnectionManager,
    pub producer: Producer,
    pub hasher: AddressHasher,
    /// Renders previews and test sends exactly as the renderer renders jobs.
    pub composer: Arc<Composer>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}

/// The API's routes (the ops routes are merged in by [`run`]).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/v1/campaigns",
            post(campaigns::create).get(campaigns::list),
        )
        .route("/v1/campaigns/dry-run", post(campaigns::dry_run))
        .route("/v1/campaigns/{id}", get(campaigns::get))
        .route("/v1/campaigns/{id}/pause", post(campaigns::pause))
        .route("/v1/campaigns/{id}/resume", post(campaigns::resume))
        .route("/v1/campaigns/{id}/cancel", post(campaigns::cancel))
        .route("/v1/templates", get(templates::list))
        .route(
            "/v1/templates/{id}",
            get(templates::get)
                .put(templates::put)
                .delete(templates::delete),
        )
        .route("/v1/templates/{id}/preview", post(preview::preview))
        .route("/v1/templates/{id}/test-send", post(preview::test_send))
        .route(
            "/v1/sequences",
            post(sequences::create).get(sequences::list),
        )
        .route(
            "/v1/sequences/{id}",
            get(sequences::get).put(sequences::update),
        )
        .route("/v1/sequences/{id}/retire", post(sequences::retire))
        .route("/v1/segments", get(segments::list))
        .route("/v1/segments/{id}", get(segments::get))
        .route("/openapi.json", get(openapi::serve))
        .with_state(state)
}

/// Serves the API until `shutdown`.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = tocsin_runtime::shutdown::token(shutdown);
    let registry = prometheus::Registry::new();
    let bus_metrics = BusMetrics::register(&registry)?;
    admin::ensure_topics(
        &config.kafka,
        &[
            &config.kafka.topics.campaigns,
            &config.kafka.topics.jobs_triggered,
        ],
    )
    .await
    .context("creating topics")?;
    let producer = Producer::new(&config.kafka, "tocsin-api", bus_metrics)?;
    let redis = redis::aio::ConnectionManager::new(redis_client(&config.redis)?)
        .await
        .context("connecting to Redis")?;
    let checks = admin::readiness_checks(&config.kafka, &config.redis)?;
    let state = Arc::new(AppState {
        hasher: AddressHasher::new(config.planner.suppression_key.clone()),
        composer: Arc::new(Composer::new(&config.renderer)),
        config,
        redis,
        producer,
    });
    if !state.config.api.sequences_dir.is_empty() {
        tokio::spawn(sequences::keep_applying(
            state.clone(),
            std::path::PathBuf::from(&state.config.api.sequences_dir),
            std::time::Duration::from_secs(5),
            shutdown.clone(),
        ));
    }
    let listen = state.config.http.listen.clone();
    let app = router(state).merge(http::ops_router(registry, checks));
    let (address, server) = http::spawn(&listen, app, shutdown).await?;
    tracing::info!(%address, "api listening");
    server.await??;
    Ok(())
}
