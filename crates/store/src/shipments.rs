//! Shipments and their order context.

use crate::{StoreError, Stored};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use tracking_domain::{
    Carrier, Customer, EmailAddress, Locale, MarketplaceRef, OrderId, Status, TrackingCode,
    TrackingRequest,
};

#[derive(Debug, Clone, FromRow)]
pub struct ShipmentRow {
    pub id: i64,
    /// Kept even when unknown to this version: such a row is quarantined, never a failed scan.
    pub carrier: Stored<Carrier>,
    pub tracking_code: String,
    pub order_id: String,
    pub customer_email: String,
    pub customer_name: Option<String>,
    pub customer_locale: String,
    pub marketplace_name: Option<String>,
    pub marketplace_order_id: Option<String>,
    pub invoice_number: Option<String>,
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
    /// The store the shipment belongs to (its re-polls use that store's carrier account).
    pub store: String,
}

pub const SHIPMENT_COLUMNS: &str = "id, carrier, tracking_code, order_id, customer_email, customer_name, customer_locale, \
     marketplace_name, marketplace_order_id, invoice_number, status, status_reason, status_at, estimated_delivery, \
     last_news_at, next_poll_at, finished_at, quarantine_reason, not_trackable_reason, not_trackable_at, late_since, \
     stalled_since, store";

impl ShipmentRow {
    pub fn status(&self) -> Result<Status, StoreError> {
        self.status.known()
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

    /// The tracking request this shipment was registered with (its latest order context).
    pub fn request(&self) -> Result<TrackingRequest, StoreError> {
        let corrupt = |what: &str, e: String| {
            StoreError::Corrupt(format!("shipment {}: {what}: {e}", self.id))
        };
        Ok(TrackingRequest {
            order_id: OrderId::parse(&self.order_id).map_err(|e| corrupt("order_id", e))?,
            tracking_code: TrackingCode::parse(&self.tracking_code)
                .map_err(|e| corrupt("tracking_code", e.to_string()))?,
            carrier: self
                .carrier
                .known()
                .map_err(|e| corrupt("carrier", e.to_string()))?,
            customer: Customer {
                email: EmailAddress::parse(&self.customer_email)
                    .map_err(|e| corrupt("customer_email", e))?,
                name: self.customer_name.clone(),
                locale: Locale::parse(&self.customer_locale)
                    .map_err(|e| corrupt("customer_locale", e))?,
            },
            marketplace: match (&self.marketplace_name, &self.marketplace_order_id) {
                (Some(name), Some(order_id)) => Some(MarketplaceRef {
                    name: name.clone(),
                    order_id: order_id.clone(),
                }),
                _ => None,
            },
            invoice_number: self.invoice_number.clone(),
            store: tracking_domain::StoreName::parse(&self.store)
                .map_err(|e| corrupt("store", e))?,
        })
    }
}

/// Registers the shipment, or updates its order context when the request brings new data, and locks its row
/// for the rest of the transaction (several normalizers may handle the same shipment at once).
pub async fn upsert_and_lock(
    conn: &mut PgConnection,
    req: &TrackingRequest,
) -> Result<ShipmentRow, StoreError> {
    let sql = format!(
        "INSERT INTO shipments (carrier, tracking_code, order_id, customer_email, customer_name, customer_locale, \
             marketplace_name, marketplace_order_id, invoice_number, store) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (carrier, tracking_code) DO UPDATE SET \
             order_id = EXCLUDED.order_id, customer_email = EXCLUDED.customer_email, \
             customer_name = EXCLUDED.customer_name, customer_locale = EXCLUDED.customer_locale, \
             marketplace_name = EXCLUDED.marketplace_name, marketplace_order_id = EXCLUDED.marketplace_order_id, \
             invoice_number = COALESCE(EXCLUDED.invoice_number, shipments.invoice_number), \
             quarantined_at = NULL, quarantine_reason = NULL, updated_at = now() \
         RETURNING {SHIPMENT_COLUMNS}"
    );
    let row = sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(req.carrier.as_str())
        .bind(req.tracking_code.as_str())
        .bind(req.order_id.as_str())
        .bind(req.customer.email.as_str())
        .bind(req.customer.name.as_deref())
        .bind(req.customer.locale.as_str())
        .bind(req.marketplace.as_ref().map(|m| m.name.as_str()))
        .bind(req.marketplace.as_ref().map(|m| m.order_id.as_str()))
        .bind(req.invoice_number.as_deref())
        .bind(req.store.as_str())
        .fetch_one(&mut *conn)
        .await?;
    // INSERT … ON CONFLICT DO UPDATE already holds the row lock until commit.
    Ok(row)
}

/// Locks a known shipment's row for the rest of the transaction.
pub async fn lock(
    conn: &mut PgConnection,
    carrier: Carrier,
    code: &TrackingCode,
) -> Result<Option<ShipmentRow>, StoreError> {
    let sql = format!(
        "SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE carrier = $1 AND tracking_code = $2 FOR UPDATE"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
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
        "SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE finished_at IS NULL AND quarantined_at IS NULL AND next_poll_at <= $1 \
         ORDER BY next_poll_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    )
}

/// Up to `limit` shipments due at `now`, locked for the rest of the transaction ([`due_scan_sql`]).
pub async fn due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ShipmentRow>, StoreError> {
    Ok(sqlx::query_as::<_, ShipmentRow>(&due_scan_sql())
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

/// The shipments of order `order_id` (of `store`'s, or of every store when `None`).
pub async fn by_order(
    pool: &PgPool,
    order_id: &str,
    store: Option<&tracking_domain::StoreName>,
) -> Result<Vec<ShipmentRow>, StoreError> {
    let sql = format!(
        "SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE order_id = $1 AND ($2::text IS NULL OR store = $2) \
         ORDER BY id"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(order_id)
        .bind(store.map(|s| s.as_str()))
        .fetch_all(pool)
        .await?)
}

/// The shipments with tracking code `code` (of `store`'s, or of every store when `None`).
pub async fn by_code(
    pool: &PgPool,
    code: &str,
    store: Option<&tracking_domain::StoreName>,
) -> Result<Vec<ShipmentRow>, StoreError> {
    let sql = format!(
        "SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE tracking_code = $1 AND ($2::text IS NULL OR store = $2) \
         ORDER BY id"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(code)
        .bind(store.map(|s| s.as_str()))
        .fetch_all(pool)
        .await?)
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub source: String,
    pub code: String,
    pub kind: Option<String>,
    pub description: String,
    pub city: Option<String>,
    pub state: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub utc_offset_secs: i32,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub reverses: bool,
    pub fingerprint: String,
}

/// A shipment's events in carrier-time order.
pub async fn events(
    conn: &mut PgConnection,
    shipment_id: i64,
) -> Result<Vec<EventRow>, StoreError> {
    Ok(sqlx::query_as::<_, EventRow>(
        "SELECT id, source, code, kind, description, city, state, occurred_at, utc_offset_secs, status, reason, reverses, fingerprint \
         FROM tracking_events WHERE shipment_id = $1 ORDER BY occurred_at, id",
    )
    .bind(shipment_id)
    .fetch_all(&mut *conn)
    .await?)
}
