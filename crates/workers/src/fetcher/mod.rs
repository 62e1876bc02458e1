//! The fetcher: takes tracking requests, asks the carrier in batches, and publishes what the carrier said to
//! `carrier.events`.
//!
//! - A request that is not valid (not JSON, a field missing or wrong, a carrier that cannot be detected) is parked
//!   in `tracking.requests.dead` with the reason.
//! - A request names its store (`STORES_FILE`; absent, the default store); a store the file does not have parks
//!   it. Its carrier call is made with its store's carrier account ([`accounts`]): requests are gathered per
//!   account up to the carrier's batch size (Correios: 50) or `FETCH_LINGER_MS`, then one call asks for all their
//!   codes (after spending the account's budget, a token bucket shared by every fetcher through PostgreSQL). Each request's events are published, and the request acked once the broker
//!   confirmed them. One carrier's calls never wait for another's.
//! - The carrier's answer per code: events (or none yet: `SRO-020`) → published, then acked; a refusal of the code
//!   (`SRO-019`, `SRO-009`) → parked with the carrier's message.
//! - A failed call (after the client's own bounded retries) delays its requests through the delay queues: nothing is
//!   lost. Credentials refused or an answer we cannot read make the carrier `broken` (an error log line, `/health`,
//!   `carrier_state`, the `carrier_health` table); the unreadable answer is stored in `carrier_responses` for
//!   `trackctl carriers replay`, redacted of secrets and made storable (see `tracking_carriers::redact`).
//! - An answer larger than `CARRIER_MAX_BODY_BYTES` is refused unread, as an HTTP error.
//!
//! Layout: [`settings`] (what the environment configures), [`budget`] (the shared request budget), [`health`]
//! (carrier states), [`batcher`] (requests gathered into calls), [`handler`] (one request, start to finish),
//! [`replay`] (kept answers read again). What is specific to one carrier lives in `tracking_carriers`.

pub mod accounts;
pub mod batcher;
pub mod budget;
pub mod handler;
pub mod health;
pub mod replay;
pub mod settings;

pub use budget::SharedBudget;
pub use handler::{Fetcher, publish_update, update_for};
pub use health::CarrierHealth;
pub use replay::{ReplayReport, replay_responses};
pub use settings::{CarrierSettings, HealthSettings, Rate, Settings};

use crate::boot::{Schema, Worker};
use batcher::{BatchContext, Batcher};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracking_app::topology::TRACKING_REQUESTS;

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(worker) = Worker::start(
        "fetcher",
        "127.0.0.1:9101",
        &settings.amqp,
        &settings.db,
        Schema::Wait,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let plan = accounts::plan(&settings.stores, &settings.carriers);
    let accounts = accounts::Accounts::build(plan, &settings.carriers, Some(&worker.pool))?;
    let primary = tracking_carriers::PRIMARY;
    if !accounts.accounts.keys().any(|a| a.carrier == primary) {
        tracing::warn!(
            "{} are not set: {primary} requests will be held for retry.",
            tracking_carriers::credential_settings(primary)
        );
    }
    for (id, account) in &accounts.accounts {
        let stores: Vec<&str> = account.stores.iter().map(|s| s.as_str()).collect();
        tracing::info!(carrier = %id.carrier, account = %id, stores = %stores.join(","), "Carrier account configured.");
    }
    let configured: Vec<_> = accounts
        .accounts
        .iter()
        .map(|(id, a)| (id.clone(), a.stores.clone()))
        .collect();
    let carrier_health = CarrierHealth::new(
        worker.health.clone(),
        settings.health.clone(),
        Some(worker.pool.clone()),
        &configured,
        settings.auth_hold,
    );
    let batchers = accounts
        .accounts
        .into_iter()
        .map(|(id, account)| {
            let ctx = BatchContext {
                account: id.clone(),
                client: account.client,
                health: carrier_health.clone(),
                pool: Some(worker.pool.clone()),
                stale_after: settings.health.stale_after,
            };
            (
                id,
                Batcher::start(
                    ctx,
                    settings.linger,
                    settings.calls_in_flight,
                    shutdown.clone(),
                ),
            )
        })
        .collect();
    let handler = Arc::new(Fetcher {
        batchers,
        routes: accounts.routes,
        stores: settings.stores,
        publisher: worker.publisher.clone(),
        retry_base: settings.retry_base,
        retry_max: settings.retry_max,
    });
    worker
        .consume(settings.amqp, TRACKING_REQUESTS, handler, shutdown)
        .await;
    worker.close().await;
    Ok(())
}
