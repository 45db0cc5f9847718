//! SendGrid's signed event webhook (`POST /webhooks/sendgrid`).
//!
//! **Verification** (SendGrid's "Event Webhook Security Features"): SendGrid signs the
//! timestamp header's string followed by the raw body bytes with ECDSA P-256 / SHA-256;
//! `X-Twilio-Email-Event-Webhook-Signature` is the base64 DER signature,
//! `X-Twilio-Email-Event-Webhook-Timestamp` the Unix time; the verification key is shown in
//! SendGrid's settings as base64 DER SubjectPublicKeyInfo. A body changed by one byte, a
//! missing header, another key → 403. A timestamp further than `timestamp_tolerance_s` from
//! now → 403 `stale` (SendGrid gives no window; replays inside it are harmless because
//! event ids are SendGrid's own `sg_event_id`).
//!
//! **Events** (a JSON array): the sender puts `idempotency_key`, `campaign_id` and
//! `contact_id` in `custom_args` (`providers/sendgrid.rs`), which SendGrid copies into
//! every event of the message. Events without them are not Tocsin's and are ignored.
//!
//! | `event` | feedback |
//! |---|---|
//! | `processed` | nothing new (the sender said `sent`) |
//! | `delivered` | delivered |
//! | `deferred` | deferred |
//! | `bounce`, `type` `bounce` | bounced, hard |
//! | `bounce`, `type` `blocked` | bounced, soft |
//! | `dropped`, reason `Bounced Address` / `Invalid` | bounced, hard |
//! | `dropped`, reason `Unsubscribed Address` / `Spam Reporting Address` | failed, recipient opted out |
//! | `dropped`, other reasons | failed, provider rejected |
//! | `open` | opened (`sg_machine_open`, the user agent and the send time flag machines) |
//! | `click` | clicked, with `url` |
//! | `spamreport` | complained (scope all) |
//! | `unsubscribe`, `group_unsubscribe` | unsubscribed (scope channel) |
//! | others (`group_resubscribe`, ...) | ignored: a resubscription comes through the CRM's consent |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::Value;
use tocsin_contracts::v1;

use super::{Provider, Said, WebhookError, answer, count_events, flag_machines};
use crate::AppState;
use crate::engagement::header_str;
use crate::feedback::{self, short_hash};

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not base64")]
    Base64,
    #[error("not a P-256 SubjectPublicKeyInfo: {0}")]
    Key(String),
}

/// Verifies SendGrid's signatures with the account's public key.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    tolerance_s: i64,
}

impl Verifier {
    /// `public_key`: base64 DER SubjectPublicKeyInfo, as SendGrid shows it (PEM armour, if
    /// pasted with it, is tolerated).
    pub fn new(public_key: &str, tolerance_s: u64) -> Result<Self, KeyError> {
        let b64: String = public_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.split_whitespace())
            .collect();
        let der = STANDARD.decode(b64).map_err(|_| KeyError::Base64)?;
        let key =
            VerifyingKey::from_public_key_der(&der).map_err(|e| KeyError::Key(e.to_string()))?;
        Ok(Verifier {
            key,
            tolerance_s: i64::try_from(tolerance_s).unwrap_or(i64::MAX),
        })
    }

    /// Verifies the headers against the raw body, `now_s` being the current Unix time.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_s: i64,
    ) -> Result<(), WebhookError> {
        let timestamp = timestamp
            .filter(|t| !t.is_empty())
            .ok_or(WebhookError::Missing(
                "X-Twilio-Email-Event-Webhook-Timestamp",
            ))?;
        let signature =
            signature
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or(WebhookError::Missing(
                    "X-Twilio-Email-Event-Webhook-Signature",
                ))?;
        let der = STANDARD
            .decode(signature)
            .map_err(|_| WebhookError::BadSignature)?;
        let signature = Signature::from_der(&der).map_err(|_| WebhookError::BadSignature)?;
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        self.key
            .verify(&signed, &signature)
            .map_err(|_| WebhookError::BadSignature)?;
        // Checked after the signature, so that the value is SendGrid's own.
        let at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| WebhookError::Invalid("the timestamp is not a number".into()))?;
        let away = now_s.saturating_sub(at);
        if away.saturating_abs() > self.tolerance_s {
            return Err(WebhookError::Stale(away));
        }
        Ok(())
    }
}

fn text<'a>(event: &'a Value, field: &str) -> &'a str {
    event.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// One SendGrid event as feedback (before the machine rules); `None` when it tells nothing
/// new or is not Tocsin's.
pub fn event_feedback(event: &Value) -> Option<v1::Feedback> {
    use v1::{BounceClass, FeedbackKind, OptOutScope, Reason};
    let key = text(event, "idempotency_key");
    let contact = text(event, "contact_id");
    if key.is_empty() || contact.is_empty() {
        return None;
    }
    let name = text(event, "event");
    let reason_text = text(event, "reason");
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
        "bounce" if text(event, "type") == "blocked" => (
            FeedbackKind::Bounced,
            BounceClass::Soft,
            Reason::Unspecified,
            OptOutScope::Unspecified,
        ),
        "bounce" => (
            FeedbackKind::Bounced,
            BounceClass::Hard,
            Reason::MailboxUnavailable,
            OptOutScope::Unspecified,
        ),
        "dropped" => match reason_text {
            "Bounced Address" => (
                FeedbackKind::Bounced,
                BounceClass::Hard,
                Reason::MailboxUnavailable,
                OptOutScope::Unspecified,
            ),
            "Invalid" => (
                FeedbackKind::Bounced,
                BounceClass::Hard,
                Reason::InvalidAddress,
                OptOutScope::Unspecified,
            ),
            "Unsubscribed Address" | "Spam Reporting Address" => (
                FeedbackKind::Failed,
                BounceClass::Unspecified,
                Reason::RecipientOptedOut,
                OptOutScope::Unspecified,
            ),
            _ => (
                FeedbackKind::Failed,
                BounceClass::Unspecified,
                Reason::ProviderRejected,
                OptOutScope::Unspecified,
            ),
        },
        "open" => (
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
        "spamreport" => (
            FeedbackKind::Complained,
            BounceClass::Unspecified,
            Reason::Complained,
            OptOutScope::All,
        ),
        "unsubscribe" | "group_unsubscribe" => (
            FeedbackKind::Unsubscribed,
            BounceClass::Unspecified,
            Reason::Unsubscribed,
            OptOutScope::Channel,
        ),
        _ => return None,
    };
    let sg_event_id = text(event, "sg_event_id");
    let id = if sg_event_id.is_empty() {
        // Never seen without one; a hash of the event keeps retries identical.
        short_hash(&[event.to_string().as_bytes()])
    } else {
        sg_event_id.to_owned()
    };
    let mut feedback = feedback::event(kind, format!("tracker:sendgrid:{id}"));
    feedback::about_message(&mut feedback, key);
    // The custom arguments name campaign and contact exactly; the key is only split when
    // they are absent.
    feedback.contact_id = contact.to_owned();
    let campaign = text(event, "campaign_id");
    if !campaign.is_empty() {
        feedback::attribute(&mut feedback, campaign);
    }
    feedback.channel = v1::Channel::Email.into();
    feedback.provider = Provider::SendGrid.name().to_owned();
    feedback.provider_message_id = text(event, "sg_message_id").to_owned();
    feedback.bounce_class = bounce.into();
    feedback.reason = reason.into();
    feedback.opt_out_scope = scope.into();
    feedback.url = text(event, "url").to_owned();
    if let Some(at) = event.get("timestamp").and_then(Value::as_i64) {
        feedback.provider_timestamp = Some(feedback::timestamp_s(at));
    }
    let said = [
        text(event, "bounce_classification"),
        reason_text,
        text(event, "response"),
        text(event, "status"),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join("; ");
    feedback.detail = feedback::detail(&said, text(event, "email"));
    Some(feedback)
}

fn now_s() -> i64 {
    crate::engagement::now_ms() / 1000
}

/// `POST /webhooks/sendgrid`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let verifier = state.sendgrid.as_ref().ok_or(WebhookError::NotConfigured)?;
        verifier.verify(
            header_str(&headers, TIMESTAMP_HEADER),
            header_str(&headers, SIGNATURE_HEADER),
            &body,
            now_s(),
        )?;
        let batch: Vec<Value> = serde_json::from_slice(&body)
            .map_err(|e| WebhookError::Invalid(format!("not a JSON array of events: {e}")))?;
        let mut mapped: Vec<(Option<v1::Feedback>, &Value)> =
            batch.iter().map(|e| (event_feedback(e), e)).collect();
        let engaged = mapped.iter_mut().filter_map(|(f, raw)| {
            let said = Said {
                user_agent: raw.get("useragent").and_then(Value::as_str),
                machine: raw
                    .get("sg_machine_open")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            };
            f.as_mut().map(|f| (f, said))
        });
        flag_machines(&state, engaged.collect()).await;
        count_events(
            &state,
            Provider::SendGrid,
            mapped.iter().map(|(f, _)| f.as_ref()),
        );
        let events: Vec<v1::Feedback> = mapped.into_iter().filter_map(|(f, _)| f).collect();
        state.publisher.publish_all(&events).await?;
        Ok(StatusCode::OK.into_response())
    }
    .await;
    answer(&state, Provider::SendGrid, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey;
    use serde_json::json;

    fn keys() -> (SigningKey, String) {
        let signing = SigningKey::from_slice(&[7u8; 32]).expect("key");
        let spki = signing.verifying_key().to_public_key_der().expect("spki");
        (signing, STANDARD.encode(spki.as_bytes()))
    }

    fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature: Signature = key.sign(&signed);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn signatures_verify_and_any_change_does_not() {
        let (key, public) = keys();
        let v = Verifier::new(&public, 300).expect("verifier");
        let body = br#"[{"event":"delivered"}]"#;
        let signature = sign(&key, "1700000000", body);
        assert!(
            v.verify(Some("1700000000"), Some(&signature), body, 1_700_000_100)
                .is_ok()
        );
        let mut changed = body.to_vec();
        changed[3] ^= 1;
        assert!(matches!(
            v.verify(
                Some("1700000000"),
                Some(&signature),
                &changed,
                1_700_000_100
            ),
            Err(WebhookError::BadSignature)
        ));
        assert!(matches!(
            v.verify(Some("1700000001"), Some(&signature), body, 1_700_000_100),
            Err(WebhookError::BadSignature)
        ));
        assert!(matches!(
            v.verify(Some("1700000000"), Some(&signature), body, 1_700_000_301),
            Err(WebhookError::Stale(301))
        ));
        assert!(matches!(
            v.verify(Some("1700000000"), None, body, 1_700_000_000),
            Err(WebhookError::Missing(_))
        ));
        let other = SigningKey::from_slice(&[9u8; 32]).expect("key");
        assert!(matches!(
            v.verify(
                Some("1700000000"),
                Some(&sign(&other, "1700000000", body)),
                body,
                1_700_000_000
            ),
            Err(WebhookError::BadSignature)
        ));
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &public[..40],
            &public[40..]
        );
        assert!(Verifier::new(&pem, 300).is_ok());
        assert!(Verifier::new("bm90IGEga2V5", 300).is_err());
    }

    #[test]
    fn events_map_to_feedback() {
        let base = json!({
            "email": "jeanne@exemple.fr",
            "timestamp": 1_700_000_000,
            "sg_event_id": "ev1",
            "sg_message_id": "msg1.filter",
            "idempotency_key": "cmp-a:c-1:email",
            "campaign_id": "cmp-a",
            "contact_id": "c-1",
        });
        let with = |extra: Value| {
            let mut event = base.clone();
            for (k, v) in extra.as_object().expect("object") {
                event[k] = v.clone();
            }
            event_feedback(&event)
        };
        use v1::{BounceClass as B, FeedbackKind as K};
        let hard = with(json!({"event": "bounce", "type": "bounce", "reason": "550 5.1.1 jeanne@exemple.fr unknown"})).expect("hard");
        assert_eq!((hard.kind(), hard.bounce_class()), (K::Bounced, B::Hard));
        assert!(!hard.detail.contains("jeanne"), "{}", hard.detail);
        let soft = with(json!({"event": "bounce", "type": "blocked"})).expect("soft");
        assert_eq!((soft.kind(), soft.bounce_class()), (K::Bounced, B::Soft));
        let spam = with(json!({"event": "spamreport"})).expect("spam");
        assert_eq!(
            (spam.kind(), spam.opt_out_scope()),
            (K::Complained, v1::OptOutScope::All)
        );
        let click = with(json!({"event": "click", "url": "https://exemple.fr/a"})).expect("click");
        assert_eq!(
            (click.kind(), click.url.as_str()),
            (K::Clicked, "https://exemple.fr/a")
        );
        assert_eq!(
            click.meta.as_ref().map(|m| m.event_id.as_str()),
            Some("tracker:sendgrid:ev1")
        );
        assert_eq!(
            click.provider_timestamp.map(|t| t.seconds),
            Some(1_700_000_000)
        );
        assert_eq!(with(json!({"event": "processed"})), None);
        assert_eq!(with(json!({"event": "group_resubscribe"})), None);
        let mut foreign = base.clone();
        foreign
            .as_object_mut()
            .expect("object")
            .remove("contact_id");
        foreign["event"] = json!("delivered");
        assert_eq!(event_feedback(&foreign), None);
        let dropped =
            with(json!({"event": "dropped", "reason": "Unsubscribed Address"})).expect("dropped");
        assert_eq!(
            (dropped.kind(), dropped.reason()),
            (K::Failed, v1::Reason::RecipientOptedOut)
        );
    }
}
