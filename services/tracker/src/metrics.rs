//! The tracker's Prometheus metrics. No campaign, contact, address or token on these.

use prometheus::{IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct TrackerMetrics {
    /// Webhook requests by provider (`twilio_status`, `twilio_inbound`, `sendgrid`, `brevo`)
    /// and verdict (`accepted`, `bad_signature`, `stale`, `invalid`, `error`).
    pub webhooks: IntCounterVec,
    /// Feedback events taken from webhooks, by provider and kind (`delivered`, `bounced`,
    /// ...; `ignored` for events that tell nothing new or are not Tocsin's).
    pub webhook_events: IntCounterVec,
    /// Pixel fetches by outcome: `person`, `machine`, `bad_token`, `error`.
    pub opens: IntCounterVec,
    /// Tracked clicks by outcome: `person`, `machine`, `bad_token`, `error`.
    pub clicks: IntCounterVec,
    /// Unsubscribes by source (`link` for the one-click POST, `sms` for an inbound STOP) and
    /// outcome (`recorded`, `bad_token`, `invalid`, `error`).
    pub unsubscribes: IntCounterVec,
    /// Why an open or click was flagged as a machine's: `user_agent`, `head`,
    /// `soon_after_send`, `provider` (the provider said so).
    pub machine_flags: IntCounterVec,
    /// Inbound SMS by what they asked: `stop`, `stopall`, `start`, `other`.
    pub inbound_sms: IntCounterVec,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

impl TrackerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = TrackerMetrics {
            webhooks: counter(
                registry,
                "tocsin_tracker_webhooks_total",
                "Provider webhook requests, by provider and verdict.",
                &["provider", "verdict"],
            )?,
            webhook_events: counter(
                registry,
                "tocsin_tracker_webhook_events_total",
                "Events read from provider webhooks, by provider and the feedback kind they became.",
                &["provider", "kind"],
            )?,
            opens: counter(
                registry,
                "tocsin_tracker_opens_total",
                "Open pixel fetches, by outcome.",
                &["outcome"],
            )?,
            clicks: counter(
                registry,
                "tocsin_tracker_clicks_total",
                "Tracked link clicks, by outcome.",
                &["outcome"],
            )?,
            unsubscribes: counter(
                registry,
                "tocsin_tracker_unsubscribes_total",
                "Unsubscribe requests, by source and outcome.",
                &["source", "outcome"],
            )?,
            machine_flags: counter(
                registry,
                "tocsin_tracker_machine_flags_total",
                "Opens and clicks flagged as a machine's, by the rule that flagged them.",
                &["rule"],
            )?,
            inbound_sms: counter(
                registry,
                "tocsin_tracker_inbound_sms_total",
                "Inbound SMS, by the keyword they carried.",
                &["keyword"],
            )?,
        };
        Ok(metrics.declared())
    }

    /// Every counter started at zero for every value its labels can take, so that
    /// dashboards show 0 rather than no data and `increase()` counts the first complaint
    /// or bounce (a series that appears at 1 has no earlier sample to count from).
    fn declared(self) -> Self {
        for provider in ["twilio_status", "twilio_inbound", "sendgrid", "brevo"] {
            for verdict in ["accepted", "bad_signature", "stale", "invalid", "error"] {
                self.webhooks.with_label_values(&[provider, verdict]);
            }
            for kind in WEBHOOK_KINDS {
                self.webhook_events.with_label_values(&[provider, kind]);
            }
        }
        for outcome in ["person", "machine", "bad_token", "error"] {
            self.opens.with_label_values(&[outcome]);
            self.clicks.with_label_values(&[outcome]);
        }
        for source in ["link", "sms"] {
            for outcome in ["recorded", "bad_token", "invalid", "error"] {
                self.unsubscribes.with_label_values(&[source, outcome]);
            }
        }
        for rule in ["user_agent", "head", "soon_after_send", "provider"] {
            self.machine_flags.with_label_values(&[rule]);
        }
        for keyword in ["stop", "stopall", "start", "other"] {
            self.inbound_sms.with_label_values(&[keyword]);
        }
        self
    }
}

/// The feedback kinds a webhook event can become, and `ignored`.
const WEBHOOK_KINDS: [&str; 10] = [
    "delivered",
    "deferred",
    "bounced",
    "failed",
    "complained",
    "unsubscribed",
    "resubscribed",
    "opened",
    "clicked",
    "ignored",
];
