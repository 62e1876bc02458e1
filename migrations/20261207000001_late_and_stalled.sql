-- Late and stalled parcels. The scheduler's periodic scan marks a shipment late once the carrier's promised date
-- (estimated_delivery) has passed by LATE_GRACE_HOURS without delivery, and stalled once no carrier event arrived
-- for CARRIER_STALE_AFTER_HOURS. Both are marks on the shipment beside its status (an in-transit parcel that is late
-- is still in_transit); the normalizer clears them when the parcel moves on.
ALTER TABLE shipments
    -- The promised date that passed (the estimate the shipment was marked late against).
    ADD COLUMN late_since timestamptz,
    -- The time of the last carrier news when the shipment was marked stalled.
    ADD COLUMN stalled_since timestamptz;

-- The scans: candidates in date order, bounded batches, served by partial indexes.
CREATE INDEX shipments_late_due ON shipments (estimated_delivery)
    WHERE late_since IS NULL AND finished_at IS NULL AND quarantined_at IS NULL AND estimated_delivery IS NOT NULL;
CREATE INDEX shipments_stall_due ON shipments (last_news_at)
    WHERE stalled_since IS NULL AND finished_at IS NULL AND quarantined_at IS NULL;
-- The lists (`trackctl shipments late`) and the clearing pass.
CREATE INDEX shipments_late ON shipments (late_since) WHERE late_since IS NOT NULL;
CREATE INDEX shipments_stalled ON shipments (stalled_since) WHERE stalled_since IS NOT NULL;

-- The "your parcel is late" notice: at most one per shipment (the primary key), recorded in the transaction that
-- marks the shipment late, and relayed by the scheduler to the email queue (published_at set once confirmed). The
-- email publisher renders it from the shipment's current order context, exactly once per notice_id (its deliveries
-- row), and not at all once the shipment is no longer late.
CREATE TABLE late_notices (
    shipment_id  BIGINT PRIMARY KEY REFERENCES shipments (id) ON DELETE CASCADE,
    notice_id    UUID NOT NULL UNIQUE,
    -- The promised date that had passed.
    promised_at  TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX late_notices_unpublished ON late_notices (created_at) WHERE published_at IS NULL;
