//! `tocsin_consumer_lag_messages` on the real broker: a consumer whose handler is blocked
//! shows the backlog of its partition, then 0 once the handler lets the messages through,
//! and its series goes when it leaves the group; after a rebalance each partition is
//! reported by its new owner only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tocsin_bus::consumer::ConsumerSpec;
use tocsin_bus::{BusMetrics, HandleError, Handler, Inbound};
use tocsin_integration_tests::stack::{self, TestBus};
use tocsin_runtime::shutdown::CancellationToken;
use tokio::sync::watch;

/// Holds every message until the gate opens.
struct Gate {
    open: watch::Receiver<bool>,
}

impl Handler for Gate {
    async fn handle(&self, _message: &Inbound) -> Result<(), HandleError> {
        let mut open = self.open.clone();
        open.wait_for(|o| *o)
            .await
            .map_err(HandleError::transient)?;
        Ok(())
    }
}

/// The gauge's value for one partition, if the series exists.
fn lag(registry: &Registry, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let partition = partition.to_string();
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "tocsin_consumer_lag_messages")
        .flat_map(|f| f.get_metric())
        .find(|m| {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
            };
            label("group").as_deref() == Some(group)
                && label("topic").as_deref() == Some(topic)
                && label("partition").as_deref() == Some(partition.as_str())
        })
        .map(|m| m.get_gauge().get_value() as i64)
}

/// Every partition's value in `registry`.
fn lags(registry: &Registry, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    (0..8)
        .filter_map(|p| lag(registry, group, topic, p).map(|v| (p, v)))
        .collect()
}

/// Polls `registries` until `done` holds for their partitions' values, or panics after
/// `timeout` with what it saw last.
async fn wait_lags(
    registries: &[&Registry],
    group: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[BTreeMap<i32, i64>]) -> bool,
) {
    let start = Instant::now();
    loop {
        let seen: Vec<BTreeMap<i32, i64>> =
            registries.iter().map(|r| lags(r, group, topic)).collect();
        if done(&seen) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "condition not met after {timeout:?}; last values: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member of `bus`'s relay group behind `gate`, with its own registry.
fn member(
    bus: &TestBus,
    name: &str,
    gate: &watch::Receiver<bool>,
    stop: &CancellationToken,
) -> (
    Registry,
    tokio::task::JoinHandle<Result<(), tocsin_bus::BusError>>,
) {
    let registry = Registry::new();
    let metrics = BusMetrics::register(&registry).expect("metrics");
    let consumer = tocsin_bus::spawn_consumer(
        &bus.config.kafka,
        ConsumerSpec {
            group_id: bus.config.relay.group_id.clone(),
            client_id: name.to_owned(),
            topics: vec![bus.topics().segments.name.clone()],
            dlq_topic: bus.topics().dlq.name.clone(),
            low_latency: false,
        },
        Arc::new(Gate { open: gate.clone() }),
        bus.producer.clone(),
        metrics,
        stop.clone(),
    );
    (registry, consumer)
}

/// Polls the gauge until `done` holds; returns every distinct value seen on the way, in
/// order, with the time it was first seen.
async fn watch_lag(
    registry: &Registry,
    group: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(Option<i64>) -> bool,
) -> Vec<(Duration, Option<i64>)> {
    let start = Instant::now();
    let mut seen: Vec<(Duration, Option<i64>)> = Vec::new();
    loop {
        let value = lag(registry, group, topic, 0);
        if seen.last().map(|(_, v)| *v) != Some(value) {
            seen.push((start.elapsed(), value));
        }
        if done(value) {
            return seen;
        }
        assert!(
            start.elapsed() < timeout,
            "condition not met after {timeout:?}; values seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_shows_a_blocked_backlog_then_drops_to_zero() {
    // More messages than the consumer may hold: it is saturated while the gate is shut,
    // which is when a stuck stage must show.
    const N: usize = 300;
    const MAX_IN_FLIGHT: usize = 32;
    let mut env = stack::relay_env("lag", 1);
    env.push(("TOCSIN__KAFKA__STATISTICS_INTERVAL_MS".into(), "500".into()));
    env.push((
        "TOCSIN__KAFKA__MAX_IN_FLIGHT".into(),
        MAX_IN_FLIGHT.to_string(),
    ));
    let bus = TestBus::from_env(env).await;
    let topic = bus.topics().segments.name.clone();
    let group = bus.config.relay.group_id.clone();

    let (open, gate) = watch::channel(false);
    let stop = CancellationToken::new();
    let (registry, consumer) = member(&bus, "lag-test", &gate, &stop);

    // 50 keys: messages run concurrently and wait behind their key, as in a service.
    stack::publish_events(&bus.producer, &topic, 0, N, 50).await;
    let rising = watch_lag(&registry, &group, &topic, Duration::from_secs(60), |v| {
        v == Some(N as i64)
    })
    .await;
    println!("gate shut, {N} messages produced: {rising:?}");

    open.send(true).expect("gate");
    let falling = watch_lag(&registry, &group, &topic, Duration::from_secs(60), |v| {
        v == Some(0)
    })
    .await;
    println!("gate open: {falling:?}");
    let at_most = falling.iter().filter_map(|(_, v)| *v).max().unwrap_or(0);
    assert!(at_most <= N as i64, "lag above the backlog: {falling:?}");

    stop.cancel();
    consumer.await.expect("join").expect("consumer");
    assert_eq!(
        lag(&registry, &group, &topic, 0),
        None,
        "a consumer that left the group keeps no series"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalanced_partition_is_reported_by_its_new_owner_only() {
    const N: usize = 200;
    let mut env = stack::relay_env("lag-rebalance", 2);
    env.push(("TOCSIN__KAFKA__STATISTICS_INTERVAL_MS".into(), "500".into()));
    let bus = TestBus::from_env(env).await;
    let topic = bus.topics().segments.name.clone();
    let group = bus.config.relay.group_id.clone();
    let (open, gate) = watch::channel(false);
    let stop = CancellationToken::new();

    let (first, first_task) = member(&bus, "first", &gate, &stop);
    stack::publish_events(&bus.producer, &topic, 0, N, 50).await;
    wait_lags(&[&first], &group, &topic, Duration::from_secs(60), |seen| {
        seen[0].len() == 2 && seen[0].values().sum::<i64>() == N as i64
    })
    .await;

    // A second member joins: each owns one partition, and the first no longer reports the
    // one it gave away.
    let (second, second_task) = member(&bus, "second", &gate, &stop);
    wait_lags(
        &[&first, &second],
        &group,
        &topic,
        Duration::from_secs(120),
        |seen| {
            seen[0].len() == 1
                && seen[1].len() == 1
                && seen[0].keys().next() != seen[1].keys().next()
                && seen[0].values().chain(seen[1].values()).sum::<i64>() == N as i64
        },
    )
    .await;

    open.send(true).expect("gate");
    wait_lags(
        &[&first, &second],
        &group,
        &topic,
        Duration::from_secs(60),
        |seen| {
            seen.iter().all(|s| s.len() == 1)
                && seen.iter().flat_map(|s| s.values()).all(|v| *v == 0)
        },
    )
    .await;
    stop.cancel();
    first_task.await.expect("join").expect("first");
    second_task.await.expect("join").expect("second");
}
