//! The sender's Prometheus metrics. Labels: provider names and channels from configuration,
//! outcomes from a fixed list; never a campaign, contact or address.

use crate::throttle::Lane;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct SenderMetrics {
    /// Messages by provider, channel, lane (`bulk`, `triggered`) and outcome (`sent`,
    /// `failed`, `bounced`, `opted_out`, `expired`, `cancelled`, `already_sent`,
    /// `no_provider`).
    pub messages: IntCounterVec,
    /// Provider calls by provider and result (`accepted`, `transient`, `slow_down`,
    /// `permanent`).
    pub attempts: IntCounterVec,
    pub latency: HistogramVec,
    /// By provider and lane: what the triggered lane's reservation buys shows here.
    pub throttle_wait: HistogramVec,
    /// Current rate per provider scope, units per second (after slow-downs).
    pub rate_limit: prometheus::GaugeVec,
    /// 0 closed, 1 half-open, 2 open.
    pub circuit: IntGaugeVec,
    pub retries: IntCounterVec,
    pub takeovers: IntCounter,
    /// Budget reservations given up because the task woke too late to use them.
    pub late_reservations: IntCounterVec,
}

impl SenderMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let messages = IntCounterVec::new(
            Opts::new(
                "tocsin_sender_messages_total",
                "Messages handled, by provider, channel, lane and outcome.",
            ),
            &["provider", "channel", "lane", "outcome"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "tocsin_sender_attempts_total",
                "Provider calls, by provider and result.",
            ),
            &["provider", "result"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tocsin_sender_provider_latency_seconds",
                "Time a provider took to answer one send.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["provider"],
        )?;
        let throttle_wait = HistogramVec::new(
            HistogramOpts::new(
                "tocsin_sender_throttle_wait_seconds",
                "Time a message waited for its provider's budget, by provider and lane.",
            )
            .buckets(vec![
                0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["provider", "lane"],
        )?;
        let rate_limit = prometheus::GaugeVec::new(
            Opts::new(
                "tocsin_sender_rate_limit",
                "The rate a provider is currently sent to (units per second; messages for e-mail, parts for SMS).",
            ),
            &["provider"],
        )?;
        let circuit = IntGaugeVec::new(
            Opts::new(
                "tocsin_sender_circuit_state",
                "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
            ),
            &["provider"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "tocsin_sender_retries_total",
                "Attempts after the first, by provider and why (transient, slow_down).",
            ),
            &["provider", "why"],
        )?;
        let late_reservations = IntCounterVec::new(
            Opts::new(
                "tocsin_sender_late_reservations_total",
                "Budget reservations given up because the sender woke too late to use them (a busy machine).",
            ),
            &["provider"],
        )?;
        let takeovers = IntCounter::new(
            "tocsin_sender_ledger_takeovers_total",
            "Messages taken over from a dead instance's claim: possibly sent twice.",
        )?;
        for c in [
            Box::new(messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempts.clone()),
            Box::new(latency.clone()),
            Box::new(throttle_wait.clone()),
            Box::new(rate_limit.clone()),
            Box::new(circuit.clone()),
            Box::new(retries.clone()),
            Box::new(takeovers.clone()),
            Box::new(late_reservations.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(SenderMetrics {
            messages,
            attempts,
            latency,
            throttle_wait,
            rate_limit,
            circuit,
            retries,
            takeovers,
            late_reservations,
        })
    }

    /// Starts the counters of a configured provider at zero for every value their labels
    /// can take (lanes, outcomes, call results), so that dashboards show 0 rather than no
    /// data, and `increase()` counts the first bounce or error (a series that appears at
    /// 1 has no earlier sample to count from).
    pub fn declare_provider(&self, provider: &str, channel: &str) {
        for lane in [Lane::Bulk, Lane::Triggered] {
            for outcome in PROVIDER_OUTCOMES {
                self.messages
                    .with_label_values(&[provider, channel, lane.label(), outcome]);
            }
        }
        for result in ATTEMPT_RESULTS {
            self.attempts.with_label_values(&[provider, result]);
        }
        for why in RETRY_CAUSES {
            self.retries.with_label_values(&[provider, why]);
        }
        self.late_reservations.with_label_values(&[provider]);
    }

    /// Like [`Self::declare_provider`], for the messages of `channel` that end before any
    /// provider is tried (`provider="none"`).
    pub fn declare_channel(&self, channel: &str) {
        for lane in [Lane::Bulk, Lane::Triggered] {
            for outcome in UNROUTED_OUTCOMES {
                self.messages
                    .with_label_values(&["none", channel, lane.label(), outcome]);
            }
        }
    }
}

/// `outcome` of `tocsin_sender_messages_total` for a message a provider was tried for.
pub const PROVIDER_OUTCOMES: [&str; 4] = ["sent", "bounced", "failed", "expired"];
/// `outcome` of a message that ended before any provider (`provider="none"`).
pub const UNROUTED_OUTCOMES: [&str; 6] = [
    "opted_out",
    "expired",
    "cancelled",
    "already_sent",
    "no_provider",
    "failed",
];
/// `result` of `tocsin_sender_attempts_total`.
pub const ATTEMPT_RESULTS: [&str; 4] = ["accepted", "transient", "slow_down", "permanent"];
/// `why` of `tocsin_sender_retries_total`.
pub const RETRY_CAUSES: [&str; 2] = ["transient", "slow_down"];
