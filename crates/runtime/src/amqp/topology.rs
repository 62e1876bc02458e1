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

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
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
    for exchange in [CARRIER_EVENTS, ORDER_STATUS] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                exchange_opts,
                FieldTable::default(),
            )
            .await?;
    }
    for queue in WORK_QUEUES {
        let dead = dead_queue(queue);
        channel
            .queue_declare(
                dead.as_str().into(),
                durable(),
                table(&[("x-queue-type", text("quorum"))]),
            )
            .await?;
        let args = table(&[
            ("x-queue-type", text("quorum")),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&dead)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
            ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
        ]);
        channel.queue_declare(queue.into(), durable(), args).await?;
        for delay in retry_delays {
            let args = table(&[
                ("x-queue-type", text("quorum")),
                (
                    "x-message-ttl",
                    AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                ),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(queue)),
                ("x-dead-letter-strategy", text("at-least-once")),
                ("x-overflow", text("reject-publish")),
            ]);
            channel
                .queue_declare(retry_queue(queue, *delay).as_str().into(), durable(), args)
                .await?;
        }
    }
    let bind = |q: &'static str, ex: &'static str| async move {
        channel
            .queue_bind(
                q.into(),
                ex.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    bind(NORMALIZER_QUEUE, CARRIER_EVENTS).await?;
    bind(EMAIL_QUEUE, ORDER_STATUS).await?;
    bind(MARKETPLACE_QUEUE, ORDER_STATUS).await?;
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
