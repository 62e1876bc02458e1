-- The marketplace publisher checks, for every change it relays, the order's earlier and later changes by the
-- marketplace's order id (`orders.order_id` and `marketplace_name`, across stores). The only index naming
-- `order_id` leads with `store`, so each check read the whole of it: one index scan over every order per change.
CREATE INDEX orders_marketplace_order ON orders (order_id, marketplace_name) WHERE marketplace_name IS NOT NULL;
