//! The broker's ceiling for a blast: the same hops as the pipeline (jobs, outbound,
//! feedback), records of the same sizes, through the same broker with the same client
//! settings as the services (`KafkaConfig::client_config`, the services' idempotent
//! [`Producer`]), and no processing at all:
//!
//! ```text
//! producer ─▶ hop 1 ─▶ relay ─▶ hop 2 ─▶ relay ─▶ hop 3 ─▶ reader
//! ```
//!
//! Each relay consumes a record and produces one of the next hop's size, up to
//! `in_flight` produces awaiting their acknowledgement, as a service's handler does. The
//! figure is records through all hops per second, from the first produce to the last
//! read: what the pipeline would do if rendering, sending and Redis cost nothing. The
//! pipeline's throughput divided by it is how far Tocsin is from its ceiling.
//!
//! The hop topics are made for the run (`tocsin.loadtest.ceiling.<run>.<hop>`, as many
//! partitions as the pipeline's) and deleted afterwards.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde::Serialize;
use tocsin_bus::{BusMetrics, KafkaConfig, Outbound, Producer, TopicSpec, TraceContext};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Ceiling {
    pub kafka: KafkaConfig,
    /// Records through every hop.
    pub count: u64,
    /// Payload size of each hop, in order (the pipeline's mean record sizes).
    pub sizes: Vec<usize>,
    pub partitions: i32,
    /// Produces awaiting acknowledgement, per stage.
    pub in_flight: usize,
    /// Names the topics and consumer groups of this run.
    pub run: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    pub count: u64,
    pub sizes: Vec<usize>,
    pub seconds: f64,
    pub per_second: f64,
}

/// Runs the chain; fails if a record is lost or the chain stalls for 60 s.
pub async fn run(ceiling: &Ceiling) -> Result<CeilingReport, String> {
    let topics: Vec<TopicSpec> = (0..ceiling.sizes.len())
        .map(|hop| TopicSpec {
            name: format!("tocsin.loadtest.ceiling.{}.{hop}", ceiling.run),
            partitions: ceiling.partitions,
            replication: 1,
            settings: Default::default(),
        })
        .collect();
    let specs: Vec<&TopicSpec> = topics.iter().collect();
    tocsin_bus::admin::ensure_topics(&ceiling.kafka, &specs)
        .await
        .map_err(|e| e.to_string())?;
    let metrics = BusMetrics::register(&prometheus::Registry::new()).map_err(|e| e.to_string())?;
    let producer = Producer::new(&ceiling.kafka, "tocsin-loadgen-ceiling", metrics)
        .map_err(|e| e.to_string())?;
    let consumer = |hop: usize| -> Result<StreamConsumer, String> {
        let c: StreamConsumer = ceiling
            .kafka
            .client_config(&format!("tocsin-loadgen-ceiling-{hop}"))
            .set(
                "group.id",
                format!("tocsin-loadgen-ceiling-{}-{hop}", ceiling.run),
            )
            .set("enable.auto.commit", "true")
            .set("auto.offset.reset", "earliest")
            // As the services' bulk consumers fetch.
            .set(
                "fetch.wait.max.ms",
                ceiling.kafka.bulk_fetch_wait_ms.to_string(),
            )
            .create()
            .map_err(|e| e.to_string())?;
        c.subscribe(&[topics[hop].name.as_str()])
            .map_err(|e| e.to_string())?;
        Ok(c)
    };

    // Every consumer joins its group before the clock starts, as the services' consumers
    // have long joined theirs when a blast starts.
    let mut consumers = Vec::new();
    for hop in 0..topics.len() {
        consumers.push(joined(consumer(hop)?).await?);
    }
    let mut consumers = consumers.into_iter();
    let started = Instant::now();
    let mut tasks = Vec::new();
    // The relays: hop i's records become hop i+1's.
    for (topic, size) in topics.iter().zip(&ceiling.sizes).skip(1) {
        let source = consumers.next().ok_or("a consumer per hop")?;
        let producer = producer.clone();
        let target = topic.name.clone();
        let payload = vec![b'x'; *size];
        let (count, in_flight) = (ceiling.count, ceiling.in_flight.max(1));
        tasks.push(tokio::spawn(async move {
            let trace = TraceContext::new_root();
            let mut pending = FuturesUnordered::new();
            let mut relayed = 0u64;
            while relayed < count {
                let message = tokio::time::timeout(Duration::from_secs(60), source.recv())
                    .await
                    .map_err(|_| format!("relay to {target} stalled at {relayed} of {count}"))?
                    .map_err(|e| e.to_string())?;
                let key = message.key().unwrap_or_default().to_vec();
                let (producer, target, payload, trace) =
                    (producer.clone(), target.clone(), payload.clone(), trace);
                pending.push(async move {
                    producer
                        .send(Outbound {
                            topic: &target,
                            key: &key,
                            payload: &payload,
                            content_type: "application/octet-stream",
                            event_id: "ceiling",
                            trace: &trace,
                        })
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                relayed += 1;
                while pending.len() >= in_flight {
                    if let Some(done) = pending.next().await {
                        done?;
                    }
                }
            }
            while let Some(done) = pending.next().await {
                done?;
            }
            Ok::<_, String>(())
        }));
    }
    // The reader at the end of the chain.
    let reader = {
        let last = consumers.next().ok_or("a consumer per hop")?;
        let count = ceiling.count;
        tokio::spawn(async move {
            let mut read = 0u64;
            while read < count {
                tokio::time::timeout(Duration::from_secs(60), last.recv())
                    .await
                    .map_err(|_| format!("the reader stalled at {read} of {count}"))?
                    .map_err(|e| e.to_string())?;
                read += 1;
            }
            Ok::<_, String>(())
        })
    };
    // The source: hop 0.
    let payload = vec![b'x'; ceiling.sizes[0]];
    let trace = TraceContext::new_root();
    let mut produced = futures::stream::iter(0..ceiling.count)
        .map(|i| {
            let key = format!("ceiling-{i:09}");
            let (producer, payload, trace, topic) = (&producer, &payload, &trace, &topics[0].name);
            async move {
                producer
                    .send(Outbound {
                        topic,
                        key: key.as_bytes(),
                        payload,
                        content_type: "application/octet-stream",
                        event_id: "ceiling",
                        trace,
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(ceiling.in_flight.max(1));
    while let Some(done) = produced.next().await {
        done?;
    }
    drop(produced);
    reader.await.map_err(|e| e.to_string())??;
    let seconds = started.elapsed().as_secs_f64();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    delete(&ceiling.kafka, &topics).await;
    Ok(CeilingReport {
        count: ceiling.count,
        sizes: ceiling.sizes.clone(),
        seconds,
        per_second: ceiling.count as f64 / seconds.max(f64::EPSILON),
    })
}

/// `consumer` once the group has given it partitions (waiting for records meanwhile: the
/// topics are empty, nothing is lost).
async fn joined(consumer: StreamConsumer) -> Result<StreamConsumer, String> {
    let by = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        if Instant::now() > by {
            return Err("no partition assigned after 60 s".into());
        }
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await
        {
            return Err(e.to_string());
        }
    }
    Ok(consumer)
}

/// Best effort: a broker that cannot delete topics keeps them (they are small).
async fn delete(kafka: &KafkaConfig, topics: &[TopicSpec]) {
    let Ok(admin) = kafka
        .client_config("tocsin-loadgen-ceiling-admin")
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    if let Err(error) = admin.delete_topics(&names, &AdminOptions::new()).await {
        eprintln!("could not delete the ceiling's topics: {error}");
    }
}
