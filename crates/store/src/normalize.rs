//! The normalizer's statements: a batch of carrier updates written with set-based statements (arrays through
//! `UNNEST`) in one transaction, the outbox of status changes, and the recomputation after a code-table change.
//!
//! Lock order: every transaction that locks several shipments locks them sorted by
//! `(store, carrier, tracking_code, id)`, existing rows (with the other parcels of their orders) first in one
//! statement ([`lock_sorted`]), then the rows it registers ([`register_sorted`]), then the orders it registers
//! (sorted by `(store, order_id)`), so two batches sharing shipments or orders wait for each other instead of
//! deadlocking.

use crate::shipments::{EVENT_COLUMNS, EventRow, SHIPMENT_COLUMNS, ShipmentRow};
use crate::{StoreError, Text};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use std::time::Duration;
use tracking_domain::{Carrier, Source, Status, StoreName, TrackingCode};
use uuid::Uuid;

/// A shipment's key: a live shipment is unique by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShipmentKey {
    pub store: StoreName,
    pub carrier: Carrier,
    pub tracking_code: TrackingCode,
}

impl ShipmentKey {
    /// The key of a stored shipment, read back from its columns; a value that is no longer valid is an error
    /// naming the shipment.
    pub fn read(id: i64, store: &str, carrier: Carrier, code: &str) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str, e: String| StoreError::Corrupt(format!("shipment {id}: {what}: {e}"));
        Ok(ShipmentKey {
            store: StoreName::parse(store).map_err(|e| corrupt("store", e.to_string()))?,
            carrier,
            tracking_code: TrackingCode::parse(code)
                .map_err(|e| corrupt("tracking_code", e.to_string()))?,
        })
    }
}

impl std::fmt::Display for ShipmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} for store {}",
            self.carrier, self.tracking_code, self.store
        )
    }
}

/// The three columns of `keys`, for `UNNEST`.
fn key_columns(keys: &[ShipmentKey]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    (
        keys.iter().map(|k| k.store.as_str()).collect(),
        keys.iter().map(|k| k.carrier.as_str()).collect(),
        keys.iter().map(|k| k.tracking_code.as_str()).collect(),
    )
}

/// Locks the live shipments among `keys` and every other parcel of their orders (an order's progress is read
/// from its parcels' statuses, so they must not move under it), in one statement sorted by
/// `(store, carrier, tracking_code, id)`, for the rest of the transaction, and returns them. Keys without a row
/// are left out; retired parcels of the orders are among the siblings.
pub async fn lock_sorted(
    conn: &mut PgConnection,
    keys: &[ShipmentKey],
) -> Result<Vec<ShipmentRow>, StoreError> {
    let (stores, carriers, codes) = key_columns(keys);
    let sql = format!(
        "WITH batch AS (SELECT s.id FROM shipments s \
             WHERE (s.store, s.carrier, s.tracking_code) IN (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])) \
               AND s.retired_at IS NULL), \
         siblings AS (SELECT other.shipment_id AS id FROM order_parcels mine \
             JOIN order_parcels other ON other.order_ref = mine.order_ref WHERE mine.shipment_id IN (SELECT id FROM batch)) \
         SELECT {SHIPMENT_COLUMNS} FROM shipments \
         WHERE id IN (SELECT id FROM batch UNION SELECT id FROM siblings) \
         ORDER BY store, carrier, tracking_code, id FOR UPDATE"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(stores)
        .bind(carriers)
        .bind(codes)
        .fetch_all(&mut *conn)
        .await?)
}

/// Retires shipments whose code came back for a new parcel: they keep their history and orders, and no longer
/// hold the code.
pub async fn retire(conn: &mut PgConnection, shipment_ids: &[i64]) -> Result<(), StoreError> {
    if shipment_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE shipments SET retired_at = now(), updated_at = now() WHERE id = ANY($1)")
        .bind(shipment_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Registers a live shipment for each key that has none (lifting the quarantine of one that has), in sorted
/// order; the rows stay locked for the rest of the transaction.
pub async fn register_sorted(
    conn: &mut PgConnection,
    keys: &[ShipmentKey],
) -> Result<Vec<ShipmentRow>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "INSERT INTO shipments (store, carrier, tracking_code) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) AS r(store, carrier, tracking_code) \
         ORDER BY store, carrier, tracking_code \
         ON CONFLICT (store, carrier, tracking_code) WHERE retired_at IS NULL DO UPDATE SET \
             quarantined_at = NULL, quarantine_reason = NULL, updated_at = now() \
         RETURNING {SHIPMENT_COLUMNS}"
    );
    let (stores, carriers, codes) = key_columns(keys);
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(stores)
        .bind(carriers)
        .bind(codes)
        .fetch_all(&mut *conn)
        .await?)
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub shipment_id: i64,
    pub source: Source,
    pub fingerprint: String,
    pub code: String,
    pub kind: Option<String>,
    pub description: String,
    pub detail: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub unit: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub utc_offset_secs: i32,
    pub status: Option<Status>,
    pub reason: Option<String>,
    pub reverses: bool,
    pub raw: serde_json::Value,
}

/// Stores the events in one statement, in the given order (their ids follow it); an event whose fingerprint is
/// already stored on its shipment adds nothing. Returns the fingerprints stored now.
pub async fn insert_events(
    conn: &mut PgConnection,
    events: &[NewEvent],
) -> Result<Vec<String>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: &dyn Fn(&NewEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
    Ok(sqlx::query_scalar(
        "INSERT INTO tracking_events (shipment_id, source, fingerprint, code, kind, description, detail, city, state, unit, \
             occurred_at, utc_offset_secs, status, reason, reverses, raw) \
         SELECT shipment_id, source, fingerprint, code, kind, description, detail, city, state, unit, occurred_at, \
             utc_offset_secs, status, reason, reverses, raw \
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
             $9::text[], $10::text[], $11::timestamptz[], $12::int4[], $13::text[], $14::text[], $15::bool[], $16::jsonb[]) \
             WITH ORDINALITY AS e(shipment_id, source, fingerprint, code, kind, description, detail, city, state, unit, \
             occurred_at, utc_offset_secs, status, reason, reverses, raw, n) \
         ORDER BY n \
         ON CONFLICT (shipment_id, fingerprint) DO NOTHING RETURNING fingerprint",
    )
    .bind(events.iter().map(|e| e.shipment_id).collect::<Vec<_>>())
    .bind(col(&|e| Some(e.source.as_str().to_owned())))
    .bind(col(&|e| Some(e.fingerprint.clone())))
    .bind(col(&|e| Some(e.code.clone())))
    .bind(col(&|e| e.kind.clone()))
    .bind(col(&|e| Some(e.description.clone())))
    .bind(col(&|e| e.detail.clone()))
    .bind(col(&|e| e.city.clone()))
    .bind(col(&|e| e.state.clone()))
    .bind(col(&|e| e.unit.clone()))
    .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.utc_offset_secs).collect::<Vec<_>>())
    .bind(col(&|e| e.status.map(|s| s.as_str().to_owned())))
    .bind(col(&|e| e.reason.clone()))
    .bind(events.iter().map(|e| e.reverses).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.raw.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?)
}

/// The events of several shipments, each shipment's in carrier-time order.
pub async fn events_of(
    conn: &mut PgConnection,
    shipment_ids: &[i64],
) -> Result<Vec<EventRow>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM tracking_events WHERE shipment_id = ANY($1) \
         ORDER BY shipment_id, occurred_at, id"
    );
    Ok(sqlx::query_as::<_, EventRow>(&sql)
        .bind(shipment_ids)
        .fetch_all(&mut *conn)
        .await?)
}

/// A status change to record in the outbox.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub change_id: Uuid,
    pub shipment_id: i64,
    /// The order of the parcel this change is for (its payload is what that order gets).
    pub order_ref: Option<i64>,
    pub event_id: Option<i64>,
    pub status: Status,
    pub previous_status: Status,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// Records the changes in the given order (`seq` follows it): the one statement that writes `status_changes`. A
/// change id already recorded, or given twice, adds nothing. Returns the ids recorded now.
pub async fn record_changes(
    conn: &mut PgConnection,
    changes: &[NewChange],
) -> Result<Vec<Uuid>, StoreError> {
    let mut ids = std::collections::HashSet::new();
    let changes: Vec<&NewChange> = changes.iter().filter(|c| ids.insert(c.change_id)).collect();
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO status_changes (change_id, shipment_id, order_ref, event_id, status, previous_status, occurred_at, \
             payload) \
         SELECT change_id, shipment_id, order_ref, event_id, status, previous_status, occurred_at, payload \
         FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::timestamptz[], $7::jsonb[], \
             $8::int8[]) \
             WITH ORDINALITY AS c(change_id, shipment_id, event_id, status, previous_status, occurred_at, payload, \
             order_ref, n) \
         ORDER BY n \
         ON CONFLICT (change_id) DO NOTHING RETURNING change_id",
    )
    .bind(changes.iter().map(|c| c.change_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.shipment_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.event_id).collect::<Vec<_>>())
    .bind(
        changes
            .iter()
            .map(|c| c.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changes
            .iter()
            .map(|c| c.previous_status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(changes.iter().map(|c| c.occurred_at).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.payload.clone()).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.order_ref).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?)
}

/// The statuses in which a shipment can be late: a move to any other lifts the mark.
fn late_statuses() -> Vec<String> {
    tracking_domain::Status::ALL
        .into_iter()
        .filter(|s| s.can_be_late())
        .map(|s| s.as_str().to_owned())
        .collect()
}

/// What a batch of polls (or manual events) leaves on one shipment.
#[derive(Debug, Clone)]
pub struct PollResult {
    pub shipment_id: i64,
    /// The new status, its reason and the carrier time of its deciding event, when the status moved.
    pub status: Option<(Status, Option<String>, DateTime<Utc>)>,
    /// A carrier answered (not only manual events): `last_polled_at` and the not-trackable state are set.
    pub polled: bool,
    /// New events were stored: `last_news_at` is now.
    pub news: bool,
    /// Kept when `None`.
    pub estimated_delivery: Option<DateTime<Utc>>,
    pub carrier_message: Option<String>,
    pub next_poll_at: DateTime<Utc>,
    /// Why the carrier will not let this account track it (when `polled`; `None` clears it).
    pub not_trackable_reason: Option<String>,
}

/// Writes what the batch decided on each shipment, in one statement.
pub async fn update_after_poll(
    conn: &mut PgConnection,
    results: &[PollResult],
) -> Result<(), StoreError> {
    if results.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE shipments s SET \
             status = CASE WHEN u.set_status THEN u.status ELSE s.status END, \
             status_reason = CASE WHEN u.set_status THEN u.status_reason ELSE s.status_reason END, \
             status_at = CASE WHEN u.set_status THEN u.status_at ELSE s.status_at END, \
             finished_at = CASE WHEN u.set_status THEN NULL ELSE s.finished_at END, \
             last_polled_at = CASE WHEN u.polled THEN now() ELSE s.last_polled_at END, \
             last_news_at = CASE WHEN u.news THEN now() ELSE s.last_news_at END, \
             estimated_delivery = COALESCE(u.estimated_delivery, s.estimated_delivery), \
             late_since = CASE WHEN (u.set_status AND u.status <> ALL($12)) OR u.estimated_delivery > s.late_since \
                 THEN NULL ELSE s.late_since END, \
             stalled_since = CASE WHEN u.news THEN NULL ELSE s.stalled_since END, \
             carrier_message = u.carrier_message, next_poll_at = u.next_poll_at, \
             not_trackable_reason = CASE WHEN u.polled THEN u.not_trackable_reason ELSE s.not_trackable_reason END, \
             not_trackable_at = CASE WHEN NOT u.polled THEN s.not_trackable_at WHEN u.not_trackable_reason IS NULL THEN NULL \
                 ELSE COALESCE(s.not_trackable_at, now()) END, \
             updated_at = now() \
         FROM UNNEST($1::int8[], $2::bool[], $3::text[], $4::text[], $5::timestamptz[], $6::bool[], $7::bool[], \
             $8::timestamptz[], $9::text[], $10::timestamptz[], $11::text[]) \
             AS u(id, set_status, status, status_reason, status_at, polled, news, estimated_delivery, carrier_message, \
             next_poll_at, not_trackable_reason) \
         WHERE s.id = u.id",
    )
    .bind(results.iter().map(|r| r.shipment_id).collect::<Vec<_>>())
    .bind(results.iter().map(|r| r.status.is_some()).collect::<Vec<_>>())
    .bind(
        results
            .iter()
            .map(|r| r.status.as_ref().map(|s| s.0.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        results
            .iter()
            .map(|r| r.status.as_ref().and_then(|s| s.1.clone()))
            .collect::<Vec<_>>(),
    )
    .bind(
        results
            .iter()
            .map(|r| r.status.as_ref().map(|s| s.2))
            .collect::<Vec<_>>(),
    )
    .bind(results.iter().map(|r| r.polled).collect::<Vec<_>>())
    .bind(results.iter().map(|r| r.news).collect::<Vec<_>>())
    .bind(
        results
            .iter()
            .map(|r| r.estimated_delivery)
            .collect::<Vec<_>>(),
    )
    .bind(
        results
            .iter()
            .map(|r| r.carrier_message.clone())
            .collect::<Vec<_>>(),
    )
    .bind(results.iter().map(|r| r.next_poll_at).collect::<Vec<_>>())
    .bind(
        results
            .iter()
            .map(|r| r.not_trackable_reason.clone())
            .collect::<Vec<_>>(),
    )
    .bind(late_statuses())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets a shipment's status after a recomputation (not a poll).
pub async fn set_status(
    conn: &mut PgConnection,
    shipment_id: i64,
    status: Status,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE shipments SET status = $2, status_reason = $3, status_at = $4, finished_at = NULL, \
             late_since = CASE WHEN $2 = ANY($5) THEN late_since END, updated_at = now() WHERE id = $1",
    )
    .bind(shipment_id)
    .bind(status.as_str())
    .bind(reason)
    .bind(at)
    .bind(late_statuses())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks changes published (their broker confirm arrived).
pub async fn mark_published(
    conn: impl sqlx::PgExecutor<'_>,
    change_ids: &[Uuid],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE status_changes SET published_at = now() WHERE change_id = ANY($1) AND published_at IS NULL",
    )
    .bind(change_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// An unpublished change as the relay publishes it.
#[derive(Debug, Clone, FromRow)]
pub struct Unpublished {
    pub change_id: Uuid,
    pub status: Text<Status>,
    pub payload: serde_json::Value,
}

/// Up to `limit` changes recorded more than `grace` ago and not published, oldest first, locked for the rest of
/// the transaction (other relays skip them).
pub async fn take_unpublished(
    conn: &mut PgConnection,
    grace: Duration,
    limit: i64,
) -> Result<Vec<Unpublished>, StoreError> {
    Ok(sqlx::query_as::<_, Unpublished>(
        "SELECT change_id, status, payload FROM status_changes \
         WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1) \
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// The keys of every live shipment, or of those with `tracking_code` when given.
pub async fn shipment_keys(
    pool: &PgPool,
    tracking_code: Option<&str>,
) -> Result<Vec<ShipmentKey>, StoreError> {
    let rows: Vec<(i64, String, Text<Carrier>, String)> = sqlx::query_as(
        "SELECT id, store, carrier, tracking_code FROM shipments \
         WHERE retired_at IS NULL AND ($1::text IS NULL OR tracking_code = $1) ORDER BY id",
    )
    .bind(tracking_code)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, store, carrier, code)| ShipmentKey::read(id, &store, carrier.0, &code))
        .collect()
}

/// Stores an event's new mapping after the code table changed.
pub async fn remap_event(
    conn: &mut PgConnection,
    event_id: i64,
    status: Option<Status>,
    reason: Option<&str>,
    reverses: bool,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE tracking_events SET status = $2, reason = $3, reverses = $4 WHERE id = $1")
        .bind(event_id)
        .bind(status.map(Status::as_str))
        .bind(reason)
        .bind(reverses)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The latest change recorded for the first order of each parcel in `shipment_ids`: `(shipment_id, event_id,
/// payload)`. An order that joins a parcel later starts from it.
pub async fn latest_changes_of_first_orders(
    conn: &mut PgConnection,
    shipment_ids: &[i64],
) -> Result<Vec<(i64, Option<i64>, serde_json::Value)>, StoreError> {
    if shipment_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (sc.shipment_id) sc.shipment_id, sc.event_id, sc.payload FROM status_changes sc \
         WHERE sc.shipment_id = ANY($1) AND sc.order_ref = (SELECT op.order_ref FROM order_parcels op \
             WHERE op.shipment_id = sc.shipment_id ORDER BY op.link_seq LIMIT 1) \
         ORDER BY sc.shipment_id, sc.seq DESC",
    )
    .bind(shipment_ids)
    .fetch_all(&mut *conn)
    .await?)
}
