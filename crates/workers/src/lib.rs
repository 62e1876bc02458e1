//! The workers: each module is one worker's handler and its `run`, and `src/bin/` holds one thin `main` per worker.
//!
//! | worker | consumes | produces |
//! | --- | --- | --- |
//! | [`fetcher`] | `tracking.requests` | `carrier.events` |
//! | [`normalizer`] | `normalizer.carrier-events` | rows in PostgreSQL, then `order.status` (transactional outbox) |
//! | [`scheduler`] | shipments due for a poll | `tracking.requests` |
//! | [`email_publisher`] | `email.order-status` | email over SMTP |
//! | [`marketplace_publisher`] | `marketplace.order-status` | HTTP calls to marketplaces |
//!
//! Every queue worker runs `tracking_runtime::amqp::run_consumer` with its own handler; the runtime owns acks,
//! retries, parking, reconnection and shutdown.

pub mod boot;
mod csv;
pub mod ctl;
pub mod deliver;
pub mod email_publisher;
pub mod fetcher;
pub mod marketplace_publisher;
pub mod normalizer;
pub mod policy;
pub mod scheduler;

use std::time::Duration;
use tracking_runtime::amqp::Outcome;

/// A database error is transient (the database may be restarting): retry the message later.
pub(crate) fn db_retry(e: impl std::fmt::Display) -> Outcome {
    Outcome::Retry {
        after: Duration::from_secs(1),
        reason: format!("database: {e}"),
    }
}

/// Exponential backoff for the n-th attempt (1-based), from `base`, capped at `cap`.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(cap)
}
