//! The sender: rendered messages to real providers, as fast as each provider allows and
//! never twice.
//!
//! # Layout
//! - [`config`]: `[sender]` settings: providers (with their API settings and limits),
//!   routes, budgets, retries, circuit breakers.
//! - [`service`]: the `tocsin.outbound.*` handler (both lanes): campaign state, expiry,
//!   ledger, attempts, feedback.
//! - [`ledger`]: the send ledger in Redis, and the one window in which a duplicate is still
//!   possible.
//! - [`throttle`]: provider budgets shared through Redis (GCRA), or local; slow
//!   down on 429, recover gradually; the share of every budget kept for the triggered
//!   lane.
//! - [`routing`]: which provider takes a message; failover by priority; the calls in
//!   flight kept for the triggered lane.
//! - [`breaker`]: a circuit breaker per provider.
//! - [`providers`]: the provider trait and its implementations (SMTP with DKIM; SendGrid,
//!   Brevo, Twilio, a signed webhook).
//! - [`metrics`]: Prometheus metrics.

pub mod breaker;
pub mod config;
pub mod ledger;
pub mod metrics;
pub mod providers;
pub mod routing;
pub mod service;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tocsin_bus::consumer::ConsumerSpec;
use tocsin_bus::service::{Base, Spec};

pub use config::Config;

use crate::config::{ChannelName, ProviderApi, SenderConfig};
use crate::providers::Provider;
use crate::routing::{Entry, Router};

/// Builds every configured provider.
pub fn build_providers(config: &SenderConfig) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (name, p) in &config.providers {
        use providers::{brevo, sendgrid, smtp, twilio, webhook};
        let context = || format!("provider {name}");
        let (provider, serves): (Box<dyn Provider>, &[ChannelName]) = match &p.api {
            ProviderApi::Smtp(c) => (
                Box::new(smtp::SmtpProvider::new(name, c).with_context(context)?),
                &[ChannelName::Email],
            ),
            ProviderApi::Sendgrid(c) => (
                Box::new(sendgrid::SendGridProvider::new(name, c).with_context(context)?),
                &[ChannelName::Email],
            ),
            ProviderApi::Brevo(c) => (
                Box::new(brevo::BrevoProvider::new(name, c).with_context(context)?),
                &[ChannelName::Email, ChannelName::Sms],
            ),
            ProviderApi::Twilio(c) => (
                Box::new(twilio::TwilioProvider::new(name, c).with_context(context)?),
                &[ChannelName::Sms],
            ),
            ProviderApi::Webhook(c) => (
                Box::new(webhook::WebhookProvider::new(name, c).with_context(context)?),
                &[ChannelName::Email, ChannelName::Sms],
            ),
        };
        anyhow::ensure!(
            serves.contains(&p.channel),
            "provider {name} cannot send {}",
            p.channel.as_str()
        );
        entries.push(Entry {
            name: name.clone(),
            channel: p.channel,
            provider,
            rate: p.rate,
            identity_rate: p.identity_rate,
            breaker: breaker::Breaker::new(config.breaker),
            in_flight: tokio::sync::Semaphore::new(p.max_in_flight.max(1) as usize),
            bulk_in_flight: tokio::sync::Semaphore::new(routing::bulk_slots(
                p.max_in_flight,
                config.throttle.triggered_share.get(),
            )),
        });
    }
    Ok(entries)
}

/// Runs the sender until `shutdown`: consumes `tocsin.outbound.email`,
/// `tocsin.outbound.sms` and the triggered lane's `tocsin.outbound.email.triggered` and
/// `tocsin.outbound.sms.triggered`, sends, publishes feedback; then finishes or gives back
/// in-flight messages and commits.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = tocsin_runtime::shutdown::token(shutdown);
    let topics = config.kafka.topics.clone();
    let router = Router::new(&config.sender, build_providers(&config.sender)?)?;
    let base = Base::start(
        Spec {
            service: "sender",
            instance: &config.sender.instance,
            kafka: &config.kafka,
            redis: &config.redis,
            http: &config.http,
            topics: &[
                &topics.outbound_email,
                &topics.outbound_sms,
                &topics.outbound_email_triggered,
                &topics.outbound_sms_triggered,
                &topics.feedback,
                &topics.dlq,
            ],
        },
        &shutdown,
    )
    .await?;
    let metrics = metrics::SenderMetrics::register(&base.registry)?;
    let Base {
        bus_metrics,
        producer,
        redis,
        instance,
        server,
        ..
    } = base;
    let ledger = ledger::Ledger::new(
        redis.clone(),
        &instance,
        config.sender.claim_stale_ms,
        config.sender.ledger_ttl_s.saturating_mul(1000),
    );
    let heartbeat_ms = config.sender.heartbeat_ms.max(100);
    ledger
        .heartbeat(heartbeat_ms * 3)
        .await
        .context("sender heartbeat in Redis")?;

    let sender = Arc::new(service::Sender {
        throttle: throttle::Throttle::new(
            config.sender.throttle.clone(),
            redis.clone(),
            throttle::Clock::Redis,
        ),
        states: tocsin_planner::campaign::StateCache::new(Duration::from_millis(
            config.sender.campaign_state_ttl_ms,
        )),
        config: config.sender.clone(),
        router,
        ledger: ledger.clone(),
        redis,
        producer: producer.clone(),
        topics: topics.clone(),
        metrics,
        shutdown: shutdown.clone(),
    });
    for channel in [config::ChannelName::Email, config::ChannelName::Sms] {
        sender.metrics.declare_channel(channel.as_str());
    }
    for entry in sender.router.entries() {
        sender
            .metrics
            .declare_provider(&entry.name, entry.channel.as_str());
        sender
            .metrics
            .circuit
            .with_label_values(&[&entry.name])
            .set(entry.breaker.state().gauge());
    }

    let heartbeat = tokio::spawn({
        let ledger = ledger.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(heartbeat_ms)) => {}
                    _ = shutdown.cancelled() => break,
                }
                if let Err(error) = ledger.heartbeat(heartbeat_ms * 3).await {
                    tracing::warn!(%error, "sender heartbeat failed");
                }
            }
        }
    });

    // One consumer per channel and lane, each with its own group and in-flight limit: a
    // contact's SMS waiting for a throttled provider's budget must not hold up their
    // e-mail (messages with one key are handled in order within a consumer), and a
    // sequence step must not wait behind a blast's backlog.
    let handler = Arc::new(service::OutboundHandler { sender });
    let consumer = |topic: &tocsin_bus::TopicSpec, name: &str| {
        tocsin_bus::spawn_consumer(
            &config.kafka,
            ConsumerSpec {
                group_id: format!("{}-{name}", config.sender.group_id),
                client_id: format!("{instance}-{name}"),
                topics: vec![topic.name.clone()],
                dlq_topic: topics.dlq.name.clone(),
                low_latency: name.ends_with("triggered"),
            },
            handler.clone(),
            producer.clone(),
            bus_metrics.clone(),
            shutdown.clone(),
        )
    };
    let email = consumer(&topics.outbound_email, "email");
    let sms = consumer(&topics.outbound_sms, "sms");
    let email_triggered = consumer(&topics.outbound_email_triggered, "email-triggered");
    let sms_triggered = consumer(&topics.outbound_sms_triggered, "sms-triggered");
    let (email, sms, email_triggered, sms_triggered) =
        tokio::join!(email, sms, email_triggered, sms_triggered);
    shutdown.cancel();
    heartbeat.await?;
    if let Err(error) = ledger.leave().await {
        tracing::warn!(%error, "could not mark this sender gone; its claims expire on their own");
    }
    server.await??;
    email??;
    sms??;
    email_triggered??;
    sms_triggered??;
    Ok(())
}
