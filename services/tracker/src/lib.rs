//! The tracker: the public HTTP service behind the links a message carries and the
//! providers' webhooks. Everything it learns becomes a `Feedback` event on
//! `tocsin.feedback`, keyed by contact id, with an event id derived from the event itself
//! (a repeated request yields the same id; see [`feedback`]).
//!
//! Routes (all on `[http] listen`, with `/metrics`, `/healthz`, `/readyz`):
//!
//! | route | what |
//! |---|---|
//! | `GET /o/{token}` | open pixel: `Feedback(opened)`, a 1×1 GIF; a bad token still gets the GIF |
//! | `GET /c/{token}` | click: `Feedback(clicked, url)`, 302 to the URL signed in the token; 404 otherwise |
//! | `GET /u/{token}` | a confirmation page (French or English) whose button POSTs; unsubscribes nobody |
//! | `POST /u/{token}` | RFC 8058 one-click (`List-Unsubscribe=One-Click`, form or multipart): `Feedback(unsubscribed)`, 200 |
//! | `POST /webhooks/twilio/status` | status callbacks (`X-Twilio-Signature`): delivered, bounced, failed |
//! | `POST /webhooks/twilio/inbound` | inbound SMS: STOP… → unsubscribed, START… → resubscribed |
//! | `POST /webhooks/sendgrid` | the signed event webhook (ECDSA P-256) |
//! | `POST /webhooks/brevo` | Brevo's transactional webhooks (bearer token or Basic auth) |
//!
//! # Layout
//! - [`config`]: `[tracker]`: the token key (the renderer's), the public base URL, the
//!   machine rules, each provider's verification secret.
//! - [`engagement`]: the pixel and the click redirect; the per-client first-seen record and
//!   the send time, in one Redis round trip.
//! - [`machine`]: which opens and clicks are a machine's (privacy proxies, link scanners),
//!   and why those rules.
//! - [`unsubscribe`]: the one-click POST in both content types, the confirmation page.
//! - [`webhooks`]: one module per provider, each verifying before reading; verdicts and
//!   status codes shared in `webhooks/mod.rs`.
//! - [`feedback`]: building, keying and publishing events; event ids; a sequence step's
//!   group read back from keys and tokens (the step named, no campaign).
//! - [`metrics`]: Prometheus counters (`tocsin_tracker_*_total`).

pub mod config;
pub mod engagement;
pub mod feedback;
pub mod machine;
pub mod metrics;
pub mod unsubscribe;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use redis::aio::ConnectionManager;
use tocsin_bus::service::{Connected, Spec};
use tocsin_renderer::tokens::Signer;

pub use config::Config;

use crate::config::TrackerConfig;
use crate::feedback::Publisher;
use crate::machine::Detector;
use crate::metrics::TrackerMetrics;

/// What every request handler shares.
pub struct AppState {
    /// Verifies the renderer's tokens (same key).
    pub signer: Signer,
    pub publisher: Publisher,
    pub redis: ConnectionManager,
    pub metrics: TrackerMetrics,
    pub detector: Detector,
    pub repeat_window_ms: u64,
    pub trust_forwarded_for: bool,
    /// `None` when no auth token is configured: every Twilio webhook is refused.
    pub twilio: Option<webhooks::twilio::Verifier>,
    /// `None` when no public key is configured: every SendGrid webhook is refused.
    pub sendgrid: Option<webhooks::sendgrid::Verifier>,
    pub brevo: webhooks::brevo::Credentials,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}

/// The provider verifiers, checked before the service touches the network: a malformed
/// SendGrid key or base URL is a start-up error, not a stream of refused webhooks.
struct Verifiers {
    twilio: Option<webhooks::twilio::Verifier>,
    sendgrid: Option<webhooks::sendgrid::Verifier>,
    brevo: webhooks::brevo::Credentials,
}

impl Verifiers {
    fn build(config: &TrackerConfig) -> anyhow::Result<Self> {
        let twilio = match &config.twilio.auth_token {
            Some(token) => Some(
                webhooks::twilio::Verifier::new(token.clone(), &config.public_base_url)
                    .context("[tracker] public_base_url")?,
            ),
            None => {
                tracing::warn!("no [tracker.twilio] auth_token: Twilio webhooks are refused");
                None
            }
        };
        let sendgrid = match &config.sendgrid.public_key {
            Some(key) => Some(
                webhooks::sendgrid::Verifier::new(key, config.sendgrid.timestamp_tolerance_s)
                    .context("[tracker.sendgrid] public_key")?,
            ),
            None => {
                tracing::warn!("no [tracker.sendgrid] public_key: SendGrid webhooks are refused");
                None
            }
        };
        let brevo = webhooks::brevo::Credentials::new(&config.brevo)
            .context("[tracker.brevo] credentials")?;
        if !brevo.any() {
            tracing::warn!(
                "no [tracker.brevo] bearer_token or username/password: Brevo webhooks are refused"
            );
        }
        Ok(Verifiers {
            twilio,
            sendgrid,
            brevo,
        })
    }
}

/// The tracker's own routes (the ops routes are merged in by [`run`]).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/o/{token}", get(engagement::open))
        .route("/c/{token}", get(engagement::click))
        .route(
            "/u/{token}",
            get(unsubscribe::page).post(unsubscribe::one_click),
        )
        .route("/webhooks/twilio/status", post(webhooks::twilio::status))
        .route("/webhooks/twilio/inbound", post(webhooks::twilio::inbound))
        .route("/webhooks/sendgrid", post(webhooks::sendgrid::events))
        .route("/webhooks/brevo", post(webhooks::brevo::events))
        .with_state(state)
}

/// Serves the tracker until `shutdown`, then lets in-flight requests finish and flushes
/// what is still queued for the broker.
///
/// The start-up steps are those of `tocsin_bus::service::Base` (topics, producer, Redis,
/// readiness checks), done here because `Base` serves only the ops routes on
/// `[http] listen` and the tracker's public routes must share that port; the server also
/// needs each connection's peer address (the client's, for repeat detection).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = tocsin_runtime::shutdown::token(shutdown);
    let verifiers = Verifiers::build(&config.tracker)?;
    let topics = config.kafka.topics.clone();
    let mut connected = Connected::connect(Spec {
        service: "tracker",
        instance: &config.tracker.instance,
        kafka: &config.kafka,
        redis: &config.redis,
        http: &config.http,
        topics: &[&topics.feedback],
    })
    .await?;
    let metrics = TrackerMetrics::register(&connected.registry)?;
    let ops = connected.ops_router();
    let Connected {
        producer,
        redis,
        instance,
        ..
    } = connected;
    let tracker = &config.tracker;
    let state = Arc::new(AppState {
        signer: Signer::new(tracker.token_key.clone()),
        publisher: Publisher::new(
            producer.clone(),
            topics.feedback.name.clone(),
            Duration::from_millis(tracker.publish_timeout_ms.max(1)),
        ),
        redis,
        metrics,
        detector: Detector::new(&tracker.machine_user_agents, tracker.machine_window_s),
        repeat_window_ms: tracker.repeat_window_s.saturating_mul(1000).max(1),
        trust_forwarded_for: tracker.trust_forwarded_for,
        twilio: verifiers.twilio,
        sendgrid: verifiers.sendgrid,
        brevo: verifiers.brevo,
    });
    let app = router(state).merge(ops);
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("binding {}", config.http.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, instance, "tracker listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await?;
    // Opens and clicks are published without being awaited: deliver what is queued.
    tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
        .await?
        .context("flushing feedback to the broker")?;
    Ok(())
}
