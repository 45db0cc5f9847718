//! The renderer: turns each `SendJob` into a message a provider can take.
//!
//! # Layout
//! - [`config`]: `[renderer]` settings: token key, SMS limits, sender profiles.
//! - [`service`]: the handler of `tocsin.jobs` and `tocsin.jobs.triggered`: expiry,
//!   cancelled campaigns, template versions cached, the message on its lane's outbound
//!   topic or `Feedback(failed, reason)` and the dead-letter topic.
//! - [`compose`]: one job, one message; shared with the control API's preview and test
//!   send, so a preview is exactly what is sent. A sequence step's links name its step
//!   group where a blast's name its campaign.
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

/// Runs the renderer until `shutdown`: consumes `tocsin.jobs` and, with a consumer of its
/// own (group `<group_id>-triggered`, so that a blast's backlog never delays it), the
/// triggered lane's `tocsin.jobs.triggered`; publishes rendered messages and feedback;
/// then finishes in-flight jobs and commits.
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
                &topics.jobs_triggered,
                &topics.outbound_email_triggered,
                &topics.outbound_sms_triggered,
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

    let handler = Arc::new(service::JobsHandler {
        composer: Arc::new(compose::Composer::new(&config.renderer)),
        redis,
        producer: producer.clone(),
        topics: topics.clone(),
        metrics,
        states: tocsin_planner::campaign::StateCache::new(Duration::from_millis(
            config.renderer.campaign_state_ttl_ms,
        )),
    });
    // One consumer per lane, one handler: the triggered lane's jobs are taken as they
    // come, whatever the bulk consumer still has to read.
    let consumer = |topic: &tocsin_bus::TopicSpec, group_id: String, client_id: String| {
        tocsin_bus::spawn_consumer(
            &config.kafka,
            ConsumerSpec {
                group_id,
                client_id,
                topics: vec![topic.name.clone()],
                dlq_topic: topics.dlq.name.clone(),
                low_latency: topic.name == topics.jobs_triggered.name,
            },
            handler.clone(),
            producer.clone(),
            bus_metrics.clone(),
            shutdown.clone(),
        )
    };
    let bulk = consumer(
        &topics.jobs,
        config.renderer.group_id.clone(),
        instance.clone(),
    );
    let triggered = consumer(
        &topics.jobs_triggered,
        format!("{}-triggered", config.renderer.group_id),
        format!("{instance}-triggered"),
    );
    let (bulk, triggered) = tokio::join!(bulk, triggered);
    shutdown.cancel();
    server.await??;
    bulk??;
    triggered??;
    Ok(())
}
