//! Twilio: message status callbacks and inbound SMS.
//!
//! **Verification** (Twilio's "Secure webhooks" documentation): `X-Twilio-Signature` is
//! Base64(HMAC-SHA1(auth token, URL + every POST parameter's name and value, sorted by
//! name)), the URL being the full one Twilio called, query string included. Behind a proxy
//! the tracker cannot see that URL, so it is rebuilt as `[tracker] public_base_url` + the
//! request's path and query. Like Twilio's own validators, the URL is also tried with the
//! scheme's default port added (or removed), since Twilio's own signing is inconsistent
//! about it. Nothing is read before the signature verifies; forged or unsigned → 403.
//!
//! **Status callbacks** (`POST /webhooks/twilio/status?k=KEY`): the sender appends the
//! job's idempotency key as `k` to `StatusCallback` (`providers/twilio.rs`), so the
//! callback names campaign, contact and channel without a lookup. `MessageStatus`:
//!
//! | status, `ErrorCode` | feedback |
//! |---|---|
//! | `delivered` | delivered |
//! | `undelivered` / `failed`, 30003 (handset unreachable) | bounced, soft |
//! | … 30005 (unknown handset) | bounced, hard, mailbox unavailable |
//! | … 30006 (landline or unreachable carrier), 21211, 21614 | bounced, hard, invalid address |
//! | … 30007 (carrier filtering) | failed, spam blocked |
//! | … 21610 (the recipient replied STOP) | failed, recipient opted out; and unsubscribed |
//! | `undelivered`, other codes | bounced, soft |
//! | `failed`, other codes | failed, provider rejected |
//! | `queued`, `sending`, `sent`, `accepted`, … | nothing new (the sender said `sent`) |
//!
//! **Inbound SMS** (`POST /webhooks/twilio/inbound`): a body that is one opt-out word
//! (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, ARRET, ARRÊT; trimmed, any case, a
//! trailing `.` or `!` allowed) → `Feedback(unsubscribed)`, scope `all` for STOPALL and
//! `channel` (SMS) otherwise; START, YES, UNSTOP → `Feedback(resubscribed)`. Such a reply
//! concerns a person, not a message: no contact or campaign, the sender's number (E.164)
//! in `address`. The answer is an empty TwiML `<Response/>`: Twilio's own opt-out handling
//! sends the confirmation text.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use tocsin_contracts::domain::PhoneNumber;
use tocsin_contracts::v1;

use super::{Provider, WebhookError, answer, count_events, same};
use crate::AppState;
use crate::engagement::header_str;
use crate::feedback;

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// `X-Twilio-Signature` of a request to `url` with form parameters `params`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an http(s) base URL (scheme://host[:port][/prefix])")]
pub struct BaseUrlError(String);

/// Checks `X-Twilio-Signature` against the public URL.
pub struct Verifier {
    auth_token: SecretString,
    /// The public base URL as configured, then with the default port added or removed.
    bases: Vec<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(auth_token: SecretString, public_base_url: &str) -> Result<Self, BaseUrlError> {
        let base = public_base_url.trim().trim_end_matches('/');
        let bad = || BaseUrlError(public_base_url.to_owned());
        let (scheme, rest) = base.split_once("://").ok_or_else(bad)?;
        let default_port = match scheme {
            "https" => "443",
            "http" => "80",
            _ => return Err(bad()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['?', '#', '@']) {
            return Err(bad());
        }
        let other = match authority.rsplit_once(':') {
            Some((host, port)) if port == default_port => format!("{scheme}://{host}{path}"),
            Some(_) => base.to_owned(),
            None => format!("{scheme}://{authority}:{default_port}{path}"),
        };
        let mut bases = vec![base.to_owned()];
        if other != base {
            bases.push(other);
        }
        Ok(Verifier { auth_token, bases })
    }

    /// Verifies a request whose path and query were `path_and_query`.
    pub fn verify(
        &self,
        path_and_query: &str,
        params: &[(String, String)],
        header: Option<&str>,
    ) -> Result<(), WebhookError> {
        let given = header
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(WebhookError::Missing("X-Twilio-Signature"))?;
        let token = self.auth_token.expose_secret();
        let valid = self.bases.iter().any(|base| {
            let url = format!("{base}{path_and_query}");
            same(signature(token, &url, params).as_bytes(), given.as_bytes())
        });
        if valid {
            Ok(())
        } else {
            Err(WebhookError::BadSignature)
        }
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Parses the form, then verifies it: nothing else is read before.
fn verified_form(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, WebhookError> {
    let verifier = state.twilio.as_ref().ok_or(WebhookError::NotConfigured)?;
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    verifier.verify(
        path_and_query,
        &params,
        header_str(headers, SIGNATURE_HEADER),
    )?;
    Ok(params)
}

/// Twilio error codes with a meaning of their own here.
const UNREACHABLE: &str = "30003";
const UNKNOWN_HANDSET: &str = "30005";
const LANDLINE: &str = "30006";
const FILTERED: &str = "30007";
const OPTED_OUT: &str = "21610";
const INVALID_TO: &str = "21211";
const NOT_MOBILE: &str = "21614";

/// The feedback a status callback gives (nothing for intermediate statuses or without our
/// key).
pub fn status_events(
    key: Option<&str>,
    sid: &str,
    status: &str,
    error_code: Option<&str>,
) -> Vec<v1::Feedback> {
    use v1::{BounceClass, FeedbackKind, Reason};
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Vec::new();
    };
    let code = error_code.map(str::trim).filter(|c| !c.is_empty());
    let (kind, bounce, reason) = match (status, code) {
        ("delivered", _) => (
            FeedbackKind::Delivered,
            BounceClass::Unspecified,
            Reason::Unspecified,
        ),
        ("undelivered" | "failed", Some(UNREACHABLE)) => (
            FeedbackKind::Bounced,
            BounceClass::Soft,
            Reason::MailboxUnavailable,
        ),
        ("undelivered" | "failed", Some(UNKNOWN_HANDSET)) => (
            FeedbackKind::Bounced,
            BounceClass::Hard,
            Reason::MailboxUnavailable,
        ),
        ("undelivered" | "failed", Some(LANDLINE | INVALID_TO | NOT_MOBILE)) => (
            FeedbackKind::Bounced,
            BounceClass::Hard,
            Reason::InvalidAddress,
        ),
        ("undelivered" | "failed", Some(FILTERED)) => (
            FeedbackKind::Failed,
            BounceClass::Unspecified,
            Reason::SpamBlocked,
        ),
        ("undelivered" | "failed", Some(OPTED_OUT)) => (
            FeedbackKind::Failed,
            BounceClass::Unspecified,
            Reason::RecipientOptedOut,
        ),
        ("undelivered", _) => (
            FeedbackKind::Bounced,
            BounceClass::Soft,
            Reason::Unspecified,
        ),
        ("failed", _) => (
            FeedbackKind::Failed,
            BounceClass::Unspecified,
            Reason::ProviderRejected,
        ),
        _ => return Vec::new(),
    };
    let id = if sid.is_empty() { key } else { sid };
    let mut event = feedback::event(kind, format!("tracker:twilio:{id}:{status}"));
    feedback::about_message(&mut event, key);
    event.provider = Provider::TwilioStatus.name().to_owned();
    event.provider_message_id = sid.to_owned();
    event.bounce_class = bounce.into();
    event.reason = reason.into();
    if let Some(code) = code {
        event.detail = format!("Twilio error {}", feedback::detail(code, ""));
    }
    let mut events = vec![event];
    if code == Some(OPTED_OUT) {
        let mut unsubscribed = feedback::event(
            FeedbackKind::Unsubscribed,
            format!("tracker:twilio:{id}:{status}:unsubscribed"),
        );
        feedback::about_message(&mut unsubscribed, key);
        unsubscribed.provider = Provider::TwilioStatus.name().to_owned();
        unsubscribed.provider_message_id = sid.to_owned();
        unsubscribed.reason = Reason::Unsubscribed.into();
        unsubscribed.opt_out_scope = v1::OptOutScope::Channel.into();
        events.push(unsubscribed);
    }
    events
}

/// `POST /webhooks/twilio/status?k=KEY`.
pub async fn status(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = verified_form(&state, &uri, &headers, &body)?;
        let key = uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(n, _)| n == "k")
                .map(|(_, v)| v.into_owned())
        });
        let events = status_events(
            key.as_deref(),
            param(&params, "MessageSid").unwrap_or_default(),
            param(&params, "MessageStatus").unwrap_or_default(),
            param(&params, "ErrorCode"),
        );
        if events.is_empty() {
            count_events(&state, Provider::TwilioStatus, [None]);
        } else {
            count_events(&state, Provider::TwilioStatus, events.iter().map(Some));
        }
        state.publisher.publish_all(&events).await?;
        Ok(StatusCode::OK.into_response())
    }
    .await;
    answer(&state, Provider::TwilioStatus, result)
}

/// What an inbound SMS asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    StopAll,
    Start,
}

impl Keyword {
    fn label(self) -> &'static str {
        match self {
            Keyword::Stop => "stop",
            Keyword::StopAll => "stopall",
            Keyword::Start => "start",
        }
    }
}

/// The opt-out or opt-in keyword an SMS body is, if it is one single word.
pub fn keyword(body: &str) -> Option<Keyword> {
    let word = body.trim().trim_end_matches(['.', '!']).trim_end();
    if word.is_empty() || word.contains(char::is_whitespace) {
        return None;
    }
    match word.to_uppercase().as_str() {
        "STOP" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" | "ARRET" | "ARRÊT" => {
            Some(Keyword::Stop)
        }
        "STOPALL" => Some(Keyword::StopAll),
        "START" | "YES" | "UNSTOP" => Some(Keyword::Start),
        _ => None,
    }
}

/// The feedback of an inbound SMS from `from` saying `word`.
pub fn inbound_event(sid: &str, from: &PhoneNumber, word: Keyword) -> v1::Feedback {
    let kind = match word {
        Keyword::Start => v1::FeedbackKind::Resubscribed,
        Keyword::Stop | Keyword::StopAll => v1::FeedbackKind::Unsubscribed,
    };
    let id = if sid.is_empty() {
        // Without a MessageSid (never seen from Twilio) the number and word identify it.
        format!(
            "{}:{}",
            feedback::short_hash(&[from.expose().as_bytes()]),
            word.label()
        )
    } else {
        sid.to_owned()
    };
    let mut event = feedback::event(kind, format!("tracker:twilio:inbound:{id}"));
    event.channel = v1::Channel::Sms.into();
    event.address = from.expose().to_owned();
    event.provider = Provider::TwilioInbound.name().to_owned();
    event.provider_message_id = sid.to_owned();
    event.detail = format!("inbound SMS: {}", word.label().to_uppercase());
    match word {
        Keyword::Stop => {
            event.reason = v1::Reason::Unsubscribed.into();
            event.opt_out_scope = v1::OptOutScope::Channel.into();
        }
        Keyword::StopAll => {
            event.reason = v1::Reason::Unsubscribed.into();
            event.opt_out_scope = v1::OptOutScope::All.into();
        }
        Keyword::Start => {}
    }
    event
}

const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

/// `POST /webhooks/twilio/inbound`.
pub async fn inbound(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = verified_form(&state, &uri, &headers, &body)?;
        let word = keyword(param(&params, "Body").unwrap_or_default());
        state
            .metrics
            .inbound_sms
            .with_label_values(&[word.map_or("other", Keyword::label)])
            .inc();
        let from = param(&params, "From").map(PhoneNumber::parse);
        let event = match (word, from) {
            (Some(word), Some(Ok(from))) => Some(inbound_event(
                param(&params, "MessageSid").unwrap_or_default(),
                &from,
                word,
            )),
            // A reply from a short code or an alphanumeric sender: nobody to opt out.
            (Some(_), _) => None,
            (None, _) => None,
        };
        count_events(&state, Provider::TwilioInbound, [event.as_ref()]);
        if let Some(event) = &event {
            state.publisher.publish(event).await?;
            if event.kind() == v1::FeedbackKind::Unsubscribed {
                state
                    .metrics
                    .unsubscribes
                    .with_label_values(&["sms", "recorded"])
                    .inc();
            }
        }
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/xml; charset=utf-8"),
            )],
            EMPTY_TWIML,
        )
            .into_response())
    }
    .await;
    answer(&state, Provider::TwilioInbound, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Twilio's webhook-security documentation.
    #[test]
    fn the_documented_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .rev()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn default_ports_are_tried_both_ways() {
        let token = SecretString::from("tok");
        let v = Verifier::new(token.clone(), "https://t.example.org/").expect("valid");
        assert_eq!(
            v.bases,
            ["https://t.example.org", "https://t.example.org:443"]
        );
        let v = Verifier::new(token.clone(), "http://127.0.0.1:8090/tracker").expect("valid");
        assert_eq!(v.bases, ["http://127.0.0.1:8090/tracker"]);
        let v = Verifier::new(token.clone(), "http://h:80").expect("valid");
        assert_eq!(v.bases, ["http://h:80", "http://h"]);
        assert!(Verifier::new(token.clone(), "ftp://h").is_err());
        assert!(Verifier::new(token, "h:80").is_err());

        let v = Verifier::new(SecretString::from("tok"), "https://t.example.org").expect("v");
        let params = vec![("MessageStatus".to_owned(), "delivered".to_owned())];
        let signed = signature(
            "tok",
            "https://t.example.org:443/webhooks/twilio/status?k=a",
            &params,
        );
        assert!(
            v.verify("/webhooks/twilio/status?k=a", &params, Some(&signed))
                .is_ok()
        );
        assert!(matches!(
            v.verify("/webhooks/twilio/status?k=b", &params, Some(&signed)),
            Err(WebhookError::BadSignature)
        ));
        assert!(matches!(
            v.verify("/webhooks/twilio/status?k=a", &params, None),
            Err(WebhookError::Missing(_))
        ));
    }

    #[test]
    fn keywords() {
        for (body, expected) in [
            ("STOP", Some(Keyword::Stop)),
            ("  stop\n", Some(Keyword::Stop)),
            ("Stop.", Some(Keyword::Stop)),
            ("arrêt", Some(Keyword::Stop)),
            ("ARRET", Some(Keyword::Stop)),
            ("Arrêt!", Some(Keyword::Stop)),
            ("unsubscribe", Some(Keyword::Stop)),
            ("cancel", Some(Keyword::Stop)),
            ("End", Some(Keyword::Stop)),
            ("quit", Some(Keyword::Stop)),
            ("STOPALL", Some(Keyword::StopAll)),
            ("start", Some(Keyword::Start)),
            ("Yes", Some(Keyword::Start)),
            ("UNSTOP", Some(Keyword::Start)),
            ("stop please", None),
            ("je veux arrêter", None),
            ("stopper", None),
            ("", None),
        ] {
            assert_eq!(keyword(body), expected, "{body:?}");
        }
    }

    #[test]
    fn statuses_map_to_feedback() {
        let key = Some("cmp-a:c-1:sms");
        let kinds = |status: &str,
                     code: Option<&str>|
         -> Vec<(v1::FeedbackKind, v1::BounceClass, v1::Reason)> {
            status_events(key, "SM1", status, code)
                .iter()
                .map(|e| (e.kind(), e.bounce_class(), e.reason()))
                .collect()
        };
        use v1::{BounceClass as B, FeedbackKind as K, Reason as R};
        assert_eq!(
            kinds("delivered", None),
            [(K::Delivered, B::Unspecified, R::Unspecified)]
        );
        assert_eq!(kinds("sent", None), []);
        assert_eq!(kinds("queued", None), []);
        assert_eq!(
            kinds("undelivered", Some("30003")),
            [(K::Bounced, B::Soft, R::MailboxUnavailable)]
        );
        assert_eq!(
            kinds("undelivered", Some("30006")),
            [(K::Bounced, B::Hard, R::InvalidAddress)]
        );
        assert_eq!(
            kinds("failed", Some("30007")),
            [(K::Failed, B::Unspecified, R::SpamBlocked)]
        );
        assert_eq!(
            kinds("failed", Some("21610")),
            [
                (K::Failed, B::Unspecified, R::RecipientOptedOut),
                (K::Unsubscribed, B::Unspecified, R::Unsubscribed)
            ]
        );
        assert_eq!(
            kinds("failed", Some("30001")),
            [(K::Failed, B::Unspecified, R::ProviderRejected)]
        );
        assert_eq!(status_events(None, "SM1", "delivered", None), []);
        let e = &status_events(key, "SM1", "undelivered", Some("30005"))[0];
        assert_eq!(
            e.meta.as_ref().map(|m| m.event_id.as_str()),
            Some("tracker:twilio:SM1:undelivered")
        );
        assert_eq!(
            (e.campaign_id.as_str(), e.contact_id.as_str()),
            ("cmp-a", "c-1")
        );
        assert_eq!(e.channel(), v1::Channel::Sms);
        assert_eq!(e.idempotency_key, "cmp-a:c-1:sms");
        assert_eq!(e.detail, "Twilio error 30005");
    }

    #[test]
    fn a_sequence_steps_status_names_the_step() {
        let key = "seq~welcome~e4~1:c-1:sms";
        let events = status_events(Some(key), "SM2", "failed", Some("21610"));
        assert_eq!(events.len(), 2, "failed and unsubscribed");
        for e in &events {
            assert_eq!(
                (
                    e.campaign_id.as_str(),
                    e.sequence_id.as_str(),
                    e.enrolment_id.as_str(),
                    e.step,
                    e.contact_id.as_str(),
                    e.idempotency_key.as_str(),
                ),
                ("", "welcome", "e4", 1, "c-1", key)
            );
        }
    }
}
