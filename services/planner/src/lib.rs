//! The planner: turns a scheduled blast into exactly one send job per eligible person.
//!
//! # Layout
//! - [`clock`]: the system clock, or a manual one for tests.
//! - [`config`]: `[planner]` settings (batch size, frequency cap, leases, keys).
//! - [`keys`]: the Redis layout, one table of every key.
//! - [`store`]: contact profiles (newest snapshot wins), keyed address hashes, suppression.
//! - [`ingest`]: the `tocsin.segments` handler: profiles, memberships, erasure.
//! - [`commands`]: the `tocsin.campaigns` handler: schedule, pause, resume, cancel.
//! - [`campaign`]: a campaign's record and its state machine (one Lua script).
//! - [`eligibility`]: who gets a message and, if not, why (in the order).
//! - [`quiet_hours`] and [`holidays`]: when a message may reach someone.
//! - [`engine`]: fan-out in checkpointed, atomic steps under a per-campaign lease.
//! - [`dispatch`]: the durable schedule's due jobs, re-checked and published.
//! - [`feedback`]: the `tocsin.feedback` handler: suppression and campaign counters.
//! - [`sequence`]: automated sequences: definitions, enrolments, their steps.
//! - [`metrics`]: Prometheus counters, and the gauges read from Redis on a slow tick.

pub mod campaign;
pub mod clock;
pub mod commands;
pub mod config;
pub mod dispatch;
pub mod eligibility;
pub mod engine;
pub mod feedback;
pub mod holidays;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod quiet_hours;
pub mod sequence;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tocsin_bus::consumer::ConsumerSpec;
use tocsin_bus::service::{Base, Spec};

pub use config::Config;

/// Runs the planner until `shutdown`: consumes segments and campaign commands, fans due
/// campaigns out, dispatches due jobs and due sequence steps; then finishes in-flight work
/// and commits.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_clock(config, clock::Clock::System, shutdown).await
}

/// [`run`], with sequences (enrolment times, due steps, exits) on `clock`: tests move a
/// manual clock through days in seconds. Blasts keep the system clock.
pub async fn run_with_clock(
    config: Config,
    clock: clock::Clock,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = tocsin_runtime::shutdown::token(shutdown);
    let topics = config.kafka.topics.clone();
    let base = Base::start(
        Spec {
            service: "planner",
            instance: &config.planner.instance,
            kafka: &config.kafka,
            redis: &config.redis,
            http: &config.http,
            topics: &[
                &topics.segments,
                &topics.campaigns,
                &topics.jobs,
                &topics.jobs_triggered,
                &topics.feedback,
                &topics.dlq,
            ],
        },
        &shutdown,
    )
    .await?;
    let metrics = metrics::PlannerMetrics::register(&base.registry)?;
    let Base {
        bus_metrics,
        producer,
        redis,
        instance,
        server,
        ..
    } = base;

    let hasher = store::AddressHasher::new(config.planner.suppression_key.clone());
    let planner = Arc::new(engine::Planner {
        redis: redis.clone(),
        producer: producer.clone(),
        topics: topics.clone(),
        hasher: hasher.clone(),
        config: config.planner.clone(),
        metrics: metrics.clone(),
        instance: instance.clone(),
    });

    let sequences = Arc::new(sequence::Sequences {
        redis: redis.clone(),
        producer: producer.clone(),
        topics: topics.clone(),
        hasher: hasher.clone(),
        config: config.planner.clone(),
        metrics: metrics.clone(),
        book: sequence::Book::new(Duration::from_millis(
            config.planner.sequence_index_refresh_ms,
        )),
    });

    // Segment events start sequences: their hop is a low-latency one.
    let consumer = |topic: &tocsin_bus::TopicSpec, group: &str| ConsumerSpec {
        group_id: format!("{}-{group}", config.planner.group_id),
        client_id: instance.clone(),
        topics: vec![topic.name.clone()],
        dlq_topic: topics.dlq.name.clone(),
        low_latency: group == "segments",
    };
    let segments = tocsin_bus::spawn_consumer(
        &config.kafka,
        consumer(&topics.segments, "segments"),
        Arc::new(ingest::SegmentsHandler {
            redis: redis.clone(),
            hasher: hasher.clone(),
            metrics: metrics.clone(),
            sequences: sequences.clone(),
            clock: clock.clone(),
        }),
        producer.clone(),
        bus_metrics.clone(),
        shutdown.clone(),
    );
    let commands = tocsin_bus::spawn_consumer(
        &config.kafka,
        consumer(&topics.campaigns, "campaigns"),
        Arc::new(commands::CommandsHandler {
            planner: planner.clone(),
        }),
        producer.clone(),
        bus_metrics.clone(),
        shutdown.clone(),
    );
    let feedback = tocsin_bus::spawn_consumer(
        &config.kafka,
        consumer(&topics.feedback, "feedback"),
        Arc::new(feedback::FeedbackHandler {
            redis: redis.clone(),
            hasher: hasher.clone(),
            metrics: metrics.clone(),
            soft_bounce_limit: config.planner.soft_bounce_limit,
            retention_s: u64::from(config.planner.feedback_retention_days) * 86_400,
            sequences: sequences.clone(),
            clock: clock.clone(),
        }),
        producer.clone(),
        bus_metrics.clone(),
        shutdown.clone(),
    );

    let tick = Duration::from_millis(config.planner.tick_ms);
    let ticker = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            loop {
                let now = chrono::Utc::now();
                if let Err(error) = planner.fan_out_due(now).await {
                    tracing::warn!(%error, "fan-out step failed; retrying next tick");
                }
                let busy = match planner.dispatch_due(chrono::Utc::now()).await {
                    Ok(n) => n > 0,
                    Err(error) => {
                        tracing::warn!(%error, "dispatch failed; retrying next tick");
                        false
                    }
                };
                if !busy {
                    tokio::select! {
                        _ = tokio::time::sleep(tick) => {}
                        _ = shutdown.cancelled() => break,
                    }
                } else if shutdown.is_cancelled() {
                    break;
                }
            }
        }
    });

    // Sequence steps on their own task and tick: a blast's fan-out (one long call) never
    // delays a welcome message.
    let sequence_tick = Duration::from_millis(config.planner.sequence_tick_ms);
    let stepper = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            loop {
                let busy = match sequences.dispatch_due(clock.now()).await {
                    Ok(n) => n > 0,
                    Err(error) => {
                        tracing::warn!(%error, "sequence steps failed; retrying next tick");
                        false
                    }
                };
                if shutdown.is_cancelled() {
                    break;
                }
                if !busy {
                    tokio::select! {
                        _ = tokio::time::sleep(sequence_tick) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
    });

    // Gauges of the state in Redis, on their own slow tick.
    let refresh_every = Duration::from_millis(config.planner.metrics_refresh_ms.max(100));
    let mut refresher = metrics::Refresher::new(
        redis.clone(),
        metrics.clone(),
        config.planner.metrics_top_segments,
    );
    let gauges = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            loop {
                let now_ms = chrono::Utc::now().timestamp_millis();
                if let Err(error) = refresher.refresh(now_ms).await {
                    tracing::warn!(%error, "metrics refresh failed; retrying next tick");
                }
                tokio::select! {
                    _ = tokio::time::sleep(refresh_every) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    });

    let (segments, commands, feedback, ticker, stepper, gauges) =
        tokio::join!(segments, commands, feedback, ticker, stepper, gauges);
    shutdown.cancel();
    server.await??;
    segments??;
    commands??;
    feedback??;
    ticker?;
    stepper?;
    gauges?;
    Ok(())
}
