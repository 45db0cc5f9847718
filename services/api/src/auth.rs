//! Bearer tokens from configuration, each with a role. No token, no access (health and
//! metrics excepted: they are served by the ops router, outside `/v1`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::config::{Role, TokenConfig};
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    pub fn require(&self, role: Role, action: &'static str) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(action))
        }
    }
}

/// Finds the token, comparing in constant time so that timing reveals nothing.
pub fn authenticate(tokens: &[TokenConfig], presented: &str) -> Option<Caller> {
    let mut found = None;
    for t in tokens {
        let matches: bool = t
            .token
            .expose_secret()
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into();
        if matches && found.is_none() {
            found = Some(Caller {
                name: t.name.clone(),
                role: t.role,
            });
        }
    }
    found
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthenticated)?;
        authenticate(&state.config.api.tokens, token.trim()).ok_or(ApiError::Unauthenticated)
    }
}
