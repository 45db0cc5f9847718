//! SendGrid v3 Mail Send: `POST /v3/mail/send`.
//!
//! As documented by SendGrid: `Authorization: Bearer <API key>`, a JSON body with
//! `personalizations[].to[]`, `from`, `subject`, `content[]` (`text/plain` first when
//! present), optional `reply_to`, `headers` (reserved ones refused: `x-sg-id`, `x-sg-eid`,
//! `received`, `dkim-signature`, `Content-Type`, `Content-Transfer-Encoding`, `To`, `From`,
//! `Subject`, `Reply-To`, `CC`, `BCC`) and `custom_args` (strings only). Success is
//! `202 Accepted` with an empty body and the message id in `X-Message-Id`; errors are
//! `{"errors": [{"message", "field", "help"}]}`; rate limits come with `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (a Unix time).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::Provider;
use crate::faults::{self, Fault};
use crate::ids;
use crate::state::{Recorded, Reject, State as Shared};
use crate::wire;

const P: Provider = Provider::SendGrid;

/// Headers SendGrid does not let a sender set.
pub const RESERVED_HEADERS: [&str; 12] = [
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
];

fn errors(status: StatusCode, list: Vec<(Option<String>, String)>) -> Response {
    let errors: Vec<Value> = list
        .into_iter()
        .map(|(field, message)| json!({"message": message, "field": field, "help": null}))
        .collect();
    wire::json(status, json!({ "errors": errors }))
}

fn unauthorized() -> Response {
    errors(
        StatusCode::UNAUTHORIZED,
        vec![(
            None,
            "The provided authorization grant is invalid, expired, or revoked".to_owned(),
        )],
    )
}

fn fault_answer(fault: Fault) -> Response {
    let message = match fault {
        Fault::RateLimited { .. } | Fault::Throttled { .. } => "too many requests",
        Fault::ServerError => "internal server error",
        Fault::Timeout { .. } => "gateway timeout",
    };
    let response = errors(fault.status(), vec![(None, message.to_owned())]);
    match fault.retry_after_s() {
        Some(seconds) => {
            let reset = chrono::Utc::now().timestamp() + i64::try_from(seconds).unwrap_or(0);
            let response = wire::with_header(response, "X-RateLimit-Limit", "600".to_owned());
            let response = wire::with_header(response, "X-RateLimit-Remaining", "0".to_owned());
            wire::with_header(response, "X-RateLimit-Reset", reset.to_string())
        }
        None => response,
    }
}

fn looks_like_email(value: &str) -> bool {
    value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !value.chars().any(char::is_whitespace)
    })
}

fn email_of(value: Option<&Value>) -> Option<&str> {
    value?
        .get("email")?
        .as_str()
        .filter(|e| looks_like_email(e))
}

/// Every rule of the request shape this stand-in checks, as SendGrid words its errors.
fn validate(body: &Value) -> Vec<(Option<String>, String)> {
    let mut problems = Vec::new();
    let has_template = body.get("template_id").and_then(Value::as_str).is_some();
    let personalizations = body
        .get("personalizations")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty());
    match personalizations {
        None => problems.push((
            Some("personalizations".to_owned()),
            "The personalizations field is required and must have at least one personalization."
                .to_owned(),
        )),
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                let to_ok = p.get("to").and_then(Value::as_array).is_some_and(|to| {
                    !to.is_empty() && to.iter().all(|t| email_of(Some(t)).is_some())
                });
                if !to_ok {
                    problems.push((
                        Some(format!("personalizations.{i}.to")),
                        "The to array is required for all personalization objects, and must have at least one email object with a valid email address.".to_owned(),
                    ));
                }
            }
        }
    }
    if email_of(body.get("from")).is_none() {
        problems.push((
            Some("from".to_owned()),
            "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.".to_owned(),
        ));
    }
    if body.get("reply_to").is_some() && email_of(body.get("reply_to")).is_none() {
        problems.push((
            Some("reply_to".to_owned()),
            "The reply_to email does not contain a valid address.".to_owned(),
        ));
    }
    let subject = body
        .get("subject")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    let every_personalization_has_subject = personalizations.is_some_and(|list| {
        list.iter()
            .all(|p| p.get("subject").and_then(Value::as_str).is_some())
    });
    if !subject && !has_template && !every_personalization_has_subject {
        problems.push((
            Some("subject".to_owned()),
            "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.".to_owned(),
        ));
    }
    match body.get("content").and_then(Value::as_array).filter(|c| !c.is_empty()) {
        None if !has_template => problems.push((
            Some("content".to_owned()),
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.".to_owned(),
        )),
        None => {}
        Some(blocks) => {
            for (i, block) in blocks.iter().enumerate() {
                if block
                    .get("value")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    problems.push((
                        Some(format!("content.{i}.value")),
                        "The content value must be a string at least one character in length."
                            .to_owned(),
                    ));
                }
            }
            let plain_at = blocks
                .iter()
                .position(|b| b.get("type").and_then(Value::as_str) == Some("text/plain"));
            if plain_at.is_some_and(|at| at != 0) {
                problems.push((
                    Some("content".to_owned()),
                    "If present, text/plain must be first, followed by text/html, followed by any other content.".to_owned(),
                ));
            }
        }
    }
    if let Some(headers) = body.get("headers") {
        match headers.as_object() {
            None => problems.push((
                Some("headers".to_owned()),
                "Invalid type. Expected: object.".to_owned(),
            )),
            Some(map) => {
                for (name, value) in map {
                    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                        problems.push((
                            Some("headers".to_owned()),
                            format!("The header {name} is reserved and cannot be set."),
                        ));
                    }
                    if !value.is_string() {
                        problems.push((
                            Some(format!("headers.{name}")),
                            "Invalid type. Expected: string.".to_owned(),
                        ));
                    }
                }
            }
        }
    }
    if let Some(args) = body.get("custom_args") {
        let all_strings = args
            .as_object()
            .is_some_and(|map| map.values().all(Value::is_string));
        if !all_strings {
            problems.push((
                Some("custom_args".to_owned()),
                "Invalid type. Custom arguments must be an object of string values.".to_owned(),
            ));
        }
    }
    problems
}

fn content_of(body: &Value, mime: &str) -> Option<String> {
    body.get("content")?
        .as_array()?
        .iter()
        .find(|b| b.get("type").and_then(Value::as_str) == Some(mime))?
        .get("value")?
        .as_str()
        .map(str::to_owned)
}

pub(crate) async fn send(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let faults = shared.faults(P);
    faults::delay(&faults).await;
    let presented = wire::header_str(&headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !wire::same_secret(presented.trim(), &shared.credentials.sendgrid_api_key) {
        shared.reject(P, Reject::Auth);
        return unauthorized();
    }
    if let Some(answer) = faults::gate(&shared, P, &faults, 1, fault_answer).await {
        return answer;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        shared.reject(P, Reject::Invalid);
        return errors(
            StatusCode::BAD_REQUEST,
            vec![(None, "Bad Request".to_owned())],
        );
    };
    let problems = validate(&body);
    if !problems.is_empty() {
        shared.reject(P, Reject::Invalid);
        return errors(StatusCode::BAD_REQUEST, problems);
    }

    let id = ids::sendgrid_message_id();
    let first = &body["personalizations"][0];
    let key = body["custom_args"]["idempotency_key"]
        .as_str()
        .or_else(|| first["custom_args"]["idempotency_key"].as_str())
        .unwrap_or_default()
        .to_owned();
    shared.accept(P, &key, 0, || Recorded {
        provider: P,
        id: id.clone(),
        at_ms: wire::now_ms(),
        to: first["to"][0]["email"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        from: body["from"]["email"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        subject: first["subject"]
            .as_str()
            .or_else(|| body["subject"].as_str())
            .map(str::to_owned),
        body: content_of(&body, "text/plain").unwrap_or_default(),
        html: content_of(&body, "text/html"),
        idempotency_key: key.clone(),
        parts: None,
        headers: wire::recordable_headers(&headers),
        request: body.clone(),
        raw_body: String::from_utf8_lossy(&raw).into_owned(),
    });
    let response = StatusCode::ACCEPTED.into_response();
    wire::with_header(response, "X-Message-Id", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "personalizations": [{"to": [{"email": "ada@example.org"}]}],
            "from": {"email": "news@example.com", "name": "News"},
            "subject": "Hello",
            "content": [
                {"type": "text/plain", "value": "hi"},
                {"type": "text/html", "value": "<p>hi</p>"}
            ],
            "headers": {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
            "custom_args": {"idempotency_key": "k"}
        })
    }

    #[test]
    fn a_complete_request_passes() {
        assert!(validate(&valid()).is_empty());
    }

    #[test]
    fn each_rule_names_its_field() {
        let fields = |body: Value| -> Vec<Option<String>> {
            validate(&body).into_iter().map(|(f, _)| f).collect()
        };
        let mut b = valid();
        b["subject"] = Value::Null;
        assert_eq!(fields(b), vec![Some("subject".to_owned())]);
        let mut b = valid();
        b["content"] =
            json!([{"type": "text/html", "value": "x"}, {"type": "text/plain", "value": "y"}]);
        assert_eq!(fields(b), vec![Some("content".to_owned())]);
        let mut b = valid();
        b["headers"] = json!({"Reply-To": "x@example.org"});
        assert_eq!(fields(b), vec![Some("headers".to_owned())]);
        let mut b = valid();
        b["custom_args"] = json!({"n": 1});
        assert_eq!(fields(b), vec![Some("custom_args".to_owned())]);
        let mut b = valid();
        b["personalizations"] = json!([{"to": []}]);
        assert_eq!(fields(b), vec![Some("personalizations.0.to".to_owned())]);
    }
}
