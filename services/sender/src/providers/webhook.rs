//! The generic webhook: every message POSTed as JSON to a configured URL, for a gateway
//! Tocsin has no client for (an in-house SMS aggregator, a test sink).
//!
//! The contract a receiver implements:
//! - `POST <url>`, `Content-Type: application/json`. The body is the message in the
//!   contracts' proto3 JSON mapping (the JSON form of `RenderedEmail` / `RenderedSms`:
//!   `to`, `from`, `subject`, `html`, `text`, `messageId`, `headers` or `body`,
//!   `encoding`, `parts`, `messagingService`, and `origin` with the idempotency key,
//!   campaign and contact ids; fields at their default value are left out), plus
//!   `"channel": "email"` or `"sms"`.
//! - `Idempotency-Key: <the job's idempotency key>`: the same key means the same message;
//!   a receiver that already took it should answer 2xx again without sending it twice.
//! - `X-Tocsin-Timestamp: <Unix seconds>` and
//!   `X-Tocsin-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`: the
//!   receiver recomputes it over the bytes it received, compares in constant time, and
//!   refuses old timestamps (replays).
//! - Any 2xx is acceptance; `{"id": "..."}` in the answer, when present, is the message id.
//!   Other answers follow the HTTP mapping of [`super::http`] (an error text is read from
//!   `{"error": "..."}` or `{"message": "..."}`).

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::http::{self, Answer, Classifier, ConfigError, ResetHeader};
use super::{Accepted, Outgoing, Permanent, Provider, SendError};

/// `[sender.providers.NAME.api]` with `kind = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where messages are POSTed.
    pub url: String,
    /// The signing secret shared with the receiver, from the environment
    /// (`TOCSIN__SENDER__PROVIDERS__NAME__API__SECRET`).
    pub secret: SecretString,
    /// Longest wait for one request, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// `v1=` + hex HMAC-SHA256(secret, `"<timestamp>.<body>"`).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
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

#[derive(Debug)]
pub struct WebhookProvider {
    name: String,
    url: String,
    secret: SecretString,
    client: reqwest::Client,
    classifier: Classifier,
}

impl WebhookProvider {
    pub fn new(name: &str, config: &WebhookConfig) -> Result<Self, ConfigError> {
        if config.secret.expose_secret().is_empty() {
            return Err(ConfigError::invalid(name, "secret", "is empty"));
        }
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| ConfigError::invalid(name, "url", format!("{:?}: {e}", config.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(name, "url", "must be http or https"));
        }
        Ok(WebhookProvider {
            name: name.to_owned(),
            url: config.url.clone(),
            secret: config.secret.clone(),
            client: http::client(name, config.timeout_ms)?,
            classifier: Classifier::new(name, "the webhook", ResetHeader::None),
        })
    }

    /// The JSON body: the message's proto3 JSON plus `channel`.
    fn body(&self, message: Outgoing<'_>) -> Result<Vec<u8>, SendError> {
        let (channel, json) = match message {
            Outgoing::Email(email) => ("email", serde_json::to_value(email)),
            Outgoing::Sms(sms) => ("sms", serde_json::to_value(sms)),
        };
        let mut json = json.map_err(|e| {
            SendError::permanent(
                Permanent::Rejected,
                format!("{}: the message cannot be written as JSON: {e}", self.name),
            )
        })?;
        if let Value::Object(map) = &mut json {
            map.insert("channel".to_owned(), Value::from(channel));
        }
        serde_json::to_vec(&json).map_err(|e| {
            SendError::permanent(
                Permanent::Rejected,
                format!("{}: the message cannot be written as JSON: {e}", self.name),
            )
        })
    }

    async fn deliver(&self, message: Outgoing<'_>) -> Result<Accepted, SendError> {
        let body = self.body(message)?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let signed = signature(self.secret.expose_secret(), timestamp, &body);
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", message.idempotency_key())
            .header("X-Tocsin-Timestamp", timestamp.to_string())
            .header("X-Tocsin-Signature", signed)
            .body(body)
            .send()
            .await
            .map_err(|e| self.classifier.transport(&e))?;
        let answer = Answer::read(&self.name, response).await;
        let json = answer.json();
        if answer.status.is_success() {
            let id = match json.as_ref().and_then(|b| b.get("id")) {
                Some(Value::String(id)) => id.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            return Ok(Accepted {
                provider_message_id: id,
            });
        }
        let detail = json
            .as_ref()
            .and_then(|b| b.get("error").or_else(|| b.get("message")))
            .and_then(Value::as_str)
            .map(http::shorten)
            .unwrap_or_else(|| answer.text());
        let to = match message {
            Outgoing::Email(email) => email.to.as_str(),
            Outgoing::Sms(sms) => sms.to.as_str(),
        };
        Err(self.classifier.status(&answer, &http::redact(&detail, to)))
    }
}

impl Provider for WebhookProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(self.deliver(message))
    }
}

#[cfg(test)]
mod tests {
    use tocsin_contracts::v1;

    use super::*;

    #[test]
    fn the_body_is_the_messages_json_with_its_channel() {
        let p = WebhookProvider::new(
            "hook",
            &WebhookConfig {
                url: "http://127.0.0.1:9/hook".into(),
                secret: SecretString::from("s"),
                timeout_ms: 1000,
            },
        )
        .expect("valid");
        let sms = v1::RenderedSms {
            to: "+33612345678".into(),
            from: "Tocsin".into(),
            body: "Bonjour".into(),
            encoding: v1::SmsEncoding::Gsm7 as i32,
            parts: 1,
            origin: Some(v1::Origin {
                idempotency_key: "c1:p1:sms".into(),
                ..v1::Origin::default()
            }),
            ..v1::RenderedSms::default()
        };
        let body: Value =
            serde_json::from_slice(&p.body(Outgoing::Sms(&sms)).expect("json")).expect("json");
        assert_eq!(body["channel"], "sms");
        assert_eq!(body["body"], "Bonjour");
        assert_eq!(body["parts"], 1);
        assert_eq!(body["origin"]["idempotencyKey"], "c1:p1:sms");
    }

    #[test]
    fn the_signature_covers_timestamp_dot_body() {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"secret").expect("key");
        mac.update(b"1700000000.{}");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            signature("secret", 1_700_000_000, b"{}"),
            format!("v1={hex}")
        );
    }
}
