//! The contract's RabbitMQ topology, declared idempotently by every process at start (the declaring is the
//! runtime's: `tracking_runtime::amqp::topology`, re-exported here with this topology filled in).
//!
//! | name | kind | notes |
//! | --- | --- | --- |
//! | `tracking.requests` | quorum queue | operators publish through its own exchange |
//! | `carrier.events` | topic exchange | routing key `{carrier}.{tracking_code}`; `normalizer.carrier-events` bound with `#` |
//! | `order.status` | topic exchange | routing key = new status; `email.order-status`, `marketplace.order-status` bound with `#` |
//!
//! Each work queue `Q` also has an exchange of its own name, `Q.dead` and `Q.retry.{ms}ms` (the runtime's doc says
//! why).

use lapin::{Channel, Connection};
use std::time::Duration;
pub use tracking_runtime::amqp::topology::{
    BINDING_KEY, Binding, DELIVERY_LIMIT, Declared, PARKED_DELIVERY_LIMIT, QueueArg, QueueSpec,
    Topology, TopologyError, added_argument_only, dead_queue, exchange_of, message_count, reply,
    retry_queue,
};

pub const TRACKING_REQUESTS: &str = "tracking.requests";
pub const CARRIER_EVENTS: &str = "carrier.events";
pub const NORMALIZER_QUEUE: &str = "normalizer.carrier-events";
pub const ORDER_STATUS: &str = "order.status";
pub const EMAIL_QUEUE: &str = "email.order-status";
pub const MARKETPLACE_QUEUE: &str = "marketplace.order-status";

/// Every work queue, each with its `.dead` and `.retry.*` queues, and an exchange of its own name.
pub const WORK_QUEUES: [&str; 4] = [
    TRACKING_REQUESTS,
    NORMALIZER_QUEUE,
    EMAIL_QUEUE,
    MARKETPLACE_QUEUE,
];

/// The shared topic exchanges of the contract.
pub const EXCHANGES: [&str; 2] = [CARRIER_EVENTS, ORDER_STATUS];

/// The contract's bindings, as (queue, exchange); each with the routing key [`BINDING_KEY`].
pub const BINDINGS: [(&str, &str); 3] = [
    (NORMALIZER_QUEUE, CARRIER_EVENTS),
    (EMAIL_QUEUE, ORDER_STATUS),
    (MARKETPLACE_QUEUE, ORDER_STATUS),
];

/// The topology the runtime is given ([`crate::install`]).
pub static TOPOLOGY: Topology = Topology {
    work_queues: &WORK_QUEUES,
    exchanges: &EXCHANGES,
    bindings: &BINDINGS,
};

/// Every exchange [`declare`] declares: the contract's, then each work queue's own.
pub fn exchanges() -> Vec<&'static str> {
    TOPOLOGY.exchanges()
}

/// Every binding [`declare`] declares for these retry delays.
pub fn bindings(retry_delays: &[Duration]) -> Vec<Binding> {
    TOPOLOGY.bindings(retry_delays)
}

/// Every queue [`declare`] declares for these retry delays, in declaration order. Pure: deployment files (a broker
/// definitions file) and their tests use it.
pub fn queues(retry_delays: &[Duration]) -> Vec<QueueSpec> {
    TOPOLOGY.queues(retry_delays)
}

/// Declares the whole topology on one channel, failing at the first refusal: for a user allowed everything (an
/// administrator, tests).
pub async fn declare(channel: &Channel, retry_delays: &[Duration]) -> lapin::Result<()> {
    TOPOLOGY.declare(channel, retry_delays).await
}

/// Declares what this connection's user may declare of the topology, and checks the rest (see the runtime's
/// `declare_permitted`).
pub async fn declare_permitted(
    conn: &Connection,
    retry_delays: &[Duration],
) -> Result<Declared, TopologyError> {
    TOPOLOGY.declare_permitted(conn, retry_delays).await
}
