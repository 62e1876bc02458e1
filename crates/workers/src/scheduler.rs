//! The scheduler: re-polls every shipment that is not finished, when it is due.
//!
//! Each tick takes up to `SCHEDULER_BATCH` due shipments with `FOR UPDATE SKIP LOCKED` (several schedulers never take
//! the same shipment), publishes a tracking request for each (with confirms) and moves its `next_poll_at` on, in the
//! same transaction: a failed publish rolls back, and the shipment stays due.
//! - Delivered or returned: this is the final poll (for late events); the shipment is marked finished.
//! - No news for `EXPIRE_AFTER_DAYS`: the shipment is marked `expired`, the change is recorded in the outbox
//!   (the normalizer's relay publishes it), a warning is logged and `shipments_expired_total` counted; polling stops.
//!
//! Every `LATE_SCAN_INTERVAL_MS` it also scans for late and stalled shipments ([`late_scan`]), and every
//! `RETENTION_SCAN_INTERVAL_MS` erases the customers of orders finished longer ago than
//! `PERSONAL_DATA_RETENTION_DAYS` ([`crate::retention`]).

use crate::boot::{self, Schema, Worker};
use crate::normalizer::fanout;
use crate::policy::PollPolicy;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_app::topology::{EMAIL_QUEUE, TRACKING_REQUESTS};
use tracking_domain::LateNotice;
use tracking_domain::{ChangeEvent, Location, Source, Status, StatusChange};
use tracking_runtime::amqp::{AmqpSettings, Outgoing, Publisher};
use tracking_runtime::ops::Health;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::Db;
use tracking_store::late;
use tracking_store::orders::{self, ParcelOrder, WithOrder};
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
    pub late: LateSettings,
    pub retention: crate::retention::RetentionSettings,
}

/// Late and stalled shipments ([`late_scan`]).
#[derive(Debug, Clone)]
pub struct LateSettings {
    /// `LATE_SCAN_INTERVAL_MS` (default 60000): how often the scan runs (and the `shipments_late` gauges move).
    pub interval: Duration,
    /// `LATE_GRACE_HOURS` (default 24): how long after the carrier's promised date an undelivered shipment is late.
    /// Correios promises a day, not an hour: a day of grace makes the whole promised day count.
    pub grace: Duration,
    /// `CARRIER_STALE_AFTER_HOURS` (default 120, shared with the fetcher's carrier health): a shipment with no
    /// carrier news for this long is stalled.
    pub stale_after: Duration,
    /// `LATE_EMAILS` (default true): whether a shipment that becomes late records one "your parcel is late" email.
    /// Off, shipments are still marked and listed, no notice is recorded, and none recorded before is published.
    pub emails: bool,
    /// Shipments marked per transaction (`SCHEDULER_BATCH`).
    pub batch: i64,
}

impl LateSettings {
    pub fn from_env(batch: i64) -> Result<Self, SettingsError> {
        Ok(Self {
            interval: settings::millis("LATE_SCAN_INTERVAL_MS", 60_000)?,
            grace: settings::secs("LATE_GRACE_HOURS", 24)?.saturating_mul(3600),
            stale_after: settings::secs("CARRIER_STALE_AFTER_HOURS", 120)?.saturating_mul(3600),
            emails: settings::parse("LATE_EMAILS", true)?,
            batch,
        })
    }
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
            late: LateSettings::from_env(batch)?,
            retention: crate::retention::RetentionSettings::from_env()?,
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
    let mut next_late_scan = std::time::Instant::now();
    let mut next_retention_scan = std::time::Instant::now();
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
        if std::time::Instant::now() >= next_late_scan {
            next_late_scan = std::time::Instant::now() + settings.late.interval;
            match late_scan(pool, publisher, &settings.late, Utc::now()).await {
                Ok(report) if report != LateReport::default() => {
                    tracing::info!(
                        late = report.late,
                        stalled = report.stalled,
                        cleared = report.cleared,
                        notices = report.notices,
                        published = report.published,
                        "Scanned for late and stalled shipments."
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!("scheduler_tick_failures_total").increment(1);
                    tracing::warn!(error = %e, "The late-shipment scan failed; it runs again at the next interval.");
                }
            }
        }
        if std::time::Instant::now() >= next_retention_scan {
            next_retention_scan = std::time::Instant::now() + settings.retention.interval;
            match crate::retention::scan(pool, &settings.retention).await {
                Ok(erased) if erased.total() > 0 => tracing::info!(
                    orders = erased.orders,
                    status_changes = erased.status_changes,
                    carrier_responses = erased.carrier_responses,
                    deliveries = erased.deliveries,
                    retention_days = settings.retention.days,
                    "Erased the customers of orders finished longer ago than PERSONAL_DATA_RETENTION_DAYS."
                ),
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!("scheduler_tick_failures_total").increment(1);
                    tracing::warn!(error = %e, "The retention scan failed; it runs again at the next interval.");
                }
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
    pool: &Db,
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
    for found in due {
        let s = &found.shipment;
        // A row that cannot be read back is quarantined, never a reason to stop the batch.
        let (status, request) = match s.status().and_then(|st| found.request().map(|r| (st, r))) {
            Ok(read) => read,
            Err(e) => {
                quarantine(&mut tx, s, &e.to_string()).await?;
                report.quarantined += 1;
                continue;
            }
        };
        if !status.is_final() && s.last_news_at < expire_before {
            expire(&mut tx, &found, status, now).await?;
            report.expired += 1;
            continue;
        }
        let body = serde_json::to_vec(&request)?;
        publisher
            .publish(Outgoing::json(TRACKING_REQUESTS, TRACKING_REQUESTS, &body))
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
    tx: &mut tracking_store::Tx,
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
    tx: &mut tracking_store::Tx,
    found: &WithOrder,
    previous: Status,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let s = &found.shipment;
    let req = found.request()?;
    let change = StatusChange {
        change_id: StatusChange::id_for(
            req.carrier,
            &req.tracking_code,
            previous,
            Status::Expired,
            &format!("expired-after-{}", s.last_news_at.timestamp()),
        ),
        order_id: req.order_id.clone(),
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
        store: req.store.clone(),
        order: None,
    };
    // Every order the parcel carries gets the change.
    let mut orders_of: HashMap<i64, Vec<ParcelOrder>> = HashMap::new();
    orders_of.insert(s.id, orders::of_parcels(&mut *tx, &[s.id]).await?);
    let copies = fanout::copies(&mut *tx, &[(s.id, &change, None)], &orders_of).await?;
    fanout::record(&mut *tx, &copies).await?;
    shipments::expired(&mut *tx, s.id, now).await?;
    metrics::counter!("shipments_expired_total", "carrier" => req.carrier.as_str()).increment(1);
    tracing::warn!(order_id = %req.order_id, tracking_code = %s.tracking_code, last_news_at = %s.last_news_at,
        "Shipment expired: no carrier update for too long; polling stopped.");
    Ok(())
}

/// What one late scan did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LateReport {
    /// Shipments newly marked late.
    pub late: usize,
    /// Shipments newly marked stalled.
    pub stalled: u64,
    /// Marks lifted (delivered, a later promise, news since).
    pub cleared: u64,
    /// Late notices recorded.
    pub notices: usize,
    /// Late notices published to the email queue.
    pub published: usize,
}

/// At most this many batches per scan, so that a backlog (the first scan after deploying) is worked off over a
/// few scans instead of holding the scheduler.
const LATE_BATCHES_PER_SCAN: usize = 20;

/// One late scan: marks late and stalled shipments in bounded batches (each its own transaction; several
/// schedulers skip each other's rows), records at most one late notice per shipment in the transaction that marks
/// it, publishes the recorded notices to `email.order-status` (with confirms, marked published in the same
/// transaction: a notice whose publish fails stays unpublished and is tried at the next scan; one published twice
/// is sent once, keyed by its id), lifts marks that no longer hold, and sets the gauges.
pub async fn late_scan(
    pool: &Db,
    publisher: &Publisher,
    settings: &LateSettings,
    now: DateTime<Utc>,
) -> anyhow::Result<LateReport> {
    let mut report = LateReport::default();
    let promised_before = now - chrono::Duration::from_std(settings.grace)?;
    let news_before = now - chrono::Duration::from_std(settings.stale_after)?;
    let batch = usize::try_from(settings.batch).unwrap_or(usize::MAX);
    for _ in 0..LATE_BATCHES_PER_SCAN {
        let mut tx = pool.begin().await?;
        let marked = late::mark_late(&mut tx, promised_before, settings.batch).await?;
        if settings.emails {
            for s in &marked {
                if let Some(promised) = s.late_since
                    && late::record_notice(&mut tx, s.id, promised).await?
                {
                    report.notices += 1;
                }
            }
        }
        let stalled = late::mark_stalled(&mut tx, news_before, settings.batch).await?;
        let cleared = late::clear(&mut tx, promised_before, news_before, settings.batch).await?;
        tx.commit().await?;
        report.late += marked.len();
        report.stalled += stalled;
        report.cleared += cleared;
        let full = |n: usize| n >= batch;
        if !full(marked.len())
            && !full(usize::try_from(stalled).unwrap_or(usize::MAX))
            && !full(usize::try_from(cleared).unwrap_or(usize::MAX))
        {
            break;
        }
    }
    metrics::counter!("late_notices_total").increment(report.notices as u64);
    // Off, not even a notice recorded before is sent.
    if settings.emails {
        report.published = publish_notices(pool, publisher, settings.batch).await?;
    }
    let mut conn = pool.acquire().await?;
    let counts = late::counts(&mut conn).await?;
    for carrier in tracking_domain::Carrier::ALL {
        let c = counts.iter().find(|c| c.carrier == carrier.into());
        let get = |f: fn(&late::CarrierCounts) -> i64| c.map_or(0.0, |c| f(c) as f64);
        let name = carrier.as_str();
        metrics::gauge!("shipments_open", "carrier" => name).set(get(|c| c.open));
        metrics::gauge!("shipments_late", "carrier" => name).set(get(|c| c.late));
        metrics::gauge!("shipments_stalled", "carrier" => name).set(get(|c| c.stalled));
    }
    Ok(report)
}

/// Publishes up to `limit` recorded late notices to the email queue through the default exchange.
async fn publish_notices(pool: &Db, publisher: &Publisher, limit: i64) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let ids = late::take_unpublished_notices(&mut tx, limit).await?;
    for id in &ids {
        let body = serde_json::to_vec(&LateNotice::new(*id))?;
        let mut msg = Outgoing::json(EMAIL_QUEUE, EMAIL_QUEUE, &body);
        msg.message_id = Some(id.to_string());
        publisher.publish(msg).await?;
        late::mark_notice_published(&mut tx, *id).await?;
    }
    tx.commit().await?;
    Ok(ids.len())
}
