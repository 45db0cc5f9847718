//! Provider webhooks: each request is authenticated before its body is even parsed, then
//! its events become `Feedback`, all acknowledged by the broker before the provider gets
//! its 2xx (a provider that retries then retries only what is not recorded; event ids make
//! the retry harmless).
//!
//! - [`twilio`]: `X-Twilio-Signature` (HMAC-SHA1 of the public URL and the sorted form).
//! - [`sendgrid`]: the signed event webhook (ECDSA P-256 over timestamp and raw body).
//! - [`brevo`]: Brevo signs nothing: a configured bearer token or Basic credentials.
//!
//! Verdicts, counted per provider in `tocsin_tracker_webhooks_total`: `accepted`,
//! `bad_signature` (forged, unsigned, or the provider's secret is not configured),
//! `stale` (a signed timestamp outside the tolerance), `invalid` (authentic but
//! unreadable), `error` (the broker did not acknowledge).

pub mod brevo;
pub mod sendgrid;
pub mod twilio;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tocsin_contracts::v1;

use crate::AppState;
use crate::engagement::{now_ms, sent_times};
use crate::feedback::{PublishError, kind_label};
use crate::machine::Sighting;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no credentials are configured for this provider")]
    NotConfigured,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("the signature or credentials do not verify")]
    BadSignature,
    #[error("the signed timestamp is {0} s away from now")]
    Stale(i64),
    #[error("invalid payload: {0}")]
    Invalid(String),
    #[error("publishing feedback: {0}")]
    Publish(#[from] PublishError),
}

impl WebhookError {
    pub fn verdict(&self) -> &'static str {
        match self {
            WebhookError::NotConfigured | WebhookError::Missing(_) | WebhookError::BadSignature => {
                "bad_signature"
            }
            WebhookError::Stale(_) => "stale",
            WebhookError::Invalid(_) => "invalid",
            WebhookError::Publish(_) => "error",
        }
    }
}

/// How a provider wants to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    TwilioStatus,
    TwilioInbound,
    SendGrid,
    Brevo,
}

impl Provider {
    pub fn label(self) -> &'static str {
        match self {
            Provider::TwilioStatus => "twilio_status",
            Provider::TwilioInbound => "twilio_inbound",
            Provider::SendGrid => "sendgrid",
            Provider::Brevo => "brevo",
        }
    }

    /// `Feedback.provider`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::TwilioStatus | Provider::TwilioInbound => "twilio",
            Provider::SendGrid => "sendgrid",
            Provider::Brevo => "brevo",
        }
    }

    fn status(self, error: &WebhookError) -> StatusCode {
        match (self, error) {
            (Provider::Brevo, WebhookError::NotConfigured | WebhookError::Missing(_))
            | (Provider::Brevo, WebhookError::BadSignature) => StatusCode::UNAUTHORIZED,
            (_, WebhookError::Invalid(_)) => StatusCode::BAD_REQUEST,
            // Brevo retries only timeouts and 429; any other 4xx or 5xx discards the event.
            (Provider::Brevo, WebhookError::Publish(_)) => StatusCode::TOO_MANY_REQUESTS,
            (_, WebhookError::Publish(_)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// Counts the verdict and turns an error into the provider's status code.
pub fn answer(
    state: &AppState,
    provider: Provider,
    result: Result<Response, WebhookError>,
) -> Response {
    match result {
        Ok(response) => {
            state
                .metrics
                .webhooks
                .with_label_values(&[provider.label(), "accepted"])
                .inc();
            response
        }
        Err(error) => {
            state
                .metrics
                .webhooks
                .with_label_values(&[provider.label(), error.verdict()])
                .inc();
            let status = provider.status(&error);
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                tracing::error!(provider = provider.label(), %error, "tracker: webhook not recorded");
            } else {
                tracing::warn!(provider = provider.label(), %error, "tracker: webhook refused");
            }
            let mut response = (status, format!("{error}\n")).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tocsin-tracker\""),
                );
            }
            if matches!(error, WebhookError::Publish(_)) {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            response
        }
    }
}

/// Counts the events of one request by the kind they became (`ignored` for `None`).
pub fn count_events<'a>(
    state: &AppState,
    provider: Provider,
    kinds: impl IntoIterator<Item = Option<&'a v1::Feedback>>,
) {
    for event in kinds {
        let kind = event
            .map(|e| kind_label(e.kind()))
            .unwrap_or_else(|| "ignored".to_owned());
        state
            .metrics
            .webhook_events
            .with_label_values(&[provider.label(), &kind])
            .inc();
    }
}

/// Constant-time equality of two byte strings (their lengths are not secret).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// What a provider's open or click event says for the machine rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Said<'a> {
    /// The user agent the provider saw, if it reports one.
    pub user_agent: Option<&'a str>,
    /// SendGrid's `sg_machine_open`, Brevo's `proxy_open`.
    pub machine: bool,
}

/// Applies the machine rules ([`crate::machine`]) to the opens and clicks of a batch: the
/// provider's word, the user agent and the send time from the sender's ledger (one MGET
/// for the batch), the event's time being the provider's timestamp.
pub async fn flag_machines(state: &AppState, events: Vec<(&mut v1::Feedback, Said<'_>)>) {
    let engaged: Vec<(&mut v1::Feedback, Said<'_>)> = events
        .into_iter()
        .filter(|(f, _)| {
            matches!(
                f.kind(),
                v1::FeedbackKind::Opened | v1::FeedbackKind::Clicked
            )
        })
        .collect();
    let keys: Vec<String> = engaged
        .iter()
        .map(|(f, _)| f.idempotency_key.clone())
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sent = sent_times(state, &keys).await;
    for ((feedback, said), sent_ms) in engaged.into_iter().zip(sent) {
        let at_ms = feedback
            .provider_timestamp
            .as_ref()
            .map_or_else(now_ms, |t| t.seconds.saturating_mul(1000));
        let verdict = state.detector.judge(&Sighting {
            head: false,
            user_agent: said.user_agent,
            at_ms,
            sent_ms,
            provider_says_machine: said.machine,
        });
        feedback.machine = verdict.is_some();
        if let Some(rule) = verdict {
            state
                .metrics
                .machine_flags
                .with_label_values(&[rule.label()])
                .inc();
        }
    }
}
