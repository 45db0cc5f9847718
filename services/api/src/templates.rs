//! `/v1/templates`: upload (a new version each time, validated first), list, read, delete.
//!
//! A deleted template is gone for the API (no version of it is shown, previewed or pinned)
//! but its versions stay in the store: jobs already on the bus pin one and still render.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tocsin_planner::campaign::{self, State as CampaignState};
use tocsin_planner::keys;
use tocsin_templates::validate::{self, Problem};
use tocsin_templates::{TemplateDraft, TemplateVersion, store};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::campaigns::parse_body;
use crate::config::Role;
use crate::error::{ApiError, ErrorBody};

/// An upload: the template's parts per locale.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateUpload {
    /// `email` or `sms`.
    #[schema(value_type = String)]
    pub channel: serde_json::Value,
    /// By locale: `{"subject", "html", "text"?}` for e-mail, `{"body"}` for SMS.
    #[schema(value_type = Object)]
    pub variants: serde_json::Value,
    pub default_locale: String,
    /// Refuse variables outside the contact schema instead of warning.
    #[serde(default)]
    pub strict: bool,
}

/// A stored version, with what validation noticed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    pub id: String,
    pub version: u32,
    #[schema(value_type = Object)]
    pub template: serde_json::Value,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSummary {
    pub id: String,
    pub latest_version: u32,
    pub channel: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct VersionQuery {
    /// A version number; absent means the latest.
    pub version: Option<u32>,
}

fn refuse(problems: &[Problem]) -> ApiError {
    let first = &problems[0];
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    ApiError::invalid(first.part.clone(), all.join("; "))
}

/// Upload a template: stored as a new version once it compiles.
#[utoipa::path(put, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    request_body = TemplateUpload,
    responses(
        (status = 201, body = TemplateView),
        (status = 422, body = ErrorBody, description = "Does not compile: part, line, column and the text at fault"),
    ),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    caller.require(Role::Operator, "upload templates")?;
    crate::campaigns::identifier("id", &id)?;
    let upload: TemplateUpload = parse_body(&body)?;
    let draft: TemplateDraft = serde_json::from_value(serde_json::json!({
        "channel": upload.channel,
        "variants": upload.variants,
        "defaultLocale": upload.default_locale,
    }))
    .map_err(|e| ApiError::invalid("variants", e.to_string()))?;
    let report = validate::validate(&draft, upload.strict);
    if !report.errors.is_empty() {
        return Err(refuse(&report.errors));
    }
    let mut conn = state.redis.clone();
    let stored = store::put(
        &mut conn,
        &id,
        draft,
        &caller.name,
        chrono::Utc::now().timestamp_millis(),
    )
    .await?;
    tracing::info!(template = %id, version = stored.version, by = %caller.name, "template stored");
    Ok((
        StatusCode::CREATED,
        Json(TemplateView {
            id,
            version: stored.version,
            template: serde_json::to_value(&stored.draft).unwrap_or_default(),
            warnings: report.warnings.iter().map(ToString::to_string).collect(),
        }),
    ))
}

/// Every template with its latest version.
#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, body = [TemplateSummary]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<TemplateSummary>>, ApiError> {
    caller.require(Role::Reader, "read templates")?;
    let mut conn = state.redis.clone();
    let mut out = Vec::new();
    for id in store::list(&mut conn).await? {
        if let Some(t) = store::get(&mut conn, &id, None).await? {
            out.push(TemplateSummary {
                channel: serde_json::to_value(t.draft.channel)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                id,
                latest_version: t.version,
            });
        }
    }
    Ok(Json(out))
}

/// A version of a template that is not deleted (`None`: the latest), or a 404 saying
/// which of the two is missing.
pub(crate) async fn find(
    state: &AppState,
    id: &str,
    version: Option<u32>,
) -> Result<TemplateVersion, ApiError> {
    let mut conn = state.redis.clone();
    match store::get_live(&mut conn, id, version).await? {
        Some(t) => Ok(t),
        None => {
            let known = store::get_live(&mut conn, id, None).await?.is_some();
            Err(ApiError::NotFound(match version {
                Some(v) if known => format!("template {id:?} has no version {v}"),
                _ => format!("no template {id:?}"),
            }))
        }
    }
}

/// A template version.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id"), VersionQuery),
    responses((status = 200, body = TemplateView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<Json<TemplateView>, ApiError> {
    caller.require(Role::Reader, "read templates")?;
    let t = find(&state, &id, query.version).await?;
    Ok(Json(TemplateView {
        id,
        version: t.version,
        template: serde_json::to_value(&t.draft).unwrap_or_default(),
        warnings: Vec::new(),
    }))
}

/// The campaigns still to send (scheduled, running or paused) that use template `id`, at
/// any version, oldest first.
async fn campaigns_using(state: &AppState, id: &str) -> Result<Vec<String>, ApiError> {
    let mut conn = state.redis.clone();
    let all: Vec<String> = conn.zrange(keys::CAMPAIGNS, 0, -1).await?;
    let mut users = Vec::new();
    // The states first, in batches: most campaigns are finished and need no more reading.
    for batch in all.chunks(500) {
        let mut pipe = redis::pipe();
        for campaign_id in batch {
            pipe.hget(keys::campaign(campaign_id), "state");
        }
        let states: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        for (campaign_id, stored) in batch.iter().zip(states) {
            let finished = matches!(
                stored.as_deref().and_then(CampaignState::parse),
                Some(CampaignState::Completed | CampaignState::Cancelled)
            );
            if finished {
                continue;
            }
            if let Some(c) = campaign::load(&mut conn, campaign_id).await?
                && matches!(
                    c.state,
                    CampaignState::Scheduled | CampaignState::Running | CampaignState::Paused
                )
                && c.blast.template_id == id
            {
                users.push(c.id);
            }
        }
    }
    Ok(users)
}

/// Delete a template. Refused while a campaign still to send uses it; its versions are
/// kept for the jobs already planned, and uploading the same id again starts a new version.
#[utoipa::path(delete, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Campaigns still to send use it; the message names them"),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator, "delete templates")?;
    find(&state, &id, None).await?;
    let users = campaigns_using(&state, &id).await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "template {id:?} is used by campaigns still to send: {} (cancel them or let them complete first)",
            users.join(", ")
        )));
    }
    // A campaign scheduled between the check and here pinned a version: the versions stay,
    // so its jobs still render.
    let mut conn = state.redis.clone();
    if !store::delete(&mut conn, &id, chrono::Utc::now().timestamp_millis()).await? {
        return Err(ApiError::NotFound(format!("no template {id:?}")));
    }
    tracing::info!(template = %id, by = %caller.name, "template deleted");
    Ok(StatusCode::NO_CONTENT)
}
