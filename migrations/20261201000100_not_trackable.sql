-- A shipment the carrier will not let this account track (Correios SRO-009: the label was bought under another
-- contract, as with labels from third-party shipping platforms). The reason is for operators; it is cleared when
-- the carrier answers the code otherwise.
ALTER TABLE shipments
    ADD COLUMN not_trackable_reason text,
    ADD COLUMN not_trackable_at timestamptz;
