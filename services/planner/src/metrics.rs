//! The planner's Prometheus metrics. No campaign or contact id on the counters; the one
//! family with campaign ids, `tocsin_planner_campaign_recipients`, holds only the
//! campaigns running or paused now (a few series each, removed when they end).
//!
//! Counters are counted where things happen. Gauges of the state in Redis (contacts,
//! segments, the schedule, campaigns' progress) are read by [`Refresher`] every
//! `metrics_refresh_ms`, with O(1) reads: a counter for contacts (kept by the membership
//! script), `ZCARD` per segment, `ZCARD` / `ZCOUNT` of the schedule, a campaign's record
//! and counters; never a walk over contacts.

use std::collections::{HashMap, HashSet};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::campaign::{self, State};
use crate::keys;

#[derive(Debug, Clone)]
pub struct PlannerMetrics {
    pub planned: IntCounterVec,
    pub suppressed: IntCounterVec,
    pub dispatched: IntCounterVec,
    pub expired: IntCounter,
    pub stale_snapshots: IntCounter,
    pub erasures: IntCounter,
    pub schedule_waiting: IntGauge,
    /// Addresses put on the suppression list by feedback, by reason.
    pub feedback_suppressions: IntCounterVec,
    /// Feedback events read from `tocsin.feedback`, each counted once (see
    /// [`crate::feedback`]): the deliverability dashboards' rates.
    pub feedback_events: IntCounterVec,
    pub sequence_enrolments: IntCounter,
    pub sequence_steps: IntCounterVec,
    pub sequence_exits: IntCounterVec,
    pub sequence_waiting: IntGauge,
    pub contacts: IntGauge,
    pub segments: IntGauge,
    /// Members of the `metrics_top_segments` largest segments.
    pub segment_contacts: IntGaugeVec,
    /// Jobs whose time has come, not yet claimed by a dispatcher: a backlog here means
    /// the dispatcher does not keep up (or is stuck).
    pub schedule_due: IntGauge,
    /// Running and paused campaigns only: `total` (members of the segment), `planned`,
    /// `suppressed`, `dispatched`.
    pub campaign_recipients: IntGaugeVec,
}

impl PlannerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let feedback_suppressions = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "tocsin_planner_feedback_suppressions_total",
                    "Addresses suppressed because of feedback, by reason.",
                ),
                &["reason"],
            )?,
        )?;
        Ok(PlannerMetrics {
            feedback_suppressions,
            feedback_events: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "tocsin_planner_feedback_events_total",
                        "Feedback events from the sender and the tracker, each counted once, \
                         by channel, kind and bounce class (hard, soft; empty for other kinds).",
                    ),
                    &["channel", "kind", "bounce_class"],
                )?,
            )?,
            sequence_enrolments: reg(
                registry,
                IntCounter::new(
                    "tocsin_planner_sequence_enrolments_total",
                    "Contacts enrolled in a sequence.",
                )?,
            )?,
            sequence_steps: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "tocsin_planner_sequence_steps_total",
                        "Sequence steps run, by channel and outcome (sent, skipped, suppressed, expired).",
                    ),
                    &["channel", "outcome"],
                )?,
            )?,
            sequence_exits: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "tocsin_planner_sequence_exits_total",
                        "Enrolments ended before their last step, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            sequence_waiting: reg(
                registry,
                IntGauge::new(
                    "tocsin_planner_sequence_schedule_enrolments",
                    "Active enrolments waiting for their next step.",
                )?,
            )?,
            planned: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "tocsin_planner_jobs_planned_total",
                        "Recipients planned, by channel.",
                    ),
                    &["channel"],
                )?,
            )?,
            suppressed: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "tocsin_planner_recipients_suppressed_total",
                        "Recipients not messaged, by channel and reason.",
                    ),
                    &["channel", "reason"],
                )?,
            )?,
            dispatched: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "tocsin_planner_jobs_dispatched_total",
                        "Jobs published to the jobs topic, by channel.",
                    ),
                    &["channel"],
                )?,
            )?,
            expired: reg(
                registry,
                IntCounter::new(
                    "tocsin_planner_jobs_expired_total",
                    "Jobs dropped because their expiry passed before they could leave.",
                )?,
            )?,
            stale_snapshots: reg(
                registry,
                IntCounter::new(
                    "tocsin_planner_stale_snapshots_total",
                    "Contact snapshots ignored because a newer one was stored.",
                )?,
            )?,
            erasures: reg(
                registry,
                IntCounter::new(
                    "tocsin_planner_erasures_total",
                    "Contacts erased (GDPR art. 17).",
                )?,
            )?,
            schedule_waiting: reg(
                registry,
                IntGauge::new(
                    "tocsin_planner_schedule_jobs",
                    "Jobs waiting in the durable schedule.",
                )?,
            )?,
            schedule_due: reg(
                registry,
                IntGauge::new(
                    "tocsin_planner_schedule_due_jobs",
                    "Jobs in the durable schedule whose time has come, not claimed by a dispatcher.",
                )?,
            )?,
            contacts: reg(
                registry,
                IntGauge::new(
                    "tocsin_planner_contacts",
                    "Contact profiles stored (erased ones excluded).",
                )?,
            )?,
            segments: reg(
                registry,
                IntGauge::new("tocsin_planner_segments", "Segments known to the planner.")?,
            )?,
            segment_contacts: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tocsin_planner_segment_contacts",
                        "Members of a segment, for the largest segments only ([planner] metrics_top_segments).",
                    ),
                    &["segment"],
                )?,
            )?,
            campaign_recipients: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tocsin_planner_campaign_recipients",
                        "Fan-out progress of the running and paused campaigns: members of the \
                         segment (total), planned, suppressed, dispatched.",
                    ),
                    &["campaign", "state"],
                )?,
            )?,
        }
        .declared())
    }

    /// Every counter started at zero for every value its labels can take, so that
    /// dashboards show 0 rather than no data and `increase()` counts the first complaint
    /// or hard bounce (a series that appears at 1 has no earlier sample to count from).
    fn declared(self) -> Self {
        for channel in ["email", "sms"] {
            self.planned.with_label_values(&[channel]);
            self.dispatched.with_label_values(&[channel]);
            for reason in SUPPRESSION_REASONS {
                self.suppressed.with_label_values(&[channel, reason]);
            }
            for kind in FEEDBACK_KINDS {
                self.feedback_events.with_label_values(&[channel, kind, ""]);
            }
            for class in ["hard", "soft"] {
                self.feedback_events
                    .with_label_values(&[channel, "bounced", class]);
            }
            for outcome in ["sent", "skipped", "suppressed", "expired"] {
                self.sequence_steps.with_label_values(&[channel, outcome]);
            }
        }
        for reason in ["unsubscribed", "complained", "hard_bounced", "soft_bounced"] {
            self.feedback_suppressions.with_label_values(&[reason]);
        }
        for reason in ["left_trigger", "goal", "unsubscribed", "erased", "retired"] {
            self.sequence_exits.with_label_values(&[reason]);
        }
        self
    }
}

/// `reason` of `tocsin_planner_recipients_suppressed_total` (`engine::reason_name`).
const SUPPRESSION_REASONS: [&str; 10] = [
    "suppression_list",
    "no_consent",
    "invalid_address",
    "frequency_cap",
    "already_planned",
    "erased",
    "unsubscribed",
    "complained",
    "hard_bounced",
    "repeated_soft_bounces",
];

/// `kind` of `tocsin_planner_feedback_events_total`, bounces apart (they carry a class).
const FEEDBACK_KINDS: [&str; 11] = [
    "sent",
    "delivered",
    "deferred",
    "failed",
    "opened",
    "clicked",
    "unsubscribed",
    "complained",
    "expired",
    "cancelled",
    "resubscribed",
];

/// The values of `state` in `tocsin_planner_campaign_recipients`.
const CAMPAIGN_STATES: [&str; 4] = ["total", "planned", "suppressed", "dispatched"];

/// A campaign's progress as the gauge shows it, from its counters (`t:cmp:K:n`) and the
/// size of its segment.
pub fn campaign_progress(counters: &HashMap<String, i64>, segment_size: i64) -> [i64; 4] {
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    let suppressed = counters
        .iter()
        .filter(|(k, _)| k.starts_with("suppressed."))
        .map(|(_, v)| *v)
        .sum();
    [segment_size, get("planned"), suppressed, get("dispatched")]
}

/// The `n` largest segments, largest first (ties by id, so the choice is stable).
pub fn largest_segments(mut sizes: Vec<(String, i64)>, n: usize) -> Vec<(String, i64)> {
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sizes.truncate(n);
    sizes
}

/// Reads the gauges of the planner's state from Redis (see the module's documentation).
pub struct Refresher {
    redis: ConnectionManager,
    metrics: PlannerMetrics,
    top_segments: usize,
    /// Series set by the previous refresh: those that do not come again are removed, so a
    /// finished campaign or a segment that left the top leaves no stale value.
    segments_shown: HashSet<String>,
    campaigns_shown: HashSet<String>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refresher")
    }
}

impl Refresher {
    pub fn new(redis: ConnectionManager, metrics: PlannerMetrics, top_segments: usize) -> Self {
        Refresher {
            redis,
            metrics,
            top_segments,
            segments_shown: HashSet::new(),
            campaigns_shown: HashSet::new(),
        }
    }

    pub async fn refresh(&mut self, now_ms: i64) -> redis::RedisResult<()> {
        self.contacts().await?;
        self.segments().await?;
        self.schedule(now_ms).await?;
        self.campaigns().await
    }

    /// The contact count; the first time on a Redis without one, counted with `SCAN` and
    /// stored, after which the membership script and the erasure keep it. Records created
    /// or deleted by another instance during that one scan may be missed or counted twice.
    async fn contacts(&mut self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let count: Option<i64> = conn.get(keys::CONTACT_COUNT).await?;
        let count = match count {
            Some(n) => n,
            None => {
                let mut cursor: u64 = 0;
                let mut n: i64 = 0;
                loop {
                    let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(keys::CONTACT_PATTERN)
                        .arg("COUNT")
                        .arg(10_000)
                        .query_async(&mut conn)
                        .await?;
                    n += i64::try_from(found.len()).unwrap_or(0);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                let _: () = redis::cmd("SET")
                    .arg(keys::CONTACT_COUNT)
                    .arg(n)
                    .arg("NX")
                    .query_async(&mut conn)
                    .await?;
                tracing::info!(contacts = n, "contact count started");
                conn.get::<_, Option<i64>>(keys::CONTACT_COUNT)
                    .await?
                    .unwrap_or(n)
            }
        };
        self.metrics.contacts.set(count);
        Ok(())
    }

    async fn segments(&mut self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = conn.zrange(keys::SEGMENTS, 0, -1).await?;
        self.metrics
            .segments
            .set(i64::try_from(ids.len()).unwrap_or(i64::MAX));
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.zcard(keys::segment(id));
        }
        let sizes: Vec<i64> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let top = largest_segments(ids.into_iter().zip(sizes).collect(), self.top_segments);
        let mut shown = HashSet::new();
        for (id, size) in top {
            self.metrics
                .segment_contacts
                .with_label_values(&[&id])
                .set(size);
            shown.insert(id);
        }
        for gone in self.segments_shown.difference(&shown) {
            let _ = self.metrics.segment_contacts.remove_label_values(&[gone]);
        }
        self.segments_shown = shown;
        Ok(())
    }

    async fn schedule(&mut self, now_ms: i64) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let (waiting, due): (i64, i64) = redis::pipe()
            .zcard(keys::SCHEDULE)
            .zcount(keys::SCHEDULE, "-inf", now_ms)
            .query_async(&mut conn)
            .await?;
        self.metrics.schedule_waiting.set(waiting);
        self.metrics.schedule_due.set(due);
        Ok(())
    }

    async fn campaigns(&mut self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        // Campaigns created before the index existed are put in it once.
        let indexed: bool = conn.exists(keys::ACTIVE_CAMPAIGNS_INDEXED).await?;
        if !indexed {
            let all: Vec<String> = conn.zrange(keys::CAMPAIGNS, 0, -1).await?;
            if !all.is_empty() {
                let _: () = conn.sadd(keys::ACTIVE_CAMPAIGNS, &all).await?;
            }
            let _: () = conn.set(keys::ACTIVE_CAMPAIGNS_INDEXED, 1).await?;
        }
        let ids: Vec<String> = conn.smembers(keys::ACTIVE_CAMPAIGNS).await?;
        let mut shown = HashSet::new();
        for id in ids {
            let Some(campaign) = campaign::load(&mut conn, &id).await? else {
                let _: () = conn.srem(keys::ACTIVE_CAMPAIGNS, &id).await?;
                continue;
            };
            match campaign.state {
                State::Running | State::Paused => {}
                State::Scheduled => continue,
                State::Completed | State::Cancelled => {
                    let _: () = conn.srem(keys::ACTIVE_CAMPAIGNS, &id).await?;
                    continue;
                }
            }
            let (counters, size): (HashMap<String, i64>, i64) = redis::pipe()
                .hgetall(keys::campaign_counters(&id))
                .zcard(keys::segment(&campaign.blast.segment_id))
                .query_async(&mut conn)
                .await?;
            let values = campaign_progress(&counters, size);
            for (state, value) in CAMPAIGN_STATES.iter().zip(values) {
                self.metrics
                    .campaign_recipients
                    .with_label_values(&[id.as_str(), state])
                    .set(value);
            }
            shown.insert(id);
        }
        for gone in self.campaigns_shown.difference(&shown) {
            for state in CAMPAIGN_STATES {
                let _ = self
                    .metrics
                    .campaign_recipients
                    .remove_label_values(&[gone, state]);
            }
        }
        self.campaigns_shown = shown;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_sums_the_suppression_reasons() {
        let counters: HashMap<String, i64> = [
            ("planned", 80),
            ("dispatched", 50),
            ("suppressed.no_consent", 12),
            ("suppressed.frequency_cap", 3),
            ("fb.sent", 49),
            ("expired", 2),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(campaign_progress(&counters, 100), [100, 80, 15, 50]);
        assert_eq!(campaign_progress(&HashMap::new(), 7), [7, 0, 0, 0]);
    }

    #[test]
    fn the_largest_segments_are_kept_in_a_stable_order() {
        let sizes = vec![
            ("b".to_owned(), 10),
            ("a".to_owned(), 10),
            ("c".to_owned(), 500),
            ("d".to_owned(), 1),
        ];
        assert_eq!(
            largest_segments(sizes.clone(), 3),
            vec![
                ("c".to_owned(), 500),
                ("a".to_owned(), 10),
                ("b".to_owned(), 10)
            ]
        );
        assert!(largest_segments(sizes, 0).is_empty());
    }
}
