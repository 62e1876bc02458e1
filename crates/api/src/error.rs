//! Every error answer: `{"error": "...", "details": [...]}` with the right status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracking_domain::FieldError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub details: Vec<Value>,
    /// `Retry-After` in seconds, for a 503 whose cause is expected to last (the broker blocked, unreachable).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// 422 with one detail per wrong field.
    pub fn fields(error: impl Into<String>, fields: &[FieldError]) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: error.into(),
            details: fields
                .iter()
                .map(|f| json!({ "field": f.field, "message": f.message }))
                .collect(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After: {secs}`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.details.push(detail);
        self
    }

    pub fn unauthorized(error: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, error)
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }

    /// The database did not answer: logged in full, answered without its details.
    pub fn database(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "A database query failed.");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable; try again later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let timed_out = self.status == StatusCode::REQUEST_TIMEOUT;
        let retry_after = self.retry_after;
        let mut response = (
            self.status,
            Json(json!({ "error": self.error, "details": self.details })),
        )
            .into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tracking-api\""),
            );
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if timed_out {
            // The rest of the body may still come: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
