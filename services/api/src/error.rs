//! Errors as the API answers them: a status and a JSON body naming the field and the
//! problem (and, for a message the renderer refuses, the class of the refusal).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person.
    pub error: String,
    /// The request field at fault, when there is one (`startAt`, `quietHours.windows[2]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Why the renderer refused a preview or a test send (`missing_field`, `too_long`,
    /// `unknown_sender_profile`, ...): the class its feedback and metrics would carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The renderer would not render this: its own words, and its class.
    #[error("{message}")]
    Refused {
        class: &'static str,
        message: String,
    },
    #[error("missing or malformed bearer token")]
    Unauthenticated,
    #[error("this token's role may not {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::Internal(format!("redis: {e}"))
    }
}

impl From<tocsin_bus::BusError> for ApiError {
    fn from(e: tocsin_bus::BusError) -> Self {
        ApiError::Internal(format!("bus: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let class = match &self {
            ApiError::Refused { class, .. } => Some((*class).to_owned()),
            _ => None,
        };
        let (status, field) = match &self {
            ApiError::Invalid { field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, Some(field.clone()))
            }
            ApiError::Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, None),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, None),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                field,
                class,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
