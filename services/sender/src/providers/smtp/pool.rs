//! The SMTP connections of one provider: sockets opened here with `TCP_NODELAY`, each
//! carrying one lettre [`AsyncSmtpConnection`], kept open between messages.
//!
//! Why not lettre's `AsyncSmtpTransport`: lettre 0.11.23 writes a message's body and its
//! final `.` in two small writes and leaves Nagle's algorithm on, so the `.` waits until the
//! server has acknowledged the body, an ACK Linux servers delay by about 40 ms. Each message
//! then cost about 40 ms per connection (some 25 messages/s), however fast the server.
//! (lettre's PR #1159, "set TCP_NODELAY", fixes it upstream; no release has it yet.) Its
//! pool also sent a NOOP before every reuse: one more round trip per message.
//!
//! lettre still speaks SMTP: the greeting, EHLO, STARTTLS, AUTH and MAIL/RCPT/DATA are its
//! code. This module opens the sockets and decides which connection carries which message:
//!
//! - at most `size` connections exist at once: a send holds a semaphore permit from taking
//!   a connection until it gives it back, and opens one only when none is idle;
//! - a send takes the most recently used idle connection, else opens one;
//! - after the send the connection goes back to the idle list unless lettre marked it
//!   broken (it does after any error, having said QUIT) or the timeout cut the exchange
//!   short (where the server stands is then unknown);
//! - an idle connection older than `max_idle` is closed (QUIT) instead of reused: servers
//!   drop idle clients sooner or later, and a connection closed by us costs nothing;
//! - a reused connection found dead (the server closed it while it sat idle) is replaced
//!   by a new one, once, and only when the failure proves the server cannot have taken the
//!   message: see [`lost_before_message`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// How long an idle connection may wait for its next message before it is closed instead.
pub(super) const MAX_IDLE: Duration = Duration::from_secs(60);

/// How a connection is secured, ready to use.
pub(super) enum Security {
    /// Plaintext.
    None,
    /// STARTTLS, required: a server that does not offer it is refused before AUTH or any
    /// message (lettre's `starttls` fails then, as its `Tls::Required` does).
    Starttls(TlsParameters),
    /// TLS from the first byte. lettre's `connect_with_transport` takes a stream already
    /// connected and has no hook for this, so the handshake is done here (tokio-rustls),
    /// and lettre talks SMTP through the TLS stream.
    Implicit {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    },
}

/// Where and how to open a connection.
pub(super) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// What EHLO says.
    pub hello_name: ClientId,
    pub credentials: Option<Credentials>,
    /// Bounds opening a connection (TCP, TLS, greeting, EHLO, STARTTLS, AUTH), and then
    /// each message's exchange (MAIL to the reply after the final `.`).
    pub timeout: Duration,
}

/// Why a message did not leave.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("connecting to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("TLS handshake with {address}: {source}")]
    TlsHandshake { address: String, source: io::Error },
    #[error("{what} took more than {} ms", .after.as_millis())]
    Timeout { what: &'static str, after: Duration },
    /// An SMTP reply, or lettre's own error (network, STARTTLS not offered...).
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// Cannot happen: the pool never closes its semaphore.
    #[error("the connection pool is closed")]
    Closed,
}

/// One open SMTP session.
struct Connection {
    smtp: AsyncSmtpConnection,
    /// What the socket took so far: see [`Wire`].
    written: Arc<AtomicU64>,
    /// When it last went idle.
    idle_since: Instant,
}

/// The connections to one server.
pub(super) struct Pool {
    endpoint: Endpoint,
    permits: Semaphore,
    /// Idle connections, the longest idle first.
    idle: Mutex<Vec<Connection>>,
    max_idle: Duration,
}

impl Pool {
    /// At most `size` connections (at least one).
    pub(super) fn new(endpoint: Endpoint, size: u32) -> Self {
        let size = usize::try_from(size.max(1)).unwrap_or(1);
        Pool {
            endpoint,
            permits: Semaphore::new(size),
            idle: Mutex::new(Vec::with_capacity(size)),
            max_idle: MAX_IDLE,
        }
    }

    /// Idle connections older than `max_idle` are closed rather than reused.
    #[cfg(test)]
    pub(super) fn set_max_idle(&mut self, max_idle: Duration) {
        self.max_idle = max_idle;
    }

    /// Sends one formatted message: the server's reply to its final `.`, or why not.
    pub(super) async fn send(
        &self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Response, Failure> {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::Closed)?;
        if let Some(mut connection) = self.take_idle() {
            let before = connection.written.load(Ordering::Relaxed);
            let result = connection
                .send(envelope, message, self.endpoint.timeout)
                .await;
            let written = connection.written.load(Ordering::Relaxed) - before;
            match result {
                Err(failure) if lost_before_message(&failure, written, message.len()) => {
                    tracing::debug!(
                        server = %self.endpoint.address(),
                        error = %failure,
                        "idle SMTP connection gone: sending on a new one"
                    );
                    drop(connection);
                }
                result => {
                    self.give_back(connection, &result);
                    return result;
                }
            }
        }
        let mut connection = self.endpoint.open().await?;
        let result = connection
            .send(envelope, message, self.endpoint.timeout)
            .await;
        self.give_back(connection, &result);
        result
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection, if any; those idle too long are closed
    /// (in the background: the QUIT is no business of this message).
    fn take_idle(&self) -> Option<Connection> {
        let (expired, taken) = {
            let mut idle = self.lock_idle();
            let (expired, kept): (Vec<_>, Vec<_>) = idle
                .drain(..)
                .partition(|c| c.idle_since.elapsed() >= self.max_idle);
            *idle = kept;
            (expired, idle.pop())
        };
        if !expired.is_empty() {
            tracing::debug!(
                server = %self.endpoint.address(),
                count = expired.len(),
                "closing idle SMTP connections"
            );
            tokio::spawn(close_all(expired, self.endpoint.timeout));
        }
        taken
    }

    /// Back to the idle list if it can carry another message: not if lettre marked it
    /// broken (after any error but a refusal before the first command, having said QUIT),
    /// nor if the timeout cut an exchange short (the server may be anywhere in it).
    fn give_back(&self, mut connection: Connection, result: &Result<Response, Failure>) {
        let usable =
            !connection.smtp.has_broken() && !matches!(result, Err(Failure::Timeout { .. }));
        if usable {
            connection.idle_since = Instant::now();
            self.lock_idle().push(connection);
        }
    }
}

impl Drop for Pool {
    /// Says QUIT on the idle connections, in the background, if a runtime is still there.
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(PoisonError::into_inner));
        if idle.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close_all(idle, self.endpoint.timeout));
        }
    }
}

/// QUIT on each connection, then closes it; each within `timeout`.
async fn close_all(connections: Vec<Connection>, timeout: Duration) {
    futures::future::join_all(connections.into_iter().map(|mut c| async move {
        // `abort` says QUIT (unless broken) and closes the stream.
        let _ = tokio::time::timeout(timeout, c.smtp.abort()).await;
    }))
    .await;
}

/// Whether a send that failed on a reused connection may go again on a new one.
///
/// The failure must say the connection was gone (no SMTP reply at all: the socket failed
/// or ended; or 421, "closing the channel"), not that the server refused this message.
/// And fewer bytes must have gone out than the message has: its final `.` never did, so
/// the server cannot have taken it. (lettre waits for each reply before the next command,
/// and sends the message only after the 354 to DATA.) A connection that fails after the
/// whole message went out is not retried: the server may have taken the message before
/// vanishing, and sending it again could deliver it twice.
pub(super) fn lost_before_message(failure: &Failure, written: u64, message_len: usize) -> bool {
    let gone = match failure {
        Failure::Smtp(error) => match error.status() {
            Some(code) => u16::from(code) == 421,
            None => !error.is_client(),
        },
        _ => false,
    };
    gone && written < u64::try_from(message_len).unwrap_or(u64::MAX)
}

impl Connection {
    /// MAIL, RCPT, DATA, the message and its final `.`, within `timeout`.
    async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
        timeout: Duration,
    ) -> Result<Response, Failure> {
        match tokio::time::timeout(timeout, self.smtp.send(envelope, message)).await {
            Ok(result) => result.map_err(Failure::from),
            Err(_) => Err(Failure::Timeout {
                what: "sending a message",
                after: timeout,
            }),
        }
    }
}

impl Endpoint {
    pub(super) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A new connection, ready for messages (secured and logged in as configured).
    async fn open(&self) -> Result<Connection, Failure> {
        tokio::time::timeout(self.timeout, self.handshake())
            .await
            .map_err(|_| Failure::Timeout {
                what: "opening an SMTP connection",
                after: self.timeout,
            })?
    }

    /// A TCP connection to the server, Nagle's algorithm off: the point of this module.
    async fn connect_tcp(&self) -> Result<TcpStream, Failure> {
        let failed = |source| Failure::Connect {
            address: self.address(),
            source,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(failed)?;
        tcp.set_nodelay(true).map_err(failed)?;
        Ok(tcp)
    }

    async fn handshake(&self) -> Result<Connection, Failure> {
        let tcp = self.connect_tcp().await?;
        let stream = match &self.security {
            Security::None | Security::Starttls(_) => Stream::Tcp(tcp),
            Security::Implicit {
                connector,
                server_name,
            } => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|source| Failure::TlsHandshake {
                        address: self.address(),
                        source,
                    })?;
                Stream::Tls(Box::new(tls))
            }
        };
        let written = Arc::new(AtomicU64::new(0));
        let wire = Wire {
            stream,
            written: Arc::clone(&written),
        };
        // Reads the greeting, says EHLO.
        let mut smtp =
            AsyncSmtpConnection::connect_with_transport(Box::new(wire), &self.hello_name).await?;
        // On a failure below the connection is dropped (closed) without QUIT, as lettre's
        // transport does: after a failed TLS upgrade lettre's stream cannot be written to.
        if let Security::Starttls(parameters) = &self.security {
            // Fails if the server does not offer STARTTLS; says EHLO again once encrypted.
            smtp.starttls(parameters.clone(), &self.hello_name).await?;
        }
        if let Some(credentials) = &self.credentials {
            smtp.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(Connection {
            smtp,
            written,
            idle_since: Instant::now(),
        })
    }
}

/// The byte stream under one SMTP connection, counting the bytes it takes, so that a failed
/// send can tell whether the whole message went out (see [`lost_before_message`]). Under
/// STARTTLS lettre layers TLS over it, so the count includes TLS records: never less than
/// what lettre wrote, which is all the check needs.
#[derive(Debug)]
struct Wire {
    stream: Stream,
    written: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    /// Implicit TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncTokioStream for Wire {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.stream {
            Stream::Tcp(tcp) => tcp.peer_addr(),
            Stream::Tls(tls) => tls.get_ref().0.peer_addr(),
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.stream {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = polled {
            this.written
                .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port,
            security: Security::None,
            hello_name: ClientId::Domain("tocsin.test".into()),
            credentials: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn sockets_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let tcp = endpoint(port).connect_tcp().await.expect("connected");
        assert!(tcp.nodelay().expect("TCP_NODELAY readable"));
    }

    #[test]
    fn only_a_lost_connection_is_retried() {
        let refused = Failure::Connect {
            address: "x:25".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(!lost_before_message(&refused, 0, 1000));
        let timeout = Failure::Timeout {
            what: "sending a message",
            after: Duration::from_secs(1),
        };
        assert!(!lost_before_message(&timeout, 0, 1000));
        // SMTP failures are checked against a scripted server, in `smtp::tests`.
    }
}
