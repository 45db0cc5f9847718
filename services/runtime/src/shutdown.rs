//! Graceful shutdown.
//!
//! Binaries turn SIGINT / SIGTERM into a future with [`signal`]; tests pass any future
//! (a channel, a token). Inside a service the future becomes a [`CancellationToken`] that
//! every task can watch.

use std::future::Future;

pub use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and systemd send).
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown requested");
}

/// A token that is cancelled when `shutdown` resolves.
pub fn token(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => trigger.cancel(),
            _ = trigger.cancelled() => {}
        }
    });
    token
}
