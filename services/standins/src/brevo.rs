//! Brevo transactional e-mail (`POST /v3/smtp/email`) and SMS (`POST
//! /v3/transactionalSMS/send`, and the deprecated `POST /v3/transactionalSMS/sms`).
//!
//! As documented by Brevo: the `api-key` header, JSON bodies, errors as
//! `{"code": "missing_parameter" | "invalid_parameter" | "unauthorized" | ..., "message"}`,
//! rate limits answered 429 with `x-sib-ratelimit-limit`, `x-sib-ratelimit-remaining` and
//! `x-sib-ratelimit-reset` (seconds until the reset).
//!
//! - E-mail: `sender`, `to[]`, `subject`, `htmlContent` or `textContent`, optional
//!   `replyTo`, `headers` and `tags`. `201 {"messageId": "<...@smtp-relay.mailin.fr>"}`.
//!   `headers.idempotencyKey` must be a UUID and is refused (`duplicate_parameter`) when
//!   reused within 30 minutes, as Brevo documents.
//! - SMS: `sender` (11 letters or digits, or 15 digits), `recipient` (6 to 15 digits,
//!   optionally after `+`), `content`, optional `type`, `tag` (a string or up to 10),
//!   `webUrl`, `unicodeEnabled`, `organisationPrefix`. `201 {"messageId": N}` on the current
//!   path; the deprecated path also returns `reference`, `smsCount` and credits.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde_json::{Value, json};

use crate::config::Provider;
use crate::faults::{self, Fault};
use crate::state::{Recorded, Reject, State as Shared};
use crate::{ids, sms, wire};

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    wire::json(status, json!({"code": code, "message": message.into()}))
}

fn fault_answer(fault: Fault) -> Response {
    let response = match fault {
        Fault::RateLimited { .. } | Fault::Throttled { .. } => error(
            fault.status(),
            "too_many_requests",
            "The expected rate limit is exceeded.",
        ),
        Fault::ServerError => error(fault.status(), "internal_error", "Internal server error"),
        Fault::Timeout { .. } => error(fault.status(), "gateway_timeout", "Gateway timeout"),
    };
    match fault.retry_after_s() {
        Some(seconds) => {
            let response = wire::with_header(response, "x-sib-ratelimit-limit", "1000".to_owned());
            let response = wire::with_header(response, "x-sib-ratelimit-remaining", "0".to_owned());
            wire::with_header(response, "x-sib-ratelimit-reset", seconds.to_string())
        }
        None => response,
    }
}

/// Checks the key and the faults; `Some` is the answer to give instead of going on.
async fn refusal(
    shared: &Shared,
    provider: Provider,
    headers: &HeaderMap,
    cost: impl FnOnce() -> u32,
) -> Option<Response> {
    let faults = shared.faults(provider);
    faults::delay(&faults).await;
    let presented = wire::header_str(headers, "api-key").unwrap_or_default();
    if !wire::same_secret(presented, &shared.credentials.brevo_api_key) {
        shared.reject(provider, Reject::Auth);
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Key not found",
        ));
    }
    faults::gate(shared, provider, &faults, cost(), fault_answer).await
}

/// The body as a JSON object, if it is one.
fn parse(raw: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(raw)
        .ok()
        .filter(Value::is_object)
}

fn not_json() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "Input must be a valid JSON object",
    )
}

fn looks_like_email(value: &str) -> bool {
    value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !value.chars().any(char::is_whitespace)
    })
}

fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A header of the request's `headers` object, by case-insensitive name (Brevo rewrites
/// names into `This-Case` anyway).
fn custom_header<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get("headers")?
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))?
        .1
        .as_str()
}

/// The first problem with an e-mail request, as `(code, message)`.
fn email_problem(body: &Value) -> Option<(&'static str, String)> {
    let templated = body.get("templateId").is_some();
    let missing = |field: &str| Some(("missing_parameter", format!("{field} is missing")));
    match body.get("sender") {
        None if !templated => return missing("sender"),
        Some(sender) => {
            let ok = sender.get("id").is_some()
                || sender
                    .get("email")
                    .and_then(Value::as_str)
                    .is_some_and(looks_like_email);
            if !ok {
                return Some((
                    "invalid_parameter",
                    "valid sender email required".to_owned(),
                ));
            }
        }
        None => {}
    }
    match body.get("to").and_then(Value::as_array) {
        None => return missing("to"),
        Some(to) if to.is_empty() => return missing("to"),
        Some(to) => {
            let ok = to.iter().all(|t| {
                t.get("email")
                    .and_then(Value::as_str)
                    .is_some_and(looks_like_email)
            });
            if !ok {
                return Some(("invalid_parameter", "email is not valid in to".to_owned()));
            }
        }
    }
    if let Some(reply_to) = body.get("replyTo") {
        let ok = reply_to
            .get("email")
            .and_then(Value::as_str)
            .is_some_and(looks_like_email);
        if !ok {
            return Some((
                "invalid_parameter",
                "email is not valid in replyTo".to_owned(),
            ));
        }
    }
    if !templated {
        if body
            .get("subject")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return missing("subject");
        }
        let has = |f: &str| {
            body.get(f)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        if !has("htmlContent") && !has("textContent") {
            return Some((
                "missing_parameter",
                "Either of htmlContent, textContent or templateId is required".to_owned(),
            ));
        }
    }
    if let Some(headers) = body.get("headers") {
        let ok = headers
            .as_object()
            .is_some_and(|map| map.values().all(Value::is_string));
        if !ok {
            return Some((
                "invalid_parameter",
                "headers must be an object of strings".to_owned(),
            ));
        }
    }
    if let Some(key) = custom_header(body, "idempotencyKey")
        && !is_uuid(key)
    {
        return Some((
            "invalid_parameter",
            "idempotencyKey must be a valid UUID".to_owned(),
        ));
    }
    None
}

pub(crate) async fn send_email(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    const P: Provider = Provider::BrevoEmail;
    if let Some(answer) = refusal(&shared, P, &headers, || 1).await {
        return answer;
    }
    let Some(body) = parse(&raw) else {
        shared.reject(P, Reject::Invalid);
        return not_json();
    };
    if let Some((code, message)) = email_problem(&body) {
        shared.reject(P, Reject::Invalid);
        return error(StatusCode::BAD_REQUEST, code, message);
    }
    if let Some(key) = custom_header(&body, "idempotencyKey")
        && !shared.brevo_first_use(key, Instant::now())
    {
        shared.reject(P, Reject::IdempotencyReplay);
        return error(
            StatusCode::BAD_REQUEST,
            "duplicate_parameter",
            "The idempotencyKey has already been used in the last 30 minutes",
        );
    }
    let id = ids::brevo_email_message_id();
    let key = custom_header(&body, "X-Mailin-custom")
        .or_else(|| custom_header(&body, "Message-Id"))
        .unwrap_or_default()
        .to_owned();
    shared.accept(P, &key, 0, || Recorded {
        provider: P,
        id: id.clone(),
        at_ms: wire::now_ms(),
        to: body["to"][0]["email"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        from: body["sender"]["email"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        subject: body["subject"].as_str().map(str::to_owned),
        body: body["textContent"].as_str().unwrap_or_default().to_owned(),
        html: body["htmlContent"].as_str().map(str::to_owned),
        idempotency_key: key.clone(),
        parts: None,
        headers: wire::recordable_headers(&headers),
        request: body.clone(),
        raw_body: String::from_utf8_lossy(&raw).into_owned(),
    });
    wire::json(StatusCode::CREATED, json!({ "messageId": id }))
}

/// The first problem with an SMS request, as `(code, message)`.
fn sms_problem(body: &Value) -> Option<(&'static str, String)> {
    let text = |f: &str| {
        body.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let missing = |field: &str| Some(("missing_parameter", format!("{field} is missing")));
    let Some(sender) = text("sender") else {
        return missing("sender");
    };
    let Some(recipient) = text("recipient") else {
        return missing("recipient");
    };
    if text("content").is_none() && body.get("templateId").is_none() {
        return missing("content");
    }
    let numeric = sender.chars().all(|c| c.is_ascii_digit());
    let sender_ok = if numeric {
        sender.len() <= 15
    } else {
        sender.len() <= 11 && sender.chars().all(|c| c.is_ascii_alphanumeric())
    };
    if !sender_ok {
        return Some((
            "invalid_parameter",
            "sender is invalid: up to 11 letters or digits, or up to 15 digits".to_owned(),
        ));
    }
    let digits = recipient.strip_prefix('+').unwrap_or(recipient);
    if !((6..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())) {
        return Some(("invalid_parameter", "Invalid phone number".to_owned()));
    }
    if let Some(kind) = body.get("type")
        && !matches!(kind.as_str(), Some("transactional" | "marketing"))
    {
        return Some((
            "invalid_parameter",
            "type must be transactional or marketing".to_owned(),
        ));
    }
    if let Some(tag) = body.get("tag") {
        let ok = match tag {
            Value::String(s) => !s.is_empty(),
            Value::Array(tags) => {
                tags.len() <= 10
                    && tags
                        .iter()
                        .all(|t| t.as_str().is_some_and(|s| !s.is_empty()))
            }
            _ => false,
        };
        if !ok {
            return Some((
                "invalid_parameter",
                "tag must be a non-empty string or an array of at most 10".to_owned(),
            ));
        }
    }
    if body.get("unicodeEnabled").is_some_and(|v| !v.is_boolean()) {
        return Some((
            "invalid_parameter",
            "unicodeEnabled must be a boolean".to_owned(),
        ));
    }
    None
}

fn sms_parts(body: &Value) -> u32 {
    let content = body["content"].as_str().unwrap_or_default();
    if body["unicodeEnabled"].as_bool().unwrap_or(false) {
        sms::parts(content)
    } else {
        sms::parts_transliterated(content)
    }
}

/// Both SMS paths; `legacy` answers in the deprecated endpoint's format.
async fn send_sms(shared: Arc<Shared>, headers: HeaderMap, raw: Bytes, legacy: bool) -> Response {
    const P: Provider = Provider::BrevoSms;
    // The rate limit counts parts, so peek at the body first (a malformed one costs 1).
    let parts = serde_json::from_slice::<Value>(&raw)
        .map(|b| sms_parts(&b))
        .unwrap_or(1);
    if let Some(answer) = refusal(&shared, P, &headers, || parts).await {
        return answer;
    }
    let Some(body) = parse(&raw) else {
        shared.reject(P, Reject::Invalid);
        return not_json();
    };
    if let Some((code, message)) = sms_problem(&body) {
        shared.reject(P, Reject::Invalid);
        return error(StatusCode::BAD_REQUEST, code, message);
    }
    let id = ids::brevo_sms_message_id();
    let key = match &body["tag"] {
        Value::String(tag) => tag.clone(),
        Value::Array(tags) => tags
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    shared.accept(P, &key, parts, || Recorded {
        provider: P,
        id: id.to_string(),
        at_ms: wire::now_ms(),
        to: body["recipient"].as_str().unwrap_or_default().to_owned(),
        from: body["sender"].as_str().unwrap_or_default().to_owned(),
        subject: None,
        body: body["content"].as_str().unwrap_or_default().to_owned(),
        html: None,
        idempotency_key: key.clone(),
        parts: Some(parts),
        headers: wire::recordable_headers(&headers),
        request: body.clone(),
        raw_body: String::from_utf8_lossy(&raw).into_owned(),
    });
    if legacy {
        let reference: String = format!("{:019x}", rand::rng().random::<u64>() >> 8);
        wire::json(
            StatusCode::CREATED,
            json!({
                "reference": reference,
                "messageId": id,
                "smsCount": parts,
                "usedCredits": f64::from(parts),
                "remainingCredits": 1_000_000.0,
            }),
        )
    } else {
        wire::json(StatusCode::CREATED, json!({ "messageId": id }))
    }
}

pub(crate) async fn send_sms_current(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    send_sms(shared, headers, raw, false).await
}

pub(crate) async fn send_sms_deprecated(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    send_sms(shared, headers, raw, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_rules() {
        let ok = json!({
            "sender": {"email": "news@example.com"},
            "to": [{"email": "ada@example.org"}],
            "subject": "s",
            "textContent": "t",
            "headers": {"idempotencyKey": "0b7e1f6a-61d5-8f1e-9a6b-3c0d2e4f5a6b"}
        });
        assert_eq!(email_problem(&ok), None);
        let mut b = ok.clone();
        b["to"] = json!([]);
        assert_eq!(email_problem(&b).map(|p| p.0), Some("missing_parameter"));
        let mut b = ok.clone();
        b["headers"] = json!({"idempotencyKey": "cmp:c1:email"});
        assert_eq!(email_problem(&b).map(|p| p.0), Some("invalid_parameter"));
        let mut b = ok;
        b["textContent"] = Value::Null;
        assert!(email_problem(&b).is_some());
    }

    #[test]
    fn sms_rules() {
        let ok =
            json!({"sender": "Tocsin", "recipient": "33612345678", "content": "hi", "tag": "k"});
        assert_eq!(sms_problem(&ok), None);
        let mut b = ok.clone();
        b["sender"] = json!("A sender too long");
        assert_eq!(sms_problem(&b).map(|p| p.0), Some("invalid_parameter"));
        let mut b = ok.clone();
        b["recipient"] = json!("06 12");
        assert_eq!(sms_problem(&b).map(|p| p.0), Some("invalid_parameter"));
        let mut b = ok;
        b["content"] = Value::Null;
        assert_eq!(
            sms_problem(&b),
            Some(("missing_parameter", "content is missing".to_owned()))
        );
    }
}
