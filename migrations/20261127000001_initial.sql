-- Shipments with their order context, their events (unique by fingerprint), the status changes they went
-- through (also the outbox the normalizer relays to order.status), and per-destination idempotency records.

CREATE TABLE shipments (
    id                   BIGSERIAL PRIMARY KEY,
    carrier              TEXT NOT NULL,
    tracking_code        TEXT NOT NULL,
    order_id             TEXT NOT NULL,
    customer_email       TEXT NOT NULL,
    customer_name        TEXT,
    customer_locale      TEXT NOT NULL DEFAULT 'pt-BR',
    marketplace_name     TEXT,
    marketplace_order_id TEXT,
    invoice_number       TEXT,
    status               TEXT NOT NULL DEFAULT 'registered',
    status_reason        TEXT,
    -- Carrier time of the event that set the status.
    status_at            TIMESTAMPTZ,
    estimated_delivery   TIMESTAMPTZ,
    carrier_message      TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the last new event arrived (or the shipment was registered): expiry counts from here.
    last_news_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_polled_at       TIMESTAMPTZ,
    next_poll_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set once polling stopped for good (after the final poll of a delivered/returned parcel, or on expiry).
    finished_at          TIMESTAMPTZ,
    UNIQUE (carrier, tracking_code)
);
CREATE INDEX shipments_order_id ON shipments (order_id);
CREATE INDEX shipments_due ON shipments (next_poll_at) WHERE finished_at IS NULL;

CREATE TABLE tracking_events (
    id            BIGSERIAL PRIMARY KEY,
    shipment_id   BIGINT NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    fingerprint   TEXT NOT NULL UNIQUE,
    source        TEXT NOT NULL,
    code          TEXT NOT NULL,
    kind          TEXT,
    description   TEXT NOT NULL,
    detail        TEXT,
    city          TEXT,
    state         TEXT,
    unit          TEXT,
    occurred_at   TIMESTAMPTZ NOT NULL,
    -- The offset the carrier's time was read in, so the event can be shown as the carrier meant it.
    utc_offset_secs INTEGER NOT NULL DEFAULT 0,
    -- The canonical status this event maps to; NULL when nobody mapped its code (counted, surfaced).
    status        TEXT,
    reason        TEXT,
    reverses      BOOLEAN NOT NULL DEFAULT FALSE,
    raw           JSONB NOT NULL DEFAULT 'null',
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tracking_events_shipment ON tracking_events (shipment_id, occurred_at);

CREATE TABLE status_changes (
    change_id       UUID PRIMARY KEY,
    shipment_id     BIGINT NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    event_id        BIGINT REFERENCES tracking_events (id),
    status          TEXT NOT NULL,
    previous_status TEXT NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    -- The message as published on order.status.
    payload         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Outbox: NULL until the relay has a broker confirm for it.
    published_at    TIMESTAMPTZ
);
CREATE INDEX status_changes_shipment ON status_changes (shipment_id, created_at);
CREATE INDEX status_changes_unpublished ON status_changes (created_at) WHERE published_at IS NULL;

-- One row per (destination, change): the email publisher's and each marketplace's record of what it did.
CREATE TABLE deliveries (
    destination  TEXT NOT NULL,
    change_id    UUID NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    detail       TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    PRIMARY KEY (destination, change_id)
);
