//! `/v1/templates`: upload (a new version each time, validated first), list, read.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tocsin_templates::validate::{self, Problem};
use tocsin_templates::{TemplateDraft, store};
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
    let mut conn = state.redis.clone();
    let t = store::get(&mut conn, &id, query.version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no template {id:?} at that version")))?;
    Ok(Json(TemplateView {
        id,
        version: t.version,
        template: serde_json::to_value(&t.draft).unwrap_or_default(),
        warnings: Vec::new(),
    }))
}
