-- Publishers claim a change with a short committed lease instead of a row lock held across the send: a claim
-- names its owner and lasts until lease_until; a redelivered change whose claim is still leased waits, and one
-- whose lease expired (its worker died) is sent again with the same Message-ID or Idempotency-Key.
-- first_failed_at starts the retry window of a far end that is down: retried with capped backoff for hours, parked
-- only when the window has passed.
ALTER TABLE deliveries ADD COLUMN owner UUID;
ALTER TABLE deliveries ADD COLUMN lease_until TIMESTAMPTZ;
ALTER TABLE deliveries ADD COLUMN first_failed_at TIMESTAMPTZ;

-- A stored shipment that cannot be read back (a row written by an older version, or by hand) is quarantined:
-- marked with the reason, counted and logged once, and skipped by the scheduler instead of stopping its batch.
ALTER TABLE shipments ADD COLUMN quarantined_at TIMESTAMPTZ;
ALTER TABLE shipments ADD COLUMN quarantine_reason TEXT;
DROP INDEX shipments_due;
CREATE INDEX shipments_due ON shipments (next_poll_at) WHERE finished_at IS NULL AND quarantined_at IS NULL;
