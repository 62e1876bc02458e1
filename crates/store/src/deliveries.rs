//! Idempotency records: one row per (destination, change id). A destination (`email`, `marketplace:acme`) claims
//! the row with a short committed lease (an owner and an expiry), sends without holding any database connection,
//! then records the outcome in another short statement. A redelivered change finds the row done (nothing to do)
//! or leased by someone else (wait); a lease that expired belongs to a worker that died mid-send, and the change
//! is sent again with the same id for the far end.

use crate::StoreError;
use crate::text::{Spelled, Stored, Text};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
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

/// One claim to make: `(destination, change_id)` under `owner` (one per claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub destination: String,
    pub change_id: Uuid,
    pub owner: Uuid,
}

/// Claims every request with a lease of `lease`, in one statement (one commit), and answers one [`Claim`] per
/// request, in order. A `(destination, change_id)` asked twice in one call is claimed by its first request; the
/// others find it leased.
pub async fn claim_many(
    pool: &PgPool,
    requests: &[ClaimRequest],
    lease: Duration,
) -> Result<Vec<Claim>, StoreError> {
    let mut first: HashMap<(&str, Uuid), usize> = HashMap::new();
    let (mut destinations, mut ids, mut owners) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in requests.iter().enumerate() {
        if *first
            .entry((r.destination.as_str(), r.change_id))
            .or_insert(i)
            == i
        {
            destinations.push(r.destination.as_str());
            ids.push(r.change_id);
            owners.push(r.owner);
        }
    }
    let claimed: Vec<(String, Uuid, i32, Option<DateTime<Utc>>)> = sqlx::query_as(
        "INSERT INTO deliveries (destination, change_id, owner, lease_until) \
         SELECT d, c, o, now() + make_interval(secs => $4) FROM unnest($1::text[], $2::uuid[], $3::uuid[]) AS t(d, c, o) \
         ON CONFLICT (destination, change_id) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until \
             WHERE deliveries.state <> 'done' AND (deliveries.lease_until IS NULL OR deliveries.lease_until < now()) \
         RETURNING destination, change_id, attempts, first_failed_at",
    )
    .bind(&destinations)
    .bind(&ids)
    .bind(&owners)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    // One answer per request, by its place; a request asked again later in the call keeps `None` here.
    let mut answers: Vec<Option<Claim>> = vec![None; requests.len()];
    for (d, c, failures, first_failed_at) in claimed {
        if let Some(&i) = first.get(&(d.as_str(), c)) {
            answers[i] = Some(Claim::Claimed {
                failures,
                first_failed_at,
            });
        }
    }
    let (held_destinations, held_ids): (Vec<&str>, Vec<Uuid>) = requests
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            answers[*i].is_none() && first.get(&(r.destination.as_str(), r.change_id)) == Some(i)
        })
        .map(|(_, r)| (r.destination.as_str(), r.change_id))
        .unzip();
    if !held_ids.is_empty() {
        let held: Vec<(String, Uuid, Stored<DeliveryState>, Option<f64>)> = sqlx::query_as(
            "SELECT d.destination, d.change_id, d.state, EXTRACT(EPOCH FROM (d.lease_until - now()))::float8 \
             FROM deliveries d JOIN unnest($1::text[], $2::uuid[]) AS t(destination, change_id) \
                 ON d.destination = t.destination AND d.change_id = t.change_id",
        )
        .bind(&held_destinations)
        .bind(&held_ids)
        .fetch_all(pool)
        .await?;
        for (d, c, state, remaining) in held {
            if let Some(&i) = first.get(&(d.as_str(), c)) {
                answers[i] = Some(match state {
                    Stored::Known(DeliveryState::Done) => Claim::Done,
                    _ => Claim::Leased {
                        remaining: Duration::from_secs_f64(
                            remaining.unwrap_or(0.0).clamp(0.0, 86_400.0),
                        ),
                    },
                });
            }
        }
    }
    Ok(requests
        .iter()
        .zip(answers)
        .enumerate()
        .map(|(i, (r, answer))| match answer {
            Some(claim) => claim,
            // Asked twice in this call: the first request holds it.
            None if first.get(&(r.destination.as_str(), r.change_id)) != Some(&i) => {
                Claim::Leased { remaining: lease }
            }
            // Claimed and released between the two statements: let the caller come back.
            None => Claim::Leased {
                remaining: Duration::ZERO,
            },
        })
        .collect())
}

/// A claim its holder still works on: `(destination, change_id)` under `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub destination: String,
    pub change_id: Uuid,
    pub owner: Uuid,
}

/// Extends the lease of every claim in `held` still owned by its owner to `lease` from now, in one statement (the
/// holder's heartbeat). Returns how many were extended: a claim taken over (its lease had expired) or finished is
/// left alone.
pub async fn extend_leases(
    pool: &PgPool,
    held: &[Held],
    lease: Duration,
) -> Result<u64, StoreError> {
    let destinations: Vec<&str> = held.iter().map(|h| h.destination.as_str()).collect();
    let ids: Vec<Uuid> = held.iter().map(|h| h.change_id).collect();
    let owners: Vec<Uuid> = held.iter().map(|h| h.owner).collect();
    Ok(sqlx::query(
        "UPDATE deliveries d SET lease_until = now() + make_interval(secs => $4) \
         FROM unnest($1::text[], $2::uuid[], $3::uuid[]) AS t(destination, change_id, owner) \
         WHERE d.destination = t.destination AND d.change_id = t.change_id AND d.owner = t.owner \
           AND d.state <> 'done'",
    )
    .bind(&destinations)
    .bind(&ids)
    .bind(&owners)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}

/// One outcome to record as done (or skipped): `detail` is kept (a Message-ID, an HTTP status, why it was
/// skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub destination: String,
    pub change_id: Uuid,
    pub detail: String,
}

/// Records every outcome as done in one statement (one commit).
pub async fn complete_many(pool: &PgPool, done: &[Completed]) -> Result<(), StoreError> {
    let destinations: Vec<&str> = done.iter().map(|d| d.destination.as_str()).collect();
    let ids: Vec<Uuid> = done.iter().map(|d| d.change_id).collect();
    let details: Vec<&str> = done.iter().map(|d| d.detail.as_str()).collect();
    sqlx::query(
        "UPDATE deliveries d SET state = 'done', attempts = d.attempts + 1, completed_at = now(), detail = t.detail, \
             last_error = NULL, owner = NULL, lease_until = NULL \
         FROM unnest($1::text[], $2::uuid[], $3::text[]) AS t(destination, change_id, detail) \
         WHERE d.destination = t.destination AND d.change_id = t.change_id",
    )
    .bind(&destinations)
    .bind(&ids)
    .bind(&details)
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
