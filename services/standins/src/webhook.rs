//! The generic webhook receiver: `POST /webhook`, the contract of Tocsin's `webhook`
//! provider.
//!
//! The body is the whole message as JSON (`channel` `"email"` or `"sms"`, `to`, `from`,
//! then `subject` / `html` / `text` / `headers` or `body` / `encoding` / `parts`, and
//! `origin`). It is refused unless `X-Tocsin-Signature` is `v1=` + the hex HMAC-SHA256,
//! keyed by the shared secret, of `"<X-Tocsin-Timestamp>.<raw body>"` and the timestamp is
//! within the tolerance (replays are refused). `Idempotency-Key` is required. Success is
//! `200 {"id": "wh_..."}`; errors are `{"error": "..."}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::Provider;
use crate::faults::{self, Fault};
use crate::state::{Recorded, Reject, State as Shared};
use crate::{ids, sms, wire};

const P: Provider = Provider::Webhook;

/// `v1=` + hex HMAC-SHA256(secret, `"<timestamp>.<body>"`).
pub fn webhook_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v1={hex}")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    wire::json(status, json!({ "error": message.into() }))
}

fn fault_answer(fault: Fault) -> Response {
    let message = match fault {
        Fault::RateLimited { .. } | Fault::Throttled { .. } => "too many requests",
        Fault::ServerError => "internal error",
        Fault::Timeout { .. } => "gateway timeout",
    };
    error(fault.status(), message)
}

/// Why the signature does not hold, if it does not.
fn signature_problem(shared: &Shared, headers: &HeaderMap, raw: &[u8]) -> Option<&'static str> {
    let Some(timestamp) = wire::header_str(headers, "x-tocsin-timestamp") else {
        return Some("missing X-Tocsin-Timestamp");
    };
    let Some(presented) = wire::header_str(headers, "x-tocsin-signature") else {
        return Some("missing X-Tocsin-Signature");
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return Some("X-Tocsin-Timestamp is not a Unix time in seconds");
    };
    let age = chrono::Utc::now().timestamp().abs_diff(seconds);
    if age > shared.webhook_tolerance_s {
        return Some("X-Tocsin-Timestamp is outside the tolerance: a replay?");
    }
    let expected = webhook_signature(&shared.credentials.webhook_secret, timestamp, raw);
    if !wire::same_secret(presented, &expected) {
        return Some("X-Tocsin-Signature does not match the body");
    }
    None
}

fn shape_problem(body: &Value) -> Option<&'static str> {
    let text = |f: &str| {
        body.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if text("to").is_none() {
        return Some("to is required");
    }
    if text("from").is_none() {
        return Some("from is required");
    }
    match text("channel") {
        Some("email") => {
            if text("subject").is_none() {
                return Some("subject is required for e-mail");
            }
            if text("html").is_none() && text("text").is_none() {
                return Some("html or text is required for e-mail");
            }
            None
        }
        Some("sms") => text("body").is_none().then_some("body is required for SMS"),
        _ => Some("channel must be \"email\" or \"sms\""),
    }
}

pub(crate) async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let faults = shared.faults(P);
    faults::delay(&faults).await;
    if let Some(problem) = signature_problem(&shared, &headers, &raw) {
        shared.reject(P, Reject::Auth);
        return error(StatusCode::UNAUTHORIZED, problem);
    }
    let body = serde_json::from_slice::<Value>(&raw).ok();
    let parts = body
        .as_ref()
        .filter(|b| b["channel"] == "sms")
        .map(|b| {
            b["parts"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or_else(|| sms::parts(b["body"].as_str().unwrap_or_default()))
        })
        .unwrap_or(0);
    if let Some(answer) = faults::gate(&shared, P, &faults, parts.max(1), fault_answer).await {
        return answer;
    }
    let Some(key) = wire::header_str(&headers, "idempotency-key").filter(|k| !k.is_empty()) else {
        shared.reject(P, Reject::Invalid);
        return error(StatusCode::BAD_REQUEST, "Idempotency-Key is required");
    };
    let Some(body) = body.filter(Value::is_object) else {
        shared.reject(P, Reject::Invalid);
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    if let Some(problem) = shape_problem(&body) {
        shared.reject(P, Reject::Invalid);
        return error(StatusCode::BAD_REQUEST, problem);
    }
    let id = ids::webhook_receipt_id();
    let sms = body["channel"] == "sms";
    shared.accept(P, key, parts, || Recorded {
        provider: P,
        id: id.clone(),
        at_ms: wire::now_ms(),
        to: body["to"].as_str().unwrap_or_default().to_owned(),
        from: body["from"].as_str().unwrap_or_default().to_owned(),
        subject: body["subject"].as_str().map(str::to_owned),
        body: body[if sms { "body" } else { "text" }]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        html: body["html"].as_str().map(str::to_owned),
        idempotency_key: key.to_owned(),
        parts: sms.then_some(parts),
        headers: wire::recordable_headers(&headers),
        request: body.clone(),
        raw_body: String::from_utf8_lossy(&raw).into_owned(),
    });
    wire::json(StatusCode::OK, json!({ "id": id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signed string is exactly `timestamp + "." + body`, and the primitive is the
    /// standard HMAC-SHA256 (RFC 4231 test case 2).
    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let signed = webhook_signature("key", "1700000000", b"{\"a\":1}");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"key").expect("key");
        mac.update(b"1700000000.{\"a\":1}");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signed, format!("v1={hex}"));
        // The primitive itself, against RFC 4231 test case 2.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        let rfc: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            rfc,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn shapes() {
        let email = json!({"channel": "email", "to": "a@example.org", "from": "b@example.org", "subject": "s", "text": "t"});
        assert_eq!(shape_problem(&email), None);
        let sms = json!({"channel": "sms", "to": "+33612345678", "from": "Tocsin", "body": "b"});
        assert_eq!(shape_problem(&sms), None);
        let neither = json!({"channel": "fax", "to": "x", "from": "y"});
        assert!(shape_problem(&neither).is_some());
    }
}
