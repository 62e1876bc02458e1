//! One tracking request: parsed, handed to its carrier's batcher, its answer published to `carrier.events`.

use super::accounts::AccountId;
use super::batcher::{Batcher, Pending};
use crate::backoff;
use chrono::Utc;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;
use tracking_app::topology::CARRIER_EVENTS;
use tracking_carriers::{FetchError, ObjectResult};
use tracking_domain::{Carrier, CarrierUpdate, Source, StoreName, Stores, TrackingRequest};
use tracking_runtime::amqp::{Handler, Incoming, Outcome, Outgoing, PublishError, Publisher};

pub struct Fetcher {
    /// One batcher per carrier account.
    pub(super) batchers: HashMap<AccountId, Batcher>,
    /// Each (store, carrier)'s account.
    pub(super) routes: HashMap<(StoreName, Carrier), AccountId>,
    /// The stores served: a request naming another is parked.
    pub(super) stores: Stores,
    pub(super) publisher: Publisher,
    pub(super) retry_base: Duration,
    pub(super) retry_max: Duration,
}

/// What one code's answer becomes: a carrier update to publish, or the reason to park the request.
pub fn update_for(request: TrackingRequest, answer: ObjectResult) -> Result<CarrierUpdate, String> {
    let (events, estimated_delivery, carrier_message) = match answer {
        ObjectResult::Found {
            events,
            estimated_delivery,
        } => (events, estimated_delivery, None),
        // Kept and polled: the normalizer records the message (and, for SRO-009, that the shipment is not
        // trackable with this account: `tracking_carriers::not_trackable_reason`).
        ObjectResult::NotYet { message }
        | ObjectResult::NotTrackable { message }
        | ObjectResult::Unrecognised { message } => (Vec::new(), None, Some(message)),
        ObjectResult::Refused { message } => {
            return Err(format!(
                "the carrier refused {}: {message}",
                request.tracking_code
            ));
        }
    };
    Ok(CarrierUpdate {
        carrier: request.carrier,
        tracking_code: request.tracking_code.clone(),
        store: request.store.clone(),
        source: Source::Carrier,
        request: Some(request),
        fetched_at: Utc::now(),
        estimated_delivery,
        carrier_message,
        events,
    })
}

/// Why a request naming a store the stores file does not have is parked.
pub fn unknown_store(store: &StoreName) -> String {
    format!("invalid tracking request: store: {store:?} is not a store of STORES_FILE")
}

/// Publishes a carrier update to `carrier.events` (routing key `{carrier}.{code}`) and waits for the confirm.
pub async fn publish_update(publisher: &Publisher, update: &CarrierUpdate) -> anyhow::Result<()> {
    let body = serde_json::to_vec(update)?;
    let key = format!("{}.{}", update.carrier, update.tracking_code);
    publisher
        .publish(Outgoing::json(CARRIER_EVENTS, &key, &body))
        .await?;
    Ok(())
}

impl Handler for Fetcher {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let request = match TrackingRequest::parse(&msg.body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("invalid tracking request: {e}"),
                };
            }
        };
        let retry = |reason: String, after: Option<Duration>| Outcome::Retry {
            after: after.unwrap_or_default().max(backoff(
                msg.attempt,
                self.retry_base,
                self.retry_max,
            )),
            reason,
        };
        if !self.stores.contains(&request.store) {
            return Outcome::Park {
                reason: unknown_store(&request.store),
            };
        }
        let Some(batcher) = self
            .routes
            .get(&(request.store.clone(), request.carrier))
            .and_then(|account| self.batchers.get(account))
        else {
            let setting = tracking_carriers::credential_settings(request.carrier);
            return retry(
                format!(
                    "{} is not configured for store {} ({setting}, or the store's account in STORES_FILE)",
                    request.carrier, request.store
                ),
                None,
            );
        };
        // While RabbitMQ blocks publishing, the carrier's answer could not be passed on: do not spend a call on it.
        if let Some(reason) = self.publisher.blocked() {
            return Outcome::Unavailable {
                dependency: "rabbitmq",
                reason: format!("broker blocked: {reason}"),
            };
        }
        let (tx, rx) = oneshot::channel();
        if batcher
            .tx
            .send(Pending {
                request: request.clone(),
                reply: tx,
            })
            .await
            .is_err()
        {
            return retry("the fetcher is stopping".into(), None);
        }
        let answer = match rx.await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let after = match &e {
                    FetchError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                return retry(e.to_string(), after);
            }
            Err(_) => return retry("the carrier call was cut short".into(), None),
        };
        let update = match update_for(request, answer) {
            Ok(u) => u,
            Err(reason) => return Outcome::Park { reason },
        };
        match publish_update(&self.publisher, &update).await {
            Ok(()) => Outcome::Ack,
            // RabbitMQ refuses publishes (a resource alarm): an outage, not this request's failure. Held, no
            // attempt spent; the carrier is asked again once the block lifts.
            Err(e)
                if e.downcast_ref::<PublishError>()
                    .is_some_and(PublishError::is_blocked) =>
            {
                Outcome::Unavailable {
                    dependency: "rabbitmq",
                    reason: format!("publishing the carrier's events: {e}"),
                }
            }
            Err(e) => Outcome::Retry {
                after: Duration::from_secs(1),
                reason: format!("publishing the carrier's events: {e}"),
            },
        }
    }
}
