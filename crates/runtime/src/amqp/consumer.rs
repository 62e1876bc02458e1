//! The consume loop: consume → handle → ack, retry later, or park. Written once; each worker brings a [`Handler`].
//!
//! - A delivery is acked only after its outcome is durable: the handler's effect for `Ack`, the copy in a
//!   retry queue for `Retry`, the copy in `Q.dead` for `Park` (both published with confirms). If that copy
//!   cannot be published, the delivery is returned to the queue (nack with requeue), never dropped.
//! - Retries go through delay queues (`Q.retry.{ms}ms`), so the work queue is never blocked behind a waiting message.
//!   The attempt count travels in the `x-attempts` header; past `max_attempts` the message is parked.
//! - A handler that panics parks its message with the panic as the reason, instead of looping.
//! - When the connection goes away the loop reconnects at once (after 100-200 ms), to the next node when
//!   `AMQP_URL` lists several; while no node answers it tries again with capped, jittered backoff. Unacked
//!   deliveries come again from the broker (handlers must be idempotent, and are).
//! - On shutdown it stops consuming, lets in-flight messages finish for `shutdown_grace`, then closes the channel:
//!   whatever was not acked goes back to the queue.
//! - Unavailable is not invalid: a handler that answers [`Outcome::Unavailable`] (its database is down, say) keeps
//!   its message and tries it again with capped backoff, spending no attempt, while the loop takes no new
//!   deliveries and `/health` shows the dependency down; a ten-minute outage parks nothing. A blocked broker
//!   (RabbitMQ refusing publishes during a resource alarm) is such an outage: a retry or park copy waits for the
//!   block to lift, and the delivery is held meanwhile (not handed back, no attempt spent).
//! - Liveness: with messages held or ready in the queue and nothing settled for `stall_after`, `/health`'s
//!   `progress` component goes down (and `consumer_stalled` to 1); a consumer stream that stopped yielding while
//!   messages wait is reopened.

use super::brokers::BrokerIndex;
use super::{AmqpSettings, Outgoing, Publisher, connect_any, reconnect_delay, topology};
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
    /// A transient failure whose giving up the handler decides itself (a time window kept in its own records, as
    /// the publishers do for a far end that is down for hours): through the delay queues like `Retry`, but not
    /// counted toward `max_attempts`.
    RetryUncounted { after: Duration, reason: String },
    /// A dependency this process needs is down (`dependency` is its `/health` component, e.g. `postgres`): the
    /// message is kept and handled again once it answers, spending no attempt; no new message is taken meanwhile.
    Unavailable {
        dependency: &'static str,
        reason: String,
    },
}

impl Outcome {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "acked",
            Outcome::Retry { .. } | Outcome::RetryUncounted { .. } => "retried",
            Outcome::Park { .. } => "parked",
            Outcome::Wait { .. } => "waited",
            Outcome::Unavailable { .. } => "unavailable",
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
    /// How many times this message waited already (`Outcome::Wait`, counted in the `x-waits` header): a handler
    /// backs off with it, and logs a wait once rather than at each return.
    pub waits: u32,
    pub redelivered: bool,
    pub message_id: Option<String>,
    pub routing_key: String,
}

pub trait Handler: Send + Sync + 'static {
    fn handle(&self, msg: Incoming) -> impl Future<Output = Outcome> + Send;
}

pub const ATTEMPTS_HEADER: &str = "x-attempts";
pub const WAITS_HEADER: &str = "x-waits";
pub const PARK_REASON_HEADER: &str = "x-park-reason";
pub const ORIGINAL_QUEUE_HEADER: &str = "x-original-queue";
pub const LAST_ERROR_HEADER: &str = "x-last-error";

pub(super) fn header_u32(headers: Option<&FieldTable>, key: &str) -> Option<u32> {
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
    health: Health,
    /// How many handlers are waiting for a dependency to come back: no new delivery is taken while it is above 0.
    waiting: tokio::sync::watch::Sender<usize>,
    progress: Progress,
}

/// When this consumer last settled a message, and how many it holds: the liveness behind `/health`'s `progress`.
#[derive(Default)]
pub(super) struct Progress {
    last_settled: std::sync::Mutex<Option<Instant>>,
    pub(super) in_flight: std::sync::atomic::AtomicUsize,
}

impl Progress {
    pub(super) fn settled(&self) {
        if let Ok(mut last) = self.last_settled.lock() {
            *last = Some(Instant::now());
        }
    }
    pub(super) fn idle_for(&self, since_start: Instant) -> Duration {
        let last = self
            .last_settled
            .lock()
            .ok()
            .and_then(|l| *l)
            .unwrap_or(since_start);
        last.elapsed()
    }
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
    health.set("progress", true);
    let ctx = Arc::new(Ctx {
        queue: queue.to_owned(),
        handler,
        publisher,
        settings,
        health: health.clone(),
        waiting: tokio::sync::watch::Sender::new(0),
        progress: Progress::default(),
    });
    reconnecting(&ctx.queue, &ctx.settings, &health, &shutdown, || {
        consume_once(&ctx, &shutdown)
    })
    .await;
}

/// How one connection's life ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Shutdown was asked and handled.
    Shutdown,
    /// No node of `AMQP_URL` answered: the next try waits longer each time.
    Unreachable(anyhow::Error),
    /// The consumer was running and its connection (or channel, or stream) was lost: reconnect at once.
    Lost(anyhow::Error),
}

/// The consecutive failures the reconnect backoff counts after `ended`: a lost connection that had been consuming
/// starts again from one (a reconnect after 100-200 ms), however many losses came before; a node that does not
/// answer adds one.
pub(super) fn failures_after(failures: u32, ended: &Ended) -> u32 {
    match ended {
        Ended::Shutdown => 0,
        Ended::Lost(_) => 1,
        Ended::Unreachable(_) => failures.saturating_add(1),
    }
}

/// Runs `once` (one connection's life) again whenever it ends without a shutdown, until shutdown comes:
/// at once after a lost connection, with capped backoff while no node answers; `/health`'s `rabbitmq` says why
/// while it is down.
pub(super) async fn reconnecting<F, Fut>(
    queue: &str,
    settings: &AmqpSettings,
    health: &Health,
    shutdown: &CancellationToken,
    mut once: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Ended>,
{
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let ended = once().await;
        failures = failures_after(failures, &ended);
        match ended {
            Ended::Shutdown => break,
            Ended::Unreachable(e) | Ended::Lost(e) => {
                health.set_down("rabbitmq", &e);
                let delay = reconnect_delay(failures, settings.reconnect_max_delay);
                tracing::error!(queue = %queue, error = %e, retry_in_ms = delay.as_millis() as u64,
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

/// A consumer's connection, channel and stream, and the node they are on.
pub(super) struct Opened {
    pub(super) conn: lapin::Connection,
    pub(super) channel: lapin::Channel,
    pub(super) consumer: lapin::Consumer,
    pub(super) broker: BrokerIndex,
}

/// Connects (to the first node that answers), declares the topology, sets `prefetch` and starts consuming
/// `queue`; `/health`'s `rabbitmq` is up. A failure is [`Ended::Unreachable`].
pub(super) async fn open(
    settings: &AmqpSettings,
    queue: &str,
    prefetch: u16,
    health: &Health,
) -> Result<Opened, Ended> {
    let (conn, broker) = connect_any(settings, &format!("{queue}-consume"))
        .await
        .map_err(|e| Ended::Unreachable(e.into()))?;
    match start_consuming(&conn, settings, queue, prefetch).await {
        Ok((channel, consumer)) => {
            health.set("rabbitmq", true);
            Ok(Opened {
                conn,
                channel,
                consumer,
                broker,
            })
        }
        Err(e) => {
            // It answered, then failed: the next try goes to the next node.
            settings.brokers.lost(broker);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "bye".into())).await;
            Err(Ended::Unreachable(e))
        }
    }
}

/// How long closing a lost connection may take: it is usually gone already.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The consumer's connection ended with `result`: shutdown, or lost (its node moved on from, when `AMQP_URL`
/// lists several).
pub(super) fn ended(
    result: anyhow::Result<()>,
    settings: &AmqpSettings,
    queue: &str,
    broker: BrokerIndex,
) -> Ended {
    match result {
        Ok(()) => Ended::Shutdown,
        Err(e) => {
            let brokers = &settings.brokers;
            let next = brokers.lost(broker);
            if brokers.len() > 1 {
                tracing::warn!(queue = %queue, lost = %brokers.endpoint(broker), next = %brokers.endpoint(next),
                    "Lost the RabbitMQ node; consuming moves to the next.");
            }
            Ended::Lost(e)
        }
    }
}

async fn start_consuming(
    conn: &lapin::Connection,
    settings: &AmqpSettings,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    topology::declare_permitted(conn, &settings.retry_delays).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// The periodic check of a consumer's progress: reports a stall on `/health` and `consumer_stalled`, and fails
/// (so that the stream is reopened) on the lapin trap: a consumer stream that stopped yielding while messages
/// wait and none is held. `undelivered_for` is the time since the last delivery, `None` while the consumer
/// takes nothing on purpose (a dependency is down).
pub(super) async fn check_progress(
    channel: &lapin::Channel,
    queue: &str,
    settings: &AmqpSettings,
    health: &Health,
    progress: &Progress,
    started: Instant,
    undelivered_for: Option<Duration>,
) -> anyhow::Result<()> {
    let ready = topology::message_count(channel, queue).await.unwrap_or(0);
    let held = progress
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed);
    let idle = progress.idle_for(started);
    let stalled = (held > 0 || ready > 0) && idle >= settings.stall_after;
    report_stall(queue, health, stalled, ready, held, idle);
    if let Some(undelivered) = undelivered_for
        && held == 0
        && ready > 0
        && undelivered >= settings.stall_after
    {
        anyhow::bail!("{ready} messages are ready but none was delivered for {undelivered:?}");
    }
    Ok(())
}

/// Stops taking deliveries, gives the tasks in `tracker` `shutdown_grace` to finish, then closes the channel and
/// the connection: unacked messages return to the queue.
pub(super) async fn close(
    conn: lapin::Connection,
    channel: lapin::Channel,
    consumer: &lapin::Consumer,
    tracker: &TaskTracker,
    settings: &AmqpSettings,
    queue: &str,
    what: &str,
) {
    // Bounded: on a lost connection these fail at once, but nothing here may hang on a dead socket.
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await;
    tracker.close();
    if tokio::time::timeout(settings.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(queue = %queue, "In-flight {what} did not finish in time; they go back to the queue.");
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "bye".into())).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "bye".into())).await;
}

/// One connection's life.
async fn consume_once<H: Handler>(ctx: &Arc<Ctx<H>>, shutdown: &CancellationToken) -> Ended {
    let Opened {
        conn,
        channel,
        mut consumer,
        broker,
    } = match open(
        &ctx.settings,
        &ctx.queue,
        ctx.settings.prefetch,
        &ctx.health,
    )
    .await
    {
        Ok(opened) => opened,
        Err(ended) => return ended,
    };
    tracing::info!(queue = %ctx.queue, prefetch = ctx.settings.prefetch, "Consuming.");

    let permits = Arc::new(Semaphore::new(usize::from(ctx.settings.prefetch)));
    let tracker = TaskTracker::new();
    let mut waiting = ctx.waiting.subscribe();
    let started = Instant::now();
    let mut last_delivery = Instant::now();
    let mut check = tokio::time::interval(ctx.settings.stall_after / 4);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let paused = *waiting.borrow() > 0;
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            changed = waiting.changed(), if paused => {
                if changed.is_err() { break Ok(()) }
            }
            _ = check.tick() => {
                if let Err(e) = check_progress(&channel, &ctx.queue, &ctx.settings, &ctx.health, &ctx.progress, started, (!paused).then(|| last_delivery.elapsed())).await {
                    break Err(e);
                }
            }
            next = consumer.next(), if !paused => match next {
                None => break Err(anyhow::anyhow!("the consumer stream ended (connection or channel closed)")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => {
                    last_delivery = Instant::now();
                    let Ok(permit) = permits.clone().acquire_owned().await else { break Ok(()) };
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    ctx.progress.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracker.spawn(async move {
                        process(&ctx, delivery, &shutdown).await;
                        ctx.progress.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        drop(permit);
                    });
                }
            }
        }
    };
    close(
        conn,
        channel,
        &consumer,
        &tracker,
        &ctx.settings,
        &ctx.queue,
        "messages",
    )
    .await;
    ended(result, &ctx.settings, &ctx.queue, broker)
}

pub(super) fn report_stall(
    queue: &str,
    health: &Health,
    stalled: bool,
    ready: u32,
    held: usize,
    idle: Duration,
) {
    let was = health.is_up("progress");
    health.set("progress", !stalled);
    metrics::gauge!("consumer_stalled", "queue" => queue.to_owned()).set(if stalled {
        1.0
    } else {
        0.0
    });
    if stalled && was {
        tracing::error!(queue = %queue, ready, held, idle_secs = idle.as_secs(),
            "This consumer has settled nothing for too long while messages wait.");
    } else if !stalled && !was {
        tracing::info!(queue = %queue, "This consumer is making progress again.");
    }
}

/// What a caught panic said.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs the handler, turning a panic into a park.
async fn handle_once<H: Handler>(ctx: &Ctx<H>, msg: Incoming) -> Outcome {
    match AssertUnwindSafe(ctx.handler.handle(msg))
        .catch_unwind()
        .await
    {
        Ok(o) => o,
        Err(panic) => {
            let what = panic_text(panic.as_ref());
            tracing::error!(panic = %what, "The handler panicked; parking the message.");
            Outcome::Park {
                reason: format!("handler panicked: {what}"),
            }
        }
    }
}

/// Handles the message until it has an outcome other than `Unavailable`: while a dependency is down the message is
/// kept (no attempt spent) and tried again with capped backoff, and the consume loop takes nothing new. `None`
/// when shutdown came first: the message is left unacked and goes back to the queue.
async fn handle_while_available<H: Handler>(
    ctx: &Ctx<H>,
    msg: &Incoming,
    shutdown: &CancellationToken,
) -> Option<Outcome> {
    let mut failures = 0u32;
    let mut held_for = None;
    let outcome = loop {
        let outcome = handle_once(ctx, msg.clone()).await;
        let Outcome::Unavailable { dependency, reason } = &outcome else {
            break Some(outcome);
        };
        held_for = Some(*dependency);
        if failures == 0 {
            ctx.waiting.send_modify(|n| *n += 1);
            tracing::warn!(dependency, reason = %reason, "A dependency is unavailable; holding the message and taking no new ones until it answers.");
        }
        ctx.health.set(dependency, false);
        failures = failures.saturating_add(1);
        let delay = reconnect_delay(failures, ctx.settings.unavailable_max_delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break None,
        }
    };
    if failures > 0 {
        ctx.waiting.send_modify(|n| *n = n.saturating_sub(1));
        if outcome.is_some() {
            if let Some(dependency) = held_for {
                // It answered: up again (for the broker a publish went through, which nothing else would report).
                ctx.health.set(dependency, true);
            }
            tracing::info!(
                tries = failures + 1,
                "The dependency answers again; the held message went on."
            );
        }
    }
    outcome
}

/// A delivery as a handler sees it, its attempt read from the `x-attempts` header.
pub(super) fn incoming(queue: &str, delivery: &Delivery) -> Incoming {
    let headers = delivery.properties.headers().as_ref();
    let attempt = header_u32(headers, ATTEMPTS_HEADER)
        .unwrap_or(0)
        .saturating_add(1);
    Incoming {
        queue: queue.to_owned(),
        body: delivery.data.clone(),
        attempt,
        waits: header_u32(headers, WAITS_HEADER).unwrap_or(0),
        redelivered: delivery.redelivered,
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        routing_key: delivery.routing_key.as_str().to_owned(),
    }
}

/// A retry past `max_attempts` becomes a park.
pub(super) fn exhausted(outcome: Outcome, attempt: u32, max_attempts: u32) -> Outcome {
    match outcome {
        Outcome::Retry { reason, .. } if attempt >= max_attempts => Outcome::Park {
            reason: format!("retries exhausted after {attempt} attempts: {reason}"),
        },
        o => o,
    }
}

async fn process<H: Handler>(ctx: &Ctx<H>, delivery: Delivery, shutdown: &CancellationToken) {
    let msg = incoming(&ctx.queue, &delivery);
    let attempt = msg.attempt;
    let message_id = msg.message_id.clone();
    let span = tracing::info_span!("delivery", queue = %ctx.queue, attempt, message_id = message_id.as_deref().unwrap_or(""));
    async {
        let started = Instant::now();
        let Some(outcome) = handle_while_available(ctx, &msg, shutdown).await else {
            tracing::info!("Shutting down while a dependency is unavailable; the message goes back to the queue.");
            return;
        };
        let outcome = exhausted(outcome, attempt, ctx.settings.max_attempts);
        metrics::histogram!("message_handling_seconds", "queue" => ctx.queue.clone()).record(started.elapsed());
        metrics::counter!("messages_total", "queue" => ctx.queue.clone(), "outcome" => outcome.label()).increment(1);
        settle(&ctx.queue, &ctx.settings, &ctx.publisher, &delivery, attempt, outcome).await;
        ctx.progress.settled();
    }
    .instrument(span)
    .await
}

/// The delay tier a retry or a wait of `after` goes through: the smallest tier at least `after` (it never comes
/// back early), else the longest.
pub fn tier_at_least(tiers: &[Duration], after: Duration) -> Option<Duration> {
    tiers
        .iter()
        .copied()
        .find(|d| *d >= after)
        .or_else(|| tiers.last().copied())
}

/// The longest delay tier that ends by `before`, for a wait that must not come back late (it comes back early
/// and waits again for the rest); `None` when even the shortest tier is longer.
pub fn tier_at_most(tiers: &[Duration], before: Duration) -> Option<Duration> {
    tiers.iter().copied().filter(|d| *d <= before).max()
}

/// Settles one delivery: the copy its outcome asks for (delay queue or `Q.dead`, with confirms), then the ack.
/// When the copy cannot be published the delivery is returned to the queue, never dropped.
pub(super) async fn settle(
    queue: &str,
    settings: &AmqpSettings,
    publisher: &Publisher,
    delivery: &Delivery,
    attempt: u32,
    outcome: Outcome,
) {
    let copy = match &outcome {
        Outcome::Ack => None,
        // Never produced here: `process` handles the message again until the dependency answers.
        Outcome::Unavailable { .. } => None,
        Outcome::Retry { after, reason }
        | Outcome::Wait { after, reason }
        | Outcome::RetryUncounted { after, reason } => {
            match tier_at_least(&settings.retry_delays, *after) {
                Some(d) => {
                    let waits = header_u32(delivery.properties.headers().as_ref(), WAITS_HEADER);
                    // A message that waits again (behind an earlier change, for a lease) was logged when it began
                    // to wait: once per message, not once per return.
                    if matches!(outcome, Outcome::Wait { .. }) && waits.is_some_and(|w| w > 0) {
                        tracing::debug!(reason = %reason, delay_ms = d.as_millis() as u64, waits, "Waiting again.");
                    } else {
                        tracing::info!(reason = %reason, delay_ms = d.as_millis() as u64, "Retrying later.");
                    }
                    Some((topology::retry_queue(queue, d), reason.clone(), false))
                }
                None => Some((
                    topology::dead_queue(queue),
                    format!("no retry queue configured: {reason}"),
                    true,
                )),
            }
        }
        Outcome::Park { reason } => {
            tracing::warn!(reason = %reason, "Parking the message.");
            Some((topology::dead_queue(queue), reason.clone(), true))
        }
    };
    if let Some((target, reason, parked)) = copy {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        // A wait (or an uncounted retry) is not an attempt: the next delivery counts as this one again.
        let attempts = if matches!(
            outcome,
            Outcome::Wait { .. } | Outcome::RetryUncounted { .. }
        ) {
            attempt.saturating_sub(1)
        } else {
            attempt
        };
        headers.insert(
            ShortString::from(ATTEMPTS_HEADER),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        if matches!(outcome, Outcome::Wait { .. }) {
            let waits = header_u32(Some(&headers), WAITS_HEADER).unwrap_or(0);
            headers.insert(
                ShortString::from(WAITS_HEADER),
                AMQPValue::LongLongInt(i64::from(waits.saturating_add(1))),
            );
        }
        headers.insert(
            ShortString::from(ORIGINAL_QUEUE_HEADER),
            AMQPValue::LongString(LongString::from(queue)),
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
        // `publish_through_block`: while RabbitMQ blocks publishing (a resource alarm) the copy waits, and the
        // delivery with it, rather than going back to the queue at once (each return counts toward the queue's
        // delivery limit) or being sent twice. A shutdown meanwhile closes the channel, which hands it back.
        // Through the work queue's own exchange, not the default one: a worker's user may write only its own.
        let published = publisher
            .publish_through_block(Outgoing {
                exchange: topology::exchange_of(queue),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> Ended {
        Ended::Lost(anyhow::anyhow!("the consumer stream ended"))
    }

    fn unreachable() -> Ended {
        Ended::Unreachable(anyhow::anyhow!("connection refused"))
    }

    #[test]
    fn a_lost_connection_is_reopened_at_once_however_many_came_before() {
        let cap = Duration::from_secs(30);
        let mut failures = 0;
        for _ in 0..20 {
            failures = failures_after(failures, &unreachable());
        }
        assert_eq!(failures, 20);
        assert!(reconnect_delay(failures, cap) >= Duration::from_secs(15));
        // A connection that consumed for a while and was lost: 100-200 ms, not the long outage's backoff.
        for _ in 0..5 {
            failures = failures_after(failures, &lost());
            assert_eq!(failures, 1);
            assert!(reconnect_delay(failures, cap) <= Duration::from_millis(200));
        }
        assert_eq!(failures_after(failures, &unreachable()), 2);
        assert_eq!(failures_after(7, &Ended::Shutdown), 0);
    }
}
