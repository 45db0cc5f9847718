//! E-mail over SMTP with lettre: pooled connections on tokio, STARTTLS or implicit TLS,
//! authentication, and DKIM signing (RSA or Ed25519) whose signed headers include From,
//! To, Subject, Date, Message-ID, List-Unsubscribe and List-Unsubscribe-Post (RFC 8058 asks
//! for both unsubscribe headers to be signed, or clients will not offer one-click).
//!
//! Answers, by SMTP reply code (RFC 5321 §4.2):
//! - 2xx: accepted; the provider message id is the server's queue id when it gives one
//!   (`250 2.0.0 Ok: queued as 4C1F2...`), else the reply text;
//! - 530, 534, 535 (authentication required, too weak, refused): transient, as for the
//!   HTTP providers' 401: the credentials are the operator's problem, not the message's;
//! - 550, 551, 553 (mailbox unavailable, user not local, mailbox name not allowed) on a
//!   recipient: a hard bounce;
//! - other 5xx: rejected;
//! - 4xx: transient; 421 and 4xx replies that speak of rate or too many messages also say
//!   "slow down";
//! - connection, TLS and timeout errors: transient.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{Accepted, Outgoing, Permanent, Provider, SendError};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext: only for a relay on the same host.
    None,
    /// STARTTLS, required (port 587 or 25).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    Rsa,
    Ed25519,
}

/// `[sender.providers.NAME.api]` with `kind = "smtp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    #[serde(default)]
    pub username: Option<String>,
    /// From the environment (`TOCSIN__SENDER__PROVIDERS__NAME__API__PASSWORD`).
    #[serde(default)]
    pub password: Option<SecretString>,
    /// A PEM certificate to trust besides the public roots (a private relay's own).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connections kept open to the server.
    pub pool_size: u32,
    pub timeout_ms: u64,
    #[serde(default)]
    pub dkim: Option<DkimSettings>,
}

/// `[sender.providers.NAME.api.dkim]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSettings {
    pub selector: String,
    pub domain: String,
    pub algorithm: DkimAlgorithm,
    /// RSA: PKCS#1 PEM; Ed25519: the base64 32-byte secret. From the environment
    /// (`TOCSIN__SENDER__PROVIDERS__NAME__API__DKIM__PRIVATE_KEY`).
    pub private_key: SecretString,
}

/// Headers the DKIM signature covers.
pub const SIGNED_HEADERS: [&str; 7] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    #[error("reading {path}: {error}")]
    CaFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("SMTP transport: {0}")]
    Transport(#[from] lettre::transport::smtp::Error),
    #[error("DKIM key: {0}")]
    DkimKey(String),
    #[error("a username needs a password (and the reverse)")]
    Credentials,
}

pub struct SmtpProvider {
    name: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    dkim: Option<DkimConfig>,
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("name", &self.name)
            .field("dkim", &self.dkim.is_some())
            .finish_non_exhaustive()
    }
}

impl SmtpProvider {
    pub fn new(name: &str, config: &SmtpConfig) -> Result<Self, SmtpSetupError> {
        let mut tls = TlsParameters::builder(config.host.clone());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|error| SmtpSetupError::CaFile {
                path: path.clone(),
                error,
            })?;
            tls = tls.add_root_certificate(Certificate::from_pem(&pem)?);
        }
        let tls = match config.tls {
            TlsMode::None => Tls::None,
            TlsMode::Starttls => Tls::Required(tls.build_rustls()?),
            TlsMode::Tls => Tls::Wrapper(tls.build_rustls()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(Duration::from_millis(config.timeout_ms)))
            .pool_config(PoolConfig::new().max_size(config.pool_size.max(1)));
        match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(
                    user.clone(),
                    password.expose_secret().to_owned(),
                ));
            }
            (None, None) => {}
            _ => return Err(SmtpSetupError::Credentials),
        }
        let dkim = config.dkim.as_ref().map(dkim_config).transpose()?;
        Ok(SmtpProvider {
            name: name.to_owned(),
            transport: builder.build(),
            dkim,
        })
    }
}

fn dkim_config(settings: &DkimSettings) -> Result<DkimConfig, SmtpSetupError> {
    let algorithm = match settings.algorithm {
        DkimAlgorithm::Rsa => DkimSigningAlgorithm::Rsa,
        DkimAlgorithm::Ed25519 => DkimSigningAlgorithm::Ed25519,
    };
    let key = DkimSigningKey::new(settings.private_key.expose_secret().trim(), algorithm)
        .map_err(|e| SmtpSetupError::DkimKey(e.to_string()))?;
    let headers = SIGNED_HEADERS
        .iter()
        .map(|h| HeaderName::new_from_ascii_str(h))
        .collect();
    Ok(DkimConfig::new(
        settings.selector.clone(),
        settings.domain.clone(),
        key,
        headers,
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

/// The lettre message for a rendered e-mail: what the renderer decided, unchanged.
pub fn build_message(email: &tocsin_contracts::v1::RenderedEmail) -> Result<Message, SendError> {
    let rejected = |what: &str, e: &dyn std::fmt::Display| {
        SendError::permanent(Permanent::Rejected, format!("{what}: {e}"))
    };
    let from: Mailbox = email.from.parse().map_err(|e| rejected("From", &e))?;
    let to: Mailbox = email
        .to
        .parse()
        .map_err(|e| SendError::permanent(Permanent::HardBounce, format!("To: {e}")))?;
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.clone()))
        .date_now();
    if !email.reply_to.is_empty() {
        let reply_to: Mailbox = email
            .reply_to
            .parse()
            .map_err(|e| rejected("Reply-To", &e))?;
        builder = builder.reply_to(reply_to);
    }
    for header in &email.headers {
        let name = HeaderName::new_from_ascii(header.name.clone())
            .map_err(|e| rejected("header name", &e))?;
        builder = builder.raw_header(HeaderValue::new(name, header.value.clone()));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| rejected("message", &e))
}

fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    let text = error.to_string();
    let Some(code) = error.status() else {
        return SendError::transient(format!("SMTP: {text}"));
    };
    let code = u16::from(code);
    if matches!(code, 530 | 534 | 535) {
        // Authentication required / too weak / refused: the operator's credentials, not
        // the message. Transient, so that the circuit opens and says so, and the messages
        // wait for a fix instead of all failing.
        return SendError::transient(format!(
            "SMTP credentials refused ({text}): check the provider's username and password"
        ));
    }
    if error.is_permanent() {
        let kind = match code {
            550 | 551 | 553 => Permanent::HardBounce,
            _ => Permanent::Rejected,
        };
        return SendError::permanent(kind, format!("SMTP {text}"));
    }
    let lower = text.to_ascii_lowercase();
    let slow_down = code == 421
        || ["rate", "too many", "throttl", "try again later"]
            .iter()
            .any(|w| lower.contains(w));
    SendError::Transient {
        reason: format!("SMTP {text}"),
        retry_after: None,
        slow_down,
    }
}

/// The queue id in `250 2.0.0 Ok: queued as 4C1F2...`, else the reply's text.
fn queue_id(response: &lettre::transport::smtp::response::Response) -> String {
    let text: Vec<&str> = response.message().collect();
    let text = text.join(" ");
    match text.to_ascii_lowercase().find("queued as ") {
        Some(at) => text[at + "queued as ".len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => text.trim().to_owned(),
    }
}

impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let Outgoing::Email(email) = message else {
                return Err(SendError::permanent(
                    Permanent::Rejected,
                    format!("{} sends e-mail only", self.name),
                ));
            };
            let mut built = build_message(email)?;
            if let Some(dkim) = &self.dkim {
                built.sign(dkim);
            }
            match self.transport.send(built).await {
                Ok(response) => Ok(Accepted {
                    provider_message_id: queue_id(&response),
                }),
                Err(error) => Err(classify(&error)),
            }
        })
    }
}
