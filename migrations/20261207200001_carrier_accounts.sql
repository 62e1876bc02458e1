-- Several stores, each with its carrier accounts (issue 19, STORES_FILE): a carrier's health is per account, so one
-- store's revoked credentials show on its account only. carrier_health keeps each carrier's worst account (what
-- /v1/carriers/health and trackctl showed before stores existed); carrier_account_health holds every account, with
-- the stores using it (comma-separated store names, for operators and alerts).

CREATE TABLE carrier_account_health (
    carrier     TEXT NOT NULL,
    -- The account's key: correios:{user}[:{postage card}], jadlog[:{store}] (never a secret).
    account     TEXT NOT NULL,
    stores      TEXT NOT NULL DEFAULT '',
    -- ok | degraded | broken
    state       TEXT NOT NULL,
    reason      TEXT,
    counters    JSONB NOT NULL DEFAULT '{}',
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (carrier, account)
);

-- A shipment's store: its re-polls use that store's carrier account, and a store's API token sees only its own.
-- (The orders-and-stores migration adds the same column; whichever runs first adds it.)
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS store TEXT NOT NULL DEFAULT 'default';
