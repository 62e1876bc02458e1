//! The consume loop: consume → handle → ack, retry later, or park. Written once; each worker brings a [`Handler`].
//!
//! - A delivery is acked only after its outcome is durable: the handler's effect for `Ack`, the copy in a
//!   retry queue for `Retry`, the copy in `Q.dead` for `Park` (both published with confirms). If that copy
//!   cannot be published, the delivery is returned to the queue (nack with requeue), never dropped.
//! - Retries go through delay queues (`Q.retry.{ms}ms`), so the work queue is never blocked behind a waiting message.
//!   The attempt count travels in the `x-attempts` header; past `max_attempts` the message is parked.
//! - A handler that panics parks its message with the panic as the reason, instead of looping.
//! - When the connection goes away the loop reconnects with capped, jittered backoff; unacked deliveries come again
//!   from the broker (handlers must be idempotent, and are).
//! - On shutdown it stops consuming, lets in-flight messages finish for `shutdown_grace`, then closes the channel:
//!   whatever was not acked goes back to the queue.

use super::{AmqpSettings, Outgoing, Publisher, connect, reconnect_delay, topology};
use crate::ops::Health;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// What to do with a message once handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do): ack it.
    Ack,
    /// A transient failure: try again after at least `after`.
    Retry { after: Duration, reason: String },
    /// Cannot be processed (bad input, a permanent refusal): park it in `Q.dead` with the reason.
    Park { reason: String },
    /// Not yet, and not a failure (something it depends on is not done): come back after `after`, through the
    /// same delay queues as `Retry`, without counting an attempt.
    Wait { after: Duration, reason: String },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "acked",
            Outcome::Retry { .. } => "retried",
            Outcome::Park { .. } => "parked",
            Outcome::Wait { .. } => "waited",
        }
    }
}

/// A delivery as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub queue: String,
    pub body: Vec<u8>,
    /// 1 for the first attempt; counts retries through the delay queues.
    pub attempt: u32,
    pub redelivered: bool,
    pub message_id: Option<String>,
    pub routing_key: String,
}

pub trait Handler: Send + Sync + 'static {
    fn handle(&self, msg: Incoming) -> impl Future<Output = Outcome> + Send;
}

pub const ATTEMPTS_HEADER: &str = "x-attempts";
pub const PARK_REASON_HEADER: &str = "x-park-reason";
pub const ORIGINAL_QUEUE_HEADER: &str = "x-original-queue";
pub const LAST_ERROR_HEADER: &str = "x-last-error";

fn header_u32(headers: Option<&FieldTable>, key: &str) -> Option<u32> {
    let value = headers?.inner().get(key)?;
    match value {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

struct Ctx<H> {
    queue: String,
    handler: Arc<H>,
    publisher: Publisher,
    settings: AmqpSettings,
}

/// Runs a consumer on `queue` until `shutdown`, reconnecting whenever the broker goes away.
pub async fn run_consumer<H: Handler>(
    settings: AmqpSettings,
    queue: &str,
    publisher: Publisher,
    handler: Arc<H>,
    health: Health,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        queue: queue.to_owned(),
        handler,
        publisher,
        settings,
    });
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match consume_once(&ctx, &health, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                health.set("rabbitmq", false);
                failures = failures.saturating_add(1);
                let delay = reconnect_delay(failures, ctx.settings.reconnect_max_delay);
                tracing::error!(queue = %ctx.queue, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "Lost the RabbitMQ consumer; reconnecting.");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    health.set("rabbitmq", false);
}

/// One connection's life. `Ok` means shutdown was asked and handled; `Err` means reconnect.
async fn consume_once<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = connect(&ctx.settings, &format!("{}-consume", ctx.queue)).await?;
    let channel = conn.create_channel().await?;
    topology::declare(&channel, &ctx.settings.retry_delays).await?;
    channel
        .basic_qos(ctx.settings.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            ctx.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    health.set("rabbitmq", true);
    tracing::info!(queue = %ctx.queue, prefetch = ctx.settings.prefetch, "Consuming.");

    let permits = Arc::new(Semaphore::new(usize::from(ctx.settings.prefetch)));
    let tracker = TaskTracker::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                None => break Err(anyhow::anyhow!("the consumer stream ended (connection or channel closed)")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else { break Ok(()) };
                    let ctx = ctx.clone();
                    tracker.spawn(async move {
                        process(&ctx, delivery).await;
                        drop(permit);
                    });
                }
            }
        }
    };
    // Stop taking new deliveries, let in-flight ones finish, then close: unacked messages return to the queue.
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    tracker.close();
    if tokio::time::timeout(ctx.settings.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(queue = %ctx.queue, "In-flight messages did not finish in time; they go back to the queue.");
    }
    let _ = channel.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    result
}

async fn process<H: Handler>(ctx: &Ctx<H>, delivery: Delivery) {
    let headers = delivery.properties.headers().as_ref();
    let attempt = header_u32(headers, ATTEMPTS_HEADER)
        .unwrap_or(0)
        .saturating_add(1);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    let msg = Incoming {
        queue: ctx.queue.clone(),
        body: delivery.data.clone(),
        attempt,
        redelivered: delivery.redelivered,
        message_id: message_id.clone(),
        routing_key: delivery.routing_key.as_str().to_owned(),
    };
    let span = tracing::info_span!("delivery", queue = %ctx.queue, attempt, message_id = message_id.as_deref().unwrap_or(""));
    async {
        let started = Instant::now();
        let outcome = match AssertUnwindSafe(ctx.handler.handle(msg)).catch_unwind().await {
            Ok(o) => o,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %what, "The handler panicked; parking the message.");
                Outcome::Park { reason: format!("handler panicked: {what}") }
            }
        };
        let outcome = match outcome {
            Outcome::Retry { reason, .. } if attempt >= ctx.settings.max_attempts => {
                Outcome::Park { reason: format!("retries exhausted after {attempt} attempts: {reason}") }
            }
            o => o,
        };
        metrics::histogram!("message_handling_seconds", "queue" => ctx.queue.clone()).record(started.elapsed());
        metrics::counter!("messages_total", "queue" => ctx.queue.clone(), "outcome" => outcome.label()).increment(1);
        settle(ctx, &delivery, attempt, outcome).await;
    }
    .instrument(span)
    .await
}

async fn settle<H: Handler>(ctx: &Ctx<H>, delivery: &Delivery, attempt: u32, outcome: Outcome) {
    let copy = match &outcome {
        Outcome::Ack => None,
        Outcome::Retry { after, reason } | Outcome::Wait { after, reason } => {
            let delay = ctx
                .settings
                .retry_delays
                .iter()
                .copied()
                .find(|d| d >= after)
                .or_else(|| ctx.settings.retry_delays.last().copied());
            match delay {
                Some(d) => {
                    tracing::info!(reason = %reason, delay_ms = d.as_millis() as u64, "Retrying later.");
                    Some((topology::retry_queue(&ctx.queue, d), reason.clone(), false))
                }
                None => Some((
                    topology::dead_queue(&ctx.queue),
                    format!("no retry queue configured: {reason}"),
                    true,
                )),
            }
        }
        Outcome::Park { reason } => {
            tracing::warn!(reason = %reason, "Parking the message.");
            Some((topology::dead_queue(&ctx.queue), reason.clone(), true))
        }
    };
    if let Some((target, reason, parked)) = copy {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        // A wait is not an attempt: the next delivery counts as this one again.
        let attempts = if matches!(outcome, Outcome::Wait { .. }) {
            attempt.saturating_sub(1)
        } else {
            attempt
        };
        headers.insert(
            ShortString::from(ATTEMPTS_HEADER),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        headers.insert(
            ShortString::from(ORIGINAL_QUEUE_HEADER),
            AMQPValue::LongString(LongString::from(ctx.queue.as_str())),
        );
        let key = if parked {
            PARK_REASON_HEADER
        } else {
            LAST_ERROR_HEADER
        };
        let reason: String = reason.chars().take(4000).collect();
        headers.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(reason.as_str())),
        );
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned());
        let published = ctx
            .publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &target,
                body: &delivery.data,
                headers,
                message_id,
            })
            .await;
        if let Err(e) = published {
            tracing::error!(error = %e, target = %target, "Could not move the message; returning it to the queue.");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
            return;
        }
    }
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker will deliver the message again and the handler's idempotency absorbs it.
        tracing::warn!(error = %e, "Could not ack; the message will come again.");
    }
}
