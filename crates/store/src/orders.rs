//! Orders and which parcels carry them. An order is unique per store (`(store, order_id)`) and holds the
//! context a tracking request gives (customer, marketplace, invoice); a parcel (a shipment) carries one or more
//! orders and an order has one or more parcels (`order_parcels`). A parcel's orders are ordered by when they
//! were linked: the first keeps the ids of the parcel's changes ([`tracking_domain::StatusChange::id_for_order`]).

use crate::shipments::ShipmentRow;
use crate::{StoreError, Stored};
use sqlx::{FromRow, PgConnection};
use tracking_domain::{
    Carrier, Customer, EmailAddress, Locale, MarketplaceRef, OrderId, Status, StoreName,
    TrackingCode, TrackingRequest,
};

/// An order as stored (columns aliased so that it can sit beside a shipment's in one row).
#[derive(Debug, Clone, FromRow)]
pub struct OrderRow {
    pub order_ref: i64,
    pub order_id: String,
    pub customer_email: String,
    pub customer_name: Option<String>,
    pub customer_locale: String,
    pub marketplace_name: Option<String>,
    pub marketplace_order_id: Option<String>,
    pub invoice_number: Option<String>,
    /// The customer's name and email were erased (retention or the customer's request): `customer_email` is then
    /// [`crate::customers::ERASED_EMAIL`] and nothing may be sent to it.
    pub erased: bool,
}

/// [`OrderRow`]'s columns from the alias `o` (an erased order's email reads as the placeholder).
pub const ORDER_COLUMNS: &str = "o.id AS order_ref, o.order_id, \
     COALESCE(o.customer_email, 'erased@erased.invalid') AS customer_email, o.customer_name, \
     o.customer_locale, o.marketplace_name, o.marketplace_order_id, o.invoice_number, \
     o.erased_at IS NOT NULL AS erased";

/// A parcel's first order, joined beside the parcel `s` (`LEFT JOIN LATERAL`): every [`FirstOrder`] column.
pub const FIRST_ORDER_JOIN: &str = "LEFT JOIN LATERAL (SELECT o.id AS order_ref, o.order_id, \
     COALESCE(o.customer_email, 'erased@erased.invalid') AS customer_email, \
     o.customer_name, o.customer_locale, o.marketplace_name, o.marketplace_order_id, o.invoice_number, \
     o.erased_at IS NOT NULL AS erased \
     FROM order_parcels op JOIN orders o ON o.id = op.order_ref WHERE op.shipment_id = s.id \
     ORDER BY op.link_seq LIMIT 1) fo ON true";
pub const FIRST_ORDER_COLUMNS: &str = "fo.order_ref, fo.order_id, fo.customer_email, fo.customer_name, \
     fo.customer_locale, fo.marketplace_name, fo.marketplace_order_id, fo.invoice_number, fo.erased";

impl OrderRow {
    /// The order's context as a tracking request for the parcel `carrier` `tracking_code` of `store`
    /// ([`ShipmentRow::request_for`]).
    pub fn request(
        &self,
        store: StoreName,
        carrier: Carrier,
        tracking_code: TrackingCode,
    ) -> Result<TrackingRequest, StoreError> {
        let corrupt = |what: &str, e: String| {
            StoreError::Corrupt(format!("order {}: {what}: {e}", self.order_ref))
        };
        Ok(TrackingRequest {
            order_id: OrderId::parse(&self.order_id).map_err(|e| corrupt("order_id", e))?,
            tracking_code,
            carrier,
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
            store,
        })
    }
}

/// A parcel's first order, read beside it: every column is `NULL` when the parcel has no order.
#[derive(Debug, Clone, FromRow)]
pub struct FirstOrder {
    pub order_ref: Option<i64>,
    pub order_id: Option<String>,
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub customer_locale: Option<String>,
    pub marketplace_name: Option<String>,
    pub marketplace_order_id: Option<String>,
    pub invoice_number: Option<String>,
    pub erased: Option<bool>,
}

impl FirstOrder {
    pub fn get(&self) -> Option<OrderRow> {
        Some(OrderRow {
            order_ref: self.order_ref?,
            order_id: self.order_id.clone()?,
            customer_email: self.customer_email.clone()?,
            customer_name: self.customer_name.clone(),
            customer_locale: self.customer_locale.clone()?,
            marketplace_name: self.marketplace_name.clone(),
            marketplace_order_id: self.marketplace_order_id.clone(),
            invoice_number: self.invoice_number.clone(),
            erased: self.erased.unwrap_or(false),
        })
    }
}

/// A parcel with its first order.
#[derive(Debug, Clone, FromRow)]
pub struct WithOrder {
    #[sqlx(flatten)]
    pub shipment: ShipmentRow,
    #[sqlx(flatten)]
    pub first: FirstOrder,
}

impl WithOrder {
    /// The tracking request a poll of this parcel carries (its first order's); an error when the rows cannot be
    /// read back or the parcel has no order.
    pub fn request(&self) -> Result<TrackingRequest, StoreError> {
        let order = self.first.get().ok_or_else(|| {
            StoreError::Corrupt(format!("shipment {}: no order", self.shipment.id))
        })?;
        self.shipment.request_for(&order)
    }
}

/// A parcel with one of its orders.
#[derive(Debug, Clone, FromRow)]
pub struct ShipmentOrder {
    #[sqlx(flatten)]
    pub shipment: ShipmentRow,
    /// The order of the parcel's orders (smallest first).
    pub link_seq: i64,
    #[sqlx(flatten)]
    pub order: OrderRow,
}

/// Registers each request's order, or updates its context (an invoice number is kept when the request has
/// none), in `(store, order_id)` order; returns `(store, order_id, order_ref)`. One request per order. An erased
/// order stays erased: a later request (a poll carries the placeholder) never brings a name or address back.
pub async fn upsert(
    conn: &mut PgConnection,
    requests: &[&TrackingRequest],
) -> Result<Vec<(String, String, i64)>, StoreError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: &dyn Fn(&TrackingRequest) -> Option<String>| {
        requests.iter().map(|r| f(r)).collect::<Vec<_>>()
    };
    Ok(sqlx::query_as(
        "INSERT INTO orders (store, order_id, customer_email, customer_name, customer_locale, marketplace_name, \
             marketplace_order_id, invoice_number) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[]) AS r(store, order_id, customer_email, customer_name, customer_locale, marketplace_name, \
             marketplace_order_id, invoice_number) \
         ORDER BY store, order_id \
         ON CONFLICT (store, order_id) DO UPDATE SET \
             customer_email = CASE WHEN orders.erased_at IS NULL THEN EXCLUDED.customer_email END, \
             customer_name = CASE WHEN orders.erased_at IS NULL THEN EXCLUDED.customer_name END, \
             customer_locale = EXCLUDED.customer_locale, marketplace_name = EXCLUDED.marketplace_name, \
             marketplace_order_id = EXCLUDED.marketplace_order_id, \
             invoice_number = COALESCE(EXCLUDED.invoice_number, orders.invoice_number), updated_at = now() \
         RETURNING store, order_id, id",
    )
    .bind(col(&|r| Some(r.store.as_str().to_owned())))
    .bind(col(&|r| Some(r.order_id.as_str().to_owned())))
    .bind(col(&|r| Some(r.customer.email.as_str().to_owned())))
    .bind(col(&|r| r.customer.name.clone()))
    .bind(col(&|r| Some(r.customer.locale.as_str().to_owned())))
    .bind(col(&|r| r.marketplace.as_ref().map(|m| m.name.clone())))
    .bind(col(&|r| r.marketplace.as_ref().map(|m| m.order_id.clone())))
    .bind(col(&|r| r.invoice_number.clone()))
    .fetch_all(&mut *conn)
    .await?)
}

/// Links orders to parcels (`(order_ref, shipment_id)`, in the given order); returns the links made now.
pub async fn link(
    conn: &mut PgConnection,
    links: &[(i64, i64)],
) -> Result<Vec<(i64, i64)>, StoreError> {
    if links.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "INSERT INTO order_parcels (order_ref, shipment_id) \
         SELECT order_ref, shipment_id FROM UNNEST($1::int8[], $2::int8[]) WITH ORDINALITY AS l(order_ref, shipment_id, n) \
         ORDER BY n ON CONFLICT DO NOTHING RETURNING order_ref, shipment_id",
    )
    .bind(links.iter().map(|l| l.0).collect::<Vec<_>>())
    .bind(links.iter().map(|l| l.1).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?)
}

/// One order of a parcel, as the parcel's changes are fanned out to.
#[derive(Debug, Clone, FromRow)]
pub struct ParcelOrder {
    pub shipment_id: i64,
    pub link_seq: i64,
    pub store: String,
    #[sqlx(flatten)]
    pub order: OrderRow,
}

/// The orders of each parcel in `shipment_ids`, by parcel then link order (the first order first).
pub async fn of_parcels(
    conn: &mut PgConnection,
    shipment_ids: &[i64],
) -> Result<Vec<ParcelOrder>, StoreError> {
    let sql = format!(
        "SELECT op.shipment_id, op.link_seq, o.store, {ORDER_COLUMNS} FROM order_parcels op \
         JOIN orders o ON o.id = op.order_ref WHERE op.shipment_id = ANY($1) ORDER BY op.shipment_id, op.link_seq"
    );
    Ok(sqlx::query_as::<_, ParcelOrder>(&sql)
        .bind(shipment_ids)
        .fetch_all(&mut *conn)
        .await?)
}

/// The status of every parcel of the orders `order_refs`: `(order_ref, shipment_id, status)`.
pub async fn parcel_statuses(
    conn: &mut PgConnection,
    order_refs: &[i64],
) -> Result<Vec<(i64, i64, Stored<Status>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT op.order_ref, s.id, s.status FROM order_parcels op JOIN shipments s ON s.id = op.shipment_id \
         WHERE op.order_ref = ANY($1) ORDER BY op.order_ref, s.id",
    )
    .bind(order_refs)
    .fetch_all(&mut *conn)
    .await?)
}
