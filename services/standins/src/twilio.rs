//! Twilio Programmable Messaging: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.
//!
//! As documented by Twilio: form-encoded parameters (`To`, `From` or `MessagingServiceSid`,
//! `Body`, `StatusCallback`, ...), HTTP Basic auth with the Account SID and auth token,
//! `201 Created` with the Message resource (`sid` = `SM` + 32 hex digits), errors as
//! `{"code", "message", "more_info", "status"}`. The test credentials' magic `To` numbers
//! are honoured for everyone, so tests can provoke Twilio's refusals:
//!
//! | `To`           | error |
//! |----------------|-------|
//! | `+15005550001` | 21211 invalid number |
//! | `+15005550002` | 21612 cannot route |
//! | `+15005550003` | 21408 no permission for the region |
//! | `+15005550004` | 21610 recipient unsubscribed (replied STOP) |
//! | `+15005550009` | 21614 not a mobile number |
//!
//! and `From` `+15005550001` (21212, invalid) and `+15005550008` (21611, queue full).
//!
//! When `twilio_status_callbacks` is on, an accepted message with a `StatusCallback` gets
//! two callbacks, `sent` then `delivered`, form-encoded and signed with
//! `X-Twilio-Signature` (see [`twilio_signature`]). With `twilio_undelivered_rate`, that
//! share of messages ends `undelivered` instead, with ErrorCode 30005 or 30003.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::json;
use sha1::Sha1;

use crate::config::Provider;
use crate::faults::{self, Fault};
use crate::state::{Recorded, Reject, State as Shared};
use crate::wire;
use crate::{ids, sms};

const P: Provider = Provider::Twilio;

/// Twilio's documented limit on a message body.
const MAX_BODY_CHARS: usize = 1600;

/// `X-Twilio-Signature`: Base64(HMAC-SHA1(auth token, the full URL followed by every POST
/// parameter's name immediately followed by its value, sorted by name)).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    wire::json(
        status,
        json!({
            "code": code,
            "message": message.into(),
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        }),
    )
}

fn unauthorized() -> Response {
    let response = error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    wire::with_header(
        response,
        header::WWW_AUTHENTICATE.as_str(),
        "Basic realm=\"Twilio API\"".to_owned(),
    )
}

fn fault_answer(fault: Fault) -> Response {
    match fault {
        Fault::RateLimited { .. } | Fault::Throttled { .. } => {
            error(fault.status(), 20429, "Too Many Requests")
        }
        Fault::ServerError => error(fault.status(), 20500, "Internal Server Error"),
        Fault::Timeout { .. } => error(fault.status(), 20504, "Gateway Timeout"),
    }
}

/// Basic auth with the configured Account SID and auth token.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(encoded) = wire::header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return false;
    };
    let sid_ok = wire::same_secret(user, &shared.credentials.twilio_account_sid);
    let token_ok = wire::same_secret(password, &shared.credentials.twilio_auth_token);
    sid_ok & token_ok
}

fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// The `k` query parameter of a status callback URL: the client's idempotency key.
pub(crate) fn callback_key(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "k")
        .map(|(_, value)| value.into_owned())
}

/// Twilio's refusals of a well-formed request, magic numbers included.
fn refusal(to: &str, from: Option<&str>, body: &str) -> Option<Response> {
    let bad = StatusCode::BAD_REQUEST;
    if !is_e164(to) {
        return Some(error(
            bad,
            21211,
            format!("Invalid 'To' Phone Number: {to}"),
        ));
    }
    match to {
        "+15005550001" => {
            return Some(error(
                bad,
                21211,
                format!("Invalid 'To' Phone Number: {to}"),
            ));
        }
        "+15005550002" => {
            return Some(error(
                bad,
                21612,
                format!(
                    "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number via SMS."
                ),
            ));
        }
        "+15005550003" => {
            return Some(error(
                bad,
                21408,
                format!(
                    "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."
                ),
            ));
        }
        "+15005550004" => {
            return Some(error(
                bad,
                21610,
                "Attempt to send to unsubscribed recipient",
            ));
        }
        "+15005550009" => {
            return Some(error(
                bad,
                21614,
                format!("'To' number {to} is not a valid mobile number"),
            ));
        }
        _ => {}
    }
    match from {
        Some("+15005550001") => {
            return Some(error(
                bad,
                21212,
                "The 'From' number +15005550001 is not a valid phone number, shortcode, or alphanumeric sender ID.",
            ));
        }
        Some("+15005550008") => {
            return Some(error(
                bad,
                21611,
                "This 'From' number has exceeded the maximum number of queued messages",
            ));
        }
        _ => {}
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return Some(error(
            bad,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        ));
    }
    None
}

pub(crate) async fn create_message(
    State(shared): State<Arc<Shared>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let faults = shared.faults(P);
    faults::delay(&faults).await;
    if !authorized(&shared, &headers) {
        shared.reject(P, Reject::Auth);
        return unauthorized();
    }
    if account_sid != shared.credentials.twilio_account_sid {
        shared.reject(P, Reject::Invalid);
        return error(
            StatusCode::NOT_FOUND,
            20404,
            format!(
                "The requested resource /2010-04-01/Accounts/{account_sid}/Messages.json was not found"
            ),
        );
    }
    // Twilio reads only form-encoded bodies; anything else looks like no parameters at all.
    let params: Vec<(String, String)> =
        if wire::content_type_is(&headers, "application/x-www-form-urlencoded") {
            form_urlencoded::parse(&raw).into_owned().collect()
        } else {
            Vec::new()
        };
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let body = param("Body").unwrap_or_default();
    let parts = sms::parts(body);
    if let Some(answer) = faults::gate(&shared, P, &faults, parts, fault_answer).await {
        return answer;
    }

    let bad = StatusCode::BAD_REQUEST;
    let Some(to) = param("To") else {
        shared.reject(P, Reject::Invalid);
        return error(bad, 21604, "A 'To' phone number is required.");
    };
    let from = param("From");
    let service = param("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        shared.reject(P, Reject::Invalid);
        return error(
            bad,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
        );
    }
    if body.is_empty() {
        shared.reject(P, Reject::Invalid);
        return error(bad, 21602, "Message body is required.");
    }
    if let Some(service) = service
        && !is_sid(service, "MG")
    {
        shared.reject(P, Reject::Invalid);
        return error(
            bad,
            21701,
            format!("The Messaging Service Sid {service} is invalid."),
        );
    }
    let callback = param("StatusCallback");
    if let Some(url) = callback
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        shared.reject(P, Reject::Invalid);
        return error(bad, 21609, format!("Invalid StatusCallback url: {url}"));
    }
    if let Some(answer) = refusal(to, from, body) {
        shared.reject(P, Reject::Refused);
        return answer;
    }

    let sid = ids::twilio_sid();
    let now = chrono::Utc::now();
    let date = now.to_rfc2822();
    let key = callback.and_then(callback_key).unwrap_or_default();
    shared.accept(P, &key, parts, || Recorded {
        provider: P,
        id: sid.clone(),
        at_ms: now.timestamp_millis(),
        to: to.to_owned(),
        from: from.or(service).unwrap_or_default().to_owned(),
        subject: None,
        body: body.to_owned(),
        html: None,
        idempotency_key: key.clone(),
        parts: Some(parts),
        headers: wire::recordable_headers(&headers),
        request: serde_json::Value::Object(
            params
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ),
        raw_body: String::from_utf8_lossy(&raw).into_owned(),
    });
    if shared.twilio_status_callbacks
        && let Some(url) = callback
    {
        let mut fields = vec![
            ("AccountSid".to_owned(), account_sid.clone()),
            ("ApiVersion".to_owned(), "2010-04-01".to_owned()),
            ("MessageSid".to_owned(), sid.clone()),
            ("SmsSid".to_owned(), sid.clone()),
            ("To".to_owned(), to.to_owned()),
        ];
        if let Some(from) = from {
            fields.push(("From".to_owned(), from.to_owned()));
        }
        if let Some(service) = service {
            fields.push(("MessagingServiceSid".to_owned(), service.to_owned()));
        }
        tokio::spawn(status_callbacks(shared.clone(), url.to_owned(), fields));
    }
    let account = &shared.credentials.twilio_account_sid;
    wire::json(
        StatusCode::CREATED,
        json!({
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": date,
            "date_sent": null,
            "date_updated": date,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": from,
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": parts.to_string(),
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": if service.is_some() { "accepted" } else { "queued" },
            "subresource_uris": {
                "media": format!("/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"),
            },
            "to": to,
            "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
        }),
    )
}

/// The last status of a message, drawn once: `delivered`, or `undelivered` with the
/// ErrorCode of an unknown handset (hard) or an unreachable one (soft).
fn final_status(undelivered_rate: f64) -> (&'static str, Option<&'static str>) {
    let draw: f64 = rand::rng().random();
    if draw < undelivered_rate / 2.0 {
        ("undelivered", Some("30005"))
    } else if draw < undelivered_rate {
        ("undelivered", Some("30003"))
    } else {
        ("delivered", None)
    }
}

/// Posts `sent` then the final status (`delivered`, or `undelivered` for the configured
/// share) to the message's status callback, signed like Twilio.
async fn status_callbacks(shared: Arc<Shared>, url: String, fields: Vec<(String, String)>) {
    let (last, error_code) = final_status(shared.twilio_undelivered_rate);
    for status in ["sent", last] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut params = fields.clone();
        params.push(("MessageStatus".to_owned(), status.to_owned()));
        params.push(("SmsStatus".to_owned(), status.to_owned()));
        if status == last
            && let Some(code) = error_code
        {
            params.push(("ErrorCode".to_owned(), code.to_owned()));
        }
        let signature = twilio_signature(&shared.credentials.twilio_auth_token, &url, &params);
        let sent = shared
            .callbacks
            .post(&url)
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
            .await;
        if let Err(err) = sent {
            tracing::warn!(error = %err.without_url(), status, "twilio status callback failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_undelivered_share_splits_between_hard_and_soft_codes() {
        for _ in 0..200 {
            assert_eq!(final_status(0.0), ("delivered", None));
        }
        let draws: Vec<_> = (0..2000).map(|_| final_status(1.0)).collect();
        let hard = draws.iter().filter(|d| d.1 == Some("30005")).count();
        let soft = draws.iter().filter(|d| d.1 == Some("30003")).count();
        assert!(draws.iter().all(|d| d.0 == "undelivered"));
        assert_eq!(hard + soft, 2000);
        assert!((800..=1200).contains(&hard), "{hard} hard of 2000");
    }

    /// The worked example of Twilio's webhook-security documentation.
    #[test]
    fn the_signature_matches_twilios_documented_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .rev()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn the_key_comes_from_the_callbacks_k_parameter() {
        assert_eq!(
            callback_key("https://t.example/twilio?x=1&k=cmp%3Ac1%3Asms#frag").as_deref(),
            Some("cmp:c1:sms")
        );
        assert_eq!(callback_key("https://t.example/twilio"), None);
    }

    #[test]
    fn numbers_must_be_e164() {
        assert!(is_e164("+33612345678"));
        assert!(!is_e164("33612345678"));
        assert!(!is_e164("+0612345678"));
        assert!(!is_e164("+3361234567a"));
    }
}
