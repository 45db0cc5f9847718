//! The local stack as the tests see it.
//!
//! Every test makes its own topics and consumer groups (a unique suffix), so tests run in
//! parallel against one broker and a rerun never reads an earlier run's messages.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tocsin_bus::{BusMetrics, KafkaConfig, Producer, TraceContext};
use tocsin_contracts::codec;
use tocsin_contracts::{Event, v1};
use tocsin_runtime::ConfigLoader;

use crate::relay::{self, RelayConfig};

/// `TOCSIN_TEST_BROKERS`, else the local stack's Tansu.
pub fn brokers() -> String {
    std::env::var("TOCSIN_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

/// `TOCSIN_TEST_REDIS`, else the local stack's Redis.
pub fn redis_url() -> String {
    std::env::var("TOCSIN_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:16379/0".to_owned())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The variables that point a service at the test stack, with per-test topics: the same
/// `TOCSIN__*` a deployment would set. `redis_db` isolates services whose Redis keys are
/// global (tests run in parallel against one Redis).
pub fn service_env(test: &str, partitions: i32, redis_db: u8) -> Vec<(String, String)> {
    let id = unique(test);
    let redis = redis_url();
    let redis = match redis.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{redis_db}"),
        None => redis,
    };
    let mut env = vec![
        ("TOCSIN__KAFKA__BROKERS".to_owned(), brokers()),
        ("TOCSIN__REDIS__URL".to_owned(), redis),
        (
            "TOCSIN__LOG__FILTER".to_owned(),
            "info,librdkafka=warn".to_owned(),
        ),
    ];
    for topic in [
        "segments",
        "campaigns",
        "jobs",
        "outbound_email",
        "outbound_sms",
        "jobs_triggered",
        "outbound_email_triggered",
        "outbound_sms_triggered",
        "feedback",
        "dlq",
    ] {
        let upper = topic.to_ascii_uppercase();
        env.push((
            format!("TOCSIN__KAFKA__TOPICS__{upper}__NAME"),
            format!("{}-{id}", topic.replace('_', "-")),
        ));
        env.push((
            format!("TOCSIN__KAFKA__TOPICS__{upper}__PARTITIONS"),
            partitions.to_string(),
        ));
    }
    env
}

/// [`service_env`] plus the relay's own group.
pub fn relay_env(test: &str, partitions: i32) -> Vec<(String, String)> {
    let mut env = service_env(test, partitions, 0);
    env.push((
        "TOCSIN__RELAY__GROUP_ID".to_owned(),
        format!("group-{}", unique(test)),
    ));
    env
}

/// Empties a Redis database before a test that owns it.
pub async fn flush_redis(url: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis (deploy/local/stack.sh up)");
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut conn)
        .await
        .expect("FLUSHDB");
}

/// A test's own bus: its configuration (and the variables behind it), its topics created,
/// a producer.
#[derive(Debug)]
pub struct TestBus {
    pub env: Vec<(String, String)>,
    pub config: RelayConfig,
    pub producer: Producer,
}

impl TestBus {
    pub async fn new(test: &str, partitions: i32) -> Self {
        Self::from_env(relay_env(test, partitions)).await
    }

    pub async fn from_env(env: Vec<(String, String)>) -> Self {
        let config = relay_config(&env);
        tocsin_bus::admin::ensure_topics(&config.kafka, &config.kafka.topics.all())
            .await
            .expect("topics");
        let producer = producer(&config.kafka);
        TestBus {
            env,
            config,
            producer,
        }
    }

    pub fn topics(&self) -> &tocsin_bus::Topics {
        &self.config.kafka.topics
    }
}

/// A loopback port nobody listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn relay_config(env: &[(String, String)]) -> RelayConfig {
    ConfigLoader::defaults_only(Some(relay::DEFAULTS))
        .env(env.iter().cloned())
        .load()
        .expect("relay configuration")
}

pub fn producer(config: &KafkaConfig) -> Producer {
    let metrics = BusMetrics::register(&prometheus::Registry::new()).expect("metrics");
    Producer::new(config, "test-producer", metrics).expect("producer")
}

/// A valid `SegmentEvent` (contact entered a segment).
pub fn segment_event(event_id: &str, contact_id: &str) -> v1::SegmentEvent {
    v1::SegmentEvent {
        meta: Some(v1::EventMeta {
            event_id: event_id.to_owned(),
            occurred_at: None,
            source: "test".to_owned(),
        }),
        contact_id: contact_id.to_owned(),
        change: Some(v1::segment_event::Change::Entered(v1::SegmentEntered {
            segment_id: "seg".to_owned(),
            contact: Some(v1::Contact {
                id: contact_id.to_owned(),
                ..Default::default()
            }),
        })),
    }
}

/// Publishes `count` events `e-{start}`.. with contacts spread over `contacts` keys, and
/// waits for every acknowledgement.
pub async fn publish_events(
    producer: &Producer,
    topic: &str,
    start: usize,
    count: usize,
    contacts: usize,
) {
    let trace = TraceContext::new_root();
    let sends = futures::stream::iter(start..start + count).map(|i| {
        let event_id = format!("e-{i}");
        let contact = format!("c-{}", i % contacts);
        let event = segment_event(&event_id, &contact);
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            producer
                .publish(&topic, &contact, &event_id, &event, &trace)
                .await
                .expect("produce")
        }
    });
    // Bounded concurrency keeps the producer's queue reasonable for large batches.
    sends.buffer_unordered(2000).collect::<Vec<_>>().await;
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record<E> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub event: E,
}

/// Reads a topic from the beginning, outside any group the services use.
pub struct TopicReader {
    consumer: StreamConsumer,
    topic: String,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TopicReader({})", self.topic)
    }
}

impl TopicReader {
    pub fn new(topic: &str) -> Self {
        Self::with_brokers(&brokers(), topic)
    }

    /// A reader on another broker than the stack's (a test's own).
    pub fn with_brokers(brokers: &str, topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("reader");
        consumer.subscribe(&[topic]).expect("subscribe");
        TopicReader {
            consumer,
            topic: topic.to_owned(),
        }
    }

    /// Everything that arrives within `window` (to see what should not be there).
    pub async fn read_for<E: Event>(&self, window: Duration) -> Vec<Record<E>> {
        let deadline = Instant::now() + window;
        let mut records = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.consumer.recv()).await {
                Ok(Ok(m)) => records.push(decode_record(&m)),
                Ok(Err(e)) => panic!("{}: {e}", self.topic),
                Err(_) => break,
            }
        }
        records
    }

    /// Reads until `done` holds for everything read so far, or panics after `timeout`.
    pub async fn read_until<E: Event>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Record<E>]) -> bool,
    ) -> Vec<Record<E>> {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while !done(&records) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: condition not met after {timeout:?}; {} records read",
                    self.topic,
                    records.len()
                );
            }
            match tokio::time::timeout(left.min(Duration::from_millis(500)), self.consumer.recv())
                .await
            {
                Ok(Ok(m)) => records.push(decode_record(&m)),
                Ok(Err(e)) => panic!("{}: {e}", self.topic),
                Err(_) => {}
            }
        }
        records
    }
}

fn decode_record<E: Event>(m: &rdkafka::message::BorrowedMessage<'_>) -> Record<E> {
    use rdkafka::message::Headers;
    let content_type = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == "content-type")
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    });
    let event = codec::decode::<E>(content_type, m.payload().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", E::NAME));
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        event,
    }
}

/// The event ids in a batch of `Feedback` records.
pub fn event_ids(records: &[Record<v1::Feedback>]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            r.event
                .meta
                .as_ref()
                .map(|m| m.event_id.clone())
                .unwrap_or_default()
        })
        .collect()
}
