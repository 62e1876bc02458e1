//! The batch consume loop, beside the per-message one ([`super::run_consumer`]): for a handler whose work is
//! cheaper in bulk (one database transaction for many messages).
//!
//! - Deliveries are gathered into a batch of up to [`BatchSettings::size`], or what arrived within
//!   [`BatchSettings::linger`] of the batch's first delivery, whichever comes first; at most
//!   [`BatchSettings::in_flight`] batches are handled at once. The channel's prefetch is at least
//!   `size × (in_flight + 1)`, so the next batch is already waiting while the others are handled.
//! - The handler returns one [`Outcome`] per delivery, in the batch's order, and each delivery is settled as the
//!   per-message loop settles it (the same delay queues, `Q.dead`, attempt counting and confirms; a copy that
//!   cannot be published returns the delivery to the queue).
//! - [`Outcome::Unavailable`] holds those deliveries (no attempt spent, no new delivery taken, `/health` down) and
//!   hands them to the handler again, as a batch, with capped backoff until the dependency answers; the others
//!   of the batch are settled at once.
//! - A handler that panics (or answers the wrong number of outcomes) is called again for each delivery alone,
//!   so only the delivery that causes it is parked.
//! - On shutdown, deliveries gathered but not handled and batches held for a dependency are left unacked and go
//!   back to the queue when the channel closes; batches being handled get `shutdown_grace` to finish.
//! - Stall detection is the per-message loop's: `/health`'s `progress` and `consumer_stalled{queue}`.
//! - `consumer_batches_total{queue}` counts batches; with `messages_total{queue,outcome}` it gives their mean size.

use super::consumer::{
    Ended, Incoming, Opened, Outcome, Progress, check_progress, close, ended, exhausted, incoming,
    open, panic_text, reconnecting, settle,
};
use super::{AmqpSettings, Publisher, reconnect_delay};
use crate::ops::Health;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How deliveries are gathered into batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Deliveries per batch at most (at least 1).
    pub size: usize,
    /// How long a batch waits for more deliveries after its first one: latency traded for fewer, larger batches.
    pub linger: Duration,
    /// Batches handled at once (at least 1).
    pub in_flight: usize,
}

impl BatchSettings {
    /// The prefetch the channel asks for: at least `PREFETCH`, and enough for the batches in flight and the next.
    pub fn prefetch(&self, prefetch: u16) -> u16 {
        let wanted = self.size.saturating_mul(self.in_flight.saturating_add(1));
        u16::try_from(wanted).unwrap_or(u16::MAX).max(prefetch)
    }
}

/// A handler of whole batches.
pub trait BatchHandler: Send + Sync + 'static {
    /// One outcome per message of `batch`, in its order.
    fn handle_batch(&self, batch: &[Incoming]) -> impl Future<Output = Vec<Outcome>> + Send;
}

struct Ctx<H> {
    queue: String,
    handler: Arc<H>,
    publisher: Publisher,
    settings: AmqpSettings,
    batch: BatchSettings,
    health: Health,
    /// Batches held while a dependency is down: no new delivery is taken while it is above 0.
    waiting: tokio::sync::watch::Sender<usize>,
    progress: Progress,
}

/// Runs a batch consumer on `queue` until `shutdown`, reconnecting whenever the broker goes away.
pub async fn run_batch_consumer<H: BatchHandler>(
    settings: AmqpSettings,
    batch: BatchSettings,
    queue: &str,
    publisher: Publisher,
    handler: Arc<H>,
    health: Health,
    shutdown: CancellationToken,
) {
    health.set("progress", true);
    let batch = BatchSettings {
        size: batch.size.max(1),
        in_flight: batch.in_flight.max(1),
        linger: batch.linger,
    };
    let ctx = Arc::new(Ctx {
        queue: queue.to_owned(),
        handler,
        publisher,
        settings,
        batch,
        health: health.clone(),
        waiting: tokio::sync::watch::Sender::new(0),
        progress: Progress::default(),
    });
    reconnecting(&ctx.queue, &ctx.settings, &health, &shutdown, || {
        consume_once(&ctx, &shutdown)
    })
    .await;
}

/// One connection's life.
async fn consume_once<H: BatchHandler>(ctx: &Arc<Ctx<H>>, shutdown: &CancellationToken) -> Ended {
    let prefetch = ctx.batch.prefetch(ctx.settings.prefetch);
    let Opened {
        conn,
        channel,
        mut consumer,
        broker,
    } = match open(&ctx.settings, &ctx.queue, prefetch, &ctx.health).await {
        Ok(opened) => opened,
        Err(ended) => return ended,
    };
    tracing::info!(queue = %ctx.queue, prefetch, batch = ctx.batch.size, linger_ms = ctx.batch.linger.as_millis() as u64,
        in_flight = ctx.batch.in_flight, "Consuming in batches.");

    let permits = Arc::new(Semaphore::new(ctx.batch.in_flight));
    let tracker = TaskTracker::new();
    let mut waiting = ctx.waiting.subscribe();
    let started = Instant::now();
    let mut last_delivery = Instant::now();
    let mut check = tokio::time::interval(ctx.settings.stall_after / 4);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gathered: Vec<Delivery> = Vec::with_capacity(ctx.batch.size);
    let mut linger_until: Option<tokio::time::Instant> = None;
    let result = loop {
        let paused = *waiting.borrow() > 0;
        let room = gathered.len() < ctx.batch.size;
        let flush = tokio::select! {
            // Biased: what is already buffered joins the batch before its linger ends.
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            changed = waiting.changed(), if paused => {
                if changed.is_err() { break Ok(()) }
                false
            }
            next = consumer.next(), if !paused && room => match next {
                None => break Err(anyhow::anyhow!("the consumer stream ended (connection or channel closed)")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => {
                    last_delivery = Instant::now();
                    ctx.progress.in_flight.fetch_add(1, Ordering::Relaxed);
                    gathered.push(delivery);
                    if gathered.len() == 1 {
                        linger_until = Some(tokio::time::Instant::now() + ctx.batch.linger);
                    }
                    gathered.len() >= ctx.batch.size
                }
            },
            _ = tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => true,
            _ = check.tick() => {
                if let Err(e) = check_progress(&channel, &ctx.queue, &ctx.settings, &ctx.health, &ctx.progress, started, (!paused).then(|| last_delivery.elapsed())).await {
                    break Err(e);
                }
                false
            }
        };
        if flush && !gathered.is_empty() {
            linger_until = None;
            let batch = std::mem::replace(&mut gathered, Vec::with_capacity(ctx.batch.size));
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break Ok(());
            };
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                process(&ctx, batch, &shutdown).await;
                drop(permit);
            });
        }
    };
    // Gathered deliveries not handed to the handler go back to the queue with the channel.
    ctx.progress
        .in_flight
        .fetch_sub(gathered.len(), Ordering::Relaxed);
    drop(gathered);
    close(
        conn,
        channel,
        &consumer,
        &tracker,
        &ctx.settings,
        &ctx.queue,
        "batches",
    )
    .await;
    ended(result, &ctx.settings, &ctx.queue, broker)
}

/// Calls the handler; a panic or a wrong number of outcomes sends each message to the handler alone, and a
/// message that still fails that way is parked with the reason.
async fn handle_once<H: BatchHandler>(handler: &H, batch: &[Incoming]) -> Vec<Outcome> {
    let failure = match AssertUnwindSafe(handler.handle_batch(batch))
        .catch_unwind()
        .await
    {
        Ok(outcomes) if outcomes.len() == batch.len() => return outcomes,
        Ok(outcomes) => format!(
            "the handler answered {} outcomes for {} messages",
            outcomes.len(),
            batch.len()
        ),
        Err(panic) => format!("handler panicked: {}", panic_text(panic.as_ref())),
    };
    if batch.len() == 1 {
        tracing::error!(reason = %failure, "The handler failed on a message; parking it.");
        return vec![Outcome::Park { reason: failure }];
    }
    tracing::error!(reason = %failure, messages = batch.len(), "The handler failed on a batch; handling its messages one by one.");
    let mut outcomes = Vec::with_capacity(batch.len());
    for msg in batch {
        let one = Box::pin(handle_once(handler, std::slice::from_ref(msg))).await;
        outcomes.extend(one);
    }
    outcomes
}

/// Handles a batch until every delivery has an outcome other than `Unavailable`, settling each as soon as it has
/// one. Deliveries still held when shutdown comes are left unacked: they go back to the queue.
async fn process<H: BatchHandler>(
    ctx: &Ctx<H>,
    batch: Vec<Delivery>,
    shutdown: &CancellationToken,
) {
    let started = Instant::now();
    metrics::counter!("consumer_batches_total", "queue" => ctx.queue.clone()).increment(1);
    let mut pending: Vec<(Delivery, Incoming)> = batch
        .into_iter()
        .map(|d| {
            let msg = incoming(&ctx.queue, &d);
            (d, msg)
        })
        .collect();
    let mut failures = 0u32;
    loop {
        let msgs: Vec<Incoming> = pending.iter().map(|(_, m)| m.clone()).collect();
        let outcomes = handle_once(ctx.handler.as_ref(), &msgs).await;
        let mut held = Vec::new();
        let mut down = None;
        let mut settles = Vec::new();
        for ((delivery, msg), outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Unavailable { dependency, reason } => {
                    down = Some((dependency, reason));
                    held.push((delivery, msg));
                }
                outcome => settles.push((delivery, msg, outcome)),
            }
        }
        for (delivery, msg, outcome) in settles {
            let outcome = exhausted(outcome, msg.attempt, ctx.settings.max_attempts);
            metrics::histogram!("message_handling_seconds", "queue" => ctx.queue.clone())
                .record(started.elapsed());
            metrics::counter!("messages_total", "queue" => ctx.queue.clone(), "outcome" => outcome.label())
                .increment(1);
            settle(
                &ctx.queue,
                &ctx.settings,
                &ctx.publisher,
                &delivery,
                msg.attempt,
                outcome,
            )
            .await;
            ctx.progress.in_flight.fetch_sub(1, Ordering::Relaxed);
            ctx.progress.settled();
        }
        let Some((dependency, reason)) = down else {
            break;
        };
        if failures == 0 {
            ctx.waiting.send_modify(|n| *n += 1);
            tracing::warn!(dependency, reason = %reason, messages = held.len(),
                "A dependency is unavailable; holding the batch and taking no new messages until it answers.");
        }
        ctx.health.set(dependency, false);
        failures = failures.saturating_add(1);
        pending = held;
        let delay = reconnect_delay(failures, ctx.settings.unavailable_max_delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {
                tracing::info!(messages = pending.len(), "Shutting down while a dependency is unavailable; the held messages go back to the queue.");
                ctx.progress.in_flight.fetch_sub(pending.len(), Ordering::Relaxed);
                break;
            }
        }
    }
    if failures > 0 {
        ctx.waiting.send_modify(|n| *n = n.saturating_sub(1));
    }
}
