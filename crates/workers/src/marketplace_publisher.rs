//! The marketplace publisher: relays each status change to the marketplace its order came from, once, and in
//! order per order.
//!
//! Per change: no marketplace → acked. An unknown marketplace name → parked with that reason (fix the
//! configuration, then replay). An earlier change of the same order not yet relayed (or parked) → the change waits
//! (`Outcome::Wait`, no attempt counted) and comes back: a marketplace never gets an order's later change first.
//! Otherwise the marketplace's adapter plans the calls, and each is made once through [`crate::deliver::once`]
//! (claimed in `deliveries`, paced by the marketplace's `rate_per_second`, retried in process then through the delay
//! queues on 408, 429 honouring `Retry-After`, 5xx and transport errors, parked with the answer on other 4xx).

use crate::boot::{self, Schema, Worker};
use crate::db_outcome;
use crate::deliver::{self, Attempt, RetryPolicy};
use crate::email_publisher::marketplaces_from_env;
use crate::far_ends::FarEnds;
use crate::trusted;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_domain::StatusChange;
use tracking_marketplaces::adapters::{Once, Plan};
use tracking_marketplaces::{Marketplace, Marketplaces, Pace, Relay, RelayError};
use tracking_runtime::amqp::topology::MARKETPLACE_QUEUE;
use tracking_runtime::amqp::{AmqpSettings, Handler, Incoming, Outcome};
use tracking_runtime::settings::{self, SettingsError};

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
    pub marketplaces: Marketplaces,
    /// `MARKETPLACE_TIMEOUT_MS` (default 15000): per HTTP call.
    pub timeout: Duration,
    /// `MARKETPLACE_MAX_BODY_BYTES` (default 1 MiB): a longer answer is not read and the call fails (retried).
    pub max_body: usize,
    /// `MARKETPLACE_RETRY_BASE_MS` (default 2000) and the in-process retry settings.
    pub retry: RetryPolicy,
    /// `MARKETPLACE_ORDER_WAIT_MS` (default 1000): how long a change waits for an earlier one of its order.
    pub order_wait: Duration,
    /// `MARKETPLACE_ORDER_WAIT_MAX_SECS` (default 3600): earlier changes older than this no longer hold later ones.
    pub order_wait_max: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let amqp = AmqpSettings::from_env()?;
        Ok(Self {
            db: boot::db_settings(tracking_store::env::WORKER_POOL_SIZE)?,
            retry: RetryPolicy::from_env(settings::millis("MARKETPLACE_RETRY_BASE_MS", 2_000)?)?,
            amqp,
            marketplaces: marketplaces_from_env()?,
            timeout: settings::millis("MARKETPLACE_TIMEOUT_MS", 15_000)?,
            max_body: settings::parse(
                "MARKETPLACE_MAX_BODY_BYTES",
                tracking_marketplaces::DEFAULT_MAX_BODY_BYTES,
            )?,
            order_wait: settings::millis("MARKETPLACE_ORDER_WAIT_MS", 1_000)?,
            order_wait_max: settings::secs("MARKETPLACE_ORDER_WAIT_MAX_SECS", 3_600)?,
        })
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    if settings.marketplaces.is_empty() {
        tracing::warn!(
            "No marketplaces are configured (MARKETPLACES_FILE): changes of orders that name one will be parked."
        );
    }
    let Some(worker) = Worker::start(
        "marketplace-publisher",
        "127.0.0.1:9105",
        &settings.amqp,
        &settings.db,
        Schema::Wait,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let paces = settings
        .marketplaces
        .iter()
        .map(|m| (m.name.clone(), Pace::new(m.rate_per_second)))
        .collect();
    let handler = Arc::new(MarketplacePublisher {
        pool: worker.pool.clone(),
        ledger: deliver::Ledger::start(
            worker.pool.clone(),
            settings.retry.lease,
            FarEnds::new(worker.health.clone()),
        ),
        relay: Relay::new(settings.timeout, settings.max_body)?,
        marketplaces: settings.marketplaces,
        paces,
        retry: settings.retry,
        order_wait: settings.order_wait,
        order_wait_max: settings.order_wait_max,
    });
    worker
        .consume(settings.amqp, MARKETPLACE_QUEUE, handler, shutdown)
        .await;
    worker.close().await;
    Ok(())
}

pub struct MarketplacePublisher {
    pool: sqlx::PgPool,
    ledger: deliver::Ledger,
    relay: Relay,
    marketplaces: Marketplaces,
    paces: HashMap<String, Pace>,
    retry: RetryPolicy,
    order_wait: Duration,
    order_wait_max: Duration,
}

fn count(marketplace: &str, result: &'static str) {
    metrics::counter!("marketplace_calls_total", "marketplace" => marketplace.to_owned(), "result" => result).increment(1);
}

/// The namespace of once-per-shipment call ids.
const SHIPMENT_CALLS: uuid::Uuid = uuid::Uuid::from_u128(0x3f0c_81d2_5a47_4b6e_9c13_7e2a_d4b5_f601);

impl Handler for MarketplacePublisher {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let change = match trusted::recorded(&self.pool, &msg.body).await {
            Ok(t) => t.change,
            Err(outcome) => return outcome,
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
        match self.earlier_pending(&destination, &change).await {
            Ok(Some(earlier)) => {
                count(&marketplace.name, "waiting");
                return Outcome::Wait {
                    after: self.order_wait,
                    reason: format!("the order's earlier change {earlier} is not relayed yet"),
                };
            }
            Ok(None) => {}
            Err(e) => return db_outcome(&e),
        }
        // The adapter sees the recorded change, re-serialized, never the message's own bytes.
        let body = match serde_json::to_vec(&change) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("cannot serialize the change: {e}"),
                };
            }
        };
        let plan = marketplace.kind.adapter().plan(&change, &body);
        let calls = match plan {
            Ok(Plan::Calls(calls)) => calls,
            // Nothing to send (recorded as done), or a change this marketplace cannot take (parked).
            Ok(Plan::Skip(why)) => {
                let attempt = Attempt::Skipped(format!("skipped: {why}"));
                return self
                    .record(marketplace, &destination, &change, attempt)
                    .await;
            }
            Err(refusal) => {
                let attempt = Attempt::Permanent(refusal);
                return self
                    .record(marketplace, &destination, &change, attempt)
                    .await;
            }
        };
        for call in &calls {
            let (dest, id) = match call.once {
                Once::PerChange => (destination.clone(), change.change_id),
                Once::PerShipment => (
                    format!("{destination}:{}", call.step),
                    uuid::Uuid::new_v5(
                        &SHIPMENT_CALLS,
                        format!("{}:{}", change.carrier, change.tracking_code).as_bytes(),
                    ),
                ),
            };
            let d = deliver::once(
                &self.ledger,
                &dest,
                id,
                &self.retry,
                &marketplace.name,
                None,
                || self.call(marketplace, call),
            )
            .await;
            count(&marketplace.name, d.result);
            if d.result == "delivered" {
                tracing::info!(change_id = %change.change_id, marketplace = %marketplace.name, step = call.step,
                    status = %change.status, tries = d.tries, "Change relayed to the marketplace.");
            }
            if d.outcome != Outcome::Ack {
                return d.outcome;
            }
        }
        Outcome::Ack
    }
}

impl MarketplacePublisher {
    /// Records an outcome decided without a call.
    async fn record(
        &self,
        marketplace: &Marketplace,
        destination: &str,
        change: &StatusChange,
        result: Attempt,
    ) -> Outcome {
        let d = deliver::once(
            &self.ledger,
            destination,
            change.change_id,
            &self.retry,
            &marketplace.name,
            None,
            || async { result.clone() },
        )
        .await;
        count(&marketplace.name, d.result);
        d.outcome
    }

    async fn call(
        &self,
        marketplace: &Marketplace,
        call: &tracking_marketplaces::adapters::Call,
    ) -> Attempt {
        if let Some(pace) = self.paces.get(&marketplace.name) {
            pace.wait().await;
        }
        match self.relay.send(call).await {
            Ok(detail) => Attempt::Done(detail),
            Err(RelayError::Retry { reason, after }) => Attempt::Transient { reason, after },
            Err(RelayError::Refused { reason }) => Attempt::Permanent(reason),
        }
    }

    /// The first earlier change of the same order (and marketplace) that is neither relayed nor parked, if any.
    async fn earlier_pending(
        &self,
        destination: &str,
        change: &StatusChange,
    ) -> Result<Option<uuid::Uuid>, tracking_store::StoreError> {
        let Some(target) = &change.marketplace else {
            return Ok(None);
        };
        tracking_store::changes::earlier_pending(
            &self.pool,
            destination,
            change.order_id.as_str(),
            &target.name,
            change.change_id,
            self.order_wait_max,
        )
        .await
    }
}
