//! A publisher that only reports success once the broker confirmed the message into every target queue.
//! A nack, a returned (unroutable) message or a missing confirm within the timeout is an error. A returned message
//! fails at once and keeps the connection; after a nack, a timeout or a channel error the connection is dropped and
//! reopened on the next publish.
//!
//! A publish whose connection was lost before its confirm came (the node went away) is sent once more at once on
//! a new connection, to the next node when `AMQP_URL` lists several: it may then be queued twice (the first copy
//! may have made it), which the consumers' idempotency absorbs; it is never lost without an error.
//!
//! A blocked broker (a memory or disk alarm: `connection.blocked`) is watched per connection. While it lasts every
//! publish fails at once with [`PublishError::Blocked`] ("broker blocked: <reason>"), and a publish already waiting
//! for its confirm when the block comes fails then too; the connection is kept (it cannot even be closed while
//! blocked: the client may not write), `/health` shows the component `blocked` (when a [`Health`] was given) and
//! `amqp_publisher_blocked{connection}` is 1. `connection.unblocked` ends it. RabbitMQ blocks a connection (and
//! says so) when it publishes during an alarm, so the first publish after the alarm is the one that finds out.

use super::brokers::BrokerIndex;
use super::{AmqpSettings, ConnectError, connect_any, topology};
use crate::ops::Health;
use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Connect(ConnectError),
    #[error("publish failed: {0}")]
    Publish(lapin::Error),
    /// The topology is incomplete and this user may not complete it (or a declaration failed).
    #[error("{0}")]
    Topology(topology::TopologyError),
    #[error("the broker did not confirm the message within {0:?}")]
    Timeout(std::time::Duration),
    /// RabbitMQ refuses this connection's publishes (its reason, e.g. a memory alarm) until the alarm clears.
    #[error("broker blocked: {0} (RabbitMQ refuses publishes until its alarm clears)")]
    Blocked(String),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error(
        "no queue is bound for exchange {exchange:?} with routing key {routing_key:?}: the message came back unroutable"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

/// One message to publish. Messages are always persistent and mandatory.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub headers: FieldTable,
    /// A stable id (e.g. the change id) carried as the AMQP `message_id`.
    pub message_id: Option<String>,
}

impl<'a> Outgoing<'a> {
    pub fn json(exchange: &'a str, routing_key: &'a str, body: &'a [u8]) -> Self {
        Self {
            exchange,
            routing_key,
            body,
            headers: FieldTable::default(),
            message_id: None,
        }
    }
}

impl PublishError {
    /// Whether RabbitMQ blocked the publish: an outage to wait out, not the message's failure.
    pub fn is_blocked(&self) -> bool {
        matches!(self, PublishError::Blocked(_))
    }
}

#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AmqpSettings,
    name: String,
    conn: Mutex<Option<Open>>,
    report: Arc<Report>,
}

/// Where a publisher's blocked state is reported (shared with its connections' watch tasks, which must not keep
/// the publisher alive).
struct Report {
    /// The connection's name, the `connection` label of `amqp_publisher_blocked`.
    name: String,
    /// `/health`'s component, set once by [`Publisher::report_to`].
    health: OnceLock<(Health, &'static str)>,
}

/// One open connection, its confirming channel, and its blocked state (`Some(reason)` while blocked), kept by a
/// task that reads the connection's events until the connection is replaced.
struct Open {
    conn: Connection,
    /// The node it is connected to.
    broker: BrokerIndex,
    channel: Channel,
    blocked: watch::Receiver<Option<String>>,
    _watch: DropGuard,
}

/// How long closing a failed connection may take before it is left to the broker (a blocked connection cannot
/// send its close).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Publisher {
    /// A publisher that connects on first use (and again after any failure).
    pub fn new(settings: AmqpSettings, name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                name: format!("{name}-publish"),
                conn: Mutex::new(None),
                report: Arc::new(Report {
                    name: format!("{name}-publish"),
                    health: OnceLock::new(),
                }),
            }),
        }
    }

    /// Reports the broker blocking this publisher on `health`'s `component` (shown `blocked`, 503) until it lifts.
    pub fn report_to(&self, health: Health, component: &'static str) {
        let _ = self.inner.report.health.set((health, component));
    }

    /// Why the broker blocks this publisher's connection now, if it does.
    pub fn blocked(&self) -> Option<String> {
        match self.inner.conn.try_lock() {
            Ok(guard) => guard.as_ref().and_then(|o| o.blocked.borrow().clone()),
            Err(_) => None,
        }
    }

    /// Connects now and declares the topology: the start-up check of a worker.
    pub async fn connect(&self) -> Result<(), PublishError> {
        self.channel().await.map(|_| ())
    }

    /// Whether the last known connection is open. While another task holds the connection lock (publishing or
    /// connecting) the answer is optimistic: `true`; a failing publish resets it.
    pub fn is_connected(&self) -> bool {
        match self.inner.conn.try_lock() {
            Ok(guard) => guard
                .as_ref()
                .is_some_and(|o| o.conn.status().connected() && o.channel.status().connected()),
            Err(_) => true,
        }
    }

    async fn channel(&self) -> Result<(Channel, watch::Receiver<Option<String>>), PublishError> {
        let mut guard = self.inner.conn.lock().await;
        if let Some(open) = guard.as_ref()
            && open.conn.status().connected()
            && open.channel.status().connected()
        {
            return Ok((open.channel.clone(), open.blocked.clone()));
        }
        if let Some(old) = guard.take() {
            self.lost(&old);
            self.inner.report.set_blocked(None);
            close_soon(old.conn, "publisher reconnecting");
        }
        let (conn, broker) = connect_any(&self.inner.settings, &self.inner.name)
            .await
            .map_err(PublishError::Connect)?;
        // Listening before anything is published: lapin drops events nobody listens to.
        let (blocked_tx, blocked) = watch::channel(None);
        let stop = CancellationToken::new();
        tokio::spawn(watch_blocked(
            conn.events_listener(),
            blocked_tx,
            self.inner.report.clone(),
            stop.clone(),
        ));
        let lost = |e: lapin::Error| PublishError::Connect(e.into());
        let ch = conn.create_channel().await.map_err(lost)?;
        topology::declare_permitted(&conn, &self.inner.settings.retry_delays)
            .await
            .map_err(PublishError::Topology)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(lost)?;
        *guard = Some(Open {
            conn,
            broker,
            channel: ch.clone(),
            blocked: blocked.clone(),
            _watch: stop.drop_guard(),
        });
        Ok((ch, blocked))
    }

    /// When `old`'s connection is gone (not merely its channel), the next connection goes to the next node.
    fn lost(&self, old: &Open) {
        if !old.conn.status().connected() {
            let brokers = &self.inner.settings.brokers;
            let next = brokers.lost(old.broker);
            if brokers.len() > 1 {
                tracing::warn!(connection = %self.inner.name, lost = %brokers.endpoint(old.broker),
                    next = %brokers.endpoint(next), "Lost the RabbitMQ node; publishing moves to the next.");
            }
        }
    }

    /// Drops the connection of `failed` (the next publish opens a new one); its close is not waited for.
    async fn reset(&self, failed: &Channel) {
        let old = {
            let mut guard = self.inner.conn.lock().await;
            if guard
                .as_ref()
                .is_some_and(|o| o.channel.id() == failed.id())
            {
                guard.take()
            } else {
                None
            }
        };
        if let Some(old) = old {
            self.lost(&old);
            self.inner.report.set_blocked(None);
            close_soon(old.conn, "publisher reset");
        }
    }

    /// Publishes and waits for the broker's confirm, at most `PUBLISH_TIMEOUT_MS`; fails at once (with
    /// [`PublishError::Blocked`]) while the broker blocks the connection, also when the block comes during the wait.
    /// A publish cut short that way was handed to the broker: it may still be queued once the block lifts.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.send(msg, false).await
    }

    /// Publishes like [`Publisher::publish`], but waits a block out instead of failing: the message is sent once
    /// the block lifts, and a confirm delayed by a block is waited for (`PUBLISH_TIMEOUT_MS` counts again from the
    /// unblock). For a copy that must be neither lost nor doubled while the caller holds its delivery (a consumer's
    /// retry and park copies). Unbounded while the block lasts: the caller's shutdown must not depend on it.
    pub async fn publish_through_block(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.send(msg, true).await
    }

    /// Publishes, and when the channel was lost before the confirm came (its node went away), publishes once more
    /// on a new connection (to the next node of `AMQP_URL`).
    async fn send(&self, msg: Outgoing<'_>, hold: bool) -> Result<(), PublishError> {
        match self.send_once(&msg, hold).await {
            Err(Failed {
                error,
                channel_lost: true,
            }) => {
                tracing::warn!(connection = %self.inner.name, error = %error, exchange = msg.exchange, routing_key = msg.routing_key,
                    "The channel was lost before the broker confirmed; publishing again on a new connection.");
                metrics::counter!("amqp_publish_resent_total").increment(1);
                self.send_once(&msg, hold).await.map_err(|f| f.error)
            }
            other => other.map_err(|f| f.error),
        }
    }

    async fn send_once(&self, msg: &Outgoing<'_>, hold: bool) -> Result<(), Failed> {
        let (channel, mut blocked) = self.channel().await.map_err(Failed::kept)?;
        let now_blocked = blocked.borrow().clone();
        if let Some(reason) = now_blocked {
            if !hold {
                return Err(Failed::kept(PublishError::Blocked(reason)));
            }
            if !unblocked(&mut blocked).await {
                // The connection's watch ended (the connection went away): the caller tries again.
                return Err(Failed::kept(PublishError::Blocked(reason)));
            }
        }
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(msg.headers.clone());
        if let Some(id) = &msg.message_id {
            props = props.with_message_id(ShortString::from(id.as_str()));
        }
        let timeout = self.inner.settings.publish_timeout;
        let opts = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let publish = async {
            let confirm = channel
                .basic_publish(
                    msg.exchange.into(),
                    msg.routing_key.into(),
                    opts,
                    msg.body,
                    props,
                )
                .await
                .map_err(PublishError::Publish)?;
            confirm.await.map_err(PublishError::Publish)
        };
        let mut publish = std::pin::pin!(publish);
        let mut block_comes = blocked.clone();
        let result = loop {
            tokio::select! {
                r = tokio::time::timeout(timeout, &mut publish) => match r {
                    Ok(r) => break Ok(r),
                    Err(elapsed) => {
                        let now_blocked = blocked.borrow().is_some();
                        // Blocked while waiting: the confirm comes after the block; wait for both.
                        if hold && now_blocked && unblocked(&mut blocked).await {
                            continue;
                        }
                        break Err(elapsed);
                    }
                },
                // The block came while this publish waited: the broker holds it unread until the alarm clears.
                Some(reason) = block(&mut block_comes), if !hold => {
                    return Err(Failed::kept(PublishError::Blocked(reason)));
                }
            }
        };
        let outcome = match result {
            Err(_) => match blocked.borrow().clone() {
                Some(reason) => return Err(Failed::kept(PublishError::Blocked(reason))),
                None => Err(PublishError::Timeout(timeout)),
            },
            Ok(Err(e)) => Err(e),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                return Err(Failed::kept(PublishError::Unroutable {
                    exchange: msg.exchange.to_owned(),
                    routing_key: msg.routing_key.to_owned(),
                }));
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(error) => {
                let channel_lost = !channel.status().connected();
                self.reset(&channel).await;
                Err(Failed {
                    error,
                    channel_lost,
                })
            }
        }
    }

    pub async fn close(&self) {
        let open = self.inner.conn.lock().await.take();
        if let Some(open) = open {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, open.conn.close(200, "shutdown".into())).await;
        }
    }
}

/// A failed publish, and whether its channel was gone by then (the connection or node lost: worth sending again
/// on a new one) rather than the message refused.
struct Failed {
    error: PublishError,
    channel_lost: bool,
}

impl Failed {
    fn kept(error: PublishError) -> Self {
        Failed {
            error,
            channel_lost: false,
        }
    }
}

impl Report {
    /// Reports the blocked state on `/health` and `amqp_publisher_blocked`, and logs its changes.
    fn set_blocked(&self, reason: Option<&str>) {
        metrics::gauge!("amqp_publisher_blocked", "connection" => self.name.clone())
            .set(if reason.is_some() { 1.0 } else { 0.0 });
        if let Some((health, component)) = self.health.get() {
            health.set_blocked(component, reason);
        }
    }
}

/// Waits until the connection is no longer blocked; `false` when its watch ended (the connection is gone).
async fn unblocked(rx: &mut watch::Receiver<Option<String>>) -> bool {
    rx.wait_for(Option::is_none).await.is_ok()
}

/// Waits until the connection is blocked, and says why; `None` when its watch ended.
async fn block(rx: &mut watch::Receiver<Option<String>>) -> Option<String> {
    match rx.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone(),
        Err(_) => None,
    }
}

/// Closes a connection in the background, giving up after [`CLOSE_TIMEOUT`]: nothing waits on it.
fn close_soon(conn: Connection, why: &'static str) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, why.into())).await;
    });
}

/// Follows one connection's `connection.blocked` / `connection.unblocked` until `stop` (the connection replaced)
/// or the connection's end.
async fn watch_blocked(
    events: impl futures_util::Stream<Item = lapin::Event> + Send + 'static,
    tx: watch::Sender<Option<String>>,
    inner: Arc<Report>,
    stop: CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.cancelled() => break,
        };
        match event {
            None => break,
            Some(lapin::Event::ConnectionBlocked(reason)) => {
                let reason: String = reason.chars().take(200).collect();
                tracing::error!(connection = %inner.name, reason = %reason,
                    "RabbitMQ blocked publishing on this connection (a resource alarm); publishes fail until it lifts.");
                inner.set_blocked(Some(&reason));
                tx.send_replace(Some(reason));
            }
            Some(lapin::Event::ConnectionUnblocked) => {
                tracing::info!(connection = %inner.name, "RabbitMQ unblocked publishing on this connection.");
                inner.set_blocked(None);
                tx.send_replace(None);
            }
            Some(_) => {}
        }
    }
    if tx.borrow().is_some() {
        inner.set_blocked(None);
    }
}

/// Keeps `health`'s `component` current for a binary that publishes but does not consume (whose consumer would
/// otherwise report the broker): every `every`, checks the publisher's connection and reconnects when it is gone.
pub async fn watch_publisher(
    publisher: Publisher,
    health: crate::ops::Health,
    component: &'static str,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut was_up = None;
    loop {
        let up = if publisher.is_connected() {
            true
        } else {
            match publisher.connect().await {
                Ok(()) => true,
                Err(e) => {
                    if was_up != Some(false) {
                        tracing::warn!(error = %e, "Cannot reach RabbitMQ; publishing fails until it is back.");
                    }
                    health.set_down(component, &e);
                    false
                }
            }
        };
        if up && was_up == Some(false) {
            tracing::info!("RabbitMQ is reachable again.");
        }
        was_up = Some(up);
        if up {
            health.set(component, true);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
