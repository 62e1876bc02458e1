//! The contract's topology, declared idempotently by every worker at start.
//!
//! | name | kind | notes |
//! | --- | --- | --- |
//! | `tracking.requests` | quorum queue | operators publish through the default exchange |
//! | `carrier.events` | topic exchange | routing key `{carrier}.{tracking_code}`; `normalizer.carrier-events` bound with `#` |
//! | `order.status` | topic exchange | routing key = new status; `email.order-status`, `marketplace.order-status` bound with `#` |
//! | `Q.dead` | quorum queue | parked messages with `x-park-reason`, `x-attempts`, `x-original-queue` headers |
//! | `Q.retry.{ms}ms` | quorum queue | message TTL, then dead-lettered back to `Q` through the default exchange |
//!
//! Work queues dead-letter at-least-once to `Q.dead` once a message was delivered `x-delivery-limit` times
//! (a message that crashes its worker every time ends up parked, not lost and not looping).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

pub const TRACKING_REQUESTS: &str = "tracking.requests";
pub const CARRIER_EVENTS: &str = "carrier.events";
pub const NORMALIZER_QUEUE: &str = "normalizer.carrier-events";
pub const ORDER_STATUS: &str = "order.status";
pub const EMAIL_QUEUE: &str = "email.order-status";
pub const MARKETPLACE_QUEUE: &str = "marketplace.order-status";

/// Every work queue, each with its `.dead` and `.retry.*` queues.
pub const WORK_QUEUES: [&str; 4] = [
    TRACKING_REQUESTS,
    NORMALIZER_QUEUE,
    EMAIL_QUEUE,
    MARKETPLACE_QUEUE,
];

/// Deliveries of one message before the broker parks it on its own (a worker crashing on it each time).
pub const DELIVERY_LIMIT: i64 = 50;

pub fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// The exchanges `declare` declares: durable topic exchanges.
pub const EXCHANGES: [&str; 2] = [CARRIER_EVENTS, ORDER_STATUS];

/// The bindings `declare` declares, as (queue, exchange); each with the routing key [`BINDING_KEY`].
pub const BINDINGS: [(&str, &str); 3] = [
    (NORMALIZER_QUEUE, CARRIER_EVENTS),
    (EMAIL_QUEUE, ORDER_STATUS),
    (MARKETPLACE_QUEUE, ORDER_STATUS),
];

/// The routing key of every binding in [`BINDINGS`].
pub const BINDING_KEY: &str = "#";

/// A queue argument's value, as `declare` sends it (text as a long string, numbers as a signed 64-bit integer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArg {
    Text(String),
    Long(i64),
}

impl QueueArg {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            QueueArg::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            QueueArg::Long(n) => AMQPValue::LongLongInt(*n),
        }
    }
}

/// One queue as `declare` declares it: durable, not exclusive, not auto-delete, with these arguments in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: Vec<(&'static str, QueueArg)>,
}

fn text(s: &str) -> QueueArg {
    QueueArg::Text(s.to_owned())
}

/// Every queue `declare` declares for these retry delays, in declaration order: per work queue, its `.dead` queue,
/// the work queue, then its retry tiers. Pure: deployment files (a broker definitions file) and their tests use it.
pub fn queues(retry_delays: &[Duration]) -> Vec<QueueSpec> {
    let mut out = Vec::new();
    for queue in WORK_QUEUES {
        let dead = dead_queue(queue);
        out.push(QueueSpec {
            name: dead.clone(),
            arguments: vec![("x-queue-type", text("quorum"))],
        });
        out.push(QueueSpec {
            name: queue.to_owned(),
            arguments: vec![
                ("x-queue-type", text("quorum")),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(&dead)),
                ("x-dead-letter-strategy", text("at-least-once")),
                ("x-overflow", text("reject-publish")),
                ("x-delivery-limit", QueueArg::Long(DELIVERY_LIMIT)),
            ],
        });
        for delay in retry_delays {
            out.push(QueueSpec {
                name: retry_queue(queue, *delay),
                arguments: vec![
                    ("x-queue-type", text("quorum")),
                    (
                        "x-message-ttl",
                        QueueArg::Long(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                    ),
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text(queue)),
                    ("x-dead-letter-strategy", text("at-least-once")),
                    ("x-overflow", text("reject-publish")),
                ],
            });
        }
    }
    out
}

fn table(entries: &[(&'static str, QueueArg)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.to_amqp());
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the whole topology. Retry tiers are named by their delay, so workers with different
/// `RETRY_DELAYS_MS` never clash on queue arguments.
pub async fn declare(channel: &Channel, retry_delays: &[Duration]) -> lapin::Result<()> {
    let exchange_opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in EXCHANGES {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                exchange_opts,
                FieldTable::default(),
            )
            .await?;
    }
    for queue in queues(retry_delays) {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                durable(),
                table(&queue.arguments),
            )
            .await?;
    }
    for (queue, exchange) in BINDINGS {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                BINDING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Messages ready in a queue right now (a passive declare: the management API's counts lag by seconds).
pub async fn message_count(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}
