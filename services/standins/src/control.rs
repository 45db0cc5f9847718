//! The stand-in's own API, under `/_standin`:
//!
//! | route | what |
//! |---|---|
//! | `GET /_standin/health` | `200 ok` once listening |
//! | `GET /_standin/messages?provider=twilio&key=K` | the accepted messages ([`Recorded`](crate::Recorded)), both filters optional |
//! | `GET /_standin/stats` | per provider: accepted, duplicates, parts, rejected by kind; under `smtp`, the SMTP sink's [`SmtpStats`] |
//! | `POST /_standin/reset` | forgets messages, counters, seen keys and rate-limit state, the SMTP sink's included (faults stay) |
//! | `GET /_standin/faults` | the faults in force, per provider |
//! | `POST /_standin/faults` | replaces every provider's faults with the posted [`Faults`] |
//! | `POST /_standin/faults/{provider}` | replaces one provider's faults |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Faults, Provider};
use crate::smtp::SmtpStats;
use crate::state::ProviderStats;
use crate::state::State as Shared;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessagesQuery {
    provider: Option<Provider>,
    key: Option<String>,
}

pub(crate) async fn health() -> &'static str {
    "ok"
}

pub(crate) async fn messages(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<MessagesQuery>,
) -> Response {
    Json(shared.messages(query.provider, query.key.as_deref())).into_response()
}

/// The body of `GET /_standin/stats`: one key per provider, as before the SMTP sink
/// existed, and `smtp` beside them.
#[derive(Debug, Serialize)]
struct Stats {
    #[serde(flatten)]
    providers: BTreeMap<Provider, ProviderStats>,
    smtp: SmtpStats,
}

pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(Stats {
        providers: shared.stats(),
        smtp: shared.smtp.stats(),
    })
    .into_response()
}

pub(crate) async fn reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.reset();
    StatusCode::NO_CONTENT
}

pub(crate) async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.all_faults()).into_response()
}

fn replace(shared: &Shared, provider: Option<Provider>, raw: &[u8]) -> Response {
    let faults: Faults = match serde_json::from_slice(raw) {
        Ok(faults) => faults,
        Err(err) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": err.to_string() })),
            )
                .into_response();
        }
    };
    if let Err(err) = faults.validate() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": err.to_string() })),
        )
            .into_response();
    }
    shared.set_faults(provider, &faults);
    Json(shared.all_faults()).into_response()
}

pub(crate) async fn set_all_faults(State(shared): State<Arc<Shared>>, raw: Bytes) -> Response {
    replace(&shared, None, &raw)
}

pub(crate) async fn set_provider_faults(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    raw: Bytes,
) -> Response {
    match provider.parse::<Provider>() {
        Ok(provider) => replace(&shared, Some(provider), &raw),
        Err(err) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": err.to_string() })),
        )
            .into_response(),
    }
}
