//! Providers: where a rendered message leaves Tocsin.
//!
//! Every provider answers a send with [`Accepted`] (and the provider's own message id) or a
//! [`SendError`] that says whether trying again can help. The sender's retries, failover,
//! circuit breakers and feedback are built on that answer alone, so adding a provider is
//! writing one `send`.

pub mod brevo;
pub mod dkim;
pub mod http;
pub mod sendgrid;
pub mod smtp;
pub mod twilio;
pub mod webhook;

use std::time::Duration;

use futures::future::BoxFuture;
use tocsin_contracts::v1;

/// A message for a provider.
#[derive(Debug, Clone, Copy)]
pub enum Outgoing<'a> {
    Email(&'a v1::RenderedEmail),
    Sms(&'a v1::RenderedSms),
}

impl<'a> Outgoing<'a> {
    pub fn origin(&self) -> Option<&'a v1::Origin> {
        match self {
            Outgoing::Email(e) => e.origin.as_ref(),
            Outgoing::Sms(s) => s.origin.as_ref(),
        }
    }

    /// The job's idempotency key: the same key is never sent twice.
    pub fn idempotency_key(&self) -> &'a str {
        self.origin()
            .map(|o| o.idempotency_key.as_str())
            .unwrap_or_default()
    }
}

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's id for it (Twilio's `SM...` sid, SendGrid's `X-Message-Id`, the SMTP
    /// server's queue id, ...); empty when the provider gives none.
    pub provider_message_id: String,
}

/// Why a permanent failure happened, for the feedback it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// The provider refused the message (bad request, content refused, account problem).
    Rejected,
    /// The recipient's address does not exist or cannot receive (SMTP 5xx on RCPT, an
    /// invalid number): a hard bounce.
    HardBounce,
    /// The recipient opted out at the provider (Twilio 21610, "replied STOP"): the planner
    /// must suppress them.
    OptedOut,
}

/// A failed send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Might work later or through another provider: timeouts, connection errors, HTTP 5xx
    /// and 429, SMTP 4xx.
    #[error("{reason}")]
    Transient {
        reason: String,
        /// The provider asked to wait this long (`Retry-After`).
        retry_after: Option<Duration>,
        /// The provider said "slow down" (HTTP 429, Twilio 20429, SMTP 421/451 rate
        /// answers): the sender lowers its rate for this provider.
        slow_down: bool,
    },
    /// Trying again cannot help.
    #[error("{reason}")]
    Permanent { reason: String, kind: Permanent },
}

impl SendError {
    pub fn transient(reason: impl Into<String>) -> Self {
        SendError::Transient {
            reason: reason.into(),
            retry_after: None,
            slow_down: false,
        }
    }

    pub fn permanent(kind: Permanent, reason: impl Into<String>) -> Self {
        SendError::Permanent {
            reason: reason.into(),
            kind,
        }
    }
}

/// One configured provider.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Its name in configuration, metrics and feedback.
    fn name(&self) -> &str;

    /// Sends one message. Implementations pass `message.idempotency_key()` to providers
    /// that accept one.
    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Accepted, SendError>>;
}
