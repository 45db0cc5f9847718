//! The planner's Prometheus metrics. No campaign or contact id on these counters.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
    pub sequence_enrolments: IntCounter,
    pub sequence_steps: IntCounterVec,
    pub sequence_exits: IntCounterVec,
    pub sequence_waiting: IntGauge,
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
        })
    }
}
