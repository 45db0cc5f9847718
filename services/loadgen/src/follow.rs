//! Follows one blast through the bus, from its jobs to its last provider hand-off, and
//! measures it: what each stage moved and how fast, how long each recipient waited from
//! planning to hand-off, what was sent twice or never, and how far behind each consumer
//! group fell.
//!
//! The follower is assigned every partition of the stage topics at their current end
//! *before* the blast is scheduled, so it sees every record the blast produces and none
//! from before. Run it on an otherwise quiet pipeline: jobs and outbound records are
//! counted without being decoded (decoding a million of them would make the follower the
//! bottleneck), feedback is decoded and filtered by campaign.
//!
//! Times are the records' own timestamps (the producer's clock: every process is on this
//! machine), so the follower's own delays do not enter the figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use tocsin_contracts::v1;

use crate::probe::{feedback_of, percentile};

/// What to follow.
#[derive(Debug, Clone)]
pub struct Follow {
    pub brokers: String,
    /// Stage topics in pipeline order, e.g. `tocsin.jobs`, `tocsin.outbound.email`.
    pub stages: Vec<String>,
    pub feedback_topic: String,
    pub campaign: String,
    /// Recipients the blast should hand to a provider (or fail): the follower stops when
    /// that many have an ending.
    pub expected: u64,
    /// Give up when no ending arrived for this long.
    pub stall: Duration,
    /// Services' `/metrics` URLs, scraped every second for consumer lag.
    pub metrics: Vec<String>,
}

/// One stage topic during the blast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageReport {
    pub topic: String,
    pub records: u64,
    pub mean_bytes: f64,
    /// From the stage's first record to its last.
    pub seconds: f64,
    pub per_second: f64,
}

/// The blast, measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlastReport {
    pub campaign: String,
    pub expected: u64,
    /// Distinct recipients with a `Feedback(sent)`.
    pub sent: u64,
    /// Distinct recipients whose message ended otherwise (failed, bounced, expired, ...).
    pub not_sent: u64,
    /// `Feedback(sent)` records beyond the first for one recipient (the sender's ledger
    /// should make this 0; the provider's own count of duplicates is the final word).
    pub sent_twice: u64,
    /// Expected recipients with no ending when the follower stopped.
    pub missing: u64,
    /// Unix ms of the first job record and of the last provider hand-off.
    pub first_job_ms: i64,
    pub last_sent_ms: i64,
    pub stages: Vec<StageReport>,
    pub feedback: StageReport,
    /// Planning (the job's record) to hand-off (the `Feedback(sent)` record), ms.
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// The largest total lag seen per consumer group (`tocsin_consumer_lag_messages`
    /// summed over its partitions), sampled every second.
    pub max_lag: HashMap<String, i64>,
    /// Endings per second over the whole blast, from the first job to the last hand-off.
    pub sent_per_second: f64,
}

#[derive(Debug, Default)]
struct Stage {
    records: u64,
    bytes: u64,
    first_ms: i64,
    last_ms: i64,
}

impl Stage {
    fn add(&mut self, at_ms: i64, bytes: usize) {
        if self.records == 0 || at_ms < self.first_ms {
            self.first_ms = at_ms;
        }
        self.last_ms = self.last_ms.max(at_ms);
        self.records += 1;
        self.bytes += bytes as u64;
    }

    fn report(&self, topic: &str) -> StageReport {
        let seconds = (self.last_ms - self.first_ms).max(0) as f64 / 1000.0;
        StageReport {
            topic: topic.to_owned(),
            records: self.records,
            mean_bytes: self.bytes as f64 / self.records.max(1) as f64,
            seconds,
            per_second: if seconds > 0.0 {
                self.records as f64 / seconds
            } else {
                self.records as f64
            },
        }
    }
}

/// Assigns the follower to the end of every stage and feedback partition; call before
/// scheduling the blast, then [`Follower::run`].
pub struct Follower {
    follow: Follow,
    consumer: StreamConsumer,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("follow", &self.follow)
            .finish_non_exhaustive()
    }
}

impl Follower {
    pub fn assign(follow: Follow) -> Result<Self, String> {
        let config = |group: &str| {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &follow.brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "100");
            c
        };
        let group = format!(
            "tocsin-loadgen-follow-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        );
        let admin: BaseConsumer = config(&group).create().map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs(10);
        let mut assignment = TopicPartitionList::new();
        let topics = follow.stages.iter().chain([&follow.feedback_topic]);
        for topic in topics {
            let metadata = admin
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| format!("metadata of {topic}: {e}"))?;
            let partitions = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if partitions == 0 {
                return Err(format!("{topic} has no partition (is the pipeline up?)"));
            }
            for p in 0..partitions as i32 {
                let (_, high) = admin
                    .fetch_watermarks(topic, p, timeout)
                    .map_err(|e| format!("end of {topic}/{p}: {e}"))?;
                assignment
                    .add_partition_offset(topic, p, Offset::Offset(high))
                    .map_err(|e| e.to_string())?;
            }
        }
        let consumer: StreamConsumer = config(&group).create().map_err(|e| e.to_string())?;
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        Ok(Follower { follow, consumer })
    }

    /// Reads until every expected recipient has an ending, or nothing ended for
    /// `stall`; `on_progress(endings, expected)` about once a second.
    pub async fn run(self, mut on_progress: impl FnMut(u64, u64)) -> Result<BlastReport, String> {
        let Follower { follow, consumer } = self;
        let max_lag: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
        let lag = tokio::spawn(sample_lag(follow.metrics.clone(), max_lag.clone()));
        let mut stages: HashMap<String, Stage> = follow
            .stages
            .iter()
            .map(|t| (t.clone(), Stage::default()))
            .collect();
        let mut feedback = Stage::default();
        // Contact id → the first job record's time, then the hand-off's.
        let mut planned: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut ended: HashMap<String, bool> = HashMap::new();
        let mut latencies: Vec<f64> = Vec::new();
        let mut sent_twice = 0u64;
        let mut last_sent_ms = 0i64;
        let first_stage = follow.stages.first().cloned().unwrap_or_default();
        let mut last_ending = Instant::now();
        let mut last_progress = Instant::now();
        while (ended.len() as u64) < follow.expected && last_ending.elapsed() < follow.stall {
            let Ok(message) =
                tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            else {
                continue;
            };
            let message = message.map_err(|e| e.to_string())?;
            let at_ms = message.timestamp().to_millis().unwrap_or(0);
            let bytes = message.payload_len();
            let topic = message.topic();
            if topic != follow.feedback_topic {
                if let Some(stage) = stages.get_mut(topic) {
                    stage.add(at_ms, bytes);
                }
                if topic == first_stage
                    && let Some(key) = message.key()
                {
                    planned.entry(key.to_vec()).or_insert(at_ms);
                }
                continue;
            }
            let Some(f) = feedback_of(&message) else {
                continue;
            };
            if f.campaign_id != follow.campaign {
                continue;
            }
            let ending = match f.kind() {
                v1::FeedbackKind::Sent => true,
                // Not `Suppressed`: the planner reports those recipients at fan-out, and
                // they were never expected.
                v1::FeedbackKind::Failed
                | v1::FeedbackKind::Bounced
                | v1::FeedbackKind::Expired
                | v1::FeedbackKind::Cancelled => false,
                _ => continue,
            };
            feedback.add(at_ms, bytes);
            match ended.get(&f.contact_id) {
                Some(true) if ending => sent_twice += 1,
                Some(_) => {}
                None => {
                    ended.insert(f.contact_id.clone(), ending);
                    last_ending = Instant::now();
                    if ending {
                        last_sent_ms = last_sent_ms.max(at_ms);
                        if let Some(start) = planned.get(f.contact_id.as_bytes()) {
                            latencies.push((at_ms - start) as f64);
                        }
                    }
                }
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                on_progress(ended.len() as u64, follow.expected);
            }
        }
        on_progress(ended.len() as u64, follow.expected);
        lag.abort();
        let max_lag = max_lag.lock().map(|m| m.clone()).unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        let sent = ended.values().filter(|s| **s).count() as u64;
        let first_job_ms = stages.get(&first_stage).map(|s| s.first_ms).unwrap_or(0);
        let seconds = (last_sent_ms - first_job_ms).max(1) as f64 / 1000.0;
        Ok(BlastReport {
            campaign: follow.campaign.clone(),
            expected: follow.expected,
            sent,
            not_sent: ended.len() as u64 - sent,
            sent_twice,
            missing: follow.expected.saturating_sub(ended.len() as u64),
            first_job_ms,
            last_sent_ms,
            stages: follow
                .stages
                .iter()
                .map(|t| stages.get(t).map(|s| s.report(t)).unwrap_or_default())
                .collect(),
            feedback: feedback.report(&follow.feedback_topic),
            latency_p50_ms: percentile(&latencies, 0.50),
            latency_p90_ms: percentile(&latencies, 0.90),
            latency_p99_ms: percentile(&latencies, 0.99),
            latency_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
            max_lag,
            sent_per_second: sent as f64 / seconds,
        })
    }
}

/// Scrapes `urls` every second until aborted, keeping in `max` the largest total lag seen
/// per consumer group.
async fn sample_lag(urls: Vec<String>, max: Arc<Mutex<HashMap<String, i64>>>) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for url in &urls {
            let Ok(answer) = client.get(url).timeout(Duration::from_secs(2)).send().await else {
                continue;
            };
            let Ok(text) = answer.text().await else {
                continue;
            };
            let Ok(mut max) = max.lock() else {
                return;
            };
            for (group, lag) in lag_by_group(&text) {
                let entry = max.entry(group).or_insert(0);
                *entry = (*entry).max(lag);
            }
        }
    }
}

/// `tocsin_consumer_lag_messages` summed per `group` in one Prometheus text exposition.
pub fn lag_by_group(exposition: &str) -> HashMap<String, i64> {
    let mut sums: HashMap<String, i64> = HashMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("tocsin_consumer_lag_messages{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let group = labels
            .split(',')
            .find_map(|l| l.strip_prefix("group=\""))
            .and_then(|g| g.strip_suffix('"'))
            .unwrap_or_default();
        let value = value.trim().parse::<f64>().unwrap_or(0.0) as i64;
        *sums.entry(group.to_owned()).or_insert(0) += value;
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_summed_per_group() {
        let text = "# HELP tocsin_consumer_lag_messages x\n\
            tocsin_consumer_lag_messages{group=\"tocsin-renderer\",partition=\"0\",topic=\"tocsin.jobs\"} 12\n\
            tocsin_consumer_lag_messages{group=\"tocsin-renderer\",partition=\"1\",topic=\"tocsin.jobs\"} 30\n\
            tocsin_consumer_lag_messages{group=\"tocsin-sender\",partition=\"0\",topic=\"tocsin.outbound.email\"} 0\n\
            tocsin_bus_messages_consumed_total{topic=\"tocsin.jobs\"} 99\n";
        let lag = lag_by_group(text);
        assert_eq!(lag["tocsin-renderer"], 42);
        assert_eq!(lag["tocsin-sender"], 0);
        assert_eq!(lag.len(), 2);
    }

    #[test]
    fn a_stage_measures_from_its_first_record_to_its_last() {
        let mut stage = Stage::default();
        stage.add(2_000, 100);
        stage.add(1_000, 300);
        stage.add(3_000, 200);
        let report = stage.report("t");
        assert_eq!(report.records, 3);
        assert_eq!(report.mean_bytes, 200.0);
        assert_eq!(report.seconds, 2.0);
        assert_eq!(report.per_second, 1.5);
    }
}
