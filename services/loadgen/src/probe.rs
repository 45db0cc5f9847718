//! The triggered lane's latency, as the CRM sees it: contacts entering a sequence's trigger
//! segment one at a time, and for each, the time until a provider accepted its first
//! message (the sender's `Feedback(sent)` is published once the provider answered 2xx, its
//! `occurred_at` is that moment).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde::Serialize;
use tocsin_bus::{Producer, TraceContext};
use tocsin_contracts::v1;

/// What to probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub segments_topic: String,
    pub feedback_topic: String,
    pub brokers: String,
    /// The trigger segment of the sequence probed.
    pub segment: String,
    /// The sequence whose first step is measured.
    pub sequence: String,
    pub count: usize,
    pub interval: Duration,
    /// Give up on the missing ones this long after the last entry.
    pub timeout: Duration,
    /// Distinguishes the contacts of this run from earlier ones.
    pub run: String,
}

/// Latencies in milliseconds, from the segment event's publication to the provider's
/// acceptance.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub probes: usize,
    pub received: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A `tocsin.feedback` record's event, decoded by its content type; `None` if unreadable.
pub(crate) fn feedback_of(message: &impl Message) -> Option<v1::Feedback> {
    use rdkafka::message::Headers;
    let content_type = message.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == tocsin_bus::headers::CONTENT_TYPE)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    });
    tocsin_contracts::codec::decode::<v1::Feedback>(content_type, message.payload()?).ok()
}

/// The value below which `q` of the sorted sample lies (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn contact(run: &str, i: usize) -> v1::Contact {
    let id = format!("probe-{run}-{i}");
    v1::Contact {
        email: format!("probe+{run}-{i}@example.org"),
        first_name: "Sonde".into(),
        last_name: "Latence".into(),
        locale: "fr".into(),
        time_zone: "Europe/Paris".into(),
        consents: vec![v1::Consent {
            channel: v1::Channel::Email.into(),
            status: v1::ConsentStatus::Granted.into(),
            source: "tocsin-loadgen probe".into(),
            recorded_at: Some(tocsin_contracts::timestamp_now()),
        }],
        updated_at: Some(tocsin_contracts::timestamp_now()),
        id,
        ..Default::default()
    }
}

/// Runs the probe: the feedback consumer is assigned before the first entry is published.
pub async fn run(producer: &Producer, probe: &Probe) -> Result<LatencyReport, String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &probe.brokers)
        .set("group.id", format!("tocsin-probe-{}", probe.run))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .create()
        .map_err(|e| e.to_string())?;
    consumer
        .subscribe(&[probe.feedback_topic.as_str()])
        .map_err(|e| e.to_string())?;
    // Wait for the assignment, so that no answer is missed.
    let assigned_by = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            return Err(e.to_string());
        }
        if consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false)
        {
            break;
        }
        if std::time::Instant::now() > assigned_by {
            return Err("no partition of the feedback topic assigned after 30 s".into());
        }
    }

    let sent_at: std::sync::Arc<std::sync::Mutex<HashMap<String, f64>>> = Default::default();
    let publisher = {
        let producer = producer.clone();
        let probe = probe.clone();
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let trace = TraceContext::new_root();
            let mut tick = tokio::time::interval(probe.interval);
            for i in 0..probe.count {
                tick.tick().await;
                let c = contact(&probe.run, i);
                let event_id = format!("probe-{}-{i}", probe.run);
                let event = v1::SegmentEvent {
                    meta: Some(v1::EventMeta {
                        event_id: event_id.clone(),
                        occurred_at: Some(tocsin_contracts::timestamp_now()),
                        source: "tocsin-loadgen".into(),
                    }),
                    contact_id: c.id.clone(),
                    change: Some(v1::segment_event::Change::Entered(v1::SegmentEntered {
                        segment_id: probe.segment.clone(),
                        contact: Some(c.clone()),
                    })),
                };
                let at = epoch_ms(SystemTime::now());
                sent_at.lock().expect("map").insert(c.id.clone(), at);
                producer
                    .publish(&probe.segments_topic, &c.id, &event_id, &event, &trace)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
    };

    let mut latencies: HashMap<String, f64> = HashMap::new();
    let deadline = tokio::time::Instant::now()
        + probe.interval * u32::try_from(probe.count).unwrap_or(u32::MAX)
        + probe.timeout;
    while latencies.len() < probe.count && tokio::time::Instant::now() < deadline {
        let Ok(message) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let message = message.map_err(|e| e.to_string())?;
        let Some(f) = feedback_of(&message) else {
            continue;
        };
        if f.kind() != v1::FeedbackKind::Sent || f.sequence_id != probe.sequence || f.step != 1 {
            continue;
        }
        let Some(start) = sent_at.lock().expect("map").get(&f.contact_id).copied() else {
            continue;
        };
        let at = f
            .meta
            .as_ref()
            .and_then(|m| m.occurred_at.as_ref())
            .map(|t| t.seconds as f64 * 1000.0 + f64::from(t.nanos) / 1e6)
            .unwrap_or_else(|| epoch_ms(SystemTime::now()));
        latencies.entry(f.contact_id.clone()).or_insert(at - start);
    }
    publisher.await.map_err(|e| e.to_string())??;
    let mut sample: Vec<f64> = latencies.into_values().collect();
    sample.sort_by(f64::total_cmp);
    let mean = sample.iter().sum::<f64>() / sample.len().max(1) as f64;
    Ok(LatencyReport {
        probes: probe.count,
        received: sample.len(),
        p50_ms: percentile(&sample, 0.50),
        p90_ms: percentile(&sample, 0.90),
        p99_ms: percentile(&sample, 0.99),
        max_ms: sample.last().copied().unwrap_or(f64::NAN),
        mean_ms: mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
