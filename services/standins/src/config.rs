//! What a stand-in server is started with: the credentials it accepts, the faults it
//! injects per provider, whether it records what it accepts, whether it runs the SMTP sink.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The Twilio Account SID accepted by default (`AC` + 32 hexadecimal digits, like a real one).
pub const DEFAULT_TWILIO_ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// The Twilio auth token accepted by default (Basic auth password, and the key of the
/// `X-Twilio-Signature` on status callbacks).
pub const DEFAULT_TWILIO_AUTH_TOKEN: &str = "standin-twilio-auth-token";
/// The SendGrid API key accepted by default (`Authorization: Bearer ...`).
pub const DEFAULT_SENDGRID_API_KEY: &str = "SG.standin.sendgrid-api-key";
/// The Brevo API key accepted by default (`api-key` header), for e-mail and SMS.
pub const DEFAULT_BREVO_API_KEY: &str = "xkeysib-standin-brevo-api-key";
/// The generic webhook's signing secret accepted by default.
pub const DEFAULT_WEBHOOK_SECRET: &str = "standin-webhook-secret";

/// The APIs a stand-in server speaks. Brevo's e-mail and SMS are separate because they are
/// separate endpoints with separate rate limits at Brevo, and SMS are counted in parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Provider {
    #[serde(rename = "twilio")]
    Twilio,
    #[serde(rename = "sendgrid")]
    SendGrid,
    #[serde(rename = "brevo-email")]
    BrevoEmail,
    #[serde(rename = "brevo-sms")]
    BrevoSms,
    #[serde(rename = "webhook")]
    Webhook,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Twilio,
        Provider::SendGrid,
        Provider::BrevoEmail,
        Provider::BrevoSms,
        Provider::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Twilio => "twilio",
            Provider::SendGrid => "sendgrid",
            Provider::BrevoEmail => "brevo-email",
            Provider::BrevoSms => "brevo-sms",
            Provider::Webhook => "webhook",
        }
    }

    /// Whether its rate limit counts SMS parts rather than requests.
    pub fn counts_parts(self) -> bool {
        matches!(self, Provider::Twilio | Provider::BrevoSms)
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Provider::Twilio => 0,
            Provider::SendGrid => 1,
            Provider::BrevoEmail => 2,
            Provider::BrevoSms => 3,
            Provider::Webhook => 4,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown provider {0:?}: expected twilio, sendgrid, brevo-email, brevo-sms or webhook")]
pub struct UnknownProvider(String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

/// The credentials the stand-ins accept; a request carrying others gets the provider's own
/// 401 answer. Plain strings: these are test credentials, and tests read them back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    /// Basic-auth user and the `{AccountSid}` of the Messages path.
    pub twilio_account_sid: String,
    /// Basic-auth password; also signs the status callbacks.
    pub twilio_auth_token: String,
    pub sendgrid_api_key: String,
    /// One key for Brevo's e-mail and SMS endpoints, as at Brevo.
    pub brevo_api_key: String,
    /// The key of `X-Tocsin-Signature` on the generic webhook.
    pub webhook_secret: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            twilio_account_sid: DEFAULT_TWILIO_ACCOUNT_SID.to_owned(),
            twilio_auth_token: DEFAULT_TWILIO_AUTH_TOKEN.to_owned(),
            sendgrid_api_key: DEFAULT_SENDGRID_API_KEY.to_owned(),
            brevo_api_key: DEFAULT_BREVO_API_KEY.to_owned(),
            webhook_secret: DEFAULT_WEBHOOK_SECRET.to_owned(),
        }
    }
}

/// The misbehaviour of one provider. `POST /_standin/faults[/{provider}]` replaces it
/// whole: fields left out take these defaults, so a posted `{}` means "behave".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every answer, faults included, like a provider's own processing time.
    pub latency_ms: u64,
    /// A uniformly drawn extra delay of 0 to `jitter_ms` on top of `latency_ms`.
    pub jitter_ms: u64,
    /// Share of requests (0 to 1) answered `500` with the provider's error body.
    pub error_rate: f64,
    /// Share of requests answered `429` with `Retry-After: retry_after_s`.
    pub throttle_rate: f64,
    /// The `Retry-After` (and the provider's own reset header) on every 429.
    pub retry_after_s: u64,
    /// Share of requests held `hold_ms` before a `504`: a client's timeout fires first.
    pub timeout_rate: f64,
    /// How long a "timed out" request is held; longer than any client timeout.
    pub hold_ms: u64,
    /// Requests per second (SMS parts per second for Twilio and Brevo SMS) above which the
    /// stand-in answers 429 like the provider; none by default.
    pub rate_limit: Option<f64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            jitter_ms: 0,
            error_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_s: 1,
            timeout_rate: 0.0,
            hold_ms: 60_000,
            rate_limit: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    #[error("{field} must be between 0 and 1, got {value}")]
    Rate { field: &'static str, value: f64 },
    #[error(
        "error_rate + throttle_rate + timeout_rate must not exceed 1 (one draw per request), got {0}"
    )]
    RatesSum(f64),
    #[error("rate_limit must be a positive number of requests (or SMS parts) per second")]
    RateLimit,
}

impl Faults {
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (field, value) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("timeout_rate", self.timeout_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultsError::Rate { field, value });
            }
        }
        let sum = self.error_rate + self.throttle_rate + self.timeout_rate;
        if sum > 1.0 + f64::EPSILON {
            return Err(FaultsError::RatesSum(sum));
        }
        if let Some(limit) = self.rate_limit
            && !(limit.is_finite() && limit > 0.0)
        {
            return Err(FaultsError::RateLimit);
        }
        Ok(())
    }
}

/// Everything a stand-in server starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen; `127.0.0.1:0` picks a free port (tests read it back from `spawn`).
    pub listen: SocketAddr,
    pub credentials: Credentials,
    /// The faults every provider starts with...
    pub faults: Faults,
    /// ...unless it has its own here.
    pub provider_faults: BTreeMap<Provider, Faults>,
    /// Keep every accepted message for `GET /_standin/messages`. Off for load tests: then
    /// only the counters and the set of seen idempotency keys are kept (16 bytes a key).
    pub record: bool,
    /// After accepting a Twilio message that names a `StatusCallback`, POST it `sent` then
    /// `delivered`, signed with `X-Twilio-Signature` as Twilio does.
    pub twilio_status_callbacks: bool,
    /// Share of those messages (0 to 1) whose last callback is `undelivered` instead of
    /// `delivered`: half with ErrorCode 30005 (unknown handset, a hard bounce), half with
    /// 30003 (handset unreachable, a soft bounce).
    pub twilio_undelivered_rate: f64,
    /// How old an `X-Tocsin-Timestamp` the webhook stand-in still accepts (replay window).
    pub webhook_tolerance_s: u64,
    /// Where the SMTP sink listens (plain SMTP, no TLS: for loopback load tests); none by
    /// default. `127.0.0.1:0` picks a free port, which `spawn` reports.
    pub smtp_listen: Option<SocketAddr>,
    /// Acknowledge each message's data at once instead of after the kernel's delayed-ACK
    /// timer. Off by default, like a real relay: a client that writes a message in two
    /// writes without `TCP_NODELAY` then waits 40 ms per message, as it would in production.
    pub smtp_quick_ack: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials: Credentials::default(),
            faults: Faults::default(),
            provider_faults: BTreeMap::new(),
            record: true,
            twilio_status_callbacks: false,
            twilio_undelivered_rate: 0.0,
            webhook_tolerance_s: 300,
            smtp_listen: None,
            smtp_quick_ack: false,
        }
    }
}

impl Config {
    /// The faults `provider` starts with.
    pub fn faults_for(&self, provider: Provider) -> &Faults {
        self.provider_faults.get(&provider).unwrap_or(&self.faults)
    }

    pub fn validate(&self) -> Result<(), FaultsError> {
        self.faults.validate()?;
        self.provider_faults.values().try_for_each(Faults::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().ok(), Some(p));
            assert_eq!(
                serde_json::to_string(&p).ok(),
                Some(format!("\"{}\"", p.as_str()))
            );
        }
        assert!("mailgun".parse::<Provider>().is_err());
    }

    #[test]
    fn faults_are_validated() {
        assert_eq!(Faults::default().validate(), Ok(()));
        let too_many = Faults {
            error_rate: 0.6,
            throttle_rate: 0.6,
            ..Faults::default()
        };
        assert!(matches!(too_many.validate(), Err(FaultsError::RatesSum(_))));
        let negative = Faults {
            timeout_rate: -0.1,
            ..Faults::default()
        };
        assert!(matches!(negative.validate(), Err(FaultsError::Rate { .. })));
        let zero_limit = Faults {
            rate_limit: Some(0.0),
            ..Faults::default()
        };
        assert_eq!(zero_limit.validate(), Err(FaultsError::RateLimit));
    }

    #[test]
    fn an_empty_faults_document_means_behave() {
        let parsed: Faults = serde_json::from_str("{}").expect("valid");
        assert_eq!(parsed, Faults::default());
        assert!(serde_json::from_str::<Faults>(r#"{"error_rat": 0.2}"#).is_err());
    }
}
