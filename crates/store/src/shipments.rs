//! Shipments: a carrier's parcels, each of one store, carrying one or more orders ([`crate::orders`]).

use crate::orders::{
    FIRST_ORDER_COLUMNS, FIRST_ORDER_JOIN, ORDER_COLUMNS, OrderRow, ShipmentOrder, WithOrder,
};
use crate::{StoreError, Stored, Text};
use chrono::{DateTime, FixedOffset, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use tracking_domain::{Carrier, Source, Status, StoreName, TrackingCode, TrackingRequest};

#[derive(Debug, Clone, FromRow)]
pub struct ShipmentRow {
    pub id: i64,
    /// The store whose parcel it is (its carrier account polls it).
    pub store: String,
    /// Kept even when unknown to this version: such a row is quarantined, never a failed scan.
    pub carrier: Stored<Carrier>,
    pub tracking_code: String,
    pub status: Stored<Status>,
    pub status_reason: Option<String>,
    pub status_at: Option<DateTime<Utc>>,
    pub estimated_delivery: Option<DateTime<Utc>>,
    pub last_news_at: DateTime<Utc>,
    pub next_poll_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the row could not be read back, when it is quarantined (the scheduler skips it).
    pub quarantine_reason: Option<String>,
    /// Why the carrier will not let this account track the shipment (Correios SRO-009), for operators.
    pub not_trackable_reason: Option<String>,
    /// Since when the carrier has answered so.
    pub not_trackable_at: Option<DateTime<Utc>>,
    /// The promised date that passed without delivery, while the shipment is late (see [`crate::late`]).
    pub late_since: Option<DateTime<Utc>>,
    /// The last carrier news before the shipment went quiet for `CARRIER_STALE_AFTER_HOURS`, while it is stalled.
    pub stalled_since: Option<DateTime<Utc>>,
    /// Set when the code came back for a new parcel (`RECYCLE_AFTER_DAYS`): this old parcel keeps its history
    /// and its orders, and a newer shipment holds the code.
    pub retired_at: Option<DateTime<Utc>>,
}

pub const SHIPMENT_COLUMNS: &str = "id, store, carrier, tracking_code, status, status_reason, status_at, \
     estimated_delivery, last_news_at, next_poll_at, finished_at, quarantine_reason, not_trackable_reason, \
     not_trackable_at, late_since, stalled_since, retired_at";

/// [`SHIPMENT_COLUMNS`] qualified by the alias `s`, for joins.
pub fn shipment_columns_of(alias: &str) -> String {
    SHIPMENT_COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ShipmentRow {
    pub fn status(&self) -> Result<Status, StoreError> {
        self.status.known()
    }

    /// The store, as the domain names it.
    pub fn store(&self) -> Result<StoreName, StoreError> {
        StoreName::parse(&self.store)
            .map_err(|e| StoreError::Corrupt(format!("shipment {}: store: {e}", self.id)))
    }

    /// What a live shipment is unique by; an error when a stored part is no longer valid.
    pub fn key(&self) -> Result<crate::normalize::ShipmentKey, StoreError> {
        let carrier = self
            .carrier
            .known()
            .map_err(|e| StoreError::Corrupt(format!("shipment {}: carrier: {e}", self.id)))?;
        crate::normalize::ShipmentKey::read(self.id, &self.store, carrier, &self.tracking_code)
    }

    /// Marked late by the scheduler and still on its way (see [`crate::late`]): the promised date that passed.
    pub fn late(&self) -> Option<DateTime<Utc>> {
        self.late_since
            .filter(|_| self.finished_at.is_none() && self.status().is_ok_and(Status::can_be_late))
    }

    /// Marked stalled by the scheduler and still expected to move: the last carrier news.
    pub fn stalled(&self) -> Option<DateTime<Utc>> {
        self.stalled_since
            .filter(|_| self.finished_at.is_none() && self.status().is_ok_and(Status::can_stall))
    }

    /// The tracking request of this parcel for `order` (one of its orders): what a poll carries and what a
    /// change for that order says.
    pub fn request_for(&self, order: &OrderRow) -> Result<TrackingRequest, StoreError> {
        let corrupt = |what: &str, e: String| {
            StoreError::Corrupt(format!("shipment {}: {what}: {e}", self.id))
        };
        let code = TrackingCode::parse(&self.tracking_code)
            .map_err(|e| corrupt("tracking_code", e.to_string()))?;
        let carrier = self
            .carrier
            .known()
            .map_err(|e| corrupt("carrier", e.to_string()))?;
        order.request(self.store()?, carrier, code)
    }
}

/// Locks a known live shipment's row for the rest of the transaction.
pub async fn lock(
    conn: &mut PgConnection,
    store: &StoreName,
    carrier: Carrier,
    code: &TrackingCode,
) -> Result<Option<ShipmentRow>, StoreError> {
    let sql = format!(
        "SELECT {SHIPMENT_COLUMNS} FROM shipments \
         WHERE store = $1 AND carrier = $2 AND tracking_code = $3 AND retired_at IS NULL FOR UPDATE"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(store.as_str())
        .bind(carrier.as_str())
        .bind(code.as_str())
        .fetch_optional(&mut *conn)
        .await?)
}

/// Marks a shipment whose row cannot be read back: the scheduler skips it from now on, and the reason is kept
/// for an operator (`trackctl shipment show`). The next valid tracking request for it lifts the quarantine.
pub async fn quarantine(
    conn: &mut PgConnection,
    shipment_id: i64,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE shipments SET quarantined_at = now(), quarantine_reason = $2, updated_at = now() WHERE id = $1",
    )
    .bind(shipment_id)
    .bind(tracking_domain::text::clean(reason, tracking_domain::text::LONG))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The due-scan: up to `$2` shipments due at `$1`, oldest first, skipping those another scheduler holds
/// (served by the partial index `shipments_due`). Public for the benchmark that times it.
pub fn due_scan_sql() -> String {
    format!(
        "SELECT {}, {FIRST_ORDER_COLUMNS} FROM shipments s {FIRST_ORDER_JOIN} \
         WHERE s.finished_at IS NULL AND s.quarantined_at IS NULL AND s.next_poll_at <= $1 \
         ORDER BY s.next_poll_at LIMIT $2 FOR UPDATE OF s SKIP LOCKED",
        shipment_columns_of("s")
    )
}

/// Up to `limit` shipments due at `now`, each with its first order (a poll names it), locked for the rest of
/// the transaction ([`due_scan_sql`]). A shipment without any order (written by hand) has `order: None`.
pub async fn due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<WithOrder>, StoreError> {
    Ok(sqlx::query_as::<_, WithOrder>(&due_scan_sql())
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?)
}

/// A poll of the shipment was requested: the next one is due at `next_poll_at`; a final poll (delivered,
/// returned) marks it finished.
pub async fn polled(
    conn: &mut PgConnection,
    shipment_id: i64,
    next_poll_at: DateTime<Utc>,
    final_poll: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE shipments SET next_poll_at = $2, finished_at = CASE WHEN $3 THEN now() ELSE NULL END WHERE id = $1",
    )
    .bind(shipment_id)
    .bind(next_poll_at)
    .bind(final_poll)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The shipment expired at `at` (no news for too long): its status is `expired` and it is finished.
pub async fn expired(
    conn: &mut PgConnection,
    shipment_id: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE shipments SET status = 'expired', status_at = $2, finished_at = $2, updated_at = now() WHERE id = $1",
    )
    .bind(shipment_id)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The parcels of the orders `order_id` (of `store`, or of every store when `None`), each with that order,
/// by order then parcel.
pub async fn by_order(
    pool: &PgPool,
    order_id: &str,
    store: Option<&StoreName>,
) -> Result<Vec<ShipmentOrder>, StoreError> {
    let sql = format!(
        "SELECT {}, op.link_seq, {ORDER_COLUMNS} FROM orders o \
         JOIN order_parcels op ON op.order_ref = o.id JOIN shipments s ON s.id = op.shipment_id \
         WHERE o.order_id = $1 AND ($2::text IS NULL OR o.store = $2) ORDER BY o.id, s.id",
        shipment_columns_of("s")
    );
    Ok(sqlx::query_as::<_, ShipmentOrder>(&sql)
        .bind(order_id)
        .bind(store.map(StoreName::as_str))
        .fetch_all(pool)
        .await?)
}

/// The shipments of `code` (live and retired, of `store` or of every store when `None`), each with its first
/// order when it has one, oldest first.
pub async fn by_code(
    pool: &PgPool,
    code: &str,
    store: Option<&StoreName>,
) -> Result<Vec<WithOrder>, StoreError> {
    let sql = format!(
        "SELECT {}, {FIRST_ORDER_COLUMNS} FROM shipments s {FIRST_ORDER_JOIN} \
         WHERE s.tracking_code = $1 AND ($2::text IS NULL OR s.store = $2) ORDER BY s.id",
        shipment_columns_of("s")
    );
    Ok(sqlx::query_as::<_, WithOrder>(&sql)
        .bind(code)
        .bind(store.map(StoreName::as_str))
        .fetch_all(pool)
        .await?)
}

/// A row of `tracking_events`: every column but `raw` (the carrier's own answer, kept for replays and never read
/// on the way to a decision). Its states are typed: a stored `source` or `status` this version does not know makes
/// the read fail with a decode error naming it (the statement's work is refused as data, never misread).
#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub shipment_id: i64,
    /// `carrier`, or `manual` for an event support entered.
    pub source: Text<Source>,
    pub fingerprint: String,
    pub code: String,
    pub kind: Option<String>,
    pub description: String,
    pub detail: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub unit: Option<String>,
    /// The carrier's time in UTC; [`EventRow::occurred_at_local`] gives it in the carrier's offset.
    pub occurred_at: DateTime<Utc>,
    pub utc_offset_secs: i32,
    /// The canonical status the event maps to; `None` when nobody mapped its code (or it reverses another).
    pub status: Option<Text<Status>>,
    pub reason: Option<String>,
    pub reverses: bool,
    pub received_at: DateTime<Utc>,
}

/// The columns of an [`EventRow`], for a `SELECT` from `tracking_events`.
pub const EVENT_COLUMNS: &str = "id, shipment_id, source, fingerprint, code, kind, description, detail, city, state, \
     unit, occurred_at, utc_offset_secs, status, reason, reverses, received_at";

impl EventRow {
    pub fn source(&self) -> Source {
        self.source.0
    }

    /// The status the event maps to, if any.
    pub fn status(&self) -> Option<Status> {
        self.status.map(|s| s.0)
    }

    /// The carrier's time, in the offset the carrier's time was read in.
    pub fn occurred_at_local(&self) -> DateTime<FixedOffset> {
        FixedOffset::east_opt(self.utc_offset_secs).map_or_else(
            || self.occurred_at.fixed_offset(),
            |o| self.occurred_at.with_timezone(&o),
        )
    }
}

/// A shipment's events in carrier-time order.
pub async fn events(
    conn: &mut PgConnection,
    shipment_id: i64,
) -> Result<Vec<EventRow>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM tracking_events WHERE shipment_id = $1 ORDER BY occurred_at, id"
    );
    Ok(sqlx::query_as::<_, EventRow>(&sql)
        .bind(shipment_id)
        .fetch_all(&mut *conn)
        .await?)
}
