//! Feedback events as the tracker publishes them on `tocsin.feedback`.
//!
//! Every event id is derived from what identifies the event, so that a repeated request (a
//! provider's retry, a reload, a second one-click POST) yields the same id and consumers
//! that deduplicate by event id count it once:
//!
//! | event | id |
//! |---|---|
//! | one-click unsubscribe | `tracker:unsubscribed:{campaign}:{contact}:{channel}` |
//! | open pixel | `tracker:opened:{key}:{first seen, ms}` |
//! | tracked click | `tracker:clicked:{key}:{url hash}:{first seen, ms}` |
//! | Twilio status | `tracker:twilio:{MessageSid}:{MessageStatus}` (`:unsubscribed` for 21610) |
//! | Twilio inbound SMS | `tracker:twilio:inbound:{MessageSid}` |
//! | SendGrid event | `tracker:sendgrid:{sg_event_id}` |
//! | Brevo event | `tracker:brevo:{kind}:{message-id}:{ts_event}` (`:{url hash}` for clicks) |
//!
//! `key` is the message's idempotency key, `{campaign}:{contact}:{channel}`; "first seen"
//! is when the tracker first saw this client fetch this link (see [`crate::engagement`]).
//!
//! A sequence step's message has no campaign: its key and its tokens carry the step group
//! (`seq~<sequence>~e<n>~<step>`) in the campaign's place. Its events leave `campaign_id`
//! empty and name the step in `sequence_id`, `enrolment_id` and `step` ([`attribute`]).
//!
//! Events are keyed by contact id. An inbound STOP concerns a person the tracker cannot
//! name: it carries the number in `Feedback.address` and is keyed by that number, so a
//! person's STOP and later START stay in order on one partition.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tocsin_bus::{Producer, TraceContext};
use tocsin_contracts::{Timestamp, v1};
use tocsin_planner::sequence::StepRef;

/// `meta.source` of every event the tracker publishes.
pub const SOURCE: &str = "tracker";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Bus(#[from] tocsin_bus::BusError),
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
}

/// Publishes feedback and awaits the broker's acknowledgement.
#[derive(Debug, Clone)]
pub struct Publisher {
    producer: Producer,
    topic: String,
    /// How long a request waits for acknowledgements before answering with an error (the
    /// producer itself keeps trying for `kafka.message_timeout_ms`).
    timeout: Duration,
}

impl Publisher {
    pub fn new(producer: Producer, topic: String, timeout: Duration) -> Self {
        Publisher {
            producer,
            topic,
            timeout,
        }
    }

    pub async fn publish(&self, feedback: &v1::Feedback) -> Result<(), PublishError> {
        self.publish_all(std::slice::from_ref(feedback)).await
    }

    /// Publishes every event; fails if any is not acknowledged in time.
    pub async fn publish_all(&self, events: &[v1::Feedback]) -> Result<(), PublishError> {
        let trace = TraceContext::new_root();
        let sends = events.iter().map(|feedback| {
            let key = if feedback.contact_id.is_empty() {
                feedback.address.as_str()
            } else {
                feedback.contact_id.as_str()
            };
            let event_id = feedback
                .meta
                .as_ref()
                .map(|m| m.event_id.as_str())
                .unwrap_or_default();
            self.producer
                .publish(&self.topic, key, event_id, feedback, &trace)
        });
        let all = futures::future::join_all(sends);
        match tokio::time::timeout(self.timeout, all).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(results) => {
                for result in results {
                    result?;
                }
                Ok(())
            }
        }
    }
}

/// A new event of `kind` with its id, stamped now, from the tracker.
pub fn event(kind: v1::FeedbackKind, event_id: String) -> v1::Feedback {
    v1::Feedback {
        meta: Some(v1::EventMeta {
            event_id,
            occurred_at: Some(tocsin_contracts::timestamp_now()),
            source: SOURCE.to_owned(),
        }),
        kind: kind.into(),
        ..Default::default()
    }
}

/// What an idempotency key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageKey {
    /// Empty for a sequence step's message.
    pub campaign_id: String,
    /// The sequence step whose group stands in the campaign's place.
    pub step: Option<StepRef>,
    pub contact_id: String,
    pub channel: v1::Channel,
}

/// Splits `{campaign}:{contact}:{channel}` (the planner's `engine::idempotency_key`), as a
/// provider hands it back (Twilio's `k`, Brevo's `X-Mailin-custom`). Identifiers may
/// themselves contain `:`; the channel is after the last one and the campaign is taken up
/// to the first, so a contact id with colons (`test:…`) is kept whole, while a campaign
/// id with a colon would be cut: the event still carries the whole key in
/// `idempotency_key`, which is what consumers should match on.
///
/// A sequence step's key, `seq~<sequence>~e<n>~<step>:{contact}:{channel}`, names the step
/// and no campaign.
pub fn split_key(key: &str) -> Option<MessageKey> {
    let (rest, channel) = key.rsplit_once(':')?;
    let (group, contact_id) = rest.split_once(':')?;
    if group.is_empty() || contact_id.is_empty() {
        return None;
    }
    let step = StepRef::parse_group(group);
    Some(MessageKey {
        campaign_id: if step.is_some() {
            String::new()
        } else {
            group.to_owned()
        },
        step,
        contact_id: contact_id.to_owned(),
        channel: channel_of(channel),
    })
}

/// Names whose message an event is about from what stands in a campaign's place (a key's
/// first part, a token's campaign claim): a campaign id, or a sequence step's group, which
/// leaves `campaign_id` empty and sets `sequence_id`, `enrolment_id` and `step`.
pub fn attribute(feedback: &mut v1::Feedback, group: &str) {
    match StepRef::parse_group(group) {
        Some(step) => name_step(feedback, &step),
        None => group.clone_into(&mut feedback.campaign_id),
    }
}

fn name_step(feedback: &mut v1::Feedback, step: &StepRef) {
    feedback.campaign_id.clear();
    feedback.sequence_id.clone_from(&step.sequence_id);
    feedback.enrolment_id = step.enrolment_id();
    feedback.step = step.step;
}

/// `email` / `sms` as the tokens and keys spell them.
pub fn channel_of(name: &str) -> v1::Channel {
    match name {
        "email" => v1::Channel::Email,
        "sms" => v1::Channel::Sms,
        _ => v1::Channel::Unspecified,
    }
}

/// Fills in the message an event is about, from its idempotency key.
pub fn about_message(feedback: &mut v1::Feedback, key: &str) {
    feedback.idempotency_key = key.to_owned();
    if let Some(parts) = split_key(key) {
        match &parts.step {
            Some(step) => name_step(feedback, step),
            None => feedback.campaign_id = parts.campaign_id,
        }
        feedback.contact_id = parts.contact_id;
        feedback.channel = parts.channel.into();
    }
}

/// `delivered`, `opened`, ...: a metrics label and event-id part.
pub fn kind_label(kind: v1::FeedbackKind) -> String {
    kind.as_str_name()
        .trim_start_matches("FEEDBACK_KIND_")
        .to_ascii_lowercase()
}

/// The first 8 bytes of SHA-256, in hex: short, stable parts of event ids and Redis keys.
pub fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Unix time in seconds as a protobuf timestamp.
pub fn timestamp_s(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// A provider's free text, fit for `Feedback.detail`: the recipient's address replaced (a
/// bounce message often repeats it), control characters gone, at most 300 characters.
pub fn detail(text: &str, address: &str) -> String {
    let text = if address.trim().is_empty() {
        text.to_owned()
    } else {
        text.replace(address.trim(), "<recipient>")
    };
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match clean.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_as_the_planner_builds_them() {
        let key = tocsin_planner::engine::idempotency_key("cmp-a", "c-42", v1::Channel::Sms);
        assert_eq!(
            split_key(&key),
            Some(MessageKey {
                campaign_id: "cmp-a".into(),
                step: None,
                contact_id: "c-42".into(),
                channel: v1::Channel::Sms,
            })
        );
        assert_eq!(
            split_key("cmp-a:test:c-1:email").map(|k| k.contact_id),
            Some("test:c-1".into())
        );
        assert_eq!(split_key("nothing"), None);
        assert_eq!(split_key("a:email"), None);
        assert_eq!(split_key(":c:email"), None);
    }

    #[test]
    fn step_group_keys_name_the_step_and_no_campaign() {
        let step = StepRef {
            sequence_id: "welcome".into(),
            enrolment: 2,
            step: 3,
        };
        let key = step.idempotency_key("test:c-7", v1::Channel::Email);
        assert_eq!(
            split_key(&key),
            Some(MessageKey {
                campaign_id: String::new(),
                step: Some(step.clone()),
                contact_id: "test:c-7".into(),
                channel: v1::Channel::Email,
            })
        );
        let mut delivered = event(v1::FeedbackKind::Delivered, "id".into());
        about_message(&mut delivered, &key);
        assert_eq!(
            (
                delivered.campaign_id.as_str(),
                delivered.sequence_id.as_str(),
                delivered.enrolment_id.as_str(),
                delivered.step,
                delivered.contact_id.as_str(),
                delivered.idempotency_key.as_str(),
            ),
            ("", "welcome", "e2", 3, "test:c-7", key.as_str())
        );
        // A malformed group is not a step: it stays where a campaign id would be.
        let mut other = event(v1::FeedbackKind::Delivered, "id".into());
        about_message(&mut other, "seq~welcome~e0~1:c-1:sms");
        assert_eq!(
            (
                other.campaign_id.as_str(),
                other.sequence_id.as_str(),
                other.step
            ),
            ("seq~welcome~e0~1", "", 0)
        );
        // A token's campaign claim, read the same way.
        let mut clicked = event(v1::FeedbackKind::Clicked, "id".into());
        attribute(&mut clicked, &step.group());
        assert_eq!(
            (clicked.campaign_id.as_str(), clicked.enrolment_id.as_str()),
            ("", "e2")
        );
        attribute(&mut clicked, "cmp-a");
        assert_eq!(clicked.campaign_id, "cmp-a");
    }

    #[test]
    fn details_lose_the_address_and_stay_short() {
        let d = detail(
            "550 5.1.1 <jeanne@exemple.fr>: no such user\r\n",
            "jeanne@exemple.fr",
        );
        assert_eq!(d, "550 5.1.1 <<recipient>>: no such user");
        assert_eq!(detail(&"é".repeat(400), "").chars().count(), 301);
    }

    #[test]
    fn kind_labels() {
        assert_eq!(kind_label(v1::FeedbackKind::Unsubscribed), "unsubscribed");
    }
}
