//! A worker that does no work, for `bench pipeline`'s null pipeline: the same hops as the real pipeline, on the
//! same runtime (`run_consumer` and the confirming `Publisher`), with handlers that only parse and forward.
//!
//! `NULL_ROLE` says which worker it stands in for:
//! - `fetcher`: reads a tracking request from `tracking.requests`, publishes a carrier update without events to
//!   `carrier.events` (no carrier call);
//! - `normalizer`: reads the carrier update from `normalizer.carrier-events`, publishes it to `order.status`
//!   (no database);
//! - `email` / `marketplace`: read the message from `email.order-status` / `marketplace.order-status` and ack it
//!   (no SMTP, no HTTP).
//!
//! `/health` and `/metrics` (with `messages_total`) on `METRICS_ADDR`, as the real workers.

use std::process::ExitCode;
use std::sync::Arc;
use tracking_app::topology::{
    CARRIER_EVENTS, EMAIL_QUEUE, MARKETPLACE_QUEUE, NORMALIZER_QUEUE, ORDER_STATUS,
    TRACKING_REQUESTS,
};
use tracking_domain::{CarrierUpdate, Source, TrackingRequest};
use tracking_runtime::amqp::{
    AmqpSettings, Handler, Incoming, Outcome, Outgoing, Publisher, run_consumer,
};
use tracking_runtime::ops::Health;

#[derive(Clone, Copy)]
enum Role {
    Fetcher,
    Normalizer,
    Sink,
}

struct Forward {
    role: Role,
    publisher: Publisher,
}

impl Handler for Forward {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let forwarded = match self.role {
            Role::Fetcher => match TrackingRequest::parse(&msg.body) {
                Ok(req) => {
                    let update = CarrierUpdate {
                        carrier: req.carrier,
                        tracking_code: req.tracking_code.clone(),
                        store: req.store.clone(),
                        source: Source::Carrier,
                        request: Some(req),
                        fetched_at: chrono::Utc::now(),
                        estimated_delivery: None,
                        carrier_message: None,
                        events: Vec::new(),
                    };
                    let key = format!("{}.{}", update.carrier, update.tracking_code);
                    match serde_json::to_vec(&update) {
                        Ok(body) => self.forward(CARRIER_EVENTS, &key, &body).await,
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            },
            Role::Normalizer => match serde_json::from_slice::<CarrierUpdate>(&msg.body) {
                Ok(_) => self.forward(ORDER_STATUS, "delivered", &msg.body).await,
                Err(e) => Err(e.to_string()),
            },
            Role::Sink => serde_json::from_slice::<serde_json::Value>(&msg.body)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match forwarded {
            Ok(()) => Outcome::Ack,
            Err(reason) => Outcome::Park { reason },
        }
    }
}

impl Forward {
    async fn forward(&self, exchange: &str, key: &str, body: &[u8]) -> Result<(), String> {
        self.publisher
            .publish(Outgoing::json(exchange, key, body))
            .await
            .map_err(|e| e.to_string())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracking_app::install();
    tracking_runtime::boot::main("null-worker", |shutdown| async move {
        let (role, queue) = match std::env::var("NULL_ROLE").as_deref() {
            Ok("fetcher") => (Role::Fetcher, TRACKING_REQUESTS),
            Ok("normalizer") => (Role::Normalizer, NORMALIZER_QUEUE),
            Ok("email") => (Role::Sink, EMAIL_QUEUE),
            Ok("marketplace") => (Role::Sink, MARKETPLACE_QUEUE),
            _ => anyhow::bail!("NULL_ROLE must be fetcher, normalizer, email or marketplace"),
        };
        let settings = AmqpSettings::from_env()?;
        let health = Health::new(&["rabbitmq"]);
        tracking_runtime::boot::serve_ops("127.0.0.1:9199", health.clone(), shutdown.clone())
            .await?;
        let publisher = Publisher::new(settings.clone(), "null-worker");
        let handler = Arc::new(Forward {
            role,
            publisher: publisher.clone(),
        });
        run_consumer(
            settings,
            queue,
            publisher.clone(),
            handler,
            health,
            shutdown,
        )
        .await;
        publisher.close().await;
        Ok(())
    })
    .await
}
