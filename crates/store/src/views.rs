//! Read-only views for people: an order's shipments with their whole history (`tracking-api`'s
//! `GET /v1/orders/{order_id}/tracking`), the newest of it for the public tracking page ([`order_page`]), the
//! carriers' health as the fetchers last reported it (`GET /v1/carriers/health`, `trackctl carriers health`), and
//! the carrier event codes nobody mapped (`trackctl events unmapped`).

use crate::changes::LISTED_COLUMNS;
use crate::orders::OrderRow;
use crate::shipments::{self, EVENT_COLUMNS, EventRow, ShipmentRow};
use crate::{StoreError, Text};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use std::collections::BTreeMap;
use tracking_domain::{Carrier, CarrierState, StoreName};

/// One stored event, as the carrier (or support, for `source = manual`) reported it.
pub type HistoryEvent = EventRow;

/// One recorded status change.
pub type HistoryChange = crate::changes::Listed;

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
        let events = shipments::events(&mut *pool.acquire().await?, shipment.id).await?;
        let sql = format!(
            "SELECT {LISTED_COLUMNS} FROM status_changes \
             WHERE shipment_id = $1 AND (order_ref = $2 OR order_ref IS NULL) ORDER BY seq"
        );
        let changes = sqlx::query_as::<_, HistoryChange>(&sql)
            .bind(shipment.id)
            .bind(order.order_ref)
            .fetch_all(pool)
            .await?;
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
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM tracking_events WHERE shipment_id = $1 \
             ORDER BY occurred_at DESC, id DESC LIMIT $2"
        );
        let mut events: Vec<HistoryEvent> = sqlx::query_as::<_, EventRow>(&sql)
            .bind(shipment.id)
            .bind(limit(max_events.saturating_add(1)))
            .fetch_all(pool)
            .await?;
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
    pub carrier: Text<Carrier>,
    /// `None` when no fetcher reported yet (shown as `unknown`).
    pub state: Option<Text<CarrierState>>,
    pub reason: Option<String>,
    /// Counts over the fetcher's window (`auth_failures`, `http_errors`, ...); `None` when unknown.
    pub counters: Option<serde_json::Value>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct HealthRecord {
    carrier: Text<Carrier>,
    state: Text<CarrierState>,
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
    let mut all: BTreeMap<&str, CarrierHealth> = Carrier::ALL
        .into_iter()
        .map(|c| {
            let name = c.as_str();
            let unknown = CarrierHealth {
                carrier: Text(c),
                state: None,
                reason: None,
                counters: None,
                updated_at: None,
            };
            (name, unknown)
        })
        .collect();
    for r in rows {
        all.insert(
            r.carrier.as_str(),
            CarrierHealth {
                carrier: r.carrier,
                state: Some(r.state),
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
    /// Read as stored (a quarantined shipment's carrier may be one this version does not know).
    pub carrier: crate::Stored<Carrier>,
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
