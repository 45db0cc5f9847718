//! Brevo's transactional e-mail webhooks (`POST /webhooks/brevo`).
//!
//! **Authentication.** Brevo signs nothing. Its documentation ("Secure webhook calls")
//! offers IP allow-listing, HTTP Basic credentials in the webhook URL
//! (`https://user:password@host/...`), or a bearer token (`auth: {type: "bearer", token}`
//! when the webhook is created through the API). The tracker requires one of the last two
//! (`[tracker.brevo] bearer_token`, or `username` and `password`), compared in constant
//! time; without any configured, every Brevo webhook is refused (401), as is a request
//! without the right `Authorization`. This authenticates the caller but, unlike a
//! signature, does not protect the body in transit: the URL must be HTTPS.
//!
//! **Answers.** Brevo retries only timeouts and 429s; any other 4xx or 5xx discards the
//! event. So when the broker cannot take the events, the answer is 429.
//!
//! **Events** (one JSON object, or an array when Brevo batches): the sender sets
//! `X-Mailin-custom` to the message's idempotency key (`providers/brevo.rs`), which Brevo
//! returns in every event; events without it are not Tocsin's. Brevo gives no event id, so
//! the id is `tracker:brevo:{kind}:{message-id}:{ts_event}` (plus a hash of the link for
//! clicks): a retry repeats it, and `opened` and `unique_opened` for the same open
//! collapse into one.
//!
//! | `event` | feedback |
//! |---|---|
//! | `delivered` | delivered |
//! | `deferred` | deferred |
//! | `soft_bounce` | bounced, soft |
//! | `hard_bounce` | bounced, hard |
//! | `invalid_email` | bounced, hard, invalid address |
//! | `blocked` | failed, provider rejected (Brevo's own block list) |
//! | `error` | failed, provider rejected |
//! | `spam` | complained (scope all) |
//! | `opened`, `unique_opened` | opened |
//! | `proxy_open`, `unique_proxy_open` | opened, machine |
//! | `click` | clicked, with `link` |
//! | `unsubscribed` | unsubscribed (scope channel) |
//! | `request` (sent) and others | ignored |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tocsin_contracts::v1;

use super::{Provider, Said, WebhookError, answer, count_events, flag_machines, same};
use crate::AppState;
use crate::config::BrevoSection;
use crate::engagement::header_str;
use crate::feedback::{self, short_hash};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("username and password must be set together")]
    Incomplete,
}

/// The `Authorization` values Brevo may present.
#[derive(Default)]
pub struct Credentials {
    /// `Bearer <token>` and/or `Basic <base64(user:password)>`.
    accepted: Vec<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} configured)", self.accepted.len())
    }
}

impl Credentials {
    pub fn new(config: &BrevoSection) -> Result<Self, CredentialsError> {
        let mut accepted = Vec::new();
        if let Some(token) = config
            .bearer_token
            .as_ref()
            .filter(|t| !t.expose_secret().trim().is_empty())
        {
            accepted.push(SecretString::from(format!(
                "Bearer {}",
                token.expose_secret().trim()
            )));
        }
        match (&config.username, &config.password) {
            (Some(user), Some(password)) if !user.is_empty() => {
                let pair = format!("{user}:{}", password.expose_secret());
                accepted.push(SecretString::from(format!(
                    "Basic {}",
                    STANDARD.encode(pair)
                )));
            }
            (None, None) => {}
            _ => return Err(CredentialsError::Incomplete),
        }
        Ok(Credentials { accepted })
    }

    pub fn any(&self) -> bool {
        !self.accepted.is_empty()
    }

    pub fn check(&self, authorization: Option<&str>) -> Result<(), WebhookError> {
        if self.accepted.is_empty() {
            return Err(WebhookError::NotConfigured);
        }
        let given = authorization
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or(WebhookError::Missing("Authorization"))?;
        // Every candidate is compared, so the time taken does not say which one is set.
        let matches = self.accepted.iter().fold(false, |found, a| {
            same(a.expose_secret().as_bytes(), given.as_bytes()) | found
        });
        if matches {
            Ok(())
        } else {
            Err(WebhookError::BadSignature)
        }
    }
}

fn text<'a>(event: &'a Value, field: &str) -> &'a str {
    event.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// One Brevo event as feedback (before the time rule); `None` when it tells nothing new or
/// is not Tocsin's.
pub fn event_feedback(event: &Value) -> Option<v1::Feedback> {
    use v1::{BounceClass, FeedbackKind, OptOutScope, Reason};
    let key = text(event, "X-Mailin-custom");
    if key.is_empty() {
        return None;
    }
    let name = text(event, "event");
    let (kind, bounce, reason, scope) = match name {
        "delivered" => (
            FeedbackKind::Delivered,
            BounceClass::Unspecified,
            Reason::Unspecified,
            OptOutScope::Unspecified,
        ),
        "deferred" => (
            FeedbackKind::Deferred,
            BounceClass::Unspecified,
            Reason::Unspecified,
            OptOutScope::Unspecified,
        ),
        "soft_bounce" => (
            FeedbackKind::Bounced,
            BounceClass::Soft,
            Reason::Unspecified,
            OptOutScope::Unspecified,
        ),
        "hard_bounce" => (
            FeedbackKind::Bounced,
            BounceClass::Hard,
            Reason::MailboxUnavailable,
            OptOutScope::Unspecified,
        ),
        "invalid_email" => (
            FeedbackKind::Bounced,
            BounceClass::Hard,
            Reason::InvalidAddress,
            OptOutScope::Unspecified,
        ),
        "blocked" | "error" => (
            FeedbackKind::Failed,
            BounceClass::Unspecified,
            Reason::ProviderRejected,
            OptOutScope::Unspecified,
        ),
        "spam" => (
            FeedbackKind::Complained,
            BounceClass::Unspecified,
            Reason::Complained,
            OptOutScope::All,
        ),
        "opened" | "unique_opened" | "proxy_open" | "unique_proxy_open" => (
            FeedbackKind::Opened,
            BounceClass::Unspecified,
            Reason::Unspecified,
            OptOutScope::Unspecified,
        ),
        "click" => (
            FeedbackKind::Clicked,
            BounceClass::Unspecified,
            Reason::Unspecified,
            OptOutScope::Unspecified,
        ),
        "unsubscribed" => (
            FeedbackKind::Unsubscribed,
            BounceClass::Unspecified,
            Reason::Unsubscribed,
            OptOutScope::Channel,
        ),
        _ => return None,
    };
    let message_id = text(event, "message-id");
    let at = event.get("ts_event").and_then(Value::as_i64);
    let link = text(event, "link");
    let mut id = match (message_id.is_empty(), at) {
        (false, Some(at)) => format!(
            "tracker:brevo:{}:{}:{at}",
            feedback::kind_label(kind),
            short_hash(&[message_id.as_bytes()])
        ),
        // Never seen without them; a hash of the event keeps retries identical.
        _ => format!(
            "tracker:brevo:{}:{}",
            feedback::kind_label(kind),
            short_hash(&[event.to_string().as_bytes()])
        ),
    };
    if kind == FeedbackKind::Clicked {
        id = format!("{id}:{}", short_hash(&[link.as_bytes()]));
    }
    let mut feedback = feedback::event(kind, id);
    feedback::about_message(&mut feedback, key);
    feedback.channel = v1::Channel::Email.into();
    feedback.provider = Provider::Brevo.name().to_owned();
    feedback.provider_message_id = message_id.to_owned();
    feedback.bounce_class = bounce.into();
    feedback.reason = reason.into();
    feedback.opt_out_scope = scope.into();
    feedback.url = link.to_owned();
    feedback.machine = matches!(name, "proxy_open" | "unique_proxy_open");
    if let Some(at) = at {
        feedback.provider_timestamp = Some(feedback::timestamp_s(at));
    }
    feedback.detail = feedback::detail(text(event, "reason"), text(event, "email"));
    Some(feedback)
}

/// `POST /webhooks/brevo`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        state
            .brevo
            .check(header_str(&headers, header::AUTHORIZATION.as_str()))?;
        let batch: Vec<Value> = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(events)) => events,
            Ok(event @ Value::Object(_)) => vec![event],
            Ok(_) => return Err(WebhookError::Invalid("not a JSON object or array".into())),
            Err(e) => return Err(WebhookError::Invalid(format!("not JSON: {e}"))),
        };
        let mut events: Vec<Option<v1::Feedback>> = batch.iter().map(event_feedback).collect();
        // Brevo's events name no user agent: its own proxy flag and the send time judge.
        let engaged = events.iter_mut().flatten().map(|f| {
            let said = Said {
                user_agent: None,
                machine: f.machine,
            };
            (f, said)
        });
        flag_machines(&state, engaged.collect()).await;
        count_events(&state, Provider::Brevo, events.iter().map(Option::as_ref));
        let events: Vec<v1::Feedback> = events.into_iter().flatten().collect();
        state.publisher.publish_all(&events).await?;
        Ok(StatusCode::OK.into_response())
    }
    .await;
    answer(&state, Provider::Brevo, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials() {
        let none = Credentials::new(&BrevoSection::default()).expect("empty");
        assert!(matches!(
            none.check(Some("Bearer x")),
            Err(WebhookError::NotConfigured)
        ));
        let bearer = Credentials::new(&BrevoSection {
            bearer_token: Some(SecretString::from("s3cret")),
            ..BrevoSection::default()
        })
        .expect("bearer");
        assert!(bearer.check(Some("Bearer s3cret")).is_ok());
        assert!(bearer.check(Some("Bearer s3cre")).is_err());
        assert!(bearer.check(None).is_err());
        let basic = Credentials::new(&BrevoSection {
            username: Some("brevo".into()),
            password: Some(SecretString::from("pw")),
            ..BrevoSection::default()
        })
        .expect("basic");
        assert!(basic.check(Some("Basic YnJldm86cHc=")).is_ok());
        assert!(basic.check(Some("Basic YnJldm86cHg=")).is_err());
        assert!(
            Credentials::new(&BrevoSection {
                username: Some("brevo".into()),
                ..BrevoSection::default()
            })
            .is_err()
        );
    }

    #[test]
    fn events_map_to_feedback() {
        let base = json!({
            "email": "jeanne@exemple.fr",
            "message-id": "<201798300811.5787683@relay.domain.com>",
            "ts_event": 1_700_000_000,
            "X-Mailin-custom": "cmp-a:c-1:email",
        });
        let with = |extra: Value| {
            let mut event = base.clone();
            for (k, v) in extra.as_object().expect("object") {
                event[k] = v.clone();
            }
            event_feedback(&event)
        };
        use v1::{BounceClass as B, FeedbackKind as K};
        let hard =
            with(json!({"event": "hard_bounce", "reason": "jeanne@exemple.fr: user unknown"}))
                .expect("hard");
        assert_eq!((hard.kind(), hard.bounce_class()), (K::Bounced, B::Hard));
        assert_eq!(
            (hard.campaign_id.as_str(), hard.contact_id.as_str()),
            ("cmp-a", "c-1")
        );
        assert_eq!(hard.detail, "<recipient>: user unknown");
        let soft = with(json!({"event": "soft_bounce"})).expect("soft");
        assert_eq!(soft.bounce_class(), B::Soft);
        let opened = with(json!({"event": "opened"})).expect("opened");
        let unique = with(json!({"event": "unique_opened"})).expect("unique");
        assert_eq!(
            opened.meta,
            unique.meta.clone().map(|mut m| {
                m.occurred_at = opened.meta.as_ref().and_then(|o| o.occurred_at);
                m
            })
        );
        assert!(!opened.machine);
        assert!(with(json!({"event": "proxy_open"})).expect("proxy").machine);
        let spam = with(json!({"event": "spam"})).expect("spam");
        assert_eq!(spam.kind(), K::Complained);
        let a = with(json!({"event": "click", "link": "https://exemple.fr/a"})).expect("a");
        let b = with(json!({"event": "click", "link": "https://exemple.fr/b"})).expect("b");
        assert_ne!(a.meta.map(|m| m.event_id), b.meta.map(|m| m.event_id));
        assert_eq!(with(json!({"event": "request"})), None);
        let mut foreign = base.clone();
        foreign
            .as_object_mut()
            .expect("object")
            .remove("X-Mailin-custom");
        foreign["event"] = json!("delivered");
        assert_eq!(event_feedback(&foreign), None);
    }
}
