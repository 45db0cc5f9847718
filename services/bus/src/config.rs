//! `[kafka]` configuration.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// A produce not acknowledged within this long fails; the handler that made it fails
    /// transiently and its input is handled again.
    pub message_timeout_ms: u64,
    /// How long the producer waits to fill a batch: throughput against latency.
    pub linger_ms: u64,
    /// How often stored offsets are committed; a crash re-delivers at most this much.
    pub commit_interval_ms: u64,
    /// A member that sends no heartbeat for this long is declared dead and its partitions
    /// go to the others: how long a crashed instance's partitions stall.
    pub session_timeout_ms: u64,
    /// Messages a consumer holds at once, running or waiting behind their key: bounds
    /// memory and the work redone after a crash. While its handlers stall, a consumer takes
    /// one more per `statistics_interval_ms`, up to twice this (see `bus::lag`).
    pub max_in_flight: usize,
    /// Cap of the exponential backoff between two attempts of a transient failure.
    pub max_backoff_ms: u64,
    /// Longest time a low-latency consumer's fetch (the triggered lane, segment events)
    /// waits for data before the broker answers: every hop of a quiet topic costs up to
    /// this much (a broker may answer sooner when data arrives; Tansu 0.6 waits it out).
    /// Lower: less latency per hop, more requests.
    pub low_latency_fetch_wait_ms: u64,
    /// The same for the bulk consumers (blasts' jobs, outbound, feedback). A broker that
    /// answers as soon as it has data (Kafka) makes it matter only on idle topics; on one
    /// that waits it out (Tansu 0.6), it bounds each partition to one fetch per wait, and
    /// so the throughput of every hop (`loadtests/`: 7,200 records/s through three hops at
    /// 500 ms, 23,000 at 50 ms). The local stack sets 50.
    pub bulk_fetch_wait_ms: u64,
    /// Kilobytes each consumer prefetches at most (librdkafka's
    /// `queued.max.messages.kbytes`, 64 MB by default): most of a service's memory during
    /// a blast's backlog. A few thousand messages ahead of `max_in_flight` are plenty; a
    /// backlog larger than this shows in the lag gauge as at least this window (see
    /// `bus::lag`).
    pub prefetch_kbytes: u64,
    /// How long a graceful shutdown waits for in-flight messages.
    pub shutdown_grace_ms: u64,
    /// How often librdkafka reports a consumer's statistics, from which its lag per
    /// partition is exported (`tocsin_consumer_lag_messages`): how stale that gauge may
    /// be. 0 turns the statistics, and the gauge, off.
    pub statistics_interval_ms: u64,
    /// Passed to librdkafka as they are, for security settings and the like. Numbers and
    /// booleans are taken as librdkafka's text (`TOCSIN__KAFKA__PROPERTIES__LINGER.MS=20`
    /// arrives as a number).
    #[serde(default, deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
    pub topics: Topics,
}

/// A scalar property value (text, number or boolean), as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Property {
    Text(String),
    Integer(i64),
    Float(f64),
    Flag(bool),
}

fn properties<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = BTreeMap::<String, Property>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Property::Text(text) => text,
                Property::Integer(n) => n.to_string(),
                Property::Float(x) => x.to_string(),
                Property::Flag(b) => b.to_string(),
            };
            (key, text)
        })
        .collect())
}

/// Every topic of the pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub segments: TopicSpec,
    pub campaigns: TopicSpec,
    pub jobs: TopicSpec,
    pub outbound_email: TopicSpec,
    pub outbound_sms: TopicSpec,
    /// The triggered lane (sequences): the same messages as `jobs` and `outbound_*`, on
    /// topics of their own so that they never queue behind a blast's backlog.
    pub jobs_triggered: TopicSpec,
    pub outbound_email_triggered: TopicSpec,
    pub outbound_sms_triggered: TopicSpec,
    pub feedback: TopicSpec,
    pub dlq: TopicSpec,
}

impl Topics {
    pub fn all(&self) -> [&TopicSpec; 10] {
        [
            &self.segments,
            &self.campaigns,
            &self.jobs,
            &self.outbound_email,
            &self.outbound_sms,
            &self.jobs_triggered,
            &self.outbound_email_triggered,
            &self.outbound_sms_triggered,
            &self.feedback,
            &self.dlq,
        ]
    }
}

/// One topic, as it is created when missing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    /// The unit of parallelism: consumers of a group share partitions.
    pub partitions: i32,
    pub replication: i32,
    /// Topic-level settings (`retention.ms`, `cleanup.policy`, ...).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Settings shared by producers, consumers and admin clients.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        #[serde(deserialize_with = "properties")]
        properties: BTreeMap<String, String>,
    }

    #[test]
    fn properties_from_the_environment_may_be_numbers_or_flags() {
        let wrapper: Wrapper = serde_json::from_str(
            r#"{"properties": {"linger.ms": 20, "security.protocol": "SASL_SSL",
                "enable.ssl.certificate.verification": false, "sticky.partitioning.linger.ms": 2.5}}"#,
        )
        .expect("properties");
        let properties: Vec<(&str, &str)> = wrapper
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            properties,
            [
                ("enable.ssl.certificate.verification", "false"),
                ("linger.ms", "20"),
                ("security.protocol", "SASL_SSL"),
                ("sticky.partitioning.linger.ms", "2.5"),
            ]
        );
        assert!(serde_json::from_str::<Wrapper>(r#"{"properties": {"a": [1]}}"#).is_err());
    }
}
