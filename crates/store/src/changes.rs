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

/// The recorded change `change_id`, or `None` when no such change was ever recorded.
pub async fn recorded(pool: &PgPool, change_id: Uuid) -> Result<Option<Recorded>, StoreError> {
    Ok(sqlx::query_as::<_, Recorded>(
        "SELECT sc.payload, \
             (SELECT later.status FROM status_changes later \
              WHERE later.shipment_id = sc.shipment_id AND later.order_ref IS NOT DISTINCT FROM sc.order_ref \
                AND later.seq > sc.seq \
              ORDER BY later.seq DESC LIMIT 1) AS superseded_by, \
             COALESCE((SELECT o.erased_at IS NOT NULL FROM orders o WHERE o.id = sc.order_ref), false) AS erased \
         FROM status_changes sc WHERE sc.change_id = $1",
    )
    .bind(change_id)
    .fetch_optional(pool)
    .await?)
}

/// An earlier change of an order that holds its later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Pending {
    pub change_id: Uuid,
    /// Its delivery failed at the far end and waits for a retry (the marketplace fails): the later changes
    /// wait long; otherwise it is on its way (queued, or being sent) and they wait short.
    pub failing: bool,
}

/// The first change of order `order_id` (relayed to `marketplace`) recorded before `change_id`, within `within`,
/// that `destination` has neither done nor parked: the marketplace must get the order's changes in order.
pub async fn earlier_pending(
    pool: &PgPool,
    destination: &str,
    order_id: &str,
    marketplace: &str,
    change_id: Uuid,
    within: Duration,
) -> Result<Option<Pending>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT sc.change_id, COALESCE(d.state = 'failed', false) AS failing FROM status_changes sc \
         JOIN orders o ON o.id = sc.order_ref \
         LEFT JOIN deliveries d ON d.destination = $1 AND d.change_id = sc.change_id \
         WHERE o.order_id = $2 AND o.marketplace_name = $3 \
           AND sc.seq < (SELECT seq FROM status_changes WHERE change_id = $4) \
           AND sc.created_at > now() - make_interval(secs => $5) \
           AND (d.state IS NULL OR d.state NOT IN ('done', 'parked')) \
         ORDER BY sc.seq LIMIT 1",
    )
    .bind(destination)
    .bind(order_id)
    .bind(marketplace)
    .bind(change_id)
    .bind(within.as_secs_f64())
    .fetch_optional(pool)
    .await?)
}

/// The recorded payloads of order `order_id`'s changes (relayed to `marketplace`) recorded after `change_id`,
/// within `within`, that `destination` has neither done nor parked, oldest first, at most `limit`: the changes
/// that waited behind it, which its relayer relays at once instead of leaving them to their next return.
pub async fn later_pending(
    pool: &PgPool,
    destination: &str,
    order_id: &str,
    marketplace: &str,
    change_id: Uuid,
    within: Duration,
    limit: i64,
) -> Result<Vec<serde_json::Value>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT sc.payload FROM status_changes sc \
         JOIN orders o ON o.id = sc.order_ref \
         LEFT JOIN deliveries d ON d.destination = $1 AND d.change_id = sc.change_id \
         WHERE o.order_id = $2 AND o.marketplace_name = $3 \
           AND sc.seq > (SELECT seq FROM status_changes WHERE change_id = $4) \
           AND sc.created_at > now() - make_interval(secs => $5) \
           AND sc.published_at IS NOT NULL \
           AND (d.state IS NULL OR d.state NOT IN ('done', 'parked')) \
         ORDER BY sc.seq LIMIT $6",
    )
    .bind(destination)
    .bind(order_id)
    .bind(marketplace)
    .bind(change_id)
    .bind(within.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
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
