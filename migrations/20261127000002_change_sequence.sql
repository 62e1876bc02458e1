-- The order in which status changes were recorded. Changes of one shipment are recorded under its row lock, so
-- their sequence numbers follow their order; the marketplace publisher relays an order's changes in this order.
ALTER TABLE status_changes ADD COLUMN seq BIGSERIAL;
CREATE UNIQUE INDEX status_changes_seq ON status_changes (seq);
