//! Twilio Programmable Messaging: `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`.
//!
//! What this relies on, from Twilio's documentation:
//! - HTTP Basic auth with the Account SID and auth token; form-encoded parameters.
//! - `To` (E.164), `From` (a number or alphanumeric sender id) or `MessagingServiceSid`
//!   (`MG...`, then Twilio picks the sender from the service's pool), `Body`.
//! - `StatusCallback`: Twilio posts the message's status changes there (`queued`, `sent`,
//!   `delivered`, `undelivered`, `failed`, with `ErrorCode`). We give the configured
//!   tracker URL with the job's idempotency key appended as `k`, so the tracker correlates
//!   a callback without a lookup.
//! - `ValidityPeriod` (1 to 36,000 seconds): how long Twilio may keep the message queued;
//!   set from the job's expiry, so Twilio never sends it after the moment we would not.
//! - `201 Created` with the Message resource, whose `sid` (`SM...`) is the message id.
//! - Errors as `{"code", "message", "more_info", "status"}`, mapped as:
//!
//! | Twilio error | error |
//! |---|---|
//! | 21610 (recipient replied STOP) | permanent, opted out: suppress them |
//! | 21211 (invalid `To`), 21614 (not a mobile number) | permanent, hard bounce |
//! | 20429, HTTP 429 (too many requests), 21611 (the `From` number's queue is full) | transient, slow down, honouring `Retry-After` |
//! | 20003, HTTP 401 / 403 | transient: credentials |
//! | other 4xx | permanent, rejected, with Twilio's message |
//! | 5xx | transient |

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use tocsin_contracts::v1;

use super::http::{self, Answer, Classifier, ConfigError, ResetHeader};
use super::{Accepted, Outgoing, Permanent, Provider, SendError};

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// Twilio's bounds of `ValidityPeriod`, in seconds.
const VALIDITY_MAX_S: i64 = 36_000;

/// Twilio error codes this provider treats specially.
const OPTED_OUT: u64 = 21610;
const INVALID_TO: u64 = 21211;
const NOT_MOBILE: u64 = 21614;
const TOO_MANY_REQUESTS: u64 = 20429;
const QUEUE_FULL: u64 = 21611;

/// `[sender.providers.NAME.api]` with `kind = "twilio"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// `AC` and 32 hexadecimal digits: Basic-auth user and part of the path.
    pub account_sid: String,
    /// From the environment (`TOCSIN__SENDER__PROVIDERS__NAME__API__AUTH_TOKEN`).
    pub auth_token: SecretString,
    /// Where the API is: Twilio's own by default, the stand-in in tests.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Longest wait for one request, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The tracker's Twilio status-callback URL; each message's gets `k=<idempotency key>`
    /// appended. Without it Twilio reports no delivery status.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// A Messaging Service (`MG...`) for messages that name none themselves; without either,
    /// the message's `from` is the sender.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_owned()
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].chars().all(|c| c.is_ascii_hexdigit())
}

#[derive(Debug)]
pub struct TwilioProvider {
    name: String,
    account_sid: String,
    auth_token: SecretString,
    endpoint: String,
    status_callback: Option<reqwest::Url>,
    messaging_service_sid: Option<String>,
    client: reqwest::Client,
    classifier: Classifier,
}

impl TwilioProvider {
    pub fn new(name: &str, config: &TwilioConfig) -> Result<Self, ConfigError> {
        if !is_sid(&config.account_sid, "AC") {
            return Err(ConfigError::invalid(
                name,
                "account_sid",
                "must be AC followed by 32 hexadecimal digits",
            ));
        }
        if config.auth_token.expose_secret().trim().is_empty() {
            return Err(ConfigError::invalid(name, "auth_token", "is empty"));
        }
        if let Some(sid) = &config.messaging_service_sid
            && !is_sid(sid, "MG")
        {
            return Err(ConfigError::invalid(
                name,
                "messaging_service_sid",
                "must be MG followed by 32 hexadecimal digits",
            ));
        }
        let status_callback = match &config.status_callback {
            None => None,
            Some(raw) => {
                let url = reqwest::Url::parse(raw).map_err(|e| {
                    ConfigError::invalid(name, "status_callback", format!("{raw:?}: {e}"))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::invalid(
                        name,
                        "status_callback",
                        "must be http or https",
                    ));
                }
                Some(url)
            }
        };
        let base = http::base_url(name, "base_url", &config.base_url)?;
        Ok(TwilioProvider {
            name: name.to_owned(),
            account_sid: config.account_sid.clone(),
            auth_token: config.auth_token.clone(),
            endpoint: format!(
                "{base}/2010-04-01/Accounts/{}/Messages.json",
                config.account_sid
            ),
            status_callback,
            messaging_service_sid: config.messaging_service_sid.clone(),
            client: http::client(name, config.timeout_ms)?,
            classifier: Classifier::new(name, "Twilio", ResetHeader::None),
        })
    }

    /// The form parameters of one message.
    fn form(&self, sms: &v1::RenderedSms, now_s: i64) -> Vec<(&'static str, String)> {
        let mut form = vec![("To", sms.to.clone())];
        let service = Some(sms.messaging_service.as_str())
            .filter(|s| !s.is_empty())
            .or(self.messaging_service_sid.as_deref());
        match service {
            Some(service) => form.push(("MessagingServiceSid", service.to_owned())),
            None => form.push(("From", sms.from.clone())),
        }
        form.push(("Body", sms.body.clone()));
        let origin = sms.origin.as_ref();
        if let Some(base) = &self.status_callback {
            let mut url = base.clone();
            if let Some(key) = origin
                .map(|o| o.idempotency_key.as_str())
                .filter(|k| !k.is_empty())
            {
                url.query_pairs_mut().append_pair("k", key);
            }
            form.push(("StatusCallback", url.to_string()));
        }
        if let Some(expires) = origin.and_then(|o| o.expires_at.as_ref()) {
            let left = (expires.seconds - now_s).clamp(1, VALIDITY_MAX_S);
            form.push(("ValidityPeriod", left.to_string()));
        }
        form
    }

    async fn send_sms(&self, sms: &v1::RenderedSms) -> Result<Accepted, SendError> {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let form = self.form(sms, now_s);
        let response = self
            .client
            .post(&self.endpoint)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&form)
            .send()
            .await
            .map_err(|e| self.classifier.transport(&e))?;
        let answer = Answer::read(&self.name, response).await;
        let body = answer.json();
        if answer.status.is_success() {
            let sid = body
                .as_ref()
                .and_then(|b| b.get("sid"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if sid.is_empty() {
                tracing::warn!(provider = %self.name, "accepted without a sid");
            }
            return Ok(Accepted {
                provider_message_id: sid,
            });
        }
        let code = body
            .as_ref()
            .and_then(|b| b.get("code"))
            .and_then(Value::as_u64);
        let detail = match (
            code,
            body.as_ref()
                .and_then(|b| b.get("message"))
                .and_then(Value::as_str),
        ) {
            (Some(code), Some(message)) => format!("{message} (Twilio error {code})"),
            (Some(code), None) => format!("Twilio error {code}"),
            _ => answer.text(),
        };
        let detail = http::shorten(&http::redact(&detail, &sms.to));
        Err(match code {
            Some(OPTED_OUT) => SendError::permanent(
                Permanent::OptedOut,
                format!("{}: the recipient opted out: {detail}", self.name),
            ),
            Some(INVALID_TO | NOT_MOBILE) => SendError::permanent(
                Permanent::HardBounce,
                format!("{}: the number cannot receive SMS: {detail}", self.name),
            ),
            Some(TOO_MANY_REQUESTS | QUEUE_FULL) => self.classifier.slow_down(&answer, &detail),
            _ => self.classifier.status(&answer, &detail),
        })
    }
}

impl Provider for TwilioProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            match message {
                Outgoing::Sms(sms) => self.send_sms(sms).await,
                Outgoing::Email(_) => Err(SendError::permanent(
                    Permanent::Rejected,
                    format!("{} (Twilio) sends SMS only", self.name),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    fn config() -> TwilioConfig {
        TwilioConfig {
            account_sid: SID.into(),
            auth_token: SecretString::from("token"),
            base_url: DEFAULT_BASE_URL.into(),
            timeout_ms: 1000,
            status_callback: Some("https://tracker.example.org/twilio/status?v=1".into()),
            messaging_service_sid: None,
        }
    }

    #[test]
    fn the_form_carries_the_key_and_the_validity() {
        let p = TwilioProvider::new("tw", &config()).expect("valid");
        let sms = v1::RenderedSms {
            to: "+33612345678".into(),
            from: "Tocsin".into(),
            body: "Bonjour".into(),
            origin: Some(v1::Origin {
                idempotency_key: "c1:p1:sms".into(),
                expires_at: Some(tocsin_contracts::Timestamp {
                    seconds: 1_000_600,
                    nanos: 0,
                }),
                ..v1::Origin::default()
            }),
            ..v1::RenderedSms::default()
        };
        let form = p.form(&sms, 1_000_000);
        let get = |name: &str| {
            form.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("From"), Some("Tocsin"));
        assert_eq!(get("MessagingServiceSid"), None);
        assert_eq!(
            get("StatusCallback"),
            Some("https://tracker.example.org/twilio/status?v=1&k=c1%3Ap1%3Asms")
        );
        assert_eq!(get("ValidityPeriod"), Some("600"));
        // Far expiries are capped at Twilio's maximum.
        assert_eq!(
            p.form(&sms, 0)
                .iter()
                .find(|(n, _)| *n == "ValidityPeriod")
                .map(|(_, v)| v.as_str()),
            Some("36000")
        );
        let with_service = v1::RenderedSms {
            messaging_service: "MG0123456789abcdef0123456789abcdef".into(),
            ..sms
        };
        let form = p.form(&with_service, 1_000_000);
        assert!(form.iter().any(|(n, _)| *n == "MessagingServiceSid"));
        assert!(!form.iter().any(|(n, _)| *n == "From"));
    }

    #[test]
    fn the_config_is_checked() {
        assert!(TwilioProvider::new("tw", &config()).is_ok());
        let bad_sid = TwilioConfig {
            account_sid: "AC123".into(),
            ..config()
        };
        assert!(TwilioProvider::new("tw", &bad_sid).is_err());
        let bad_service = TwilioConfig {
            messaging_service_sid: Some("MGnope".into()),
            ..config()
        };
        assert!(TwilioProvider::new("tw", &bad_service).is_err());
        let bad_callback = TwilioConfig {
            status_callback: Some("ftp://x".into()),
            ..config()
        };
        assert!(TwilioProvider::new("tw", &bad_callback).is_err());
        let p = TwilioProvider::new("tw", &config()).expect("valid");
        assert!(!format!("{p:?}").contains("token\""));
    }
}
