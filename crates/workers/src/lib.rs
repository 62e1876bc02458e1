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
//! Every queue worker runs `tracking_runtime::amqp::run_consumer` with its own handler (the normalizer
//! `run_batch_consumer`, with a handler of whole batches); the runtime owns acks, retries, parking, reconnection
//! and shutdown.

pub mod boot;
pub mod bulkhead;
mod csv;
pub mod ctl;
pub mod deliver;
pub mod email_publisher;
pub mod far_ends;
pub mod fetcher;
pub mod marketplace_publisher;
pub mod normalizer;
pub mod opt_out;
pub mod policy;
pub mod retention;
pub mod scheduler;
pub mod trusted;

use std::time::Duration;
use tracking_runtime::amqp::Outcome;
use tracking_store::{Failure, StoreError};

/// What a database error means for the message being handled: unavailable is not invalid.
/// - The database is down or out of connections: hold the message until it answers, spending no attempt.
/// - A serialization failure or deadlock: try again soon.
/// - The database refused the data (encoding, constraint) or a row could not be read: park it now with the
///   database's message; retrying can never work.
pub(crate) fn db_outcome(e: &StoreError) -> Outcome {
    match e.failure() {
        Failure::Unavailable => Outcome::Unavailable {
            dependency: "postgres",
            reason: e.to_string(),
        },
        Failure::Conflict => Outcome::Retry {
            after: Duration::from_millis(100),
            reason: e.to_string(),
        },
        Failure::Data => Outcome::Park {
            reason: format!("the database refused it: {e}"),
        },
    }
}

/// Exponential backoff for the n-th attempt (1-based), from `base`, capped at `cap`.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(cap)
}
