//! `/v1/segments`: what the CRM has published, with sizes and masked samples.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tocsin_contracts::domain::{EmailAddress, PhoneNumber};
use tocsin_planner::{keys, store};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::config::Role;
use crate::error::{ApiError, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentSummary {
    pub id: String,
    pub size: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentDetail {
    pub id: String,
    pub size: u64,
    /// The first members in id order, addresses masked.
    pub sample: Vec<MemberSample>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberSample {
    pub contact_id: String,
    /// `c•••@exemple.fr`
    pub email: Option<String>,
    /// `+3361•••••78`
    pub phone: Option<String>,
    pub locale: String,
    pub time_zone: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SampleQuery {
    /// Members to show (0-100, default 10).
    pub sample: Option<usize>,
}

/// Every segment with its size.
#[utoipa::path(get, path = "/v1/segments", tag = "segments",
    responses((status = 200, body = [SegmentSummary]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<SegmentSummary>>, ApiError> {
    caller.require(Role::Reader, "read segments")?;
    let mut conn = state.redis.clone();
    let ids: Vec<String> = conn.zrange(keys::SEGMENTS, 0, -1).await?;
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.zcard(keys::segment(id));
    }
    let sizes: Vec<u64> = pipe.query_async(&mut conn).await?;
    Ok(Json(
        ids.into_iter()
            .zip(sizes)
            .map(|(id, size)| SegmentSummary { id, size })
            .collect(),
    ))
}

/// One segment: its size and a sample of members with masked addresses.
#[utoipa::path(get, path = "/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "Segment id"), SampleQuery),
    responses((status = 200, body = SegmentDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<SampleQuery>,
) -> Result<Json<SegmentDetail>, ApiError> {
    caller.require(Role::Reader, "read segments")?;
    let sample = query.sample.unwrap_or(10);
    if sample > 100 {
        return Err(ApiError::invalid("sample", "must be between 0 and 100"));
    }
    let mut conn = state.redis.clone();
    let known: Option<f64> = conn.zscore(keys::SEGMENTS, &id).await?;
    if known.is_none() {
        return Err(ApiError::NotFound(format!("no segment {id:?}")));
    }
    let size: u64 = conn.zcard(keys::segment(&id)).await?;
    let members: Vec<String> = if sample == 0 {
        Vec::new()
    } else {
        conn.zrangebylex_limit(keys::segment(&id), "-", "+", 0, sample as isize)
            .await?
    };
    let contacts = store::load_contacts(&mut state.redis.clone(), &members).await?;
    let sample = members
        .into_iter()
        .zip(contacts)
        .map(|(contact_id, contact)| {
            let contact = contact.unwrap_or_default();
            MemberSample {
                contact_id,
                email: EmailAddress::parse(&contact.email)
                    .ok()
                    .map(|e| e.to_string()),
                phone: PhoneNumber::parse(&contact.phone_e164)
                    .ok()
                    .map(|p| p.to_string()),
                locale: contact.locale,
                time_zone: contact.time_zone,
            }
        })
        .collect();
    Ok(Json(SegmentDetail { id, size, sample }))
}
