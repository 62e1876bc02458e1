//! The scheduler: re-polls every shipment that is not finished, when it is due.
//!
//! Each tick takes up to `SCHEDULER_BATCH` due shipments with `FOR UPDATE SKIP LOCKED` (several schedulers never take
//! the same shipment), publishes a tracking request for each (with confirms) and moves its `next_poll_at` on, in the
//! same transaction: a failed publish rolls back, and the shipment stays due.
//! - Delivered or returned: this is the final poll (for late events); the shipment is marked finished.
//! - No news for `EXPIRE_AFTER_DAYS`: the shipment is marked `expired`, the change is recorded in the outbox
//!   (the normalizer's relay publishes it), a warning is logged and `shipments_expired_total` counted; polling stops.

use crate::boot::{self, Schema, Worker};
use crate::policy::PollPolicy;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_domain::{ChangeEvent, Location, Source, Status, StatusChange};
use tracking_runtime::amqp::topology::TRACKING_REQUESTS;
use tracking_runtime::amqp::{AmqpSettings, Outgoing, Publisher};
use tracking_runtime::ops::Health;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::shipments::{self, ShipmentRow};

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
    pub policy: PollPolicy,
    /// `SCHEDULER_TICK_MS` (default 1000): how often it looks for due shipments.
    pub tick: Duration,
    /// `SCHEDULER_BATCH` (default 500): shipments taken per transaction.
    pub batch: i64,
    /// `SCHEDULER_STALL_AFTER_SECS` (default 300): with no successful tick for this long, `/health`'s `ticks`
    /// component is down (503) and an error is logged.
    pub stall_after: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let batch = settings::parse("SCHEDULER_BATCH", 500i64)?;
        if batch < 1 {
            return Err(SettingsError::new("SCHEDULER_BATCH", "must be at least 1"));
        }
        Ok(Self {
            amqp: AmqpSettings::from_env()?,
            db: boot::db_settings(tracking_store::env::WORKER_POOL_SIZE)?,
            policy: PollPolicy::from_env()?,
            tick: settings::millis("SCHEDULER_TICK_MS", 1000)?,
            batch,
            stall_after: settings::secs("SCHEDULER_STALL_AFTER_SECS", 300)?,
        })
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(worker) = Worker::start(
        "scheduler",
        "127.0.0.1:9103",
        &settings.amqp,
        &settings.db,
        Schema::Wait,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let Worker {
        health,
        pool,
        publisher,
    } = &worker;
    health.set("ticks", true);
    tracing::info!(
        tick_ms = settings.tick.as_millis() as u64,
        "Scheduling polls."
    );
    let mut liveness = Liveness::new(settings.stall_after);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.tick) => {}
            _ = shutdown.cancelled() => break,
        }
        liveness.check(health);
        // A tick with nothing due touches no broker: check the connection itself for /health.
        if !publisher.is_connected()
            && let Err(e) = publisher.connect().await
        {
            health.set_down("rabbitmq", &e);
            tracing::warn!(error = %e, "Cannot reach RabbitMQ; due shipments wait.");
            continue;
        }
        health.set("rabbitmq", true);
        match tick(
            pool,
            publisher,
            &settings.policy,
            settings.batch,
            Utc::now(),
        )
        .await
        {
            Ok(report) => {
                liveness.ticked(health);
                if report.polled + report.expired > 0 {
                    tracing::debug!(
                        polled = report.polled,
                        finished = report.finished,
                        expired = report.expired,
                        "Scheduled polls."
                    );
                }
            }
            Err(e) => {
                metrics::counter!("scheduler_tick_failures_total").increment(1);
                health.set("rabbitmq", publisher.is_connected());
                tracing::warn!(error = %e, "A scheduler tick failed; the shipments stay due.");
            }
        }
    }
    worker.close().await;
    Ok(())
}

/// Whether the scheduler is doing its job: the time of its last successful tick, on `/health` (`ticks`) and as
/// `scheduler_last_tick_timestamp_seconds`. Reachability alone says nothing of a scheduler whose every tick fails.
struct Liveness {
    last_ok: std::time::Instant,
    stall_after: Duration,
}

impl Liveness {
    fn new(stall_after: Duration) -> Self {
        Self {
            last_ok: std::time::Instant::now(),
            stall_after,
        }
    }

    fn ticked(&mut self, health: &Health) {
        self.last_ok = std::time::Instant::now();
        metrics::gauge!("scheduler_last_tick_timestamp_seconds").set(Utc::now().timestamp() as f64);
        if !health.is_up("ticks") {
            tracing::info!("Scheduler ticks succeed again.");
        }
        health.set("ticks", true);
    }

    fn check(&self, health: &Health) {
        let stalled = self.last_ok.elapsed() >= self.stall_after;
        if stalled && health.is_up("ticks") {
            tracing::error!(
                since_secs = self.last_ok.elapsed().as_secs(),
                "No scheduler tick has succeeded for too long: no shipment is being polled."
            );
        }
        if stalled {
            health.set("ticks", false);
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    pub polled: usize,
    pub finished: usize,
    pub expired: usize,
    /// Shipments whose stored row could not be read: marked, counted, logged, and skipped from now on.
    pub quarantined: usize,
}

/// One pass over due shipments.
pub async fn tick(
    pool: &PgPool,
    publisher: &Publisher,
    policy: &PollPolicy,
    batch: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<TickReport> {
    let mut report = TickReport::default();
    let mut tx = pool.begin().await?;
    let due = shipments::due(&mut tx, now, batch).await?;
    let expire_before =
        now - chrono::Duration::from_std(policy.expire_after).unwrap_or(chrono::Duration::days(30));
    for s in due {
        // A row that cannot be read back is quarantined, never a reason to stop the batch.
        let (status, request) = match s.status().and_then(|st| s.request().map(|r| (st, r))) {
            Ok(read) => read,
            Err(e) => {
                quarantine(&mut tx, &s, &e.to_string()).await?;
                report.quarantined += 1;
                continue;
            }
        };
        if !status.is_final() && s.last_news_at < expire_before {
            expire(&mut tx, &s, status, now).await?;
            report.expired += 1;
            continue;
        }
        let body = serde_json::to_vec(&request)?;
        publisher
            .publish(Outgoing::json("", TRACKING_REQUESTS, &body))
            .await?;
        let final_poll = status.is_final();
        shipments::polled(
            &mut tx,
            s.id,
            policy.next_poll(status, s.last_news_at, now),
            final_poll,
        )
        .await?;
        report.polled += 1;
        if final_poll {
            report.finished += 1;
        }
    }
    tx.commit().await?;
    metrics::counter!("scheduled_polls_total").increment(report.polled as u64);
    Ok(report)
}

/// Marks a shipment whose row cannot be read back, counts it and logs it once (it leaves the due scan).
async fn quarantine(
    tx: &mut sqlx::PgConnection,
    s: &ShipmentRow,
    reason: &str,
) -> anyhow::Result<()> {
    shipments::quarantine(&mut *tx, s.id, reason).await?;
    metrics::counter!("rows_quarantined_total", "table" => "shipments").increment(1);
    tracing::error!(shipment_id = s.id, tracking_code = %s.tracking_code, reason,
        "A stored shipment cannot be read back; quarantined and no longer polled (see trackctl shipment show).");
    Ok(())
}

async fn expire(
    tx: &mut sqlx::PgConnection,
    s: &ShipmentRow,
    previous: Status,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let req = s.request()?;
    let change = StatusChange {
        change_id: StatusChange::id_for(
            req.carrier,
            &req.tracking_code,
            previous,
            Status::Expired,
            &format!("expired-after-{}", s.last_news_at.timestamp()),
        ),
        order_id: req.order_id,
        tracking_code: req.tracking_code.clone(),
        carrier: req.carrier,
        status: Status::Expired,
        previous_status: previous,
        occurred_at: now.fixed_offset(),
        source: Source::Carrier,
        event: ChangeEvent {
            code: "EXPIRED".into(),
            kind: None,
            description: format!("no carrier update since {}", s.last_news_at.to_rfc3339()),
            location: Location::default(),
        },
        reason: Some("no update for too long".into()),
        customer: req.customer,
        marketplace: req.marketplace,
        invoice_number: req.invoice_number,
        estimated_delivery: s.estimated_delivery.map(|d| d.fixed_offset()),
    };
    tracking_store::changes::insert(&mut *tx, s.id, &change, &serde_json::to_value(&change)?)
        .await?;
    shipments::expired(&mut *tx, s.id, now).await?;
    metrics::counter!("shipments_expired_total", "carrier" => req.carrier.as_str()).increment(1);
    tracing::warn!(order_id = %s.order_id, tracking_code = %s.tracking_code, last_news_at = %s.last_news_at,
        "Shipment expired: no carrier update for too long; polling stopped.");
    Ok(())
}
