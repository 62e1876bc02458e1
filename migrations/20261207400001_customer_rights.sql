-- The customer's rights (LGPD Art. 16 and 18): personal data kept only as long as its purpose needs, access and
-- erasure on request.
--
-- An order's customer name and email are erased (set to NULL, `erased_at` set) PERSONAL_DATA_RETENTION_DAYS after
-- its last parcel finished, or when the customer asks (`DELETE /v1/customers/{email}`, `trackctl customer erase`).
-- The order itself (its id, store, marketplace reference, parcels, statuses and counts) stays. Readers tell an
-- erased order by `erased_at`, never by the address: the payloads that copied the customer keep, in its place, the
-- placeholder `erased@erased.invalid` (tracking_store::customers::ERASED_EMAIL) so they can still be read.
ALTER TABLE orders ALTER COLUMN customer_email DROP NOT NULL;
ALTER TABLE orders ADD COLUMN erased_at TIMESTAMPTZ;
ALTER TABLE orders ADD CONSTRAINT orders_customer_unless_erased CHECK (
    (erased_at IS NULL AND customer_email IS NOT NULL)
    OR (erased_at IS NOT NULL AND customer_email IS NULL AND customer_name IS NULL)
);
-- Access and erasure find a customer's orders by address (compared trimmed and lower-cased).
CREATE INDEX orders_customer_email ON orders (lower(customer_email)) WHERE customer_email IS NOT NULL;
-- The retention scan walks the orders not yet erased.
CREATE INDEX orders_not_erased ON orders (id) WHERE erased_at IS NULL;
CREATE INDEX order_parcels_order ON order_parcels (order_ref);

-- One row per request a customer's right was served on: who asked, when, and what was done. No personal data:
-- the address only as its keyed hash (HMAC-SHA256 under UNSUBSCRIBE_SECRET's key, as email_opt_outs; NULL when
-- that secret is not set), the counts as numbers.
CREATE TABLE customer_requests (
    id           BIGSERIAL PRIMARY KEY,
    -- access (GET /v1/customers/{email}/data) or erasure (DELETE, trackctl customer erase).
    kind         TEXT NOT NULL CHECK (kind IN ('access', 'erasure')),
    address_hash BYTEA CHECK (octet_length(address_hash) = 32),
    -- Who asked: `api` (the API_TOKEN's holder) or `trackctl:{operator}` (the operator's login name).
    requested_by TEXT NOT NULL CHECK (requested_by <> '' AND length(requested_by) <= 128),
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- What was found (access) or erased (erasure), by table: {"orders": 2, "status_changes": 5, ...}.
    counts       JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX customer_requests_hash ON customer_requests (address_hash, requested_at);

-- Erasure blanks the delivery texts of an order's changes, found by change id.
CREATE INDEX deliveries_change ON deliveries (change_id);
