//! The at-least-once consume loop.
//!
//! - Offsets are stored (`enable.auto.offset.store=false`) only when a message is finished,
//!   and only in partition order ([`PartitionOffsets`]); librdkafka commits stored offsets
//!   every `commit_interval_ms`, before a rebalance takes partitions away, and at shutdown.
//! - "Finished" means the handler returned `Ok` (having awaited the acknowledgement of
//!   everything it produced), or failed permanently and the message is on the dead-letter
//!   topic.
//! - Messages with different keys run concurrently (up to `max_in_flight`); messages with
//!   the same key run one after the other, in offset order.
//! - A transient failure is retried with capped, jittered exponential backoff, holding up
//!   only its own key.
//! - Completions are served before new messages (`biased`), so memory stays bounded: at
//!   most `max_in_flight` messages, or twice that while the handlers stall (one more per
//!   statistics interval without progress, so that librdkafka's statistics keep coming:
//!   see [`crate::lag`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::Rng;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tocsin_contracts::codec::{self, CONTENT_TYPE_PROTOBUF, DecodeError};
use tocsin_contracts::{Event, v1};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::BusError;
use crate::config::KafkaConfig;
use crate::headers::{self, TraceContext};
use crate::lag::LagReporter;
use crate::metrics::BusMetrics;
use crate::offsets::PartitionOffsets;
use crate::producer::{Outbound, Producer};

/// A message received from the broker, owned (it outlives the poll that returned it).
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker or producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Inbound {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header(headers::CONTENT_TYPE)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The trace this message belongs to, continued; a new trace when it carries none.
    pub fn trace(&self) -> TraceContext {
        self.header(headers::TRACEPARENT)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(TraceContext::parse)
            .map(|t| t.child())
            .unwrap_or_else(TraceContext::new_root)
    }

    /// Decodes the payload as `E` in the encoding its `content-type` names. An undecodable
    /// or invalid payload is a permanent failure: the message goes to the dead-letter topic.
    pub fn decode<E: Event>(&self) -> Result<E, HandleError> {
        let payload = self.payload.as_deref().unwrap_or_default();
        codec::decode(self.content_type(), payload).map_err(|e| {
            let class = match e {
                DecodeError::Invalid { .. } => "invalid",
                _ => "undecodable",
            };
            HandleError::permanent(class, e.to_string())
        })
    }
}

/// How a handler failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandleError {
    /// Trying again cannot help (bad payload, unknown template): dead-letter and move on.
    #[error("{reason}")]
    Permanent {
        /// Low-cardinality class for metrics (`undecodable`, `invalid`, `render`, ...).
        class: &'static str,
        /// What a person must know to act on it.
        reason: String,
    },
    /// Might work later (broker, Redis or provider unavailable): retry with backoff.
    #[error("{reason}")]
    Transient { reason: String },
}

impl HandleError {
    pub fn permanent(class: &'static str, reason: impl Into<String>) -> Self {
        HandleError::Permanent {
            class,
            reason: reason.into(),
        }
    }

    pub fn transient(reason: impl std::fmt::Display) -> Self {
        HandleError::Transient {
            reason: reason.to_string(),
        }
    }
}

/// What a service does with each message.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Return `Ok` only once everything the message produced is
    /// acknowledged (await the producer's futures): the offset is stored right after.
    fn handle<'a>(
        &'a self,
        message: &'a Inbound,
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a;
}

/// Identity of a consumer in its group.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub group_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    /// Where the dead letters go.
    pub dlq_topic: String,
    /// A hop where every millisecond counts (the triggered lane, the CRM's segment
    /// events): fetches wait at most `[kafka] low_latency_fetch_wait_ms`, instead of
    /// `bulk_fetch_wait_ms`, for more requests to the broker when the topic is quiet.
    pub low_latency: bool,
}

type TopicPartition = (Arc<str>, i32);

/// What librdkafka's callbacks (served inside the consumer's poll) share with the loop:
/// partitions revoked by a rebalance, and the lag gauge of the owned partitions.
struct LoopContext {
    revoked: Mutex<Vec<(String, i32)>>,
    lag: LagReporter,
}

fn partition_ids(partitions: &TopicPartitionList) -> Vec<(String, i32)> {
    partitions
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.observe(&statistics);
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Commit what is finished before another member takes the partitions over.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "commit before rebalance failed"),
            }
            let partitions = partition_ids(partitions);
            // The new owner reports these now; a stale value here would double the lag.
            self.lag.revoked(partitions.iter().cloned());
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            revoked.extend(partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.lag.assigned(partition_ids(partitions));
        }
    }
}

enum Outcome {
    Handled,
    DeadLettered,
    /// Shutdown came while the message was still failing: not finished, not stored.
    Abandoned,
}

struct Done {
    tp: TopicPartition,
    generation: u64,
    offset: i64,
    key: Option<Vec<u8>>,
    outcome: Outcome,
}

struct Tracked {
    generation: u64,
    offsets: PartitionOffsets,
}

/// Consumes `spec.topics` in group `spec.group_id` until `shutdown`, handing every message
/// to `handler`. Returns after in-flight messages are finished (or the grace period ran
/// out) and the finished ones committed.
pub async fn run_consumer<H: Handler>(
    config: &KafkaConfig,
    spec: &ConsumerSpec,
    handler: Arc<H>,
    producer: Producer,
    metrics: BusMetrics,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let context = LoopContext {
        revoked: Mutex::default(),
        lag: LagReporter::new(metrics.consumer_lag.clone(), &spec.group_id),
    };
    let consumer: StreamConsumer<LoopContext> = config
        .client_config(&spec.client_id)
        .set("group.id", &spec.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval_ms.to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "fetch.wait.max.ms",
            if spec.low_latency {
                config.low_latency_fetch_wait_ms
            } else {
                config.bulk_fetch_wait_ms
            }
            .to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            config.prefetch_kbytes.to_string(),
        )
        .set(
            "statistics.interval.ms",
            config.statistics_interval_ms.to_string(),
        )
        .create_with_context(context)?;
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(group = %spec.group_id, topics = ?spec.topics, "consumer started");

    let shared = Arc::new(TaskShared {
        handler,
        producer,
        metrics: metrics.clone(),
        group_id: spec.group_id.clone(),
        dlq_topic: spec.dlq_topic.clone(),
        max_backoff: Duration::from_millis(config.max_backoff_ms),
        shutdown: shutdown.clone(),
    });
    let mut state = LoopState {
        tracked: HashMap::new(),
        busy_keys: HashMap::new(),
        held: 0,
        next_generation: 0,
        tasks: JoinSet::new(),
    };

    // librdkafka serves statistics (and rebalances) only inside a poll, and a saturated
    // loop does not poll: a stuck handler would freeze the lag gauge at its last value,
    // the moment it matters most. So once a statistics interval has gone by without taking
    // a message, one more is taken (the poll serves what is pending first), up to twice
    // `max_in_flight`: the gauge stays fresh for that many intervals of a stall.
    let stall = Duration::from_millis(config.statistics_interval_ms);
    let overdraft_limit = if stall.is_zero() {
        config.max_in_flight
    } else {
        config.max_in_flight.saturating_mul(2)
    };
    let mut last_taken = tokio::time::Instant::now();
    loop {
        state.forget_revoked(&consumer);
        let stalled_at = last_taken + stall;
        let may_take = state.held < config.max_in_flight
            || (state.held < overdraft_limit && tokio::time::Instant::now() >= stalled_at);
        let may_overdraw = !may_take && state.held < overdraft_limit;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(joined) = state.tasks.join_next(), if !state.tasks.is_empty() => {
                state.finish(&consumer, &shared, joined);
            }
            received = consumer.recv(), if may_take => {
                last_taken = tokio::time::Instant::now();
                match received {
                    Ok(message) => state.accept(&shared, detach(&message)),
                    Err(error) => {
                        tracing::warn!(%error, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(stalled_at), if may_overdraw => {}
        }
    }

    // Graceful shutdown: no new message; let the running ones finish, store, commit.
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let deadline = Instant::now() + grace;
    while !state.tasks.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, state.tasks.join_next()).await {
            Ok(Some(joined)) => state.finish(&consumer, &shared, joined),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    running = state.tasks.len(),
                    "shutdown grace period over; unfinished messages will be delivered again"
                );
                state.tasks.abort_all();
                break;
            }
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(%error, "final commit failed; some messages will be delivered again")
        }
    }
    consumer.unsubscribe();
    consumer.context().lag.clear();
    tracing::info!(group = %spec.group_id, "consumer stopped");
    Ok(())
}

/// [`run_consumer`] in a task of its own.
pub fn spawn_consumer<H: Handler>(
    config: &KafkaConfig,
    spec: ConsumerSpec,
    handler: Arc<H>,
    producer: Producer,
    metrics: BusMetrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), BusError>> {
    let config = config.clone();
    tokio::spawn(
        async move { run_consumer(&config, &spec, handler, producer, metrics, shutdown).await },
    )
}

struct TaskShared<H> {
    handler: Arc<H>,
    producer: Producer,
    metrics: BusMetrics,
    group_id: String,
    dlq_topic: String,
    max_backoff: Duration,
    shutdown: CancellationToken,
}

struct LoopState {
    tracked: HashMap<TopicPartition, Tracked>,
    /// Keys with a message running, and the messages of that key waiting behind it.
    busy_keys: HashMap<Vec<u8>, VecDeque<(u64, Inbound)>>,
    /// Running plus waiting messages.
    held: usize,
    next_generation: u64,
    tasks: JoinSet<Done>,
}

impl LoopState {
    fn accept<H: Handler>(&mut self, shared: &Arc<TaskShared<H>>, message: Inbound) {
        shared
            .metrics
            .consumed
            .with_label_values(&[&*message.topic])
            .inc();
        let tp = (message.topic.clone(), message.partition);
        let tracked = self.tracked.entry(tp).or_insert_with(|| {
            self.next_generation += 1;
            Tracked {
                generation: self.next_generation,
                offsets: PartitionOffsets::default(),
            }
        });
        tracked.offsets.received(message.offset);
        let generation = tracked.generation;
        self.held += 1;
        match &message.key {
            Some(key) => match self.busy_keys.get_mut(key) {
                Some(waiting) => waiting.push_back((generation, message)),
                None => {
                    self.busy_keys.insert(key.clone(), VecDeque::new());
                    self.spawn(shared, generation, message);
                }
            },
            None => self.spawn(shared, generation, message),
        }
    }

    fn spawn<H: Handler>(
        &mut self,
        shared: &Arc<TaskShared<H>>,
        generation: u64,
        message: Inbound,
    ) {
        let shared = shared.clone();
        self.tasks.spawn(async move {
            let outcome = process(&shared, &message).await;
            Done {
                tp: (message.topic.clone(), message.partition),
                generation,
                offset: message.offset,
                key: message.key,
                outcome,
            }
        });
    }

    fn finish<H: Handler>(
        &mut self,
        consumer: &StreamConsumer<LoopContext>,
        shared: &Arc<TaskShared<H>>,
        joined: Result<Done, tokio::task::JoinError>,
    ) {
        // Tasks catch handler panics, so a JoinError means the task was aborted at shutdown.
        let Ok(done) = joined else { return };
        self.held = self.held.saturating_sub(1);
        let finished = !matches!(done.outcome, Outcome::Abandoned);
        let storable = match self.tracked.get_mut(&done.tp) {
            // A stale generation means the partition was revoked and assigned again since.
            Some(tracked) if finished && tracked.generation == done.generation => {
                tracked.offsets.completed(done.offset)
            }
            _ => None,
        };
        if let Some(offset) = storable
            && let Err(error) = consumer.store_offset(&done.tp.0, done.tp.1, offset)
        {
            tracing::debug!(%error, partition = done.tp.1, "offset not stored (partition revoked?)");
        }
        if let Some(key) = done.key {
            let next = self.busy_keys.get_mut(&key).and_then(VecDeque::pop_front);
            match next {
                Some((generation, message)) => self.spawn(shared, generation, message),
                None => {
                    self.busy_keys.remove(&key);
                }
            }
        }
    }

    /// Drops the bookkeeping of partitions a rebalance took away; their waiting messages
    /// will be delivered to the new owner from the committed offset.
    fn forget_revoked(&mut self, consumer: &StreamConsumer<LoopContext>) {
        let revoked: Vec<(String, i32)> = {
            let mut list = consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *list)
        };
        if revoked.is_empty() {
            return;
        }
        for (topic, partition) in &revoked {
            self.tracked
                .retain(|(t, p), _| !(&**t == topic && p == partition));
        }
        let mut dropped = 0;
        for waiting in self.busy_keys.values_mut() {
            let before = waiting.len();
            waiting.retain(|(_, m)| {
                !revoked
                    .iter()
                    .any(|(t, p)| *t == *m.topic && *p == m.partition)
            });
            dropped += before - waiting.len();
        }
        self.held = self.held.saturating_sub(dropped);
        tracing::info!(partitions = revoked.len(), dropped, "partitions revoked");
    }
}

fn detach(message: &rdkafka::message::BorrowedMessage<'_>) -> Inbound {
    let headers = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Inbound {
        topic: Arc::from(message.topic()),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: message.timestamp().to_millis(),
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, 100 ms × 2^attempt)].
fn backoff(attempt: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(16))
        .min(cap);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

async fn process<H: Handler>(shared: &TaskShared<H>, message: &Inbound) -> Outcome {
    let mut attempt: u32 = 0;
    loop {
        let started = Instant::now();
        let result = AssertUnwindSafe(shared.handler.handle(message))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(HandleError::permanent(
                    "panic",
                    format!("handler panicked: {what}"),
                ))
            });
        let outcome = match &result {
            Ok(()) => "ok",
            Err(HandleError::Permanent { .. }) => "permanent",
            Err(HandleError::Transient { .. }) => "transient",
        };
        shared
            .metrics
            .handler_seconds
            .with_label_values(&[&*message.topic, outcome])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => return Outcome::Handled,
            Err(HandleError::Permanent { class, reason }) => {
                return dead_letter(shared, message, class, &reason).await;
            }
            Err(HandleError::Transient { reason }) => {
                shared
                    .metrics
                    .retries
                    .with_label_values(&[&*message.topic])
                    .inc();
                let wait = backoff(attempt, shared.max_backoff);
                attempt = attempt.saturating_add(1);
                tracing::warn!(
                    topic = %message.topic, partition = message.partition, offset = message.offset,
                    attempt, ?wait, %reason, "transient failure, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.shutdown.cancelled() => return Outcome::Abandoned,
                }
            }
        }
    }
}

async fn dead_letter<H: Handler>(
    shared: &TaskShared<H>,
    message: &Inbound,
    class: &'static str,
    reason: &str,
) -> Outcome {
    tracing::warn!(
        topic = %message.topic, partition = message.partition, offset = message.offset,
        class, %reason, "message dead-lettered"
    );
    let letter = v1::DeadLetter {
        topic: message.topic.to_string(),
        partition: message.partition,
        offset: message.offset,
        key: message.key.clone().unwrap_or_default(),
        payload: message.payload.clone().unwrap_or_default(),
        headers: message
            .headers
            .iter()
            .map(|(name, value)| v1::RawHeader {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        reason: reason.to_owned(),
        consumer_group: shared.group_id.clone(),
        failed_at: Some(tocsin_contracts::timestamp_now()),
    };
    let payload = codec::to_protobuf(&letter);
    let event_id = uuid::Uuid::now_v7().to_string();
    let trace = message.trace();
    let mut attempt: u32 = 0;
    loop {
        let sent = shared
            .producer
            .send(Outbound {
                topic: &shared.dlq_topic,
                key: message.key.as_deref().unwrap_or_default(),
                payload: &payload,
                content_type: CONTENT_TYPE_PROTOBUF,
                event_id: &event_id,
                trace: &trace,
            })
            .await;
        match sent {
            Ok(_) => {
                shared
                    .metrics
                    .dead_letters
                    .with_label_values(&[&*message.topic, class])
                    .inc();
                return Outcome::DeadLettered;
            }
            Err(error) => {
                let wait = backoff(attempt, shared.max_backoff);
                attempt = attempt.saturating_add(1);
                tracing::warn!(%error, ?wait, "cannot write to the dead-letter topic, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.shutdown.cancelled() => return Outcome::Abandoned,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_grows() {
        let cap = Duration::from_secs(2);
        for attempt in 0..40 {
            assert!(backoff(attempt, cap) <= cap);
        }
        // With full jitter the expectation doubles: the mean of many draws shows it.
        let mean = |a| (0..2000).map(|_| backoff(a, cap).as_millis()).sum::<u128>() / 2000;
        assert!(mean(0) <= 60, "{}", mean(0));
        assert!(mean(3) > 300 && mean(3) < 500, "{}", mean(3));
    }
}
