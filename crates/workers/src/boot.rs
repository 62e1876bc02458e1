//! What every worker binary does before its own work: telemetry, settings common to all, the ops server,
//! the database pool and the broker, and a clear exit on bad configuration. The pieces live where `tracking-api`
//! shares them: the process side in `tracking_runtime::boot`, the database side in `tracking_store::env`;
//! [`Worker::start`] puts them together in the order every worker needs.

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_runtime::amqp::{
    AmqpSettings, BatchHandler, BatchSettings, Handler, Publisher, run_batch_consumer, run_consumer,
};
use tracking_runtime::ops::Health;
use tracking_store::Db;
use tracking_store::DbSettings;

pub use tracking_runtime::boot::{metrics_addr, serve_ops};
pub use tracking_store::env::{db_settings, watch_database, watch_writable_database};

/// Runs a worker binary: gives the runtime this application's topology, secret settings and metric catalog
/// (`tracking_app::install`), then `tracking_runtime::boot::main`.
pub async fn main<F, Fut>(name: &'static str, run: F) -> std::process::ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    tracking_app::install();
    tracking_runtime::boot::main(name, run).await
}

/// Who owns the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Wait (unhealthy, logging) until someone else has migrated it: every worker but the normalizer.
    Wait,
    /// Migrate it before anything else, retrying while the database is down (the normalizer).
    Migrate,
}

/// A started worker: its `/health` (served on `METRICS_ADDR` with `rabbitmq` and `postgres` components, more
/// may be set), its database pool (kept on `/health` by a watch), and its publisher.
pub struct Worker {
    pub health: Health,
    pub pool: Db,
    pub publisher: Publisher,
}

impl Worker {
    /// Serves `/health` and `/metrics` (`METRICS_ADDR`, else `default_metrics_addr`), opens the pool lazily, takes
    /// care of the schema, and makes a publisher named `name` (its connection name on the broker).
    /// Returns `None` when `shutdown` came while waiting to migrate.
    pub async fn start(
        name: &str,
        default_metrics_addr: &str,
        amqp: &AmqpSettings,
        db: &DbSettings,
        schema: Schema,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        let health = Health::new(&["rabbitmq", "postgres"]);
        serve_ops(default_metrics_addr, health.clone(), shutdown.clone()).await?;
        let pool = tracking_store::Db::connect_lazy(db)?;
        if schema == Schema::Migrate && !migrate(&pool, shutdown).await {
            return Ok(None);
        }
        tokio::spawn(watch_writable_database(
            pool.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        let publisher = Publisher::new(amqp.clone(), name);
        publisher.report_to(health.clone(), "rabbitmq");
        Ok(Some(Self {
            health,
            pool,
            publisher,
        }))
    }

    /// Consumes `queue` with `handler` until `shutdown` (reconnecting as needed); see `run_consumer`.
    pub async fn consume<H: Handler>(
        &self,
        amqp: AmqpSettings,
        queue: &str,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) {
        run_consumer(
            amqp,
            queue,
            self.publisher.clone(),
            handler,
            self.health.clone(),
            shutdown,
        )
        .await;
    }

    /// Consumes `queue` in batches with `handler` until `shutdown`; see `run_batch_consumer`.
    pub async fn consume_batches<H: BatchHandler>(
        &self,
        amqp: AmqpSettings,
        batch: BatchSettings,
        queue: &str,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) {
        run_batch_consumer(
            amqp,
            batch,
            queue,
            self.publisher.clone(),
            handler,
            self.health.clone(),
            shutdown,
        )
        .await;
    }

    /// Closes the broker connection once the worker's own work is over.
    pub async fn close(self) {
        self.publisher.close().await;
    }
}

/// Migrates, retrying with backoff while the database is down; `false` when `shutdown` came first.
async fn migrate(pool: &Db, shutdown: &CancellationToken) -> bool {
    let mut failures = 0u32;
    loop {
        match tracking_store::migrate(pool).await {
            Ok(()) => return true,
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "Cannot migrate the database yet; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(crate::backoff(failures, Duration::from_millis(500), Duration::from_secs(10))) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
    }
}
