-- Orders and parcels as they really are: a shipment is a carrier's parcel of one store; an order (unique per store)
-- has one or more parcels, and one parcel can carry several orders (order_parcels). The order context (customer,
-- marketplace, invoice) moves from shipments to orders, so a second order on the same code never overwrites the
-- first. A tracking code can come back for a new parcel long after its old one finished (carriers recycle codes):
-- the old shipment is then retired (retired_at) and a new one takes the code, so only live shipments are unique
-- per (store, carrier, tracking_code).

ALTER TABLE shipments ADD COLUMN store TEXT NOT NULL DEFAULT 'default';
ALTER TABLE shipments ADD COLUMN retired_at TIMESTAMPTZ;
ALTER TABLE shipments DROP CONSTRAINT shipments_carrier_tracking_code_key;
CREATE UNIQUE INDEX shipments_live_code ON shipments (store, carrier, tracking_code) WHERE retired_at IS NULL;
CREATE INDEX shipments_code ON shipments (tracking_code);

CREATE TABLE orders (
    id                   BIGSERIAL PRIMARY KEY,
    store                TEXT NOT NULL DEFAULT 'default',
    order_id             TEXT NOT NULL,
    customer_email       TEXT NOT NULL,
    customer_name        TEXT,
    customer_locale      TEXT NOT NULL DEFAULT 'pt-BR',
    marketplace_name     TEXT,
    marketplace_order_id TEXT,
    invoice_number       TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (store, order_id)
);

-- Which parcels carry which orders. link_seq orders a parcel's orders: the first keeps the parcel's change ids.
CREATE TABLE order_parcels (
    order_ref   BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    shipment_id BIGINT NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    link_seq    BIGSERIAL NOT NULL,
    added_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_ref, shipment_id)
);
CREATE INDEX order_parcels_shipment ON order_parcels (shipment_id, link_seq);

-- Existing rows: one order per order id (its newest context wins, as the last request did before), linked to
-- each of its shipments.
INSERT INTO orders (store, order_id, customer_email, customer_name, customer_locale, marketplace_name,
                    marketplace_order_id, invoice_number, created_at, updated_at)
SELECT DISTINCT ON (order_id) 'default', order_id, customer_email, customer_name, customer_locale, marketplace_name,
       marketplace_order_id, invoice_number, created_at, updated_at
FROM shipments ORDER BY order_id, updated_at DESC, id DESC;
INSERT INTO order_parcels (order_ref, shipment_id, added_at)
SELECT o.id, s.id, s.created_at FROM shipments s JOIN orders o ON o.store = 'default' AND o.order_id = s.order_id
ORDER BY s.id;

-- Each recorded change is the change of one order of the parcel (the payload is what that order's customer and
-- marketplace get). Existing changes belong to their shipment's order.
ALTER TABLE status_changes ADD COLUMN order_ref BIGINT REFERENCES orders (id) ON DELETE CASCADE;
UPDATE status_changes sc SET order_ref = op.order_ref FROM order_parcels op WHERE op.shipment_id = sc.shipment_id;
CREATE INDEX status_changes_order ON status_changes (order_ref, seq);

ALTER TABLE shipments
    DROP COLUMN order_id,
    DROP COLUMN customer_email,
    DROP COLUMN customer_name,
    DROP COLUMN customer_locale,
    DROP COLUMN marketplace_name,
    DROP COLUMN marketplace_order_id,
    DROP COLUMN invoice_number;

-- Two stores (or a recycled code) may hold the same carrier events on different shipments: an event is unique
-- within its shipment.
ALTER TABLE tracking_events DROP CONSTRAINT tracking_events_fingerprint_key;
CREATE UNIQUE INDEX tracking_events_fingerprint ON tracking_events (shipment_id, fingerprint);
