//! The normalizer's statements: a batch of carrier updates written with set-based statements (arrays through
//! `UNNEST`) in one transaction, the outbox of status changes, and the recomputation after a code-table change.
//!
//! Lock order: every transaction that locks several shipments locks them sorted by `(carrier, tracking_code)`,
//! existing rows first in one statement ([`lock_sorted`]), then the rows it registers ([`register_sorted`]), so
//! two batches sharing shipments wait for each other instead of deadlocking.

use crate::StoreError;
use crate::shipments::{EventRow, SHIPMENT_COLUMNS, ShipmentRow};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use std::time::Duration;
use tracking_domain::TrackingRequest;
use uuid::Uuid;

/// Locks the existing shipments among `keys` (`(carrier, tracking_code)`), in sorted order, for the rest of the
/// transaction, and returns them. Keys without a row are left out.
pub async fn lock_sorted(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<Vec<ShipmentRow>, StoreError> {
    let (carriers, codes): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(c, t)| (c.as_str(), t.as_str())).unzip();
    let sql = format!(
        "SELECT {SHIPMENT_COLUMNS} FROM shipments \
         WHERE (carrier, tracking_code) IN (SELECT * FROM UNNEST($1::text[], $2::text[])) \
         ORDER BY carrier, tracking_code FOR UPDATE"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(carriers)
        .bind(codes)
        .fetch_all(&mut *conn)
        .await?)
}

/// Registers each request's shipment, or updates its order context (an invoice number is kept when the request
/// has none), in sorted order; the rows stay locked for the rest of the transaction. One request per shipment.
pub async fn register_sorted(
    conn: &mut PgConnection,
    requests: &[&TrackingRequest],
) -> Result<Vec<ShipmentRow>, StoreError> {
    let col = |f: &dyn Fn(&TrackingRequest) -> Option<String>| {
        requests.iter().map(|r| f(r)).collect::<Vec<_>>()
    };
    let sql = format!(
        "INSERT INTO shipments (carrier, tracking_code, order_id, customer_email, customer_name, customer_locale, \
             marketplace_name, marketplace_order_id, invoice_number, store) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::text[], $10::text[]) AS r(carrier, tracking_code, order_id, customer_email, customer_name, \
             customer_locale, marketplace_name, marketplace_order_id, invoice_number, store) \
         ORDER BY carrier, tracking_code \
         ON CONFLICT (carrier, tracking_code) DO UPDATE SET \
             order_id = EXCLUDED.order_id, customer_email = EXCLUDED.customer_email, \
             customer_name = EXCLUDED.customer_name, customer_locale = EXCLUDED.customer_locale, \
             marketplace_name = EXCLUDED.marketplace_name, marketplace_order_id = EXCLUDED.marketplace_order_id, \
             invoice_number = COALESCE(EXCLUDED.invoice_number, shipments.invoice_number), \
             quarantined_at = NULL, quarantine_reason = NULL, updated_at = now() \
         RETURNING {SHIPMENT_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(col(&|r| Some(r.carrier.as_str().to_owned())))
        .bind(col(&|r| Some(r.tracking_code.as_str().to_owned())))
        .bind(col(&|r| Some(r.order_id.as_str().to_owned())))
        .bind(col(&|r| Some(r.customer.email.as_str().to_owned())))
        .bind(col(&|r| r.customer.name.clone()))
        .bind(col(&|r| Some(r.customer.locale.as_str().to_owned())))
        .bind(col(&|r| r.marketplace.as_ref().map(|m| m.name.clone())))
        .bind(col(&|r| r.marketplace.as_ref().map(|m| m.order_id.clone())))
        .bind(col(&|r| r.invoice_number.clone()))
        .bind(col(&|r| Some(r.store.as_str().to_owned())))
        .fetch_all(&mut *conn)
        .await?)
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub shipment_id: i64,
    pub source: &'static str,
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
    pub status: Option<String>,
    pub reason: Option<String>,
    pub reverses: bool,
    pub raw: serde_json::Value,
}

/// Stores the events in one statement, in the given order (their ids follow it); an event whose fingerprint is
/// already stored adds nothing. Returns the fingerprints stored now.
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
         ON CONFLICT (fingerprint) DO NOTHING RETURNING fingerprint",
    )
    .bind(events.iter().map(|e| e.shipment_id).collect::<Vec<_>>())
    .bind(col(&|e| Some(e.source.to_owned())))
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
    .bind(col(&|e| e.status.clone()))
    .bind(col(&|e| e.reason.clone()))
    .bind(events.iter().map(|e| e.reverses).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.raw.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?)
}

/// A stored event with its shipment.
#[derive(Debug, Clone, FromRow)]
pub struct ShipmentEvent {
    pub shipment_id: i64,
    #[sqlx(flatten)]
    pub event: EventRow,
}

/// The events of several shipments, each shipment's in carrier-time order.
pub async fn events_of(
    conn: &mut PgConnection,
    shipment_ids: &[i64],
) -> Result<Vec<ShipmentEvent>, StoreError> {
    Ok(sqlx::query_as::<_, ShipmentEvent>(
        "SELECT shipment_id, id, source, code, kind, description, city, state, occurred_at, utc_offset_secs, status, \
             reason, reverses, fingerprint \
         FROM tracking_events WHERE shipment_id = ANY($1) ORDER BY shipment_id, occurred_at, id",
    )
    .bind(shipment_ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// A status change to record in the outbox.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub change_id: Uuid,
    pub shipment_id: i64,
    pub event_id: Option<i64>,
    pub status: String,
    pub previous_status: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// Records the changes in the given order (`seq` follows it); a change id already recorded adds nothing.
/// Returns the ids recorded now.
pub async fn record_changes(
    conn: &mut PgConnection,
    changes: &[NewChange],
) -> Result<Vec<Uuid>, StoreError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO status_changes (change_id, shipment_id, event_id, status, previous_status, occurred_at, payload) \
         SELECT change_id, shipment_id, event_id, status, previous_status, occurred_at, payload \
         FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::timestamptz[], $7::jsonb[]) \
             WITH ORDINALITY AS c(change_id, shipment_id, event_id, status, previous_status, occurred_at, payload, n) \
         ORDER BY n \
         ON CONFLICT (change_id) DO NOTHING RETURNING change_id",
    )
    .bind(changes.iter().map(|c| c.change_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.shipment_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.event_id).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.status.clone()).collect::<Vec<_>>())
    .bind(
        changes
            .iter()
            .map(|c| c.previous_status.clone())
            .collect::<Vec<_>>(),
    )
    .bind(changes.iter().map(|c| c.occurred_at).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.payload.clone()).collect::<Vec<_>>())
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
    pub status: Option<(String, Option<String>, DateTime<Utc>)>,
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
            .map(|r| r.status.as_ref().map(|s| s.0.clone()))
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
    status: &str,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE shipments SET status = $2, status_reason = $3, status_at = $4, finished_at = NULL, \
             late_since = CASE WHEN $2 = ANY($5) THEN late_since END, updated_at = now() WHERE id = $1",
    )
    .bind(shipment_id)
    .bind(status)
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
    pub status: String,
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

/// The ids of every shipment, or of those with `tracking_code` when given.
pub async fn shipment_ids(
    pool: &PgPool,
    tracking_code: Option<&str>,
) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM shipments WHERE $1::text IS NULL OR tracking_code = $1 ORDER BY id",
    )
    .bind(tracking_code)
    .fetch_all(pool)
    .await?)
}

/// Locks one shipment by id for the rest of the transaction.
pub async fn lock_by_id(
    conn: &mut PgConnection,
    shipment_id: i64,
) -> Result<Option<ShipmentRow>, StoreError> {
    let sql = format!("SELECT {SHIPMENT_COLUMNS} FROM shipments WHERE id = $1 FOR UPDATE");
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(shipment_id)
        .fetch_optional(&mut *conn)
        .await?)
}

/// Stores an event's new mapping after the code table changed.
pub async fn remap_event(
    conn: &mut PgConnection,
    event_id: i64,
    status: Option<&str>,
    reason: Option<&str>,
    reverses: bool,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE tracking_events SET status = $2, reason = $3, reverses = $4 WHERE id = $1")
        .bind(event_id)
        .bind(status)
        .bind(reason)
        .bind(reverses)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
