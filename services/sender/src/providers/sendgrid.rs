//! SendGrid's v3 Mail Send API: `POST {base_url}/v3/mail/send`.
//!
//! What this relies on, from SendGrid's documentation:
//! - `Authorization: Bearer <API key>`; the key needs the Mail Send permission.
//! - One `personalizations` entry with the recipient in `to`; `from` and `reply_to` as
//!   `{email, name}`; `subject`; `content` with `text/plain` first, then `text/html`
//!   (SendGrid refuses another order); empty parts are left out (SendGrid refuses empty
//!   values).
//! - `headers` may carry any header but the reserved ones (`x-sg-id`, `x-sg-eid`,
//!   `received`, `dkim-signature`, `Content-Type`, `Content-Transfer-Encoding`, `To`,
//!   `From`, `Subject`, `Reply-To`, `CC`, `BCC`), so List-Unsubscribe,
//!   List-Unsubscribe-Post and Message-ID go there; a reserved one in the rendered headers
//!   is dropped (its value is set through the fields above), with a warning.
//! - `custom_args` (strings) come back on every event of the message's event webhook: the
//!   idempotency key, campaign and contact let the tracker correlate without a lookup.
//! - `202 Accepted`, empty body, the message id in `X-Message-Id`.
//! - Errors: `{"errors": [{"message", "field", "help"}]}`; rate limits: 429 with
//!   `X-RateLimit-Reset` (a Unix time).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tocsin_contracts::v1;

use super::http::{self, Answer, Classifier, ConfigError, ResetHeader};
use super::{Accepted, Outgoing, Permanent, Provider, SendError};

/// SendGrid's global API host (`https://api.eu.sendgrid.com` for EU-pinned subusers).
pub const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";

/// Headers SendGrid does not let a sender set (compared case-insensitively).
const RESERVED_HEADERS: [&str; 12] = [
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

/// `[sender.providers.NAME.api]` with `kind = "sendgrid"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridConfig {
    /// An API key with the Mail Send permission, from the environment
    /// (`TOCSIN__SENDER__PROVIDERS__NAME__API__API_KEY`).
    pub api_key: SecretString,
    /// Where the API is: SendGrid's own by default, the stand-in in tests.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Longest wait for one request, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_owned()
}

fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug)]
pub struct SendGridProvider {
    name: String,
    endpoint: String,
    api_key: SecretString,
    client: reqwest::Client,
    classifier: Classifier,
}

#[derive(Debug, Serialize)]
struct Address<'a> {
    email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Personalization<'a> {
    to: [Address<'a>; 1],
}

#[derive(Debug, Serialize)]
struct Content<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    value: &'a str,
}

/// The Mail Send body.
#[derive(Debug, Serialize)]
struct MailSend<'a> {
    personalizations: [Personalization<'a>; 1],
    from: Address<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<Address<'a>>,
    subject: &'a str,
    content: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, &'a str>,
    custom_args: BTreeMap<&'static str, &'a str>,
}

impl SendGridProvider {
    pub fn new(name: &str, config: &SendGridConfig) -> Result<Self, ConfigError> {
        if config.api_key.expose_secret().trim().is_empty() {
            return Err(ConfigError::invalid(name, "api_key", "is empty"));
        }
        let base = http::base_url(name, "base_url", &config.base_url)?;
        Ok(SendGridProvider {
            name: name.to_owned(),
            endpoint: format!("{base}/v3/mail/send"),
            api_key: config.api_key.clone(),
            client: http::client(name, config.timeout_ms)?,
            classifier: Classifier::new(
                name,
                "SendGrid",
                ResetHeader::UnixTime("x-ratelimit-reset"),
            ),
        })
    }

    fn body<'a>(
        &self,
        email: &'a v1::RenderedEmail,
        from: &'a http::Mailbox,
        reply_to: Option<&'a http::Mailbox>,
    ) -> MailSend<'a> {
        let mut content = Vec::with_capacity(2);
        if !email.text.is_empty() {
            content.push(Content {
                kind: "text/plain",
                value: &email.text,
            });
        }
        if !email.html.is_empty() {
            content.push(Content {
                kind: "text/html",
                value: &email.html,
            });
        }
        let mut headers = BTreeMap::new();
        for header in &email.headers {
            if RESERVED_HEADERS.contains(&header.name.to_ascii_lowercase().as_str()) {
                tracing::warn!(
                    provider = %self.name,
                    header = %header.name,
                    "SendGrid reserves this header; it is not sent"
                );
                continue;
            }
            headers.insert(header.name.as_str(), header.value.as_str());
        }
        if !email.message_id.is_empty() {
            headers.insert("Message-ID", email.message_id.as_str());
        }
        let mut custom_args = BTreeMap::new();
        if let Some(origin) = &email.origin {
            for (name, value) in [
                ("idempotency_key", &origin.idempotency_key),
                ("campaign_id", &origin.campaign_id),
                ("contact_id", &origin.contact_id),
            ] {
                if !value.is_empty() {
                    custom_args.insert(name, value.as_str());
                }
            }
        }
        MailSend {
            personalizations: [Personalization {
                to: [Address {
                    email: &email.to,
                    name: None,
                }],
            }],
            from: Address {
                email: &from.email,
                name: from.name.as_deref(),
            },
            reply_to: reply_to.map(|r| Address {
                email: &r.email,
                name: r.name.as_deref(),
            }),
            subject: &email.subject,
            content,
            headers,
            custom_args,
        }
    }

    async fn send_email(&self, email: &v1::RenderedEmail) -> Result<Accepted, SendError> {
        let (from, reply_to) = http::sender_mailboxes(&self.name, email)?;
        let body = self.body(email, &from, reply_to.as_ref());
        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(self.api_key.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| self.classifier.transport(&e))?;
        let answer = Answer::read(&self.name, response).await;
        if answer.status.is_success() {
            let id = answer
                .headers
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if id.is_empty() {
                tracing::warn!(provider = %self.name, "accepted without an X-Message-Id");
            }
            return Ok(Accepted {
                provider_message_id: id,
            });
        }
        let detail = http::redact(&error_detail(&answer), &email.to);
        Err(self.classifier.status(&answer, &detail))
    }
}

/// SendGrid's `errors[]`, as "message (field)" joined by "; ".
fn error_detail(answer: &Answer) -> String {
    let listed: Option<Vec<String>> = answer.json().and_then(|body| {
        let errors = body.get("errors")?.as_array()?.clone();
        Some(
            errors
                .iter()
                .filter_map(|e| {
                    let message = e.get("message")?.as_str()?;
                    Some(match e.get("field").and_then(|f| f.as_str()) {
                        Some(field) => format!("{message} ({field})"),
                        None => message.to_owned(),
                    })
                })
                .collect(),
        )
    });
    match listed {
        Some(list) if !list.is_empty() => http::shorten(&list.join("; ")),
        _ => answer.text(),
    }
}

impl Provider for SendGridProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            match message {
                Outgoing::Email(email) => self.send_email(email).await,
                Outgoing::Sms(_) => Err(SendError::permanent(
                    Permanent::Rejected,
                    format!("{} (SendGrid) sends e-mail only", self.name),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> SendGridProvider {
        SendGridProvider::new(
            "sg",
            &SendGridConfig {
                api_key: SecretString::from("key"),
                base_url: "http://127.0.0.1:9".into(),
                timeout_ms: 1000,
            },
        )
        .expect("valid config")
    }

    #[test]
    fn the_body_follows_sendgrids_rules() {
        let email = v1::RenderedEmail {
            from: "Parti <news@example.org>".into(),
            to: "ada@example.org".into(),
            subject: "Hello".into(),
            html: "<p>hi</p>".into(),
            text: "hi".into(),
            message_id: "<abc@example.org>".into(),
            headers: vec![
                v1::Header {
                    name: "List-Unsubscribe-Post".into(),
                    value: "List-Unsubscribe=One-Click".into(),
                },
                v1::Header {
                    name: "Reply-To".into(),
                    value: "x@example.org".into(),
                },
            ],
            origin: Some(v1::Origin {
                idempotency_key: "c1:p1:email".into(),
                campaign_id: "c1".into(),
                ..v1::Origin::default()
            }),
            ..v1::RenderedEmail::default()
        };
        let p = provider();
        let from = http::mailbox(&email.from).expect("from");
        let body = serde_json::to_value(p.body(&email, &from, None)).expect("json");
        assert_eq!(body["content"][0]["type"], "text/plain");
        assert_eq!(body["content"][1]["type"], "text/html");
        assert_eq!(body["from"]["name"], "Parti");
        assert_eq!(body["headers"]["Message-ID"], "<abc@example.org>");
        assert!(body["headers"].get("Reply-To").is_none());
        assert!(body.get("reply_to").is_none());
        assert_eq!(body["custom_args"]["idempotency_key"], "c1:p1:email");
        assert!(body["custom_args"].get("contact_id").is_none());
    }

    #[test]
    fn the_config_refuses_what_cannot_work() {
        let parsed: Result<SendGridConfig, _> =
            serde_json::from_str(r#"{"api_key": "k", "base_ur": "http://x"}"#);
        assert!(parsed.is_err());
        let parsed: SendGridConfig = serde_json::from_str(r#"{"api_key": "k"}"#).expect("ok");
        assert_eq!(parsed.base_url, DEFAULT_BASE_URL);
        assert!(!format!("{parsed:?}").contains("\"k\""));
        let empty = SendGridConfig {
            api_key: SecretString::from(" "),
            ..parsed
        };
        assert!(SendGridProvider::new("sg", &empty).is_err());
    }
}
