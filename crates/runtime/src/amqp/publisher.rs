//! A publisher that only reports success once the broker confirmed the message into every target queue.
//! A nack, a returned (unroutable) message or a missing confirm within the timeout is an error, and the
//! connection is dropped and reopened on the next publish.

use super::{AmqpSettings, ConnectError, connect, topology};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::Arc;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Connect(ConnectError),
    #[error("publish failed: {0}")]
    Publish(lapin::Error),
    #[error("the broker did not confirm the message within {0:?}")]
    Timeout(std::time::Duration),
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

#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AmqpSettings,
    name: String,
    conn: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    /// A publisher that connects on first use (and again after any failure).
    pub fn new(settings: AmqpSettings, name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                name: format!("{name}-publish"),
                conn: Mutex::new(None),
            }),
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
                .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected()),
            Err(_) => true,
        }
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut guard = self.inner.conn.lock().await;
        if let Some((conn, ch)) = guard.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        *guard = None;
        let conn = connect(&self.inner.settings, &self.inner.name)
            .await
            .map_err(PublishError::Connect)?;
        let lost = |e: lapin::Error| PublishError::Connect(e.into());
        let ch = conn.create_channel().await.map_err(lost)?;
        topology::declare(&ch, &self.inner.settings.retry_delays)
            .await
            .map_err(lost)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(lost)?;
        *guard = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn reset(&self, failed: &Channel) {
        let mut guard = self.inner.conn.lock().await;
        if guard.as_ref().is_some_and(|(_, ch)| ch.id() == failed.id())
            && let Some((conn, _)) = guard.take()
        {
            let _ = conn.close(200, "publisher reset".into()).await;
        }
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(msg.headers);
        if let Some(id) = msg.message_id {
            props = props.with_message_id(ShortString::from(id));
        }
        let timeout = self.inner.settings.publish_timeout;
        let opts = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let result = tokio::time::timeout(timeout, async {
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
        })
        .await;
        let outcome = match result {
            Err(_) => Err(PublishError::Timeout(timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                return Err(PublishError::Unroutable {
                    exchange: msg.exchange.to_owned(),
                    routing_key: msg.routing_key.to_owned(),
                });
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        };
        if outcome.is_err() {
            self.reset(&channel).await;
        }
        outcome
    }

    pub async fn close(&self) {
        if let Some((conn, _)) = self.inner.conn.lock().await.take() {
            let _ = conn.close(200, "shutdown".into()).await;
        }
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
