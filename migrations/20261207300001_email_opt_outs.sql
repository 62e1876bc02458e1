-- One-click unsubscribe (RFC 8058): the addresses that asked for no more status emails from a store. The table holds
-- no readable address: `address_hash` is HMAC-SHA256 of the normalised address (trimmed, lower-cased) under a key
-- derived from UNSUBSCRIBE_SECRET (tracking_domain::unsubscribe), so a copy of the database alone does not say who
-- opted out. The email publisher computes the same hash for each email's recipient and sends nothing while a row
-- exists; an undo deletes the row. Rows are kept for as long as the opt-out holds (it is the customer's standing
-- request), not subject to PERSONAL_DATA_RETENTION_DAYS.
CREATE TABLE email_opt_outs (
    -- The store whose status emails the address no longer gets (tracking_domain::StoreName).
    store        TEXT NOT NULL CHECK (store <> '' AND length(store) <= 64),
    -- HMAC-SHA256 of the normalised address: 32 bytes.
    address_hash BYTEA NOT NULL CHECK (octet_length(address_hash) = 32),
    opted_out_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (store, address_hash)
);
