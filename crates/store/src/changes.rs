//! Status changes as the publishers read them back: a message on `order.status` is only a pointer, and the
//! change the database recorded is what gets sent.

use crate::{StoreError, Stored};
use chrono::{DateTime, FixedOffset, Utc};
use sqlx::PgPool;
use std::time::Duration;
use tracking_domain::{Source, Status};
use uuid::Uuid;

/// A recorded change, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recorded {
    /// The message as the normalizer (or scheduler) recorded it.
    pub payload: serde_json::Value,
    /// The status of the newest later change of the same shipment for the same order, if any.
    pub superseded_by: Option<crate::Text<Status>>,
    /// Its order's customer was erased (`orders.erased_at`): the payload's customer is the placeholder, and
    /// nothing may be sent to the customer.
    pub erased: bool,
}

/// The recorded changes `change_ids`, in one statement: one answer per id, in order, `None` for an id no change
/// was ever recorded under.
pub async fn recorded_many(
    pool: &PgPool,
    change_ids: &[Uuid],
) -> Result<Vec<Option<Recorded>>, StoreError> {
    let rows: Vec<(i64, serde_json::Value, Option<crate::Text<Status>>, bool)> = sqlx::query_as(
        "SELECT t.i, sc.payload, \
             (SELECT later.status FROM status_changes later \
              WHERE later.shipment_id = sc.shipment_id AND later.order_ref IS NOT DISTINCT FROM sc.order_ref \
                AND later.seq > sc.seq \
              ORDER BY later.seq DESC LIMIT 1) AS superseded_by, \
             COALESCE((SELECT o.erased_at IS NOT NULL FROM orders o WHERE o.id = sc.order_ref), false) AS erased \
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(change_id, i) \
         JOIN status_changes sc ON sc.change_id = t.change_id",
    )
    .bind(change_ids)
    .fetch_all(pool)
    .await?;
    let mut answers: Vec<Option<Recorded>> = vec![None; change_ids.len()];
    for (i, payload, superseded_by, erased) in rows {
        if let Some(answer) = at(&mut answers, i) {
            *answer = Some(Recorded {
                payload,
                superseded_by,
                erased,
            });
        }
    }
    Ok(answers)
}

/// The answer of the `i`-th request (`WITH ORDINALITY` counts from 1).
fn at<T>(answers: &mut [T], i: i64) -> Option<&mut T> {
    usize::try_from(i.checked_sub(1)?)
        .ok()
        .and_then(|i| answers.get_mut(i))
}

/// An earlier change of an order that holds its later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Pending {
    pub change_id: Uuid,
    /// Its delivery failed at the far end and waits for a retry (the marketplace fails): the later changes
    /// wait long; otherwise it is on its way (queued, or being sent) and they wait short.
    pub failing: bool,
}

/// What [`earlier_pending_many`] and [`later_pending_many`] look for: the changes of order `order_id` (relayed to
/// `marketplace`) around `change_id` that `destination` has neither done nor parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    pub destination: String,
    pub order_id: String,
    pub marketplace: String,
    pub change_id: Uuid,
}

/// The arrays a batch of [`PendingRequest`]s is bound as.
fn pending_arrays(requests: &[PendingRequest]) -> (Vec<&str>, Vec<&str>, Vec<&str>, Vec<Uuid>) {
    let mut arrays = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in requests {
        arrays.0.push(r.destination.as_str());
        arrays.1.push(r.order_id.as_str());
        arrays.2.push(r.marketplace.as_str());
        arrays.3.push(r.change_id);
    }
    arrays
}

/// For each request, in one statement: the first change of its order recorded before its change, within
/// `within`, that its destination has neither done nor parked (the marketplace must get the order's changes in
/// order). One answer per request, in order.
pub async fn earlier_pending_many(
    pool: &PgPool,
    requests: &[PendingRequest],
    within: Duration,
) -> Result<Vec<Option<Pending>>, StoreError> {
    let (destinations, orders, marketplaces, ids) = pending_arrays(requests);
    let rows: Vec<(i64, Uuid, bool)> = sqlx::query_as(
        "SELECT t.i, p.change_id, p.failing \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[]) WITH ORDINALITY \
             AS t(destination, order_id, marketplace, change_id, i) \
         CROSS JOIN LATERAL ( \
             SELECT sc.change_id, COALESCE(d.state = 'failed', false) AS failing FROM status_changes sc \
             JOIN orders o ON o.id = sc.order_ref \
             LEFT JOIN deliveries d ON d.destination = t.destination AND d.change_id = sc.change_id \
             WHERE o.order_id = t.order_id AND o.marketplace_name = t.marketplace \
               AND sc.seq < (SELECT seq FROM status_changes WHERE change_id = t.change_id) \
               AND sc.created_at > now() - make_interval(secs => $5) \
               AND (d.state IS NULL OR d.state NOT IN ('done', 'parked')) \
             ORDER BY sc.seq LIMIT 1) p",
    )
    .bind(&destinations)
    .bind(&orders)
    .bind(&marketplaces)
    .bind(&ids)
    .bind(within.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut answers: Vec<Option<Pending>> = vec![None; requests.len()];
    for (i, change_id, failing) in rows {
        if let Some(answer) = at(&mut answers, i) {
            *answer = Some(Pending { change_id, failing });
        }
    }
    Ok(answers)
}

/// For each request, in one statement: the recorded payloads of its order's changes recorded after its change,
/// within `within`, that its destination has neither done nor parked, oldest first, at most `limit`: the changes
/// that waited behind it, which its relayer relays at once instead of leaving them to their next return. One
/// answer per request, in order.
pub async fn later_pending_many(
    pool: &PgPool,
    requests: &[PendingRequest],
    within: Duration,
    limit: i64,
) -> Result<Vec<Vec<serde_json::Value>>, StoreError> {
    let (destinations, orders, marketplaces, ids) = pending_arrays(requests);
    let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT t.i, p.payload \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[]) WITH ORDINALITY \
             AS t(destination, order_id, marketplace, change_id, i) \
         CROSS JOIN LATERAL ( \
             SELECT sc.seq, sc.payload FROM status_changes sc \
             JOIN orders o ON o.id = sc.order_ref \
             LEFT JOIN deliveries d ON d.destination = t.destination AND d.change_id = sc.change_id \
             WHERE o.order_id = t.order_id AND o.marketplace_name = t.marketplace \
               AND sc.seq > (SELECT seq FROM status_changes WHERE change_id = t.change_id) \
               AND sc.created_at > now() - make_interval(secs => $5) \
               AND sc.published_at IS NOT NULL \
               AND (d.state IS NULL OR d.state NOT IN ('done', 'parked')) \
             ORDER BY sc.seq LIMIT $6) p \
         ORDER BY t.i, p.seq",
    )
    .bind(&destinations)
    .bind(&orders)
    .bind(&marketplaces)
    .bind(&ids)
    .bind(within.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut answers: Vec<Vec<serde_json::Value>> = vec![Vec::new(); requests.len()];
    for (i, payload) in rows {
        if let Some(answer) = at(&mut answers, i) {
            answer.push(payload);
        }
    }
    Ok(answers)
}

/// A recorded change as people read it (`trackctl shipment show`, an order's history in `tracking-api`). Its
/// statuses are read as stored, so that one row written by another version still shows.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Listed {
    pub change_id: Uuid,
    pub previous_status: Stored<Status>,
    pub status: Stored<Status>,
    /// The deciding event's time in UTC (the column); [`Listed::occurred_at_local`] keeps the published offset.
    pub occurred_at: DateTime<Utc>,
    /// The published `occurred_at`, with the carrier's offset.
    pub published_offset: Option<String>,
    /// `carrier` or `manual`, as published.
    pub source: Option<Stored<Source>>,
    pub reason: Option<String>,
    /// The carrier's own words: `code`, `type`, `description`, `location`.
    pub event: Option<serde_json::Value>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// Whether the relay (or the normalizer) published it.
    pub published: bool,
}

/// The columns of a [`Listed`], for a `SELECT` from `status_changes`.
pub const LISTED_COLUMNS: &str = "change_id, previous_status, status, occurred_at, \
     payload->>'occurred_at' AS published_offset, payload->>'source' AS source, payload->>'reason' AS reason, \
     payload->'event' AS event, created_at, published_at IS NOT NULL AS published";

impl Listed {
    /// The deciding event's time with its offset, as published.
    pub fn occurred_at_local(&self) -> DateTime<FixedOffset> {
        self.published_offset
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .unwrap_or_else(|| self.occurred_at.fixed_offset())
    }
}

/// Every change recorded for shipment `shipment_id`, in carrier-time order.
pub async fn of_shipment(pool: &PgPool, shipment_id: i64) -> Result<Vec<Listed>, StoreError> {
    let sql = format!(
        "SELECT {LISTED_COLUMNS} FROM status_changes WHERE shipment_id = $1 ORDER BY occurred_at"
    );
    Ok(sqlx::query_as(&sql)
        .bind(shipment_id)
        .fetch_all(pool)
        .await?)
}
