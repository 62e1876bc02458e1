//! The customer's rights in the database (LGPD Art. 16 and 18; docs/privacy.md): what is stored about an address
//! (access), erasing it on request, erasing it by retention once an order's parcels are long finished, and the
//! audit record of each request (`customer_requests`, migration `20261207400001_customer_rights.sql`).
//!
//! Erasing an order sets its `customer_email` and `customer_name` to `NULL` and its `erased_at`; the copies of the
//! customer elsewhere are blanked in the same transaction: the `customer` of its recorded status changes
//! (`status_changes.payload`) and of kept carrier answers' requests (`carrier_responses.requests`) becomes
//! [`ERASED_EMAIL`] with the locale alone (so that they still read as changes and requests), and delivery texts
//! (`deliveries.last_error`, `detail`) that hold the address become [`ERASED_TEXT`]. The order id, its store,
//! marketplace reference, parcels, events and statuses stay.

use crate::StoreError;
use sqlx::{PgConnection, PgPool};
use tracking_domain::AddressHash;

/// What an erased customer's email reads as wherever a valid address must stand (payloads, polls' requests). The
/// `.invalid` top-level domain never resolves (RFC 2606). Readers tell an erased order by `orders.erased_at`, not by
/// this value.
pub const ERASED_EMAIL: &str = "erased@erased.invalid";

/// What a delivery text that held an erased address is replaced with.
pub const ERASED_TEXT: &str = "[erased: held the customer's address]";

/// How many rows of each table an erasure changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// Orders whose customer name and email were erased.
    pub orders: u64,
    /// Recorded status changes whose payload's customer was blanked.
    pub status_changes: u64,
    /// Kept carrier answers whose requests' customer was blanked.
    pub carrier_responses: u64,
    /// Delivery records whose error or detail text held the address.
    pub deliveries: u64,
    /// Email opt-outs of the address (erasure on request only).
    pub opt_outs: u64,
}

impl Erased {
    pub fn total(&self) -> u64 {
        self.orders + self.status_changes + self.carrier_responses + self.deliveries + self.opt_outs
    }

    /// The counts by table, as the audit record and the API's answer hold them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "orders": self.orders,
            "status_changes": self.status_changes,
            "carrier_responses": self.carrier_responses,
            "deliveries": self.deliveries,
            "opt_outs": self.opt_outs,
        })
    }

    fn add(&mut self, other: Erased) {
        self.orders += other.orders;
        self.status_changes += other.status_changes;
        self.carrier_responses += other.carrier_responses;
        self.deliveries += other.deliveries;
        self.opt_outs += other.opt_outs;
    }
}

/// An address as the database compares it: trimmed and lower-cased (as [`tracking_domain::unsubscribe::normalise`]).
pub fn normalise(address: &str) -> String {
    address.trim().to_lowercase()
}

/// Erases the orders `order_refs` (those not erased yet, locked) and every copy of their customers; `addresses`
/// (normalised) are the addresses whose delivery texts are blanked beyond these orders' own (erasure on request:
/// the address asked for; retention: none).
async fn erase_orders(
    tx: &mut PgConnection,
    order_refs: &[i64],
    addresses: &[String],
) -> Result<Erased, StoreError> {
    // The orders' parcels first, in the normalizer's lock order: a batch that records a change of one of them
    // waits for the erasure (or the erasure for it), so no change is recorded with a customer erased meanwhile.
    sqlx::query(
        "SELECT s.id FROM shipments s JOIN order_parcels op ON op.shipment_id = s.id \
         WHERE op.order_ref = ANY($1) ORDER BY s.store, s.carrier, s.tracking_code, s.id FOR UPDATE OF s",
    )
    .bind(order_refs)
    .fetch_all(&mut *tx)
    .await?;
    let found: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, store, order_id, lower(customer_email) FROM orders \
         WHERE id = ANY($1) AND erased_at IS NULL ORDER BY id FOR UPDATE",
    )
    .bind(order_refs)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<i64> = found.iter().map(|f| f.0).collect();
    let stores: Vec<String> = found.iter().map(|f| f.1.clone()).collect();
    let order_ids: Vec<String> = found.iter().map(|f| f.2.clone()).collect();
    let mut emails: Vec<String> = found.iter().filter_map(|f| f.3.clone()).collect();
    emails.extend(addresses.iter().cloned());
    emails.sort();
    emails.dedup();
    let orders = sqlx::query(
        "UPDATE orders SET customer_email = NULL, customer_name = NULL, erased_at = now(), updated_at = now() \
         WHERE id = ANY($1) AND erased_at IS NULL",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut erased = Erased {
        orders,
        ..Erased::default()
    };
    // Every order's changes, erased before or not (an order erased earlier by retention has nothing left).
    erased.status_changes = sqlx::query(
        "UPDATE status_changes SET payload = jsonb_set(payload, '{customer}', jsonb_build_object('email', $2::text, \
             'locale', COALESCE(payload->'customer'->'locale', '\"pt-BR\"'::jsonb))) \
         WHERE (order_ref = ANY($1) OR (order_ref IS NULL AND lower(payload->'customer'->>'email') = ANY($3))) \
           AND (payload->'customer'->>'email' IS DISTINCT FROM $2 OR payload->'customer' ? 'name')",
    )
    .bind(order_refs)
    .bind(ERASED_EMAIL)
    .bind(&emails)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    erased.carrier_responses = sqlx::query(
        "WITH matched AS ( \
             SELECT c.id FROM carrier_responses c \
             WHERE jsonb_typeof(c.requests) = 'array' AND EXISTS ( \
                 SELECT 1 FROM jsonb_array_elements(c.requests) r(req) \
                 WHERE (r.req->'customer'->>'email') IS DISTINCT FROM $3 AND jsonb_typeof(r.req->'customer') = 'object' \
                   AND (lower(trim(r.req->'customer'->>'email')) = ANY($4) \
                        OR EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[]) k(store, order_id) \
                                   WHERE k.store = COALESCE(r.req->>'store', 'default') AND k.order_id = r.req->>'order_id'))) \
             FOR UPDATE) \
         UPDATE carrier_responses c SET requests = ( \
             SELECT jsonb_agg(CASE WHEN jsonb_typeof(e.req->'customer') = 'object' \
                   AND (lower(trim(e.req->'customer'->>'email')) = ANY($4) \
                        OR EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[]) k(store, order_id) \
                                   WHERE k.store = COALESCE(e.req->>'store', 'default') AND k.order_id = e.req->>'order_id')) \
                 THEN jsonb_set(e.req, '{customer}', jsonb_build_object('email', $3::text, \
                      'locale', COALESCE(e.req->'customer'->'locale', '\"pt-BR\"'::jsonb))) \
                 ELSE e.req END ORDER BY e.n) \
             FROM jsonb_array_elements(c.requests) WITH ORDINALITY AS e(req, n)) \
         FROM matched WHERE c.id = matched.id",
    )
    .bind(&stores)
    .bind(&order_ids)
    .bind(ERASED_EMAIL)
    .bind(&emails)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Error texts (an SMTP server's "550 <ana@example.com>: unknown user") of these orders' changes, and of any
    // delivery when an address was named (late emails' ids are derived, not stored beside the order).
    erased.deliveries = sqlx::query(
        "UPDATE deliveries d SET \
             last_error = CASE WHEN EXISTS (SELECT 1 FROM unnest($2::text[]) a WHERE strpos(lower(d.last_error), a) > 0) \
                 THEN $3 ELSE d.last_error END, \
             detail = CASE WHEN EXISTS (SELECT 1 FROM unnest($2::text[]) a WHERE strpos(lower(d.detail), a) > 0) \
                 THEN $3 ELSE d.detail END \
         WHERE (d.change_id IN (SELECT change_id FROM status_changes WHERE order_ref = ANY($1)) OR cardinality($4::text[]) > 0) \
           AND EXISTS (SELECT 1 FROM unnest($2::text[]) a \
                       WHERE strpos(lower(d.last_error), a) > 0 OR strpos(lower(d.detail), a) > 0)",
    )
    .bind(order_refs)
    .bind(&emails)
    .bind(ERASED_TEXT)
    .bind(addresses)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(erased)
}

/// Erases every order of `address` (any case), its copies, the delivery texts that hold it and, when the
/// deployment hashes addresses (`UNSUBSCRIBE_SECRET`), its email opt-outs. One transaction.
pub async fn erase_address(
    pool: &PgPool,
    address: &str,
    hash: Option<&AddressHash>,
) -> Result<Erased, StoreError> {
    let address = normalise(address);
    let mut tx = pool.begin().await?;
    let refs: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE lower(customer_email) = $1 AND customer_email IS NOT NULL ORDER BY id",
    )
    .bind(&address)
    .fetch_all(&mut *tx)
    .await?;
    let mut erased = erase_orders(&mut tx, &refs, std::slice::from_ref(&address)).await?;
    if let Some(hash) = hash {
        erased.opt_outs = sqlx::query("DELETE FROM email_opt_outs WHERE address_hash = $1")
            .bind(hash.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(erased)
}

/// Erases up to `batch` orders whose every parcel finished more than `retention_days` ago. The candidates are
/// read without a lock and locked parcels first (as the normalizer locks), then orders, each re-checked: two
/// schedulers may pick the same orders, and the second erases nothing. Returns what it erased: fewer than `batch`
/// orders means none is due now.
pub async fn erase_due(
    pool: &PgPool,
    retention_days: u32,
    batch: i64,
) -> Result<Erased, StoreError> {
    let mut tx = pool.begin().await?;
    let refs: Vec<i64> = sqlx::query_scalar(
        "SELECT o.id FROM orders o WHERE o.erased_at IS NULL \
           AND (SELECT bool_and(s.finished_at IS NOT NULL) AND max(s.finished_at) < now() - make_interval(days => $1) \
                FROM order_parcels op JOIN shipments s ON s.id = op.shipment_id WHERE op.order_ref = o.id) \
         ORDER BY o.id LIMIT $2",
    )
    .bind(i32::try_from(retention_days).unwrap_or(i32::MAX))
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut erased = Erased::default();
    if !refs.is_empty() {
        erased.add(erase_orders(&mut tx, &refs, &[]).await?);
    }
    tx.commit().await?;
    Ok(erased)
}

/// What a customer request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Access,
    Erasure,
}

impl crate::text::Spelled for RequestKind {
    const WHAT: &'static str = "customer request kind";
    fn spelling(self) -> &'static str {
        self.as_str()
    }
    fn from_spelling(s: &str) -> Option<Self> {
        [RequestKind::Access, RequestKind::Erasure]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Access => "access",
            RequestKind::Erasure => "erasure",
        }
    }
}

/// One row of `customer_requests`: no personal data (the address as its keyed hash only).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub kind: crate::Text<RequestKind>,
    pub address_hash: Option<Vec<u8>>,
    pub requested_by: String,
    pub counts: serde_json::Value,
}

/// Records that a request was served. Returns the record's id.
pub async fn audit(
    pool: &PgPool,
    kind: RequestKind,
    hash: Option<&AddressHash>,
    requested_by: &str,
    counts: &serde_json::Value,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO customer_requests (kind, address_hash, requested_by, counts) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(kind.as_str())
    .bind(hash.map(|h| h.as_bytes().to_vec()))
    .bind(requested_by)
    .bind(counts)
    .fetch_one(pool)
    .await?)
}

/// Everything stored about `address`, as JSON: its orders (at most `max_orders`, the oldest first), each with
/// its parcels, recorded status changes, emails (deliveries of destination `email` of its changes) and late
/// notices; and its opt-outs when the deployment hashes addresses.
pub async fn data(
    pool: &PgPool,
    address: &str,
    hash: Option<&AddressHash>,
    max_orders: i64,
) -> Result<serde_json::Value, StoreError> {
    let address = normalise(address);
    let orders: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object( \
           'store', o.store, 'order_id', o.order_id, \
           'customer', jsonb_build_object('email', o.customer_email, 'name', o.customer_name, 'locale', o.customer_locale), \
           'marketplace', CASE WHEN o.marketplace_name IS NULL THEN NULL \
               ELSE jsonb_build_object('name', o.marketplace_name, 'order_id', o.marketplace_order_id) END, \
           'invoice_number', o.invoice_number, 'created_at', o.created_at, 'updated_at', o.updated_at, \
           'parcels', COALESCE((SELECT jsonb_agg(jsonb_build_object('carrier', s.carrier, 'tracking_code', s.tracking_code, \
                 'status', s.status, 'status_at', s.status_at, 'estimated_delivery', s.estimated_delivery, \
                 'finished_at', s.finished_at, 'late_since', s.late_since) ORDER BY op.link_seq) \
               FROM order_parcels op JOIN shipments s ON s.id = op.shipment_id WHERE op.order_ref = o.id), '[]'::jsonb), \
           'status_changes', COALESCE((SELECT jsonb_agg(jsonb_build_object('change_id', sc.change_id, \
                 'tracking_code', sc.payload->>'tracking_code', 'status', sc.status, \
                 'previous_status', sc.previous_status, 'occurred_at', sc.occurred_at) ORDER BY sc.seq) \
               FROM status_changes sc WHERE sc.order_ref = o.id), '[]'::jsonb), \
           'emails', COALESCE((SELECT jsonb_agg(jsonb_build_object('change_id', d.change_id, 'status', sc.status, \
                 'state', d.state, 'detail', d.detail, 'created_at', d.created_at, 'completed_at', d.completed_at) \
                 ORDER BY sc.seq) \
               FROM status_changes sc JOIN deliveries d ON d.destination = 'email' AND d.change_id = sc.change_id \
               WHERE sc.order_ref = o.id), '[]'::jsonb), \
           'late_notices', COALESCE((SELECT jsonb_agg(jsonb_build_object('tracking_code', s.tracking_code, \
                 'promised_at', n.promised_at, 'created_at', n.created_at) ORDER BY n.created_at) \
               FROM order_parcels op JOIN shipments s ON s.id = op.shipment_id \
               JOIN late_notices n ON n.shipment_id = s.id WHERE op.order_ref = o.id), '[]'::jsonb)) \
         FROM orders o WHERE lower(o.customer_email) = $1 AND o.customer_email IS NOT NULL ORDER BY o.id LIMIT $2",
    )
    .bind(&address)
    .bind(max_orders + 1)
    .fetch_all(pool)
    .await?;
    let truncated = orders.len() as i64 > max_orders;
    let orders: Vec<_> = orders
        .into_iter()
        .take(usize::try_from(max_orders).unwrap_or(0))
        .collect();
    let opt_outs: Vec<serde_json::Value> = match hash {
        Some(hash) => sqlx::query_scalar(
            "SELECT jsonb_build_object('store', store, 'opted_out_at', opted_out_at) FROM email_opt_outs \
             WHERE address_hash = $1 ORDER BY store",
        )
        .bind(hash.as_bytes().as_slice())
        .fetch_all(pool)
        .await?,
        None => Vec::new(),
    };
    Ok(serde_json::json!({
        "email": address,
        "orders": orders,
        "orders_truncated": truncated,
        "opt_outs": opt_outs,
    }))
}

/// The audit records of `hash`, oldest first (tests, support).
pub async fn audit_of(pool: &PgPool, hash: &AddressHash) -> Result<Vec<AuditRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, kind, address_hash, requested_by, counts FROM customer_requests \
         WHERE address_hash = $1 ORDER BY id",
    )
    .bind(hash.as_bytes().as_slice())
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_trimmed_and_lower_cased() {
        assert_eq!(
            normalise("  Ana.Souza@Example.COM "),
            "ana.souza@example.com"
        );
    }

    #[test]
    fn the_placeholder_is_an_address_that_never_resolves() {
        assert!(tracking_domain::EmailAddress::parse(ERASED_EMAIL).is_ok());
        assert!(ERASED_EMAIL.ends_with(".invalid"));
    }

    #[test]
    fn counts_add_up_by_table() {
        let mut a = Erased {
            orders: 1,
            status_changes: 2,
            ..Erased::default()
        };
        a.add(Erased {
            orders: 1,
            deliveries: 3,
            ..Erased::default()
        });
        assert_eq!(a.total(), 7);
        assert_eq!(a.to_json()["orders"], 2);
    }
}
