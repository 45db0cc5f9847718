//! The renderer: turns each `SendJob` into a message a provider can take.
//!
//! # Layout
//! - [`config`]: `[renderer]` settings: token key, SMS limits, sender profiles.
//! - [`service`]: the `tocsin.jobs` handler: expiry, cancelled campaigns, template
//!   versions cached, the message or `Feedback(failed, reason)` and the dead-letter topic.
//! - [`compose`]: one job, one message; shared with the control API's preview and test
//!   send, so a preview is exactly what is sent.
//! - [`render`]: templates compiled once per version; contact data HTML-escaped in HTML
//!   parts; a missing field without fallback is an error naming it; `default`, `number`
//!   and `date` helpers in the contact's language and time zone.
//! - [`compliance`]: RFC 8058 headers, Message-ID, the CNIL footer with a visible
//!   unsubscribe link; the SMS sender name and STOP mention.
//! - [`tracking`]: the open pixel and click rewriting through the tracker.
//! - [`tokens`]: signed tokens for unsubscribe, open and click links (HMAC-SHA256).
//! - [`sms`]: GSM-7 or UCS-2 chosen by content, the exact number of parts (escape pairs and
//!   surrogate pairs never split), the optional normalisation that keeps French in GSM-7.
//! - [`text`]: a readable text part from HTML, links kept, when a template gives none.
//! - [`metrics`]: Prometheus counters and the render duration histogram.

pub mod compliance;
pub mod compose;
pub mod config;
pub mod metrics;
pub mod render;
pub mod service;
pub mod sms;
pub mod text;
pub mod tokens;
pub mod tracking;

use std::sync::Arc;
use std::time::Duration;

use tocsin_bus::consumer::ConsumerSpec;
use tocsin_bus::service::{Base, Spec};

pub use config::Config;

/// Runs the renderer until `shutdown`: consumes `tocsin.jobs`, publishes rendered messages
/// and feedback; then finishes in-flight jobs and commits.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = tocsin_runtime::shutdown::token(shutdown);
    if !config
        .renderer
        .sender_profiles
        .contains_key(compose::DEFAULT_PROFILE)
    {
        anyhow::bail!(
            "no [renderer.sender_profiles.{}]: jobs that name no profile need it",
            compose::DEFAULT_PROFILE
        );
    }
    let topics = config.kafka.topics.clone();
    let base = Base::start(
        Spec {
            service: "renderer",
            instance: &config.renderer.instance,
            kafka: &config.kafka,
            redis: &config.redis,
            http: &config.http,
            topics: &[
                &topics.jobs,
                &topics.outbound_email,
                &topics.outbound_sms,
                &topics.feedback,
                &topics.dlq,
            ],
        },
        &shutdown,
    )
    .await?;
    let metrics = metrics::RendererMetrics::register(&base.registry)?;
    let Base {
        bus_metrics,
        producer,
        redis,
        instance,
        server,
        ..
    } = base;

    let handler = service::JobsHandler {
        composer: Arc::new(compose::Composer::new(&config.renderer)),
        redis,
        producer: producer.clone(),
        topics: topics.clone(),
        metrics,
        states: tocsin_planner::campaign::StateCache::new(Duration::from_millis(
            config.renderer.campaign_state_ttl_ms,
        )),
    };
    let jobs = tocsin_bus::spawn_consumer(
        &config.kafka,
        ConsumerSpec {
            group_id: config.renderer.group_id.clone(),
            client_id: instance,
            topics: vec![topics.jobs.name.clone()],
            dlq_topic: topics.dlq.name.clone(),
        },
        Arc::new(handler),
        producer,
        bus_metrics,
        shutdown.clone(),
    );
    let jobs = jobs.await;
    shutdown.cancel();
    server.await??;
    jobs??;
    Ok(())
}
