//! The normalizer: stores each poll's events once, decides the shipment's status, and records and publishes
//! status changes without the database and the queue ever disagreeing.
//!
//! It consumes in batches (`tracking_runtime::amqp::run_batch_consumer`: up to `NORMALIZER_BATCH` carrier
//! updates, or what arrived within `NORMALIZER_LINGER_MS`). Each message is read and checked on its own first
//! ([`prepare`]); then, in one transaction for the batch ([`apply`]): the shipments are locked in a fixed order
//! (registered, or their order context updated, when an update carries a request); every new event is inserted in
//! one statement (a carrier returns the whole history on every poll: equal fingerprints add nothing); each
//! shipment's status is recomputed from its stored events after each of its updates, in the batch's order
//! ([`decide`], `tracking_domain::rules`); the changes are recorded in `status_changes` with stable ids in one
//! statement, and the shipments updated in one. After the commit the changes are published to `order.status` with
//! confirms and marked published (in batches), and the batch is acked ([`handler`]). A change whose publish failed
//! or was cut short (crash, broker down) stays unpublished in the table, and the outbox relay in this worker
//! publishes it later ([`outbox`]): nothing is lost, and a rare double publish carries the same `change_id`, which
//! both publishers deduplicate. All SQL is in `tracking_store::normalize`.

mod apply;
mod decide;
pub(crate) mod fanout;
mod handler;
mod outbox;
mod prepare;
mod recompute;

use crate::boot::{self, Schema, Worker};
use crate::policy::PollPolicy;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_app::topology::NORMALIZER_QUEUE;
use tracking_domain::table::EventTables;
use tracking_runtime::amqp::{AmqpSettings, BatchSettings};
use tracking_runtime::settings;

pub use handler::Normalizer;
pub use outbox::{outbox_relay, relay_once};
pub use recompute::{RecomputeReport, recompute};

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
    /// `NORMALIZER_BATCH` (default 64): carrier updates per transaction at most. Larger batches cost PostgreSQL
    /// less per update; the channel's prefetch grows to hold the batches in flight and the next one.
    /// `NORMALIZER_LINGER_MS` (default 5): how long a batch waits for more updates after its first one.
    /// `NORMALIZER_BATCHES_IN_FLIGHT` (default 2): batches handled at once (each holds one connection while
    /// its transaction runs): one is written while the other's changes are published.
    pub batch: BatchSettings,
    pub policy: PollPolicy,
    pub tables: EventTables,
    /// `OUTBOX_INTERVAL_MS` (default 1000): how often the relay looks for unpublished changes.
    pub outbox_interval: Duration,
    /// `OUTBOX_GRACE_MS` (default 5000): how old an unpublished change must be before the relay takes it
    /// (younger ones are still being published by the handler that recorded them).
    pub outbox_grace: Duration,
    /// `FAILPOINT_CRASH_AFTER_COMMIT` (tests only, default off): abort the process right after the first commit
    /// that recorded a status change, before publishing it, as a crash at the worst moment would.
    pub crash_after_commit: bool,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let amqp = AmqpSettings::from_env()?;
        let tables = event_tables_from_env()?;
        let size = settings::parse("NORMALIZER_BATCH", 64usize)?;
        if size == 0 || size > 1000 {
            return Err(settings::SettingsError::new(
                "NORMALIZER_BATCH",
                "must be between 1 and 1000",
            )
            .into());
        }
        let in_flight = settings::parse("NORMALIZER_BATCHES_IN_FLIGHT", 2usize)?;
        if in_flight == 0 || in_flight > 2 {
            // The pool holds 4 connections: the batches, the marker and the relay.
            return Err(settings::SettingsError::new(
                "NORMALIZER_BATCHES_IN_FLIGHT",
                "must be 1 or 2",
            )
            .into());
        }
        Ok(Self {
            batch: BatchSettings {
                size,
                linger: settings::millis("NORMALIZER_LINGER_MS", 5)?,
                in_flight,
            },
            db: boot::db_settings(tracking_store::env::WORKER_POOL_SIZE)?,
            amqp,
            policy: PollPolicy::from_env()?,
            tables,
            outbox_interval: settings::millis("OUTBOX_INTERVAL_MS", 1000)?,
            outbox_grace: settings::millis("OUTBOX_GRACE_MS", 5000)?,
            crash_after_commit: settings::parse("FAILPOINT_CRASH_AFTER_COMMIT", false)?,
        })
    }
}

/// The event-code tables: `EVENT_TABLES_DIR` when set (a folder with `correios.toml` and `jadlog.toml`),
/// else the ones built from `crates/domain/data/`.
pub fn event_tables_from_env() -> Result<EventTables, settings::SettingsError> {
    match settings::var("EVENT_TABLES_DIR") {
        Some(dir) => EventTables::load(std::path::Path::new(&dir))
            .map_err(|e| settings::SettingsError::new("EVENT_TABLES_DIR", e.to_string())),
        None => Ok(EventTables::builtin()),
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    // The normalizer owns the schema: it migrates before consuming (retrying while the database is down).
    let Some(worker) = Worker::start(
        "normalizer",
        "127.0.0.1:9102",
        &settings.amqp,
        &settings.db,
        Schema::Migrate,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let relay = tokio::spawn(outbox_relay(
        worker.pool.clone(),
        worker.publisher.clone(),
        settings.outbox_interval,
        settings.outbox_grace,
        shutdown.clone(),
    ));
    let (marker, marking) = outbox::Marker::start(worker.pool.clone());
    let handler = Arc::new(Normalizer {
        pool: worker.pool.clone(),
        tables: settings.tables,
        policy: settings.policy,
        publisher: worker.publisher.clone(),
        marker,
        crash_after_commit: settings.crash_after_commit,
    });
    worker
        .consume_batches(
            settings.amqp,
            settings.batch,
            NORMALIZER_QUEUE,
            handler,
            shutdown,
        )
        .await;
    // The handler (and its marker handle) is gone: the marker flushes what it holds and stops.
    let _ = marking.await;
    let _ = relay.await;
    worker.close().await;
    Ok(())
}
