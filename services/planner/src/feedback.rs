//! `tocsin.feedback`: what happened after a message left, learnt from.
//!
//! - **Suppression.** An unsubscribe (per channel, or every channel), a complaint and a hard
//!   bounce put the address on the suppression list (`t:sup`, keyed hashes: the list
//!   survives erasure); soft bounces are counted per contact and channel, and
//!   `soft_bounce_limit` of them suppress the address too; an SMS `START` takes back an
//!   SMS unsubscribe (and nothing else: an erasure or a complaint stays). The next fan-out
//!   and the dispatcher's re-check skip these addresses.
//! - **Counters.** Per campaign, each (contact, outcome) counts once, however many times
//!   the event arrives (at-least-once delivery) and however many times the person opens or
//!   clicks: `t:cmp:K:r` holds a bit set per contact, and one script sets the bit and
//!   increments `t:cmp:K:n` `fb.<outcome>` only when the bit was not set. Machine opens and
//!   clicks (privacy proxies, link scanners) are counted apart. The bit sets expire
//!   `feedback_retention_days` after their last change; the counters stay.
//!
//! - **Metric.** `tocsin_planner_feedback_events_total{channel, kind, bounce_class}`
//!   counts each event once: when the campaign's (or the sequence step's) bit was not set
//!   yet, so a redelivered event, a second open or a second click adds nothing, like the
//!   campaign counters. An event with neither (an inbound `STOP` known only by its
//!   number, a `START`) counts once per consumption: redelivered, it counts again.
//!
//! The planner's own feedback (queued, suppressed, expired at dispatch) is already counted
//! where it is decided and is skipped here.

use std::sync::Arc;

use redis::Script;
use redis::aio::ConnectionManager;
use tocsin_bus::{HandleError, Handler, Inbound};
use tocsin_contracts::domain::{EmailAddress, PhoneNumber};
use tocsin_contracts::v1;

use crate::clock::Clock;
use crate::engine::PlanError;
use crate::keys;
use crate::metrics::PlannerMetrics;
use crate::sequence::{Sequences, StepRef};
use crate::store::{self, AddressHasher};

/// A counted outcome: its bit in the per-contact set and its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub bit: u32,
    pub counter: &'static str,
}

/// The outcome a feedback event counts as, if any.
pub fn outcome(f: &v1::Feedback) -> Option<Outcome> {
    let (bit, counter) = match (f.kind(), f.machine) {
        (v1::FeedbackKind::Sent, _) => (0, "sent"),
        (v1::FeedbackKind::Delivered, _) => (1, "delivered"),
        (v1::FeedbackKind::Bounced, _) if f.bounce_class() == v1::BounceClass::Soft => {
            (2, "soft_bounced")
        }
        (v1::FeedbackKind::Bounced, _) => (3, "bounced"),
        (v1::FeedbackKind::Failed, _) => (4, "failed"),
        (v1::FeedbackKind::Opened, false) => (5, "unique_opens"),
        (v1::FeedbackKind::Opened, true) => (6, "machine_opens"),
        (v1::FeedbackKind::Clicked, false) => (7, "unique_clicks"),
        (v1::FeedbackKind::Clicked, true) => (8, "machine_clicks"),
        (v1::FeedbackKind::Unsubscribed, _) => (9, "unsubscribed"),
        (v1::FeedbackKind::Complained, _) => (10, "complained"),
        (v1::FeedbackKind::Expired, _) => (11, "expired"),
        (v1::FeedbackKind::Cancelled, _) => (12, "cancelled"),
        (v1::FeedbackKind::Deferred, _) => (13, "deferred"),
        _ => return None,
    };
    Some(Outcome { bit, counter })
}

/// Sets bit `ARGV[2]` of contact `ARGV[1]` in `KEYS[1]`; when it was not set, increments
/// `ARGV[3]` in `KEYS[2]`. Returns 1 when counted.
const COUNT_ONCE: &str = r"
local bits = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local bit = 2 ^ tonumber(ARGV[2])
if math.floor(bits / bit) % 2 == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', bits + bit))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 1
";

/// Suppresses `ARGV[1]` with reason `ARGV[2]` unless it is already suppressed for a
/// reason that must not be replaced (an erasure, a complaint).
const SUPPRESS: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current == 'erased' or current == 'complained' then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Takes back an SMS unsubscribe (`START`): only an `unsubscribed` entry goes.
const RESUBSCRIBE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == 'unsubscribed' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

static COUNT_ONCE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(COUNT_ONCE));
static SUPPRESS_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(SUPPRESS));
static RESUBSCRIBE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(RESUBSCRIBE));

pub struct FeedbackHandler {
    pub redis: ConnectionManager,
    pub hasher: AddressHasher,
    pub metrics: PlannerMetrics,
    pub soft_bounce_limit: u32,
    /// How long the per-contact outcome bits of a campaign are kept (they hold contact
    /// ids: personal data, so not forever); the counters stay.
    pub retention_s: u64,
    pub sequences: Arc<Sequences>,
    pub clock: Clock,
}

impl std::fmt::Debug for FeedbackHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedbackHandler")
    }
}

/// Which of a contact's addresses an event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addresses {
    Email,
    Sms,
    All,
}

impl FeedbackHandler {
    /// The suppression hashes of the contact's addresses the event concerns. An event
    /// about a person the tracker could not name (an inbound SMS `STOP` carries only the
    /// number, in `address`) concerns that address alone.
    async fn hashes(
        &self,
        conn: &mut ConnectionManager,
        f: &v1::Feedback,
        which: Addresses,
    ) -> redis::RedisResult<Vec<String>> {
        if f.contact_id.is_empty() {
            let address = f.address.trim();
            return Ok(if let Ok(phone) = PhoneNumber::parse(address) {
                vec![self.hasher.phone(&phone)]
            } else if let Ok(email) = EmailAddress::parse(address) {
                vec![self.hasher.email(&email)]
            } else {
                Vec::new()
            });
        }
        let contact_id = f.contact_id.as_str();
        let Some(contact) = store::load_record(conn, contact_id)
            .await?
            .and_then(|r| r.contact)
        else {
            // Unknown or erased: an erased person's addresses are suppressed already.
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if matches!(which, Addresses::Email | Addresses::All)
            && let Ok(email) = EmailAddress::parse(&contact.email)
        {
            out.push(self.hasher.email(&email));
        }
        if matches!(which, Addresses::Sms | Addresses::All)
            && let Ok(phone) = PhoneNumber::parse(&contact.phone_e164)
        {
            out.push(self.hasher.phone(&phone));
        }
        Ok(out)
    }

    async fn suppress(
        &self,
        conn: &mut ConnectionManager,
        f: &v1::Feedback,
        which: Addresses,
        reason: &'static str,
    ) -> redis::RedisResult<()> {
        for hash in self.hashes(conn, f, which).await? {
            let added: i64 = SUPPRESS_SCRIPT
                .key(keys::SUPPRESSION)
                .arg(&hash)
                .arg(reason)
                .invoke_async(conn)
                .await?;
            if added == 1 {
                self.metrics
                    .feedback_suppressions
                    .with_label_values(&[reason])
                    .inc();
            }
        }
        Ok(())
    }

    /// A sequence step's outcome: counted once per (contact, enrolment, step) in the
    /// sequence's funnel (`step.K.fb.<outcome>`); a click remembered for `skip_if`; an
    /// opt-out ends the enrolments that exit on it (the step's due-time check would find
    /// it too, but the funnel shows it at once).
    ///
    /// Returns whether the event had a step's outcome to count (then it was counted in
    /// `tocsin_planner_feedback_events_total` if this was its first time).
    async fn apply_sequence(&self, f: &v1::Feedback) -> Result<bool, PlanError> {
        let mut conn = self.redis.clone();
        let mut deduplicated = false;
        if let Some(at) = StepRef::from_fields(&f.sequence_id, &f.enrolment_id, f.step)
            && !f.contact_id.is_empty()
        {
            if let Some(o) = outcome(f) {
                deduplicated = true;
                let n: i64 = COUNT_ONCE_SCRIPT
                    .key(keys::sequence_outcomes(&at.sequence_id))
                    .key(keys::sequence_funnel(&at.sequence_id))
                    .arg(format!(
                        "{}:{}:{}",
                        f.contact_id,
                        at.enrolment_id(),
                        at.step
                    ))
                    .arg(o.bit)
                    .arg(format!("step.{}.fb.{}", at.step, o.counter))
                    .arg(self.retention_s)
                    .invoke_async(&mut conn)
                    .await?;
                if n == 1 {
                    self.count_event(f);
                }
            }
            if f.kind() == v1::FeedbackKind::Clicked && !f.machine {
                self.sequences.clicked(&f.contact_id, &at).await?;
            }
        }
        if matches!(
            f.kind(),
            v1::FeedbackKind::Unsubscribed | v1::FeedbackKind::Complained
        ) && !f.contact_id.is_empty()
        {
            self.sequences
                .unsubscribed(&f.contact_id, self.clock.now())
                .await?;
        }
        Ok(deduplicated)
    }

    /// `tocsin_planner_feedback_events_total`: called when an event is counted for the
    /// first time (or, without a campaign or a step to count it in, once per consumption).
    fn count_event(&self, f: &v1::Feedback) {
        let (channel, kind, bounce_class) = event_labels(f);
        self.metrics
            .feedback_events
            .with_label_values(&[channel, kind.as_str(), bounce_class])
            .inc();
    }

    /// Returns whether the event had a campaign outcome to count (then it was counted in
    /// `tocsin_planner_feedback_events_total` if this was its first time).
    async fn apply(&self, f: &v1::Feedback) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        let channel = match f.channel() {
            v1::Channel::Sms => Addresses::Sms,
            _ => Addresses::Email,
        };
        let counted = match (
            outcome(f),
            f.campaign_id.is_empty() || f.contact_id.is_empty(),
        ) {
            (Some(o), false) => {
                let n: i64 = COUNT_ONCE_SCRIPT
                    .key(format!("{}:r", keys::campaign(&f.campaign_id)))
                    .key(keys::campaign_counters(&f.campaign_id))
                    .arg(&f.contact_id)
                    .arg(o.bit)
                    .arg(format!("fb.{}", o.counter))
                    .arg(self.retention_s)
                    .invoke_async(&mut conn)
                    .await?;
                // Counted here, at once: a later step failing and the event coming back
                // must not count it twice.
                if n == 1 {
                    self.count_event(f);
                }
                Some(n == 1)
            }
            _ => None,
        };
        let deduplicated = counted.is_some();
        let counted = counted.unwrap_or(false);
        if f.contact_id.is_empty() && f.address.is_empty() {
            return Ok(deduplicated);
        }
        match f.kind() {
            v1::FeedbackKind::Unsubscribed => {
                let which = if f.opt_out_scope() == v1::OptOutScope::All {
                    Addresses::All
                } else {
                    channel
                };
                self.suppress(&mut conn, f, which, "unsubscribed").await?;
            }
            v1::FeedbackKind::Complained => {
                self.suppress(&mut conn, f, Addresses::Email, "complained")
                    .await?;
            }
            v1::FeedbackKind::Bounced if f.bounce_class() != v1::BounceClass::Soft => {
                self.suppress(&mut conn, f, channel, "hard_bounced").await?;
            }
            v1::FeedbackKind::Bounced if counted => {
                // A soft bounce counted for the first time in this campaign.
                let field = if channel == Addresses::Sms {
                    "sms"
                } else {
                    "email"
                };
                let n: i64 = redis::cmd("HINCRBY")
                    .arg(keys::soft_bounces(&f.contact_id))
                    .arg(field)
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                if n >= i64::from(self.soft_bounce_limit.max(1)) {
                    self.suppress(&mut conn, f, channel, "soft_bounced").await?;
                }
            }
            v1::FeedbackKind::Resubscribed => {
                for hash in self.hashes(&mut conn, f, Addresses::Sms).await? {
                    let _: i64 = RESUBSCRIBE_SCRIPT
                        .key(keys::SUPPRESSION)
                        .arg(&hash)
                        .invoke_async(&mut conn)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(deduplicated)
    }
}

/// The labels of `tocsin_planner_feedback_events_total`: channel (`email`, `sms`,
/// `unspecified`), kind (the `FeedbackKind` name in lower case: `delivered`, `bounced`,
/// ...) and, for a bounce, its class (`hard`, or `soft`; a bounce without a class is
/// handled as hard, so counted as hard), else empty.
pub fn event_labels(f: &v1::Feedback) -> (&'static str, String, &'static str) {
    let kind = f.kind();
    let name = kind.as_str_name();
    let kind_label = name
        .strip_prefix("FEEDBACK_KIND_")
        .unwrap_or(name)
        .to_ascii_lowercase();
    let bounce_class = match (kind, f.bounce_class()) {
        (v1::FeedbackKind::Bounced, v1::BounceClass::Soft) => "soft",
        (v1::FeedbackKind::Bounced, _) => "hard",
        _ => "",
    };
    (
        crate::eligibility::channel_name(f.channel()),
        kind_label,
        bounce_class,
    )
}

impl Handler for FeedbackHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandleError> {
        let f: v1::Feedback = message.decode()?;
        let from_planner = f.meta.as_ref().is_some_and(|m| m.source == "planner");
        if from_planner
            || matches!(
                f.kind(),
                v1::FeedbackKind::Queued | v1::FeedbackKind::Suppressed
            )
        {
            return Ok(());
        }
        let for_campaign = self.apply(&f).await.map_err(HandleError::transient)?;
        let for_step = self
            .apply_sequence(&f)
            .await
            .map_err(HandleError::transient)?;
        if !for_campaign && !for_step {
            // Nothing to tell a first time from a redelivery (an inbound STOP known only
            // by its number, a START): counted once per consumption.
            self.count_event(&f);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_own_bit() {
        let mut bits = std::collections::HashSet::new();
        for kind in 1..=14 {
            for machine in [false, true] {
                for bounce in [v1::BounceClass::Hard, v1::BounceClass::Soft] {
                    let f = v1::Feedback {
                        kind,
                        machine,
                        bounce_class: bounce.into(),
                        ..Default::default()
                    };
                    if let Some(o) = outcome(&f) {
                        bits.insert((o.bit, o.counter));
                    }
                }
            }
        }
        let distinct_bits: std::collections::HashSet<u32> = bits.iter().map(|b| b.0).collect();
        assert_eq!(distinct_bits.len(), bits.len(), "one bit per counter");
        assert!(
            distinct_bits.iter().all(|b| *b < 52),
            "exact in a Lua number"
        );
    }

    #[test]
    fn event_labels_are_the_dashboards_values() {
        let f = |kind: v1::FeedbackKind, channel: v1::Channel, bounce: v1::BounceClass| {
            event_labels(&v1::Feedback {
                kind: kind.into(),
                channel: channel.into(),
                bounce_class: bounce.into(),
                ..Default::default()
            })
        };
        use v1::{BounceClass as B, Channel as C, FeedbackKind as K};
        assert_eq!(
            f(K::Delivered, C::Email, B::Unspecified),
            ("email", "delivered".to_owned(), "")
        );
        assert_eq!(
            f(K::Bounced, C::Sms, B::Soft),
            ("sms", "bounced".to_owned(), "soft")
        );
        assert_eq!(
            f(K::Bounced, C::Email, B::Hard),
            ("email", "bounced".to_owned(), "hard")
        );
        // A bounce without a class suppresses like a hard one, and is counted as one.
        assert_eq!(f(K::Bounced, C::Email, B::Unspecified).2, "hard");
        assert_eq!(f(K::Unsubscribed, C::Sms, B::Unspecified).1, "unsubscribed");
        assert_eq!(
            f(K::Complained, C::Email, B::Hard).2,
            "",
            "class only on bounces"
        );
    }
}
