//! Stand-ins for the providers Tocsin sends through: one HTTP server, on one port, that
//! speaks Twilio's, SendGrid's and Brevo's documented APIs on their real paths, and the
//! generic webhook's contract; and, when [`Config::smtp_listen`] is set, an SMTP sink on a
//! second port for load tests of the SMTP provider. For tests (in-process, [`spawn`]) and
//! for the local stack and load tests (the `tocsin-standins` binary).
//!
//! Each stand-in checks credentials the way its provider does (a wrong key gets the
//! provider's own 401 body), validates the request shape (a missing field gets the
//! provider's 400 format), answers with the provider's status codes, bodies and id shapes,
//! and counts what it accepted, including duplicates: an accepted message whose
//! idempotency key had already been accepted is a message sent twice.
//!
//! # Paths
//!
//! | provider | path |
//! |---|---|
//! | Twilio | `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` |
//! | SendGrid | `POST /v3/mail/send` |
//! | Brevo e-mail | `POST /v3/smtp/email` |
//! | Brevo SMS | `POST /v3/transactionalSMS/send` (current), `POST /v3/transactionalSMS/sms` (deprecated) |
//! | webhook | `POST /webhook` |
//!
//! and the control API under `/_standin` (see [`control`]), which also shows and resets
//! the SMTP sink's counters.
//!
//! # Default credentials
//!
//! Set in [`Credentials`]; unless configured otherwise the stand-ins accept:
//!
//! | provider | credential |
//! |---|---|
//! | Twilio | Account SID [`DEFAULT_TWILIO_ACCOUNT_SID`] (`AC0123456789abcdef0123456789abcdef`), auth token [`DEFAULT_TWILIO_AUTH_TOKEN`] (`standin-twilio-auth-token`) |
//! | SendGrid | API key [`DEFAULT_SENDGRID_API_KEY`] (`SG.standin.sendgrid-api-key`) |
//! | Brevo | API key [`DEFAULT_BREVO_API_KEY`] (`xkeysib-standin-brevo-api-key`) |
//! | webhook | signing secret [`DEFAULT_WEBHOOK_SECRET`] (`standin-webhook-secret`) |
//!
//! # Layout
//! - [`config`]: [`Config`], [`Credentials`], [`Faults`], [`Provider`].
//! - `state`: counters, seen idempotency keys, records, the rate-limit buckets.
//! - `faults`: latency, the rate limit and the random 5xx / 429 / timeout draw.
//! - `twilio`, `sendgrid`, `brevo`, `webhook`: one module per API, each documenting the
//!   provider behaviour it reproduces.
//! - [`control`]: `/_standin/messages`, `/stats`, `/reset`, `/faults`.
//! - `sms`: SMS parts as providers count them; `ids`: provider-shaped ids.
//! - `smtp`: the SMTP sink (plain ESMTP on tokio, no TLS): counts messages, recipients and
//!   bytes, finds duplicate Message-IDs, keeps no message.

pub mod client;
pub mod config;
pub mod control;

mod brevo;
mod faults;
mod ids;
mod sendgrid;
mod sms;
mod smtp;
mod state;
mod twilio;
mod webhook;
mod wire;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{
    Config, Credentials, DEFAULT_BREVO_API_KEY, DEFAULT_SENDGRID_API_KEY,
    DEFAULT_TWILIO_ACCOUNT_SID, DEFAULT_TWILIO_AUTH_TOKEN, DEFAULT_WEBHOOK_SECRET, Faults,
    FaultsError, Provider,
};
pub use sendgrid::RESERVED_HEADERS as SENDGRID_RESERVED_HEADERS;
pub use sms::parts as sms_parts;
pub use smtp::{MAX_MESSAGE_BYTES as SMTP_MAX_MESSAGE_BYTES, SmtpStats};
pub use state::{ProviderStats, Recorded, RejectedStats};
pub use twilio::twilio_signature;
pub use webhook::webhook_signature;

/// Why a stand-in server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid faults: {0}")]
    Faults(#[from] FaultsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the status-callback HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// The routes of every stand-in and of the control API, over a fresh state (without the
/// SMTP sink, which needs a listener of its own: see [`serve`] and [`spawn`]).
pub fn router(config: &Config) -> Result<Router, StartError> {
    config.validate()?;
    Ok(routes(Arc::new(state::State::new(config)?)))
}

fn routes(shared: Arc<state::State>) -> Router {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages.json",
            post(twilio::create_message),
        )
        .route("/v3/mail/send", post(sendgrid::send))
        .route("/v3/smtp/email", post(brevo::send_email))
        .route("/v3/transactionalSMS/send", post(brevo::send_sms_current))
        .route("/v3/transactionalSMS/sms", post(brevo::send_sms_deprecated))
        .route("/webhook", post(webhook::receive))
        .route("/_standin/health", get(control::health))
        .route("/_standin/messages", get(control::messages))
        .route("/_standin/stats", get(control::stats))
        .route("/_standin/reset", post(control::reset))
        .route(
            "/_standin/faults",
            get(control::faults).post(control::set_all_faults),
        )
        .route(
            "/_standin/faults/{provider}",
            post(control::set_provider_faults),
        )
        .with_state(shared)
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// Serves the HTTP stand-ins on `http` and, when given, the SMTP sink on `smtp`, over one
/// state, until `shutdown` completes (the SMTP connections end with the HTTP server).
async fn run(
    http: TcpListener,
    smtp: Option<TcpListener>,
    shared: Arc<state::State>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let server = axum::serve(http, routes(Arc::clone(&shared)))
        .with_graceful_shutdown(shutdown)
        .into_future();
    let Some(smtp) = smtp else {
        return server.await.map_err(StartError::Serve);
    };
    tokio::select! {
        served = server => served.map_err(StartError::Serve),
        never = smtp::serve(smtp, shared) => match never {},
    }
}

/// Serves the stand-ins on `listener` until `shutdown` completes, and the SMTP sink on
/// `config.smtp_listen` when set (bound here, since `listener` only covers HTTP).
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    config.validate()?;
    let shared = Arc::new(state::State::new(config)?);
    let smtp = match config.smtp_listen {
        Some(addr) => {
            let (listener, bound) = bind(addr).await?;
            tracing::info!(addr = %bound, "SMTP sink listening");
            Some(listener)
        }
        None => None,
    };
    run(listener, smtp, shared, shutdown).await
}

/// A stand-in server started by [`spawn`].
#[derive(Debug)]
pub struct Spawned {
    /// The HTTP address of the stand-ins and of the control API.
    pub addr: SocketAddr,
    /// The SMTP sink's address, when [`Config::smtp_listen`] asked for one.
    pub smtp_addr: Option<SocketAddr>,
    /// The servers' task: abort it to stop them (SMTP connections included), or let the
    /// runtime end.
    pub task: JoinHandle<()>,
}

/// Starts the stand-ins on `config.listen` (`127.0.0.1:0` for a free port), and the SMTP
/// sink on `config.smtp_listen` when set, in the current runtime, and returns the
/// addresses they listen on and their task.
pub async fn spawn(config: Config) -> Result<Spawned, StartError> {
    config.validate()?;
    let shared = Arc::new(state::State::new(&config)?);
    let (http, addr) = bind(config.listen).await?;
    let (smtp, smtp_addr) = match config.smtp_listen {
        Some(wanted) => {
            let (listener, bound) = bind(wanted).await?;
            (Some(listener), Some(bound))
        }
        None => (None, None),
    };
    let task = tokio::spawn(async move {
        if let Err(err) = run(http, smtp, shared, std::future::pending()).await {
            tracing::error!(error = %err, "stand-in server stopped");
        }
    });
    Ok(Spawned {
        addr,
        smtp_addr,
        task,
    })
}
