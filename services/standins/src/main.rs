//! `tocsin-standins`: the provider stand-ins as a process, for the local stack and load
//! tests. `tocsin-standins --help` lists the flags; every flag also reads an environment
//! variable (`TOCSIN_STANDINS_...`).

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tocsin_standins::{Config, Credentials, Faults, Provider};

/// mimalloc, not glibc's malloc: see `mimalloc` in the workspace's Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tocsin-standins",
    about = "Local stand-ins for Twilio, SendGrid, Brevo and the generic webhook, and an SMTP sink."
)]
struct Args {
    /// Address to listen on (loopback only for tests and load tests).
    #[arg(long, env = "TOCSIN_STANDINS_LISTEN", default_value = "127.0.0.1:4010")]
    listen: SocketAddr,
    /// Also run the SMTP sink on this address (plain SMTP, no TLS: loopback load tests); it
    /// counts messages and duplicate Message-IDs, shown under `smtp` in /_standin/stats.
    #[arg(long, env = "TOCSIN_STANDINS_SMTP_LISTEN")]
    smtp_listen: Option<SocketAddr>,
    /// Acknowledge each SMTP message at once (TCP_QUICKACK) instead of like a real relay.
    #[arg(long, env = "TOCSIN_STANDINS_SMTP_QUICK_ACK")]
    smtp_quick_ack: bool,

    /// Twilio Account SID accepted (Basic-auth user and path segment).
    #[arg(long, env = "TOCSIN_STANDINS_TWILIO_ACCOUNT_SID", default_value = tocsin_standins::DEFAULT_TWILIO_ACCOUNT_SID)]
    twilio_account_sid: String,
    /// Twilio auth token accepted; also signs status callbacks.
    #[arg(long, env = "TOCSIN_STANDINS_TWILIO_AUTH_TOKEN", default_value = tocsin_standins::DEFAULT_TWILIO_AUTH_TOKEN)]
    twilio_auth_token: String,
    /// SendGrid API key accepted.
    #[arg(long, env = "TOCSIN_STANDINS_SENDGRID_API_KEY", default_value = tocsin_standins::DEFAULT_SENDGRID_API_KEY)]
    sendgrid_api_key: String,
    /// Brevo API key accepted (e-mail and SMS).
    #[arg(long, env = "TOCSIN_STANDINS_BREVO_API_KEY", default_value = tocsin_standins::DEFAULT_BREVO_API_KEY)]
    brevo_api_key: String,
    /// Generic webhook signing secret.
    #[arg(long, env = "TOCSIN_STANDINS_WEBHOOK_SECRET", default_value = tocsin_standins::DEFAULT_WEBHOOK_SECRET)]
    webhook_secret: String,

    /// Fixed latency added to every answer, in milliseconds.
    #[arg(long, env = "TOCSIN_STANDINS_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Random extra latency, 0 to this many milliseconds.
    #[arg(long, env = "TOCSIN_STANDINS_JITTER_MS", default_value_t = 0)]
    jitter_ms: u64,
    /// Share of requests answered 500 (0 to 1).
    #[arg(long, env = "TOCSIN_STANDINS_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Share of requests answered 429 (0 to 1).
    #[arg(long, env = "TOCSIN_STANDINS_THROTTLE_RATE", default_value_t = 0.0)]
    throttle_rate: f64,
    /// Retry-After of the 429 answers, in seconds.
    #[arg(long, env = "TOCSIN_STANDINS_RETRY_AFTER_S", default_value_t = 1)]
    retry_after_s: u64,
    /// Share of requests held until the client times out (0 to 1).
    #[arg(long, env = "TOCSIN_STANDINS_TIMEOUT_RATE", default_value_t = 0.0)]
    timeout_rate: f64,
    /// How long a "timed out" request is held, in milliseconds.
    #[arg(long, env = "TOCSIN_STANDINS_HOLD_MS", default_value_t = 60_000)]
    hold_ms: u64,
    /// A provider's rate limit, `PROVIDER=N` requests (SMS parts for twilio and brevo-sms)
    /// per second; repeatable. Providers: twilio, sendgrid, brevo-email, brevo-sms, webhook.
    #[arg(long = "rate-limit", value_parser = parse_rate_limit)]
    rate_limits: Vec<(Provider, f64)>,

    /// Keep only counters and seen keys, not the messages (for load tests).
    #[arg(long, env = "TOCSIN_STANDINS_NO_RECORD")]
    no_record: bool,
    /// POST signed `sent` / `delivered` callbacks to each Twilio message's StatusCallback.
    #[arg(long, env = "TOCSIN_STANDINS_TWILIO_STATUS_CALLBACKS")]
    twilio_status_callbacks: bool,
    /// Share of those callbacks (0 to 1) that end `undelivered` (half 30005, a hard
    /// bounce; half 30003, a soft one) instead of `delivered`.
    #[arg(
        long,
        env = "TOCSIN_STANDINS_TWILIO_UNDELIVERED_RATE",
        default_value_t = 0.0
    )]
    twilio_undelivered_rate: f64,
    /// Oldest X-Tocsin-Timestamp the webhook accepts, in seconds.
    #[arg(
        long,
        env = "TOCSIN_STANDINS_WEBHOOK_TOLERANCE_S",
        default_value_t = 300
    )]
    webhook_tolerance_s: u64,
}

fn parse_rate_limit(raw: &str) -> Result<(Provider, f64), String> {
    let (provider, rate) = raw
        .split_once('=')
        .ok_or_else(|| format!("expected PROVIDER=N, got {raw:?}"))?;
    let provider: Provider = provider.parse().map_err(|e| format!("{e}"))?;
    let rate: f64 = rate
        .parse()
        .map_err(|_| format!("{rate:?} is not a number per second"))?;
    Ok((provider, rate))
}

impl Args {
    fn config(self) -> Config {
        let faults = Faults {
            latency_ms: self.latency_ms,
            jitter_ms: self.jitter_ms,
            error_rate: self.error_rate,
            throttle_rate: self.throttle_rate,
            retry_after_s: self.retry_after_s,
            timeout_rate: self.timeout_rate,
            hold_ms: self.hold_ms,
            rate_limit: None,
        };
        let provider_faults = self
            .rate_limits
            .iter()
            .map(|(provider, rate)| {
                (
                    *provider,
                    Faults {
                        rate_limit: Some(*rate),
                        ..faults.clone()
                    },
                )
            })
            .collect();
        Config {
            listen: self.listen,
            credentials: Credentials {
                twilio_account_sid: self.twilio_account_sid,
                twilio_auth_token: self.twilio_auth_token,
                sendgrid_api_key: self.sendgrid_api_key,
                brevo_api_key: self.brevo_api_key,
                webhook_secret: self.webhook_secret,
            },
            faults,
            provider_faults,
            record: !self.no_record,
            twilio_status_callbacks: self.twilio_status_callbacks,
            twilio_undelivered_rate: self.twilio_undelivered_rate,
            webhook_tolerance_s: self.webhook_tolerance_s,
            smtp_listen: self.smtp_listen,
            smtp_quick_ack: self.smtp_quick_ack,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Args::parse().config();
    config.validate().context("invalid faults")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, record = config.record, "stand-ins listening");
    tocsin_standins::serve(listener, &config, shutdown_signal())
        .await
        .context("serving the stand-ins")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_a_config() {
        let args = Args::try_parse_from([
            "tocsin-standins",
            "--listen",
            "127.0.0.1:4999",
            "--error-rate",
            "0.2",
            "--rate-limit",
            "twilio=10",
            "--no-record",
        ])
        .expect("valid flags");
        let config = args.config();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 4999)));
        assert_eq!(config.smtp_listen, None);
        assert!(!config.record);
        assert_eq!(config.faults.error_rate, 0.2);
        assert_eq!(config.faults_for(Provider::Twilio).rate_limit, Some(10.0));
        assert_eq!(config.faults_for(Provider::Twilio).error_rate, 0.2);
        assert_eq!(config.faults_for(Provider::SendGrid).rate_limit, None);
        assert!(parse_rate_limit("mailgun=3").is_err());

        let with_smtp =
            Args::try_parse_from(["tocsin-standins", "--smtp-listen", "127.0.0.1:2526"])
                .expect("valid flags")
                .config();
        assert_eq!(
            with_smtp.smtp_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 2526)))
        );
    }
}
