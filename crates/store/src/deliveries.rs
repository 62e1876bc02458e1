//! Idempotency records: one row per (destination, change id). A destination (`email`, `marketplace:acme`) claims
//! the row with a short committed lease (an owner and an expiry), sends without holding any database connection,
//! then records the outcome in another short statement. A redelivered change finds the row done (nothing to do)
//! or leased by someone else (wait); a lease that expired belongs to a worker that died mid-send, and the change
//! is sent again with the same id for the far end.

use crate::StoreError;
use crate::text::{Spelled, Stored, Text};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Where a (destination, change) stands: the `state` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Claimed (maybe under a lease), not tried yet.
    Pending,
    /// Tried and failed; it will be tried again.
    Failed,
    /// Sent (or skipped on purpose): never again.
    Done,
    /// Failed for good; it is in the parking queue.
    Parked,
}

impl Spelled for DeliveryState {
    const WHAT: &'static str = "delivery state";
    fn spelling(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Failed => "failed",
            DeliveryState::Done => "done",
            DeliveryState::Parked => "parked",
        }
    }
    fn from_spelling(s: &str) -> Option<Self> {
        [
            DeliveryState::Pending,
            DeliveryState::Failed,
            DeliveryState::Done,
            DeliveryState::Parked,
        ]
        .into_iter()
        .find(|d| d.spelling() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours until the lease expires: do it now. `failures` earlier tries failed, the first at `first_failed_at`.
    Claimed {
        failures: i32,
        first_failed_at: Option<DateTime<Utc>>,
    },
    /// Already done: skip, ack.
    Done,
    /// Someone else holds a lease on it for `remaining` more.
    Leased { remaining: Duration },
}

/// Claims the change for the destination with a lease of `lease` under the owner `owner` (one per claim).
pub async fn claim(
    pool: &PgPool,
    destination: &str,
    change_id: Uuid,
    owner: Uuid,
    lease: Duration,
) -> Result<Claim, StoreError> {
    let claimed: Option<(i32, Option<DateTime<Utc>>)> = sqlx::query_as(
        "INSERT INTO deliveries (destination, change_id, owner, lease_until) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
         ON CONFLICT (destination, change_id) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until \
             WHERE deliveries.state <> 'done' AND (deliveries.lease_until IS NULL OR deliveries.lease_until < now()) \
         RETURNING attempts, first_failed_at",
    )
    .bind(destination)
    .bind(change_id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    if let Some((failures, first_failed_at)) = claimed {
        return Ok(Claim::Claimed {
            failures,
            first_failed_at,
        });
    }
    let held: Option<(Stored<DeliveryState>, Option<f64>)> = sqlx::query_as(
        "SELECT state, EXTRACT(EPOCH FROM (lease_until - now()))::float8 FROM deliveries \
         WHERE destination = $1 AND change_id = $2",
    )
    .bind(destination)
    .bind(change_id)
    .fetch_optional(pool)
    .await?;
    Ok(match held {
        Some((Stored::Known(DeliveryState::Done), _)) => Claim::Done,
        Some((_, remaining)) => Claim::Leased {
            remaining: Duration::from_secs_f64(remaining.unwrap_or(0.0).clamp(0.0, 86_400.0)),
        },
        // Claimed and released between the two statements: let the caller come back.
        None => Claim::Leased {
            remaining: Duration::ZERO,
        },
    })
}

/// Done (or skipped): `detail` is kept (a Message-ID, an HTTP status, why it was skipped).
pub async fn complete(
    pool: &PgPool,
    destination: &str,
    change_id: Uuid,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET state = 'done', attempts = attempts + 1, completed_at = now(), detail = $3, \
             last_error = NULL, owner = NULL, lease_until = NULL \
         WHERE destination = $1 AND change_id = $2",
    )
    .bind(destination)
    .bind(change_id)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// A failed try: `parked` when it will not be tried again. Returns when the failures began.
pub async fn fail(
    pool: &PgPool,
    destination: &str,
    change_id: Uuid,
    error: &str,
    parked: bool,
) -> Result<DateTime<Utc>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE deliveries SET state = $4, attempts = attempts + 1, last_error = $3, \
             first_failed_at = COALESCE(first_failed_at, now()), owner = NULL, lease_until = NULL \
         WHERE destination = $1 AND change_id = $2 RETURNING first_failed_at",
    )
    .bind(destination)
    .bind(change_id)
    .bind(error)
    .bind(Text(if parked {
        DeliveryState::Parked
    } else {
        DeliveryState::Failed
    }))
    .fetch_optional(pool)
    .await?
    .unwrap_or_else(Utc::now))
}

/// Gives a claim back without recording a try (the process is stopping, or the change turned out not to be
/// ours to send yet).
pub async fn release(
    pool: &PgPool,
    destination: &str,
    change_id: Uuid,
    owner: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET owner = NULL, lease_until = NULL \
         WHERE destination = $1 AND change_id = $2 AND owner = $3",
    )
    .bind(destination)
    .bind(change_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// `(destination, state)` of every delivery record of `change_id`, by destination.
pub async fn of_change(
    pool: &PgPool,
    change_id: Uuid,
) -> Result<Vec<(String, Stored<DeliveryState>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT destination, state FROM deliveries WHERE change_id = $1 ORDER BY destination",
    )
    .bind(change_id)
    .fetch_all(pool)
    .await?)
}
