//! Carrier clients. Each turns a carrier's API into [`ObjectResult`]s of parsed-but-untouched events,
//! and every failure into a [`FetchError`] that says whether to retry, alarm or park.
//!
//! - [`correios`]: API Rastro (token lifecycle, batched tracking calls, per-object messages, Brazil's time).
//!
//! Adding a carrier is a module here with the same shape, a variant of `tracking_domain::Carrier`
//! and an event table in `crates/domain/data/`.

pub mod correios;

use std::time::Duration;
use tracking_domain::CarrierEvent;

/// What the carrier said about one tracking code.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectResult {
    /// The carrier knows the object: its events (possibly none yet) and delivery estimate.
    Found {
        events: Vec<CarrierEvent>,
        estimated_delivery: Option<chrono::DateTime<chrono::FixedOffset>>,
    },
    /// Not in the carrier's system yet (Correios SRO-020: normal for hours after the label is issued). Keep polling.
    NotYet { message: String },
    /// The carrier refuses this code for good (Correios SRO-019 invalid, SRO-009 another contract's). Park the request.
    Refused { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Timeouts, connection failures, 429, 5xx: try again later.
    #[error("carrier temporarily unavailable: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The credentials were refused: an operator must act. Retrying soon would only hammer the carrier.
    #[error("carrier refused our credentials: {0}")]
    Auth(String),
    /// The answer does not have the shape we know: the carrier changed its API (or broke).
    #[error("carrier answer not understood: {reason}")]
    Malformed { reason: String, body: String },
}
