//! The HTTP server of every service: `/metrics`, `/healthz`, `/readyz`, and the service's
//! own routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::readiness::ReadinessCheck;

#[derive(Clone)]
struct Ops {
    registry: Registry,
    checks: Arc<Vec<Box<dyn ReadinessCheck>>>,
}

/// The operational routes, to be merged with a service's own.
pub fn ops_router(registry: Registry, checks: Vec<Box<dyn ReadinessCheck>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops {
            registry,
            checks: Arc::new(checks),
        })
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&ops.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// 200 with every check's verdict when all pass, 503 otherwise.
async fn readyz(State(ops): State<Ops>) -> Response {
    let results = futures::future::join_all(ops.checks.iter().map(|check| async move {
        let verdict = match tokio::time::timeout(Duration::from_secs(3), check.check()).await {
            Ok(result) => result,
            Err(_) => Err("check timed out after 3 s".to_owned()),
        };
        (check.name(), verdict)
    }))
    .await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => serde_json::Value::from("ok"),
                Err(e) => serde_json::Value::from(e),
            };
            (name.to_owned(), v)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `listen`, then serves `router` in a task until `shutdown`. Returns the bound
/// address (port 0 picks a free one) and the task.
pub async fn spawn(
    listen: &str,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {listen}: {e}")))?;
    let address = listener.local_addr()?;
    Ok((address, tokio::spawn(serve(listener, router, shutdown))))
}
