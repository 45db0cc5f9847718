//! E-mail over SMTP with lettre: pooled connections on tokio, STARTTLS or implicit TLS,
//! authentication, and DKIM signing (RSA or Ed25519) whose signed headers include From,
//! To, Subject, Date, Message-ID, List-Unsubscribe and List-Unsubscribe-Post (RFC 8058 asks
//! for both unsubscribe headers to be signed, or clients will not offer one-click).
//!
//! The connections are ours, not lettre's transport's: sockets with `TCP_NODELAY`, or each
//! message waits ~40 ms for a delayed ACK (see [`pool`]). lettre still speaks SMTP on them.
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

#[cfg(test)]
mod fake_server;
mod pool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use self::pool::{Endpoint, Failure, Pool, Security};
use super::dkim::DkimSigner;
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
    /// Connections open to the server at most (idle ones are closed after a minute).
    pub pool_size: u32,
    /// Bounds opening a connection (TCP, TLS, EHLO, STARTTLS, AUTH), and each message's
    /// exchange.
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
    /// RSA: PEM, PKCS#1 or PKCS#8, 2048 to 8192 bits; Ed25519: the base64 32-byte secret.
    /// From the environment
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
    #[error("TLS client for {host}: {reason}")]
    TlsClient { host: String, reason: String },
}

pub struct SmtpProvider {
    name: String,
    pool: Pool,
    dkim: Option<DkimSigner>,
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
        let mut ca_pem = None;
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|error| SmtpSetupError::CaFile {
                path: path.clone(),
                error,
            })?;
            tls = tls.add_root_certificate(Certificate::from_pem(&pem)?);
            ca_pem = Some(pem);
        }
        let security = match config.tls {
            TlsMode::None => Security::None,
            TlsMode::Starttls => Security::Starttls(tls.build_rustls()?),
            TlsMode::Tls => implicit_tls(&config.host, ca_pem.as_deref())?,
        };
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            )),
            (None, None) => None,
            _ => return Err(SmtpSetupError::Credentials),
        };
        let endpoint = Endpoint {
            host: config.host.clone(),
            port: config.port,
            security,
            // The machine's host name, as lettre's transport says.
            hello_name: ClientId::default(),
            credentials,
            timeout: Duration::from_millis(config.timeout_ms),
        };
        let dkim = config.dkim.as_ref().map(dkim_signer).transpose()?;
        Ok(SmtpProvider {
            name: name.to_owned(),
            pool: Pool::new(endpoint, config.pool_size),
            dkim,
        })
    }

    /// Idle connections older than `max_idle` are closed rather than reused.
    #[cfg(test)]
    fn with_max_idle(mut self, max_idle: Duration) -> Self {
        self.pool.set_max_idle(max_idle);
        self
    }
}

/// Implicit TLS, which lettre's `connect_with_transport` cannot do: our own rustls client,
/// trusting what lettre's `TlsParameters` trusts here: the public roots of `webpki-roots`
/// (lettre's default certificate store with the `webpki-roots` feature, the one enabled)
/// and the configured CA. The crypto provider is lettre's choice too: the process default
/// if one is installed, else ring.
fn implicit_tls(host: &str, ca_pem: Option<&[u8]>) -> Result<Security, SmtpSetupError> {
    use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let failed = |reason: &dyn std::fmt::Display| SmtpSetupError::TlsClient {
        host: host.to_owned(),
        reason: reason.to_string(),
    };
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in CertificateDer::pem_slice_iter(ca_pem.unwrap_or_default()) {
        let certificate = certificate.map_err(|e| failed(&e))?;
        roots.add(certificate).map_err(|e| failed(&e))?;
    }
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(ring::default_provider()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| failed(&e))?;
    Ok(Security::Implicit {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

fn dkim_signer(settings: &DkimSettings) -> Result<DkimSigner, SmtpSetupError> {
    let key = settings.private_key.expose_secret();
    match settings.algorithm {
        DkimAlgorithm::Rsa => DkimSigner::rsa(&settings.domain, &settings.selector, key),
        DkimAlgorithm::Ed25519 => DkimSigner::ed25519(&settings.domain, &settings.selector, key),
    }
    .map_err(|e| SmtpSetupError::DkimKey(e.to_string()))
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

fn classify_failure(failure: &Failure) -> SendError {
    match failure {
        Failure::Smtp(error) => classify(error),
        // Connection, TLS handshake and timeout.
        other => SendError::transient(format!("SMTP: {other}")),
    }
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
            let built = build_message(email)?;
            let mut formatted = built.formatted();
            if let Some(dkim) = &self.dkim {
                // A 2048-bit RSA signature takes about a millisecond with ring: short
                // enough to stay on the runtime's thread.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                formatted = dkim
                    .sign(&formatted, now)
                    .map_err(|e| SendError::transient(format!("DKIM: {e}")))?;
            }
            match self.pool.send(built.envelope(), &formatted).await {
                Ok(response) => Ok(Accepted {
                    provider_message_id: queue_id(&response),
                }),
                Err(failure) => Err(classify_failure(&failure)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tocsin_contracts::v1;

    use super::fake_server::{self, Script, Seen};
    use super::*;

    fn provider(port: u16, tls: TlsMode, pool_size: u32) -> SmtpProvider {
        let config = SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls,
            username: Some("tocsin".into()),
            password: Some(SecretString::from("secret")),
            ca_file: None,
            pool_size,
            timeout_ms: 5000,
            dkim: None,
        };
        SmtpProvider::new("fake", &config).expect("valid configuration")
    }

    fn email(i: usize) -> v1::RenderedEmail {
        v1::RenderedEmail {
            from: "Tocsin <campagnes@tocsin.localhost>".into(),
            to: format!("camille{i}@exemple.fr"),
            subject: "Bonjour".into(),
            text: "Bonjour Camille,\n".repeat(40),
            html: "<p>Bonjour Camille,</p>\n".repeat(40),
            message_id: format!("<m{i}@tocsin.localhost>"),
            ..Default::default()
        }
    }

    async fn send(provider: &SmtpProvider, i: usize) -> Result<Accepted, SendError> {
        provider.send(Outgoing::Email(&email(i))).await
    }

    fn count(counter: &AtomicUsize) -> usize {
        Seen::get(counter)
    }

    fn transient_reason(result: Result<Accepted, SendError>) -> String {
        match result {
            Err(SendError::Transient { reason, .. }) => reason,
            other => panic!("transient failure expected: {other:?}"),
        }
    }

    #[test]
    fn queue_ids_are_read_from_the_reply() {
        use lettre::transport::smtp::response::{Category, Code, Detail, Response, Severity};
        let ok = Code::new(
            Severity::PositiveCompletion,
            Category::MailSystem,
            Detail::Zero,
        );
        let queued = Response::new(ok, vec!["2.0.0 Ok: queued as 4C1F2A".into()]);
        assert_eq!(queue_id(&queued), "4C1F2A");
        let other = Response::new(ok, vec!["2.0.0 accepted".into()]);
        assert_eq!(queue_id(&other), "2.0.0 accepted");
    }

    #[tokio::test]
    async fn messages_in_turn_share_one_connection() {
        let server = fake_server::start(Script::default()).await;
        let provider = provider(server.port, TlsMode::None, 4);
        for i in 1..=5 {
            let accepted = send(&provider, i).await.expect("accepted");
            assert_eq!(accepted.provider_message_id, format!("Q{i}"));
        }
        assert_eq!(count(&server.seen.connections), 1);
        assert_eq!(count(&server.seen.auths), 1);
        assert_eq!(count(&server.seen.messages), 5);
    }

    #[tokio::test]
    async fn never_more_connections_than_the_pool_size() {
        let server = fake_server::start(Script {
            slow_data: Duration::from_millis(30),
            ..Script::default()
        })
        .await;
        let provider = provider(server.port, TlsMode::None, 3);
        let results = futures::future::join_all((0..12).map(|i| send(&provider, i))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(count(&server.seen.max_open), 3);
        assert_eq!(count(&server.seen.connections), 3);
        assert_eq!(count(&server.seen.messages), 12);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed_not_reused() {
        let server = fake_server::start(Script::default()).await;
        let provider =
            provider(server.port, TlsMode::None, 2).with_max_idle(Duration::from_millis(50));
        send(&provider, 1).await.expect("accepted");
        tokio::time::sleep(Duration::from_millis(120)).await;
        send(&provider, 2).await.expect("accepted");
        assert_eq!(count(&server.seen.connections), 2);
        // The old one says QUIT in the background.
        for _ in 0..100 {
            if count(&server.seen.quits) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(&server.seen.quits), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        let server = fake_server::start(Script {
            messages_per_connection: Some(1),
            ..Script::default()
        })
        .await;
        let provider = provider(server.port, TlsMode::None, 1);
        for i in 1..=3 {
            send(&provider, i)
                .await
                .expect("accepted on a new connection");
        }
        assert_eq!(count(&server.seen.connections), 3);
        assert_eq!(count(&server.seen.messages), 3);
    }

    #[tokio::test]
    async fn a_connection_lost_after_the_whole_message_is_not_retried() {
        let server = fake_server::start(Script {
            vanish_after_message: Some(2),
            ..Script::default()
        })
        .await;
        let provider = provider(server.port, TlsMode::None, 1);
        send(&provider, 1).await.expect("accepted");
        // The second goes on the reused connection; the server takes it and vanishes: it
        // may have been delivered, so it is not sent again.
        transient_reason(send(&provider, 2).await);
        assert_eq!(count(&server.seen.messages), 2);
        assert_eq!(count(&server.seen.connections), 1);
        send(&provider, 3)
            .await
            .expect("accepted on a new connection");
        assert_eq!(count(&server.seen.connections), 2);
    }

    #[tokio::test]
    async fn an_unknown_recipient_is_a_hard_bounce() {
        let server = fake_server::start(Script {
            rcpt: "550 5.1.1 <camille1@exemple.fr>: Recipient address rejected",
            ..Script::default()
        })
        .await;
        let provider = provider(server.port, TlsMode::None, 2);
        match send(&provider, 1).await {
            Err(SendError::Permanent { kind, reason }) => {
                assert_eq!(kind, Permanent::HardBounce);
                assert!(reason.contains("550"), "{reason}");
            }
            other => panic!("hard bounce expected: {other:?}"),
        }
    }

    #[tokio::test]
    async fn other_refusals_are_rejections() {
        let server = fake_server::start(Script {
            rcpt: "554 5.7.1 Relay access denied",
            ..Script::default()
        })
        .await;
        let provider = provider(server.port, TlsMode::None, 2);
        assert!(matches!(
            send(&provider, 1).await,
            Err(SendError::Permanent {
                kind: Permanent::Rejected,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_421_says_slow_down() {
        let server = fake_server::start(Script {
            rcpt: "421 4.7.0 Too many connections, try again later",
            ..Script::default()
        })
        .await;
        let provider = provider(server.port, TlsMode::None, 2);
        match send(&provider, 1).await {
            Err(SendError::Transient { slow_down, .. }) => assert!(slow_down),
            other => panic!("transient failure expected: {other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_credentials_are_transient_and_send_nothing() {
        let server = fake_server::start(Script {
            auth: "535 5.7.8 Authentication credentials invalid",
            ..Script::default()
        })
        .await;
        let provider = provider(server.port, TlsMode::None, 2);
        let reason = transient_reason(send(&provider, 1).await);
        assert!(reason.contains("SMTP credentials refused"), "{reason}");
        assert_eq!(count(&server.seen.mails), 0);
    }

    #[tokio::test]
    async fn starttls_required_refuses_a_server_without_it() {
        // The scripted server does not offer STARTTLS: no AUTH, no message.
        let server = fake_server::start(Script::default()).await;
        let provider = provider(server.port, TlsMode::Starttls, 2);
        let reason = transient_reason(send(&provider, 1).await);
        assert!(reason.contains("STARTTLS"), "{reason}");
        assert_eq!(count(&server.seen.auths), 0);
        assert_eq!(count(&server.seen.mails), 0);
    }

    #[tokio::test]
    async fn nobody_listening_is_transient() {
        let port = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            listener.local_addr().expect("address").port()
        };
        let provider = provider(port, TlsMode::None, 2);
        let reason = transient_reason(send(&provider, 1).await);
        assert!(reason.contains("connecting to 127.0.0.1"), "{reason}");
    }

    #[test]
    fn implicit_tls_refuses_a_bad_ca_file_at_startup() {
        let ca = std::env::temp_dir().join(format!("tocsin-smtp-ca-{}.pem", std::process::id()));
        // Not a certificate: refused when the provider is built, not at the first send.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let config = SmtpConfig {
            host: "localhost".into(),
            port: 465,
            tls: TlsMode::Tls,
            username: None,
            password: None,
            ca_file: Some(ca.clone()),
            pool_size: 1,
            timeout_ms: 1000,
            dkim: None,
        };
        let built = SmtpProvider::new("fake", &config);
        let _ = std::fs::remove_file(&ca);
        assert!(built.is_err());
        let without_ca = SmtpConfig {
            ca_file: None,
            ..config
        };
        assert!(SmtpProvider::new("fake", &without_ca).is_ok());
    }
}
