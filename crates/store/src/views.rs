//! Read-only views for people: an order's shipments with their whole history (`tracking-api`'s
//! `GET /v1/orders/{order_id}/tracking`), the newest of it for the public tracking page ([`order_page`]), the
//! carriers' health as the fetchers last reported it (`GET /v1/carriers/health`, `trackctl carriers health`), and
//! the carrier event codes nobody mapped (`trackctl events unmapped`).

use crate::StoreError;
use crate::orders::OrderRow;
use crate::shipments::{self, ShipmentRow};
use chrono::{DateTime, FixedOffset, Utc};
use sqlx::{FromRow, PgPool};
use std::collections::BTreeMap;
use tracking_domain::{Carrier, StoreName};

/// One stored event, as the carrier (or support, for `source = manual`) reported it.
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub source: String,
    pub code: String,
    pub kind: Option<String>,
    pub description: String,
    pub detail: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub unit: Option<String>,
    /// The carrier's time, in the offset the carrier's time was read in.
    pub occurred_at: DateTime<FixedOffset>,
    /// The canonical status the event maps to; `None` when nobody mapped its code (or it reverses another).
    pub status: Option<String>,
    pub reason: Option<String>,
    pub reverses: bool,
    pub received_at: DateTime<Utc>,
}

/// One recorded status change.
#[derive(Debug, Clone)]
pub struct HistoryChange {
    pub change_id: uuid::Uuid,
    pub previous_status: String,
    pub status: String,
    /// The deciding event's time, with its offset (as published).
    pub occurred_at: DateTime<FixedOffset>,
    /// `carrier` or `manual`.
    pub source: Option<String>,
    pub reason: Option<String>,
    /// The carrier's own words: `code`, `type`, `description`, `location`.
    pub event: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    pub published: bool,
}

#[derive(Debug, Clone)]
pub struct ShipmentHistory {
    pub shipment: ShipmentRow,
    /// The order this parcel is listed for (one parcel may carry several orders).
    pub order: OrderRow,
    /// The carrier's per-object message from the last poll without events (e.g. `SRO-020`).
    pub carrier_message: Option<String>,
    /// Oldest first by carrier time (ties by arrival).
    pub events: Vec<HistoryEvent>,
    /// In the order they were recorded.
    pub changes: Vec<HistoryChange>,
}

#[derive(FromRow)]
struct EventRecord {
    source: String,
    code: String,
    kind: Option<String>,
    description: String,
    detail: Option<String>,
    city: Option<String>,
    state: Option<String>,
    unit: Option<String>,
    occurred_at: DateTime<Utc>,
    utc_offset_secs: i32,
    status: Option<String>,
    reason: Option<String>,
    reverses: bool,
    received_at: DateTime<Utc>,
}

#[derive(FromRow)]
struct ChangeRecord {
    change_id: uuid::Uuid,
    previous_status: String,
    status: String,
    occurred_at: DateTime<Utc>,
    published_offset: Option<String>,
    source: Option<String>,
    reason: Option<String>,
    event: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    published: bool,
}

fn with_offset(at: DateTime<Utc>, offset_secs: i32) -> DateTime<FixedOffset> {
    FixedOffset::east_opt(offset_secs).map_or_else(|| at.fixed_offset(), |o| at.with_timezone(&o))
}

fn history_event(r: EventRecord) -> HistoryEvent {
    HistoryEvent {
        occurred_at: with_offset(r.occurred_at, r.utc_offset_secs),
        source: r.source,
        code: r.code,
        kind: r.kind,
        description: r.description,
        detail: r.detail,
        city: r.city,
        state: r.state,
        unit: r.unit,
        status: r.status,
        reason: r.reason,
        reverses: r.reverses,
        received_at: r.received_at,
    }
}

/// The order's shipments (empty when the order is unknown; the orders of that id in every store when `store` is
/// `None`), each with its events and the status changes recorded for that order.
pub async fn order_history(
    pool: &PgPool,
    order_id: &str,
    store: Option<&StoreName>,
) -> Result<Vec<ShipmentHistory>, StoreError> {
    let mut out = Vec::new();
    for found in shipments::by_order(pool, order_id, store).await? {
        let (shipment, order) = (found.shipment, found.order);
        let carrier_message: Option<String> =
            sqlx::query_scalar("SELECT carrier_message FROM shipments WHERE id = $1")
                .bind(shipment.id)
                .fetch_optional(pool)
                .await?
                .flatten();
        let events = sqlx::query_as::<_, EventRecord>(
            "SELECT source, code, kind, description, detail, city, state, unit, occurred_at, utc_offset_secs, \
                 status, reason, reverses, received_at \
             FROM tracking_events WHERE shipment_id = $1 ORDER BY occurred_at, id",
        )
        .bind(shipment.id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(history_event)
        .collect();
        let changes = sqlx::query_as::<_, ChangeRecord>(
            "SELECT change_id, previous_status, status, occurred_at, payload->>'occurred_at' AS published_offset, \
                 payload->>'source' AS source, payload->>'reason' AS reason, payload->'event' AS event, created_at, \
                 published_at IS NOT NULL AS published \
             FROM status_changes WHERE shipment_id = $1 AND (order_ref = $2 OR order_ref IS NULL) ORDER BY seq",
        )
        .bind(shipment.id)
        .bind(order.order_ref)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| HistoryChange {
            // The payload keeps the carrier's offset; the column is UTC.
            occurred_at: r
                .published_offset
                .as_deref()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .unwrap_or_else(|| r.occurred_at.fixed_offset()),
            change_id: r.change_id,
            previous_status: r.previous_status,
            status: r.status,
            source: r.source,
            reason: r.reason,
            event: r.event.unwrap_or(serde_json::Value::Null),
            recorded_at: r.created_at,
            published: r.published,
        })
        .collect();
        out.push(ShipmentHistory {
            shipment,
            order,
            carrier_message,
            events,
            changes,
        });
    }
    Ok(out)
}

/// One shipment as the public tracking page reads it.
#[derive(Debug, Clone)]
pub struct PageHistory {
    pub shipment: ShipmentRow,
    /// The order the page is for.
    pub order: OrderRow,
    /// Its newest events, oldest first by carrier time (ties by arrival).
    pub events: Vec<HistoryEvent>,
    /// Whether it has older events than these.
    pub older_events: bool,
}

/// The order's newest `max_shipments` shipments (oldest first, empty when the order is unknown), each with its
/// newest `max_events` events, for the public tracking page. Whatever the length of a history, it reads at most
/// `max_shipments` shipment rows and `max_events + 1` event rows per shipment (the extra one only says there are
/// older events), through the `(shipment_id, occurred_at)` index; no status changes.
/// With `store`, only that store's shipments (a page token names its store: it never opens another store's order).
pub async fn order_page(
    pool: &PgPool,
    order_id: &str,
    store: Option<&StoreName>,
    max_shipments: usize,
    max_events: usize,
) -> Result<Vec<PageHistory>, StoreError> {
    let limit = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let sql = format!(
        "SELECT {}, op.link_seq, {} FROM orders o JOIN order_parcels op ON op.order_ref = o.id \
         JOIN shipments s ON s.id = op.shipment_id WHERE o.order_id = $1 AND ($2::text IS NULL OR o.store = $2) \
         ORDER BY s.id DESC LIMIT $3",
        shipments::shipment_columns_of("s"),
        crate::orders::ORDER_COLUMNS
    );
    let mut found = sqlx::query_as::<_, crate::orders::ShipmentOrder>(&sql)
        .bind(order_id)
        .bind(store.map(StoreName::as_str))
        .bind(limit(max_shipments))
        .fetch_all(pool)
        .await?;
    found.reverse();
    let mut out = Vec::with_capacity(found.len());
    for crate::orders::ShipmentOrder {
        shipment, order, ..
    } in found
    {
        let mut events: Vec<HistoryEvent> = sqlx::query_as::<_, EventRecord>(
            "SELECT source, code, kind, description, detail, city, state, unit, occurred_at, utc_offset_secs, \
                 status, reason, reverses, received_at \
             FROM tracking_events WHERE shipment_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT $2",
        )
        .bind(shipment.id)
        .bind(limit(max_events.saturating_add(1)))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(history_event)
        .collect();
        let older_events = events.len() > max_events;
        events.truncate(max_events);
        events.reverse();
        out.push(PageHistory {
            shipment,
            order,
            events,
            older_events,
        });
    }
    Ok(out)
}

/// A carrier's health as the fetchers last reported it, or `unknown` when none did.
#[derive(Debug, Clone, PartialEq)]
pub struct CarrierHealth {
    pub carrier: String,
    /// `ok`, `degraded`, `broken`, or `unknown` (no report yet).
    pub state: String,
    pub reason: Option<String>,
    /// Counts over the fetcher's window (`auth_failures`, `http_errors`, ...); `None` when unknown.
    pub counters: Option<serde_json::Value>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct HealthRecord {
    carrier: String,
    state: String,
    reason: Option<String>,
    counters: serde_json::Value,
    updated_at: DateTime<Utc>,
}

/// Every row of `carrier_health`, and every known carrier without one as `unknown`, by carrier name.
pub async fn carrier_health(pool: &PgPool) -> Result<Vec<CarrierHealth>, StoreError> {
    let rows = sqlx::query_as::<_, HealthRecord>(
        "SELECT carrier, state, reason, counters, updated_at FROM carrier_health ORDER BY carrier",
    )
    .fetch_all(pool)
    .await?;
    let mut all: BTreeMap<String, CarrierHealth> = Carrier::ALL
        .into_iter()
        .map(|c| {
            let name = c.as_str().to_owned();
            let unknown = CarrierHealth {
                carrier: name.clone(),
                state: "unknown".into(),
                reason: None,
                counters: None,
                updated_at: None,
            };
            (name, unknown)
        })
        .collect();
    for r in rows {
        all.insert(
            r.carrier.clone(),
            CarrierHealth {
                carrier: r.carrier,
                state: r.state,
                reason: r.reason,
                counters: Some(r.counters),
                updated_at: Some(r.updated_at),
            },
        );
    }
    Ok(all.into_values().collect())
}

/// A (carrier, code, type) that no event table maps, with what its stored events say.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct UnmappedCode {
    pub carrier: String,
    pub code: String,
    /// The carrier's event type (`tipo` for Correios), empty when it sends none.
    pub kind: String,
    pub events: i64,
    pub shipments: i64,
    /// The carrier's description on the newest such event, to decide its status from.
    pub description: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Every pair whose stored events map to no status (and reverse nothing), the most recently seen first. An event
/// leaves this list once `trackctl shipment recompute` maps it with a table that knows its code.
pub async fn unmapped_codes(pool: &PgPool) -> Result<Vec<UnmappedCode>, StoreError> {
    Ok(sqlx::query_as::<_, UnmappedCode>(
        "SELECT s.carrier, e.code, COALESCE(e.kind, '') AS kind, count(*) AS events, \
                count(DISTINCT e.shipment_id) AS shipments, \
                (array_agg(e.description ORDER BY e.received_at DESC))[1] AS description, \
                min(e.received_at) AS first_seen, max(e.received_at) AS last_seen \
         FROM tracking_events e JOIN shipments s ON s.id = e.shipment_id \
         WHERE e.status IS NULL AND NOT e.reverses \
         GROUP BY s.carrier, e.code, COALESCE(e.kind, '') \
         ORDER BY max(e.received_at) DESC, s.carrier, e.code",
    )
    .fetch_all(pool)
    .await?)
}
