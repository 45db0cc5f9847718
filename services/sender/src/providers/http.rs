//! What the HTTP providers (SendGrid, Brevo, Twilio, the webhook) share: building the
//! client, reading answers, and turning a failed answer into a [`SendError`].
//!
//! The mapping every HTTP provider starts from (each may refine it with its own error
//! codes before falling back here):
//!
//! | answer | error |
//! |---|---|
//! | connection refused, reset, timeout | transient |
//! | 5xx, 408 | transient (with `Retry-After` when given) |
//! | 429 | transient, `slow_down`, `retry_after` from `Retry-After` (seconds or HTTP date), else the provider's own reset header |
//! | 401, 403 | transient: the credentials are the operator's problem, not the message's |
//! | other 4xx | permanent, rejected, with the provider's own error message |
//! | 1xx, 3xx | transient: a misconfigured `base_url` (redirects are not followed) |
//!
//! A timeout is transient although the provider may have taken the message: the sender's
//! ledger records the attempt, so what is sent twice is bounded by that window, and the
//! idempotency key goes to every provider that accepts one.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{Permanent, SendError};

/// Sent with every request, so providers' logs name us.
pub const USER_AGENT: &str = concat!("tocsin-sender/", env!("CARGO_PKG_VERSION"));

/// The most of an answer's body that is read: error messages are short, and a provider
/// that streams megabytes back must not hold a sender task.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The most of a provider's error text that goes into a reason.
const MAX_DETAIL_CHARS: usize = 300;

/// A provider's configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("provider {provider}: {field}: {reason}")]
    Invalid {
        provider: String,
        field: &'static str,
        reason: String,
    },
    #[error("provider {provider}: cannot build its HTTP client: {source}")]
    Client {
        provider: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ConfigError {
    pub fn invalid(provider: &str, field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            provider: provider.to_owned(),
            field,
            reason: reason.into(),
        }
    }
}

/// The HTTP client of one provider: a whole-request timeout (connecting included), no
/// redirects (a provider API does not redirect a POST; following one could resend it
/// elsewhere), pooled keep-alive connections.
pub fn client(provider: &str, timeout_ms: u64) -> Result<reqwest::Client, ConfigError> {
    if timeout_ms == 0 {
        return Err(ConfigError::invalid(
            provider,
            "timeout_ms",
            "must be more than 0",
        ));
    }
    let timeout = Duration::from_millis(timeout_ms);
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .map_err(|source| ConfigError::Client {
            provider: provider.to_owned(),
            source,
        })
}

/// Checks a configured base URL (`http` or `https`, no query) and drops its trailing `/`,
/// so endpoints are `format!("{base}/v3/...")`.
pub fn base_url(provider: &str, field: &'static str, raw: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ConfigError::invalid(provider, field, format!("{raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(
            provider,
            field,
            format!("{raw:?}: must be http or https"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(
            provider,
            field,
            format!("{raw:?}: must not have a query or fragment"),
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// Where a provider says when its rate limit resets, besides `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetHeader {
    /// Only `Retry-After`.
    None,
    /// A header holding the seconds until the reset (Brevo's `x-sib-ratelimit-reset`).
    Seconds(&'static str),
    /// A header holding the Unix time of the reset (SendGrid's `X-RateLimit-Reset`).
    UnixTime(&'static str),
}

/// An answer, read.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// Reads at most [`MAX_BODY_BYTES`] of the body. A body that breaks off is kept as far
    /// as it came: the status is what matters, and a 2xx whose body is lost was still
    /// accepted (sending it again would send it twice).
    pub async fn read(provider: &str, mut response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_BODY_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(
                        provider,
                        status = status.as_u16(),
                        error = %err.without_url(),
                        "answer body broke off"
                    );
                    break;
                }
            }
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as short text, for a reason when the provider's error format is unknown.
    pub fn text(&self) -> String {
        shorten(&String::from_utf8_lossy(&self.body))
    }
}

/// Collapses whitespace and cuts to [`MAX_DETAIL_CHARS`].
pub fn shorten(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= MAX_DETAIL_CHARS {
        collapsed
    } else {
        let cut: String = collapsed.chars().take(MAX_DETAIL_CHARS).collect();
        format!("{cut}…")
    }
}

/// Replaces the recipient's address or number in a provider's message (Twilio's name the
/// number: "Invalid 'To' Phone Number: +336...") so that reasons, which travel on as
/// feedback and into logs, carry no personal data.
pub fn redact(text: &str, recipient: &str) -> String {
    let mut out = text.to_owned();
    let bare = recipient.trim_start_matches('+');
    for needle in [recipient, bare] {
        if needle.len() >= 4 {
            out = out.replace(needle, "<recipient>");
        }
    }
    out
}

/// How long the provider asked to wait: `Retry-After` (delay-seconds or HTTP-date, RFC
/// 9110 §10.2.3), else the provider's own reset header.
pub fn retry_after(headers: &HeaderMap, reset: ResetHeader, now: SystemTime) -> Option<Duration> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(raw) = value(RETRY_AFTER.as_str()) {
        if let Ok(seconds) = raw.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(at) = httpdate::parse_http_date(raw) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    match reset {
        ResetHeader::None => None,
        ResetHeader::Seconds(name) => value(name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64),
        ResetHeader::UnixTime(name) => {
            let at = value(name)?.parse::<u64>().ok()?;
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        }
    }
}

/// Turns answers and transport failures of one provider into [`SendError`]s.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The provider's name in configuration (`sendgrid-main`), which reasons start with.
    pub name: String,
    /// The vendor (`SendGrid`), for the reader of a reason.
    pub vendor: &'static str,
    pub reset: ResetHeader,
}

impl Classifier {
    pub fn new(name: &str, vendor: &'static str, reset: ResetHeader) -> Self {
        Classifier {
            name: name.to_owned(),
            vendor,
            reset,
        }
    }

    /// A request that got no answer.
    pub fn transport(&self, err: &reqwest::Error) -> SendError {
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        // The URL stays out of the reason: the path holds account ids.
        let detail = shorten(&strip_url(err));
        SendError::transient(format!("request to {} {what}: {detail}", self.name))
    }

    /// The "slow down" answer (HTTP 429 or a provider's own rate code).
    pub fn slow_down(&self, answer: &Answer, detail: &str) -> SendError {
        SendError::Transient {
            reason: format!(
                "{} asks to slow down (HTTP {}): {detail}",
                self.name,
                answer.status.as_u16()
            ),
            retry_after: retry_after(&answer.headers, self.reset, SystemTime::now()),
            slow_down: true,
        }
    }

    /// The default mapping of a non-2xx answer (see the module's table); `detail` is the
    /// provider's own error message.
    pub fn status(&self, answer: &Answer, detail: &str) -> SendError {
        let status = answer.status;
        let code = status.as_u16();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return self.slow_down(answer, detail);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return SendError::transient(format!(
                "authentication refused by {}: check its credentials ({} answered HTTP {code}: {detail})",
                self.name, self.vendor
            ));
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return SendError::Transient {
                reason: format!("{} failed (HTTP {code}): {detail}", self.name),
                retry_after: retry_after(&answer.headers, ResetHeader::None, SystemTime::now()),
                slow_down: false,
            };
        }
        if status.is_client_error() {
            return SendError::permanent(
                Permanent::Rejected,
                format!("{} refused the message (HTTP {code}): {detail}", self.name),
            );
        }
        SendError::transient(format!(
            "{} gave an unexpected HTTP {code} (is its base_url right?): {detail}",
            self.name
        ))
    }
}

/// A reqwest error's text without the URL it names.
fn strip_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(&format!(" for url ({url})"), "");
        text = text.replace(url.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An address of an e-mail header, split: `Name <addr>`, `"Name, Jr." <addr>` or `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub email: String,
}

/// A rendered e-mail's `From` and optional `Reply-To`, parsed; an unparsable one is a
/// permanent refusal naming `provider`.
pub fn sender_mailboxes(
    provider: &str,
    email: &tocsin_contracts::v1::RenderedEmail,
) -> Result<(Mailbox, Option<Mailbox>), SendError> {
    let from = mailbox(&email.from).ok_or_else(|| {
        SendError::permanent(
            Permanent::Rejected,
            format!("{provider}: the From address {:?} is not valid", email.from),
        )
    })?;
    let reply_to = if email.reply_to.trim().is_empty() {
        None
    } else {
        Some(mailbox(&email.reply_to).ok_or_else(|| {
            SendError::permanent(
                Permanent::Rejected,
                format!("{provider}: the Reply-To address is not valid"),
            )
        })?)
    };
    Ok((from, reply_to))
}

/// Parses the `From` / `Reply-To` forms the renderer produces. `None` when there is no
/// plausible address in it.
pub fn mailbox(raw: &str) -> Option<Mailbox> {
    let raw = raw.trim();
    let (name, email) = match (raw.rfind('<'), raw.ends_with('>')) {
        (Some(open), true) => {
            let email = raw[open + 1..raw.len() - 1].trim();
            let name = raw[..open].trim();
            let name = name
                .strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .map(|n| n.replace("\\\"", "\"").replace("\\\\", "\\"))
                .unwrap_or_else(|| name.to_owned());
            (Some(name).filter(|n| !n.is_empty()), email)
        }
        _ => (None, raw),
    };
    let (local, domain) = email.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || email.chars().any(char::is_whitespace) {
        return None;
    }
    Some(Mailbox {
        name,
        email: email.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn answer(status: u16, headers: &[(&'static str, &str)]) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        Answer {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: Vec::new(),
        }
    }

    fn classifier() -> Classifier {
        Classifier::new("p1", "Vendor", ResetHeader::Seconds("x-reset"))
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_reset_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = answer(429, &[("retry-after", "7")]).headers;
        assert_eq!(
            retry_after(&h, ResetHeader::None, now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let h = answer(429, &[("retry-after", &date)]).headers;
        assert_eq!(
            retry_after(&h, ResetHeader::None, now),
            Some(Duration::from_secs(90))
        );
        let h = answer(429, &[("x-sib-ratelimit-reset", "12")]).headers;
        assert_eq!(
            retry_after(&h, ResetHeader::Seconds("x-sib-ratelimit-reset"), now),
            Some(Duration::from_secs(12))
        );
        let h = answer(429, &[("x-ratelimit-reset", "1700000030")]).headers;
        assert_eq!(
            retry_after(&h, ResetHeader::UnixTime("x-ratelimit-reset"), now),
            Some(Duration::from_secs(30))
        );
        // A reset in the past means "now", not never.
        let h = answer(429, &[("x-ratelimit-reset", "1600000000")]).headers;
        assert_eq!(
            retry_after(&h, ResetHeader::UnixTime("x-ratelimit-reset"), now),
            Some(Duration::ZERO)
        );
        // Retry-After wins over the provider's header; garbage is no hint.
        let h = answer(429, &[("retry-after", "3"), ("x-reset", "50")]).headers;
        assert_eq!(
            retry_after(&h, ResetHeader::Seconds("x-reset"), now),
            Some(Duration::from_secs(3))
        );
        let h = answer(429, &[("retry-after", "soon")]).headers;
        assert_eq!(retry_after(&h, ResetHeader::None, now), None);
    }

    #[test]
    fn statuses_map_to_the_documented_errors() {
        let c = classifier();
        assert!(matches!(
            c.status(&answer(429, &[("x-reset", "2")]), "slow"),
            SendError::Transient { slow_down: true, retry_after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        for code in [401, 403] {
            let err = c.status(&answer(code, &[]), "bad key");
            assert!(
                matches!(
                    &err,
                    SendError::Transient {
                        slow_down: false,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with("authentication refused by p1: check its credentials"),
                "{err}"
            );
        }
        for code in [500, 502, 503, 504, 408] {
            assert!(matches!(
                c.status(&answer(code, &[]), "x"),
                SendError::Transient {
                    slow_down: false,
                    ..
                }
            ));
        }
        let err = c.status(&answer(400, &[]), "subject is missing");
        assert_eq!(
            err,
            SendError::permanent(
                Permanent::Rejected,
                "p1 refused the message (HTTP 400): subject is missing"
            )
        );
        assert!(matches!(
            c.status(&answer(302, &[]), ""),
            SendError::Transient { .. }
        ));
    }

    #[test]
    fn mailboxes_in_every_form() {
        assert_eq!(
            mailbox("Parti Exemple <news@example.org>"),
            Some(Mailbox {
                name: Some("Parti Exemple".into()),
                email: "news@example.org".into()
            })
        );
        assert_eq!(
            mailbox("\"Dupont, Jean \\\"JD\\\"\" <jd@example.org>"),
            Some(Mailbox {
                name: Some("Dupont, Jean \"JD\"".into()),
                email: "jd@example.org".into()
            })
        );
        assert_eq!(
            mailbox(" news@example.org "),
            Some(Mailbox {
                name: None,
                email: "news@example.org".into()
            })
        );
        assert_eq!(mailbox("<news@example.org>").map(|m| m.name), Some(None));
        assert_eq!(mailbox("Parti Exemple"), None);
        assert_eq!(mailbox(""), None);
    }

    #[test]
    fn details_are_short_and_carry_no_recipient() {
        assert_eq!(
            redact("Invalid 'To' Phone Number: +33612345678", "+33612345678"),
            "Invalid 'To' Phone Number: <recipient>"
        );
        assert_eq!(
            redact("recipient 33612345678 is invalid", "+33612345678"),
            "recipient <recipient> is invalid"
        );
        let long = "word ".repeat(200);
        assert!(shorten(&long).chars().count() <= MAX_DETAIL_CHARS + 1);
        assert_eq!(shorten(" a \n\t b "), "a b");
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            base_url("p", "base_url", "https://api.sendgrid.com/").ok(),
            Some("https://api.sendgrid.com".to_owned())
        );
        assert!(base_url("p", "base_url", "ftp://x").is_err());
        assert!(base_url("p", "base_url", "not a url").is_err());
        assert!(base_url("p", "base_url", "https://x/?a=1").is_err());
        assert!(client("p", 0).is_err());
    }
}
