//! The marketplace publisher: relays each status change to the marketplace its order came from, once, and in
//! order per order.
//!
//! Per change: no marketplace → acked. An unknown marketplace name → parked with that reason (fix the
//! configuration, then replay). An earlier change of the same order not yet relayed (or parked) → the change waits
//! (`Outcome::Wait`, no attempt counted) and comes back: a marketplace never gets an order's later change first.
//! Its waits back off (`MARKETPLACE_ORDER_WAIT_MS` doubling per wait up to `MARKETPLACE_ORDER_WAIT_CAP_MS`, or up
//! to `PUBLISHER_RETRY_MAX_DELAY_MS` while the earlier change's marketplace fails), and the relayer of the earlier
//! change relays the order's later changes right after it, in process, so a change seldom waits for its own
//! return. Otherwise the marketplace's adapter plans the calls, and each is made once through
//! [`crate::deliver::once`] (through the marketplace's bulkhead of `max_in_flight` calls, claimed in `deliveries`,
//! paced by the marketplace's `rate_per_second`, retried in process then through the delay queues on 408, 429
//! honouring `Retry-After`, 5xx and transport errors, parked with the answer on other 4xx).

use crate::boot::{self, Schema, Worker};
use crate::bulkhead::{Bulkhead, Bulkheads};
use crate::deliver::{self, Attempt, RetryPolicy, To};
use crate::email_publisher::{far_end_wait_from_env, marketplaces_from_env};
use crate::far_ends::FarEnds;
use crate::trusted;
use crate::{backoff, db_outcome};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_app::topology::MARKETPLACE_QUEUE;
use tracking_domain::StatusChange;
use tracking_marketplaces::adapters::{Once, Plan};
use tracking_marketplaces::{Marketplace, Marketplaces, Pace, Relay, RelayError};
use tracking_runtime::amqp::{AmqpSettings, Handler, Incoming, Outcome};
use tracking_runtime::coalesce::Coalescer;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::changes::{self, Pending, PendingRequest};

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
    /// `MARKETPLACE_ORDER_WAIT_MS` (default 1000): how long a change first waits for an earlier one of its order;
    /// doubling at each wait.
    pub order_wait: Duration,
    /// `MARKETPLACE_ORDER_WAIT_CAP_MS` (default 60000): the longest of those waits while the earlier change is on
    /// its way (queued or being sent); while its marketplace fails, `PUBLISHER_RETRY_MAX_DELAY_MS`.
    pub order_wait_cap: Duration,
    /// `MARKETPLACE_ORDER_WAIT_MAX_SECS` (default 3600): earlier changes older than this no longer hold later ones.
    pub order_wait_max: Duration,
    /// `MARKETPLACE_MAX_IN_FLIGHT` (default 8): calls in flight at once to a marketplace whose entry in the
    /// marketplaces file sets no `max_in_flight`.
    pub max_in_flight: usize,
    /// `FAR_END_WAIT_MS` (default 1000): how long a change waits in process for a place while the far end answers.
    pub far_end_wait: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let amqp = AmqpSettings::from_env()?;
        let max_in_flight = settings::parse("MARKETPLACE_MAX_IN_FLIGHT", 8usize)?;
        if max_in_flight == 0 {
            return Err(SettingsError::new(
                "MARKETPLACE_MAX_IN_FLIGHT",
                "must be at least 1",
            ));
        }
        Ok(Self {
            db: boot::db_settings(tracking_store::env::WORKER_POOL_SIZE)?,
            retry: RetryPolicy::from_env(
                settings::millis("MARKETPLACE_RETRY_BASE_MS", 2_000)?,
                &amqp.retry_delays,
            )?,
            max_in_flight,
            far_end_wait: far_end_wait_from_env()?,
            order_wait_cap: settings::millis("MARKETPLACE_ORDER_WAIT_CAP_MS", 60_000)?,
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
    let mut bulkheads = Bulkheads::default();
    for m in settings.marketplaces.iter() {
        let bulkhead = Bulkhead::new(
            &format!("marketplace:{}", m.name),
            m.max_in_flight.unwrap_or(settings.max_in_flight),
            settings.far_end_wait,
        );
        bulkheads.insert(&m.name, bulkhead);
    }
    let within = settings.order_wait_max;
    let handler = Arc::new(MarketplacePublisher {
        reads: trusted::Reads::start(&worker.pool),
        earlier: deliver::batching(
            &worker.pool,
            move |pool, batch: Vec<PendingRequest>| async move {
                changes::earlier_pending_many(&pool, &batch, within).await
            },
        ),
        later: deliver::batching(
            &worker.pool,
            move |pool, batch: Vec<PendingRequest>| async move {
                changes::later_pending_many(&pool, &batch, within, CHASE).await
            },
        ),
        ledger: deliver::Ledger::start(
            worker.pool.clone(),
            settings.retry.lease,
            FarEnds::new(worker.health.clone()),
        ),
        relay: Relay::new(settings.timeout, settings.max_body)?,
        marketplaces: settings.marketplaces,
        paces,
        bulkheads,
        retry: settings.retry,
        order_wait: settings.order_wait,
        order_wait_cap: settings.order_wait_cap,
    });
    worker
        .consume(settings.amqp, MARKETPLACE_QUEUE, handler, shutdown)
        .await;
    worker.close().await;
    Ok(())
}

pub struct MarketplacePublisher {
    reads: trusted::Reads,
    /// The order checks of every handler waiting at the same moment, each kind in one statement.
    earlier: Coalescer<PendingRequest, deliver::Answer<Option<Pending>>>,
    later: Coalescer<PendingRequest, deliver::Answer<Vec<serde_json::Value>>>,
    ledger: deliver::Ledger,
    relay: Relay,
    marketplaces: Marketplaces,
    paces: HashMap<String, Pace>,
    /// One per marketplace, by name.
    bulkheads: Bulkheads,
    retry: RetryPolicy,
    order_wait: Duration,
    order_wait_cap: Duration,
}

/// How many of an order's later changes the relayer of an earlier one relays right after it, at most.
const CHASE: i64 = 16;

fn count(marketplace: &str, result: &'static str) {
    metrics::counter!("marketplace_calls_total", "marketplace" => marketplace.to_owned(), "result" => result).increment(1);
}

/// The namespace of once-per-shipment call ids.
const SHIPMENT_CALLS: uuid::Uuid = uuid::Uuid::from_u128(0x3f0c_81d2_5a47_4b6e_9c13_7e2a_d4b5_f601);

impl Handler for MarketplacePublisher {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let change = match trusted::recorded(&self.reads, &msg.body).await {
            Ok(t) => t.change,
            Err(outcome) => return outcome,
        };
        let outcome = self.relay(&change, msg.waits).await;
        if outcome == Outcome::Ack {
            self.chase(&change).await;
        }
        outcome
    }
}

impl MarketplacePublisher {
    /// Relays the order's later changes that wait behind `change`, now relayed, oldest first, until one cannot
    /// go yet: they need not wait for their own messages' return (which then find them done). Their outcomes
    /// are not this message's: whatever does not go now goes when its own message comes back.
    async fn chase(&self, change: &StatusChange) {
        let Some(target) = &change.marketplace else {
            return;
        };
        let request = PendingRequest {
            destination: format!("marketplace:{}", target.name),
            order_id: change.order_id.as_str().to_owned(),
            marketplace: target.name.clone(),
            change_id: change.change_id,
        };
        let later = match self.later.call(request).await {
            Ok(Ok(later)) => later,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Could not look for the order's later changes; they go on their own.");
                return;
            }
            Err(_) => return,
        };
        for payload in later {
            let Ok(next) = serde_json::from_value::<StatusChange>(payload) else {
                return;
            };
            // A change still waiting for this one counts as waited once: its wait was logged already.
            if self.relay(&next, 1).await != Outcome::Ack {
                return;
            }
            tracing::info!(change_id = %next.change_id, after = %change.change_id,
                "Relayed an order's later change right after its earlier one.");
        }
    }

    /// Relays one recorded change (`waits`: how many times its message waited already).
    async fn relay(&self, change: &StatusChange, waits: u32) -> Outcome {
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
        match self.earlier_pending(&destination, change).await {
            Ok(Some(earlier)) => {
                count(&marketplace.name, "waiting");
                // Back off: the earlier change's relayer relays this one right after it (`chase`), so coming
                // back is the fallback, not the way. Longer while its marketplace fails.
                let cap = if earlier.failing {
                    self.retry.queue_max
                } else {
                    self.order_wait_cap
                };
                return Outcome::Wait {
                    after: backoff(waits.saturating_add(1), self.order_wait, cap),
                    reason: format!(
                        "the order's earlier change {} is not relayed yet",
                        earlier.change_id
                    ),
                };
            }
            Ok(None) => {}
            Err(outcome) => return outcome,
        }
        // The adapter sees the recorded change, re-serialized, never the message's own bytes.
        let body = match serde_json::to_vec(change) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("cannot serialize the change: {e}"),
                };
            }
        };
        let plan = marketplace.kind.adapter().plan(change, &body);
        let calls = match plan {
            Ok(Plan::Calls(calls)) => calls,
            // Nothing to send (recorded as done), or a change this marketplace cannot take (parked).
            Ok(Plan::Skip(why)) => {
                let attempt = Attempt::Skipped(format!("skipped: {why}"));
                return self
                    .record(marketplace, &destination, change, attempt)
                    .await;
            }
            Err(refusal) => {
                let attempt = Attempt::Permanent(refusal);
                return self
                    .record(marketplace, &destination, change, attempt)
                    .await;
            }
        };
        let bulkhead = self.bulkheads.get(&marketplace.name);
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
                To {
                    what: &marketplace.name,
                    bulkhead,
                },
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
            To {
                what: &marketplace.name,
                bulkhead: None,
            },
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
    ) -> Result<Option<Pending>, Outcome> {
        let Some(target) = &change.marketplace else {
            return Ok(None);
        };
        let request = PendingRequest {
            destination: destination.to_owned(),
            order_id: change.order_id.as_str().to_owned(),
            marketplace: target.name.clone(),
            change_id: change.change_id,
        };
        match self.earlier.call(request).await {
            Ok(answer) => answer.map_err(|e| db_outcome(&e)),
            Err(gone) => Err(Outcome::Wait {
                after: Duration::from_secs(1),
                reason: format!("the order's earlier changes: {gone}"),
            }),
        }
    }
}
