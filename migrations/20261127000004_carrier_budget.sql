-- A token bucket per carrier account, shared by every fetcher: more fetchers never mean more calls to the carrier
-- than the configured rate. `tokens` may go below zero: a caller that takes a token it does not have waits until
-- the bucket has refilled to where it stood.
CREATE TABLE carrier_budget (
    account     TEXT PRIMARY KEY,
    tokens      DOUBLE PRECISION NOT NULL,
    refilled_at TIMESTAMPTZ NOT NULL
);
