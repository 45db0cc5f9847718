//! Brevo's transactional e-mail and SMS APIs, one account (one API key) for both.
//!
//! What this relies on, from Brevo's documentation:
//! - Every request carries the key in the `api-key` header; bodies are JSON; errors are
//!   `{"code", "message"}` (`missing_parameter`, `invalid_parameter`, `unauthorized`,
//!   `not_enough_credits`, `duplicate_parameter`, ...); a 429 comes with
//!   `x-sib-ratelimit-reset`, the seconds until the limit resets.
//! - E-mail, `POST {base_url}/v3/smtp/email`: `sender` and `replyTo` as `{email, name}`,
//!   `to: [{email}]`, `subject`, `htmlContent`, `textContent`, `headers` (custom headers,
//!   renamed by Brevo into `This-Case`), `tags`. `201 {"messageId": "<...>"}`.
//!   - `headers.idempotencyKey` makes Brevo process a request once: it must be a UUID, is
//!     remembered 30 minutes, and a reuse is refused with `duplicate_parameter`. Ours is a
//!     UUID derived from the job's idempotency key, so a resend within 30 minutes is
//!     refused by Brevo, and that refusal means the first send was taken: it is reported
//!     as accepted (with no message id), not as a failure.
//!   - `headers["X-Mailin-custom"]` comes back in Brevo's event webhooks: it carries the
//!     idempotency key so the tracker can correlate.
//! - SMS, `POST {base_url}/v3/transactionalSMS/send` (the current path; `.../sms` is
//!   deprecated): `sender` (11 letters or digits, or 15 digits), `recipient` (international
//!   digits, sent without `+`), `content`, `type` (`marketing` or `transactional`), `tag`,
//!   `unicodeEnabled` (when false, Brevo replaces characters outside GSM-7 with look-alikes:
//!   it is set whenever the renderer chose UCS-2), `webUrl`, `organisationPrefix`.
//!   `201 {"messageId": <number>}`. The idempotency key goes in `tag`, which Brevo's SMS
//!   webhooks return. Brevo has no messaging-service concept: `messaging_service` is not
//!   used.
//! - Marketing SMS are held by Brevo outside its legal sending hours (not 22:00-08:00, not
//!   Sundays or French public holidays); transactional ones are not.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tocsin_contracts::v1;

use super::http::{self, Answer, Classifier, ConfigError, ResetHeader};
use super::{Accepted, Outgoing, Provider, SendError};

pub const DEFAULT_BASE_URL: &str = "https://api.brevo.com";

/// Brevo error codes that speak of the account, not the message: another provider (or the
/// same one once the operator has acted) can still send it.
const ACCOUNT_CODES: [&str; 5] = [
    "unauthorized",
    "permission_denied",
    "reseller_permission_denied",
    "not_enough_credits",
    "account_under_validation",
];

/// Brevo's SMS `type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsType {
    /// Promotional content: Brevo holds it outside legal sending hours and substitutes its
    /// `[STOP CODE]`. Campaign messages are this.
    #[default]
    Marketing,
    /// Triggered by the recipient's own action (a sign-up confirmation).
    Transactional,
}

/// `[sender.providers.NAME.api]` with `kind = "brevo"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrevoConfig {
    /// The account's v3 API key, from the environment
    /// (`TOCSIN__SENDER__PROVIDERS__NAME__API__API_KEY`).
    pub api_key: SecretString,
    /// Where the API is: Brevo's own by default, the stand-in in tests.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Longest wait for one request, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The `type` of every SMS.
    #[serde(default)]
    pub sms_type: SmsType,
    /// Brevo's `webUrl`: where Brevo posts this account's SMS events.
    #[serde(default)]
    pub sms_web_url: Option<String>,
    /// Brevo's `organisationPrefix`, put before the content (asked for by US carriers).
    #[serde(default)]
    pub sms_organisation_prefix: Option<String>,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_owned()
}

fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug)]
pub struct BrevoProvider {
    name: String,
    email_endpoint: String,
    sms_endpoint: String,
    api_key: SecretString,
    client: reqwest::Client,
    classifier: Classifier,
    sms_type: SmsType,
    sms_web_url: Option<String>,
    sms_organisation_prefix: Option<String>,
}

#[derive(Debug, Serialize)]
struct Address<'a> {
    email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmailBody<'a> {
    sender: Address<'a>,
    to: [Address<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<Address<'a>>,
    subject: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    html_content: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    text_content: &'a str,
    headers: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SmsBody<'a> {
    sender: &'a str,
    recipient: &'a str,
    content: &'a str,
    #[serde(rename = "type")]
    kind: SmsType,
    #[serde(skip_serializing_if = "str::is_empty")]
    tag: &'a str,
    unicode_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    web_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    organisation_prefix: Option<&'a str>,
}

/// The UUID Brevo's `idempotencyKey` needs, derived from the job's key (the first 16 bytes
/// of its SHA-256, as a version-8 UUID): the same job always gets the same one.
pub fn idempotency_uuid(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

impl BrevoProvider {
    pub fn new(name: &str, config: &BrevoConfig) -> Result<Self, ConfigError> {
        if config.api_key.expose_secret().trim().is_empty() {
            return Err(ConfigError::invalid(name, "api_key", "is empty"));
        }
        if let Some(url) = &config.sms_web_url {
            http::base_url(name, "sms_web_url", url)?;
        }
        let base = http::base_url(name, "base_url", &config.base_url)?;
        Ok(BrevoProvider {
            name: name.to_owned(),
            email_endpoint: format!("{base}/v3/smtp/email"),
            sms_endpoint: format!("{base}/v3/transactionalSMS/send"),
            api_key: config.api_key.clone(),
            client: http::client(name, config.timeout_ms)?,
            classifier: Classifier::new(
                name,
                "Brevo",
                ResetHeader::Seconds("x-sib-ratelimit-reset"),
            ),
            sms_type: config.sms_type,
            sms_web_url: config.sms_web_url.clone(),
            sms_organisation_prefix: config.sms_organisation_prefix.clone(),
        })
    }

    fn email_body<'a>(
        &self,
        email: &'a v1::RenderedEmail,
        from: &'a http::Mailbox,
        reply_to: Option<&'a http::Mailbox>,
    ) -> EmailBody<'a> {
        let mut headers: BTreeMap<&str, String> = email
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.clone()))
            .collect();
        if !email.message_id.is_empty() {
            headers.insert("Message-Id", email.message_id.clone());
        }
        let origin = email.origin.as_ref();
        let key = origin.map(|o| o.idempotency_key.as_str()).unwrap_or("");
        if !key.is_empty() {
            headers.insert("X-Mailin-custom", key.to_owned());
            headers.insert("idempotencyKey", idempotency_uuid(key));
        }
        let tags = origin
            .map(|o| o.campaign_id.as_str())
            .filter(|c| !c.is_empty())
            .into_iter()
            .collect();
        EmailBody {
            sender: Address {
                email: &from.email,
                name: from.name.as_deref(),
            },
            to: [Address {
                email: &email.to,
                name: None,
            }],
            reply_to: reply_to.map(|r| Address {
                email: &r.email,
                name: r.name.as_deref(),
            }),
            subject: &email.subject,
            html_content: &email.html,
            text_content: &email.text,
            headers,
            tags,
        }
    }

    fn sms_body<'a>(&'a self, sms: &'a v1::RenderedSms) -> SmsBody<'a> {
        let encoding = v1::SmsEncoding::try_from(sms.encoding).unwrap_or_default();
        SmsBody {
            // Numeric senders are digits only at Brevo.
            sender: sms.from.trim_start_matches('+'),
            recipient: sms.to.trim_start_matches('+'),
            content: &sms.body,
            kind: self.sms_type,
            tag: sms
                .origin
                .as_ref()
                .map(|o| o.idempotency_key.as_str())
                .unwrap_or(""),
            // Only a message the renderer counted as GSM-7 may be sent without Unicode:
            // otherwise Brevo would silently change its characters.
            unicode_enabled: encoding != v1::SmsEncoding::Gsm7,
            web_url: self.sms_web_url.as_deref(),
            organisation_prefix: self.sms_organisation_prefix.as_deref(),
        }
    }

    async fn post(&self, endpoint: &str, body: &impl Serialize) -> Result<Answer, SendError> {
        let response = self
            .client
            .post(endpoint)
            .header("api-key", self.api_key.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(body)
            .send()
            .await
            .map_err(|e| self.classifier.transport(&e))?;
        Ok(Answer::read(&self.name, response).await)
    }

    async fn send_email(&self, email: &v1::RenderedEmail) -> Result<Accepted, SendError> {
        let (from, reply_to) = http::sender_mailboxes(&self.name, email)?;
        let body = self.email_body(email, &from, reply_to.as_ref());
        let answer = self.post(&self.email_endpoint, &body).await?;
        if answer.status.is_success() {
            return Ok(self.accepted(&answer));
        }
        let (code, detail) = error_of(&answer);
        let detail = http::redact(&detail, &email.to);
        if code.as_deref() == Some("duplicate_parameter")
            && body.headers.contains_key("idempotencyKey")
        {
            // Our request has one recipient and no cc / bcc, so the only parameter that can
            // be a duplicate is the idempotency key: Brevo already took this message.
            tracing::warn!(
                provider = %self.name,
                "Brevo refused a reused idempotencyKey: the message was already accepted"
            );
            return Ok(Accepted {
                provider_message_id: String::new(),
            });
        }
        Err(self.failure(&answer, code.as_deref(), &detail))
    }

    async fn send_sms(&self, sms: &v1::RenderedSms) -> Result<Accepted, SendError> {
        let body = self.sms_body(sms);
        let answer = self.post(&self.sms_endpoint, &body).await?;
        if answer.status.is_success() {
            return Ok(self.accepted(&answer));
        }
        let (code, detail) = error_of(&answer);
        let detail = http::redact(&detail, &sms.to);
        Err(self.failure(&answer, code.as_deref(), &detail))
    }

    /// `messageId`, a string for e-mail and a number for SMS.
    fn accepted(&self, answer: &Answer) -> Accepted {
        let id = match answer.json().as_ref().and_then(|b| b.get("messageId")) {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                tracing::warn!(provider = %self.name, "accepted without a messageId");
                String::new()
            }
        };
        Accepted {
            provider_message_id: id,
        }
    }

    fn failure(&self, answer: &Answer, code: Option<&str>, detail: &str) -> SendError {
        let status = answer.status;
        let auth =
            status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN;
        if let Some(code) = code
            && ACCOUNT_CODES.contains(&code)
            && status.is_client_error()
            && !auth
        {
            return SendError::transient(format!(
                "{}: the Brevo account cannot send now (HTTP {}, {detail}): check the account",
                self.name,
                status.as_u16()
            ));
        }
        self.classifier.status(answer, detail)
    }
}

/// Brevo's `{"code", "message"}`, as the code and "message (code)".
fn error_of(answer: &Answer) -> (Option<String>, String) {
    let parsed = answer.json().and_then(|body| {
        let code = body.get("code")?.as_str()?.to_owned();
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Some((code, message))
    });
    match parsed {
        Some((code, message)) => {
            let detail = http::shorten(&format!("{message} ({code})"));
            (Some(code), detail)
        }
        None => (None, answer.text()),
    }
}

impl Provider for BrevoProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            match message {
                Outgoing::Email(email) => self.send_email(email).await,
                Outgoing::Sms(sms) => self.send_sms(sms).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_uuid_is_a_stable_uuid() {
        let a = idempotency_uuid("c1:p1:email");
        assert_eq!(a, idempotency_uuid("c1:p1:email"));
        assert_ne!(a, idempotency_uuid("c1:p2:email"));
        let parsed = uuid::Uuid::parse_str(&a).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 8);
    }

    #[test]
    fn the_sms_body_follows_brevos_rules() {
        let p = BrevoProvider::new(
            "brevo",
            &BrevoConfig {
                api_key: SecretString::from("k"),
                base_url: DEFAULT_BASE_URL.into(),
                timeout_ms: 1000,
                sms_type: SmsType::Marketing,
                sms_web_url: None,
                sms_organisation_prefix: None,
            },
        )
        .expect("valid");
        let mut sms = v1::RenderedSms {
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
        let body = serde_json::to_value(p.sms_body(&sms)).expect("json");
        assert_eq!(body["recipient"], "33612345678");
        assert_eq!(body["type"], "marketing");
        assert_eq!(body["tag"], "c1:p1:sms");
        assert_eq!(body["unicodeEnabled"], false);
        assert!(body.get("webUrl").is_none());
        sms.encoding = v1::SmsEncoding::Ucs2 as i32;
        let body = serde_json::to_value(p.sms_body(&sms)).expect("json");
        assert_eq!(body["unicodeEnabled"], true);
    }
}
