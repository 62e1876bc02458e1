//! `Authorization: Bearer {API_TOKEN}` on every `/v1` call. The token is kept only as its SHA-256, and the
//! comparison is constant-time over the digests (so neither the content nor the length of the token leaks
//! through timing).

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A handler argument that proves the caller sent the right token; it is extracted before the body.
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing Authorization header: send Authorization: Bearer {API_TOKEN}",
            ));
        };
        let value = value.to_str().unwrap_or_default().trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::unauthorized(
                    "the Authorization header is not a bearer token: send Authorization: Bearer {API_TOKEN}",
                ));
            }
        };
        if bool::from(digest(token).ct_eq(&state.inner.token_digest)) {
            Ok(Authorized)
        } else {
            Err(ApiError::unauthorized("invalid API token"))
        }
    }
}
