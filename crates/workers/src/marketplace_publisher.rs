//! The marketplace publisher: relays each status change to the marketplace its order came from, once.
//!
//! Per change: no marketplace → acked. An unknown marketplace name → parked with that reason (fix the
//! configuration, then replay). Otherwise the change is claimed in `deliveries` (`marketplace:{name}`, change id)
//! under a row lock, relayed, and marked done in the same transaction. 408, 429 (honouring `Retry-After`), 5xx and
//! transport errors are retried through the delay queues; any other answer parks the change with status and body.

use crate::email_publisher::marketplaces_from_env;
use crate::{backoff, boot, db_retry};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_domain::StatusChange;
use tracking_marketplaces::{Marketplaces, Relay, RelayError};
use tracking_runtime::amqp::topology::MARKETPLACE_QUEUE;
use tracking_runtime::amqp::{AmqpSettings, Handler, Incoming, Outcome, Publisher, run_consumer};
use tracking_runtime::ops::Health;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::deliveries::{self, Progress};

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
    pub marketplaces: Marketplaces,
    /// `MARKETPLACE_TIMEOUT_MS` (default 15000): per HTTP call.
    pub timeout: Duration,
    /// `MARKETPLACE_RETRY_BASE_MS` (default 2000): first delay after a failure, doubling per attempt (unless `Retry-After` says more).
    pub retry_base: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let amqp = AmqpSettings::from_env()?;
        Ok(Self {
            db: boot::db_settings(u32::from(amqp.prefetch) + 2)?,
            amqp,
            marketplaces: marketplaces_from_env()?,
            timeout: settings::millis("MARKETPLACE_TIMEOUT_MS", 15_000)?,
            retry_base: settings::millis("MARKETPLACE_RETRY_BASE_MS", 2_000)?,
        })
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    if settings.marketplaces.is_empty() {
        tracing::warn!(
            "No marketplaces are configured (MARKETPLACES_FILE): changes of orders that name one will be parked."
        );
    }
    let health = Health::new(&["rabbitmq", "postgres"]);
    boot::serve_ops("127.0.0.1:9105", health.clone(), shutdown.clone()).await?;
    let pool = tracking_store::pool(&settings.db)?;
    tokio::spawn(boot::watch_database(
        pool.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let publisher = Publisher::new(settings.amqp.clone(), "marketplace-publisher");
    let handler = Arc::new(MarketplacePublisher {
        pool,
        relay: Relay::new(settings.timeout)?,
        marketplaces: settings.marketplaces,
        retry_base: settings.retry_base,
    });
    run_consumer(
        settings.amqp,
        MARKETPLACE_QUEUE,
        publisher.clone(),
        handler,
        health,
        shutdown,
    )
    .await;
    publisher.close().await;
    Ok(())
}

pub struct MarketplacePublisher {
    pool: sqlx::PgPool,
    relay: Relay,
    marketplaces: Marketplaces,
    retry_base: Duration,
}

fn count(marketplace: &str, result: &'static str) {
    metrics::counter!("marketplace_calls_total", "marketplace" => marketplace.to_owned(), "result" => result).increment(1);
}

impl Handler for MarketplacePublisher {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let change: StatusChange = match serde_json::from_slice(&msg.body) {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("not a status change: {e}"),
                };
            }
        };
        let Some(target) = &change.marketplace else {
            return Outcome::Ack;
        };
        let Some(marketplace) = self.marketplaces.get(&target.name) else {
            return Outcome::Park {
                reason: format!(
                    "marketplace {:?} is not configured in MARKETPLACES_FILE",
                    target.name
                ),
            };
        };
        let destination = format!("marketplace:{}", marketplace.name);
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return db_retry(e),
        };
        match deliveries::claim(&mut tx, &destination, change.change_id).await {
            Ok(Progress::Done) => {
                count(&marketplace.name, "duplicate");
                return Outcome::Ack;
            }
            Ok(Progress::ToDo { .. }) => {}
            Err(e) => return db_retry(e),
        }
        let result = self
            .relay
            .deliver(marketplace, &change.change_id.to_string(), &msg.body)
            .await;
        let (outcome, label) = match &result {
            Ok(detail) => {
                if let Err(e) =
                    deliveries::complete(&mut tx, &destination, change.change_id, detail).await
                {
                    return db_retry(e);
                }
                (Outcome::Ack, "delivered")
            }
            Err(RelayError::Retry { reason, after }) => {
                let _ =
                    deliveries::fail(&mut tx, &destination, change.change_id, reason, false).await;
                let wait = backoff(msg.attempt, self.retry_base, Duration::from_secs(600))
                    .max(after.unwrap_or_default());
                (
                    Outcome::Retry {
                        after: wait,
                        reason: format!("{}: {reason}", marketplace.name),
                    },
                    "failed",
                )
            }
            Err(RelayError::Refused { reason }) => {
                let _ =
                    deliveries::fail(&mut tx, &destination, change.change_id, reason, true).await;
                (
                    Outcome::Park {
                        reason: format!("{} refused the change: {reason}", marketplace.name),
                    },
                    "refused",
                )
            }
        };
        if let Err(e) = tx.commit().await {
            tracing::error!(change_id = %change.change_id, error = %e, "Could not record the relay's outcome.");
            return db_retry(e);
        }
        count(&marketplace.name, label);
        if result.is_ok() {
            tracing::info!(change_id = %change.change_id, marketplace = %marketplace.name, status = %change.status, "Change relayed to the marketplace.");
        }
        outcome
    }
}
