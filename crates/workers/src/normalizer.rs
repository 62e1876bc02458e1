//! The normalizer: stores each poll's events once, decides the shipment's status, and records and publishes
//! status changes without the database and the queue ever disagreeing.
//!
//! In one transaction: the shipment is registered (or its order context updated) and its row locked; new events
//! are inserted (a carrier returns the whole history on every poll: equal fingerprints add nothing); the status is
//! recomputed from all stored events (`tracking_domain::rules`); a changed status is recorded in `status_changes`
//! with a stable id. After the commit the change is published to `order.status` with a confirm and marked
//! published (in batches). A change whose publish failed or was cut short (crash, broker down) stays unpublished in the table,
//! and the outbox relay in this worker publishes it later: nothing is lost, and a rare double publish carries the
//! same `change_id`, which both publishers deduplicate.

use crate::policy::PollPolicy;
use crate::{boot, db_outcome};
use chrono::{DateTime, FixedOffset, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_domain::rules::{RuleEvent, current_status};
use tracking_domain::table::{EventTables, Mapping};
use tracking_domain::{CarrierUpdate, ChangeEvent, Location, Source, Status, StatusChange, text};
use tracking_runtime::amqp::topology::{NORMALIZER_QUEUE, ORDER_STATUS};
use tracking_runtime::amqp::{
    AmqpSettings, Handler, Incoming, Outcome, Outgoing, Publisher, run_consumer,
};
use tracking_runtime::ops::Health;
use tracking_runtime::settings;
use tracking_store::StoreError;
use tracking_store::shipments::{self, EventRow};

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
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
        Ok(Self {
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
    let health = Health::new(&["rabbitmq", "postgres"]);
    boot::serve_ops("127.0.0.1:9102", health.clone(), shutdown.clone()).await?;
    let pool = tracking_store::pool(&settings.db)?;
    // The normalizer owns the schema: migrate before consuming (retrying while the database is down).
    let mut failures = 0u32;
    loop {
        match tracking_store::migrate(&pool).await {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "Cannot migrate the database yet; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(crate::backoff(failures, Duration::from_millis(500), Duration::from_secs(10))) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }
    tokio::spawn(boot::watch_database(
        pool.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let publisher = Publisher::new(settings.amqp.clone(), "normalizer");
    let relay = tokio::spawn(outbox_relay(
        pool.clone(),
        publisher.clone(),
        settings.outbox_interval,
        settings.outbox_grace,
        shutdown.clone(),
    ));
    let (marker, marking) = Marker::start(pool.clone());
    let handler = Arc::new(Normalizer {
        pool,
        tables: settings.tables,
        policy: settings.policy,
        publisher: publisher.clone(),
        marker,
        crash_after_commit: settings.crash_after_commit,
    });
    run_consumer(
        settings.amqp,
        NORMALIZER_QUEUE,
        publisher.clone(),
        handler,
        health,
        shutdown,
    )
    .await;
    // The handler (and its marker handle) is gone: the marker flushes what it holds and stops.
    let _ = marking.await;
    let _ = relay.await;
    publisher.close().await;
    Ok(())
}

pub struct Normalizer {
    pool: PgPool,
    tables: EventTables,
    policy: PollPolicy,
    publisher: Publisher,
    marker: Marker,
    crash_after_commit: bool,
}

/// Marks changes published in batches (one `UPDATE … = ANY($1)` for all that were confirmed meanwhile), off the
/// handlers' path. A change published but not yet marked when the process dies is published again by the relay,
/// with the same change id, which both publishers deduplicate.
#[derive(Clone)]
struct Marker {
    tx: tokio::sync::mpsc::UnboundedSender<uuid::Uuid>,
}

impl Marker {
    fn start(pool: PgPool) -> (Marker, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<uuid::Uuid>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ids = vec![first];
                // Let a few more confirms arrive, then mark them together.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while ids.len() < 1000 {
                    match rx.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                let marked = sqlx::query(
                    "UPDATE status_changes SET published_at = now() WHERE change_id = ANY($1) AND published_at IS NULL",
                )
                .bind(&ids)
                .execute(&pool)
                .await;
                if let Err(e) = marked {
                    tracing::warn!(error = %e, changes = ids.len(), "Could not mark published changes; the relay will publish them again.");
                }
            }
        });
        (Marker { tx }, task)
    }
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::Store(StoreError::Db(e))
    }
}

impl Handler for Normalizer {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let update: CarrierUpdate = match serde_json::from_slice(&msg.body) {
            Ok(u) => u,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("not a carrier update: {e}"),
                };
            }
        };
        let changes = match self.apply(&update).await {
            Ok(c) => c,
            Err(ApplyError::Invalid(reason)) => return Outcome::Park { reason },
            Err(ApplyError::Store(e)) => return db_outcome(&e),
        };
        if self.crash_after_commit && !changes.is_empty() {
            tracing::error!(
                "FAILPOINT_CRASH_AFTER_COMMIT: aborting between the commit and the publish."
            );
            std::process::abort();
        }
        for change in changes {
            // A failure here is not the message's failure: the change is stored, and the relay will publish it.
            match publish_change(&self.publisher, &change).await {
                Ok(()) => {
                    let _ = self.marker.tx.send(change.change_id);
                }
                Err(e) => {
                    tracing::warn!(change_id = %change.change_id, error = %e, "Status change stored but not yet published; the outbox relay will retry.");
                }
            }
        }
        Outcome::Ack
    }
}

fn mapping_of(row: &EventRow) -> Option<Mapping> {
    if row.reverses {
        return Some(Mapping::Reverse);
    }
    let status = row.status.as_deref()?.parse::<Status>().ok()?;
    Some(Mapping::Status {
        status,
        reason: row.reason.clone(),
    })
}

fn with_offset(at: DateTime<Utc>, offset_secs: i32) -> DateTime<FixedOffset> {
    FixedOffset::east_opt(offset_secs).map_or_else(|| at.fixed_offset(), |o| at.with_timezone(&o))
}

impl Normalizer {
    async fn apply(&self, update: &CarrierUpdate) -> Result<Vec<StatusChange>, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let shipment = match &update.request {
            Some(req) => {
                if req.tracking_code != update.tracking_code || req.carrier != update.carrier {
                    return Err(ApplyError::Invalid(format!(
                        "the update is for {} {} but carries a request for {} {}",
                        update.carrier, update.tracking_code, req.carrier, req.tracking_code
                    )));
                }
                shipments::upsert_and_lock(&mut tx, req).await?
            }
            None => shipments::lock(&mut tx, update.carrier, &update.tracking_code)
                .await?
                .ok_or_else(|| {
                    ApplyError::Invalid(format!(
                        "no shipment {} {} is registered",
                        update.carrier, update.tracking_code
                    ))
                })?,
        };

        // All of the poll's events in one statement: a carrier returns the whole history every time, and the
        // unique fingerprint drops what is already stored.
        struct Row<'a> {
            ev: &'a tracking_domain::CarrierEvent,
            fingerprint: String,
            mapping: Option<Mapping>,
        }
        let mut rows: Vec<Row> = Vec::with_capacity(update.events.len());
        for ev in &update.events {
            let fingerprint = ev.fingerprint(update.carrier, &update.tracking_code, update.source);
            if rows.iter().any(|r| r.fingerprint == fingerprint) {
                continue;
            }
            let mapping = match update.source {
                Source::Manual => ev.status.map(|status| Mapping::Status {
                    status,
                    reason: None,
                }),
                Source::Carrier => self
                    .tables
                    .lookup(update.carrier, &ev.code, ev.kind.as_deref())
                    .cloned(),
            };
            rows.push(Row {
                ev,
                fingerprint,
                mapping,
            });
        }
        let column = |f: &dyn Fn(&Row) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
        let stored: Vec<String> = if rows.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "INSERT INTO tracking_events (shipment_id, source, fingerprint, code, kind, description, detail, city, state, unit, \
                     occurred_at, utc_offset_secs, status, reason, reverses, raw) \
                 SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                     $10::text[], $11::timestamptz[], $12::int4[], $13::text[], $14::text[], $15::bool[], $16::jsonb[]) \
                 ON CONFLICT (fingerprint) DO NOTHING RETURNING fingerprint",
            )
            .bind(shipment.id)
            .bind(update.source.as_str())
            .bind(column(&|r| Some(r.fingerprint.clone())))
            .bind(column(&|r| Some(r.ev.code.clone())))
            .bind(column(&|r| r.ev.kind.clone()))
            .bind(column(&|r| Some(r.ev.description.clone())))
            .bind(column(&|r| r.ev.detail.clone()))
            .bind(column(&|r| r.ev.location.as_ref().and_then(|l| l.city.clone())))
            .bind(column(&|r| r.ev.location.as_ref().and_then(|l| l.state.clone())))
            .bind(column(&|r| r.ev.unit.clone()))
            .bind(rows.iter().map(|r| r.ev.occurred_at.with_timezone(&Utc)).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.ev.occurred_at.offset().local_minus_utc()).collect::<Vec<_>>())
            .bind(column(&|r| match &r.mapping {
                Some(Mapping::Status { status, .. }) => Some(status.as_str().to_owned()),
                _ => None,
            }))
            .bind(column(&|r| match &r.mapping {
                Some(Mapping::Status { reason, .. }) => reason.clone(),
                _ => None,
            }))
            .bind(rows.iter().map(|r| matches!(r.mapping, Some(Mapping::Reverse))).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.ev.raw.clone()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?
        };
        let inserted = stored.len();
        for r in rows
            .iter()
            .filter(|r| r.mapping.is_none() && stored.contains(&r.fingerprint))
        {
            let ev = r.ev;
            metrics::counter!("unmapped_events_total", "carrier" => update.carrier.as_str(), "code" => ev.code.clone(),
                "type" => ev.kind.clone().unwrap_or_default())
            .increment(1);
            tracing::warn!(carrier = %update.carrier, code = %ev.code, kind = ?ev.kind, description = %ev.description,
                "An event code nobody mapped was stored; add it to the event table.");
        }
        metrics::counter!("events_stored_total", "carrier" => update.carrier.as_str())
            .increment(inserted as u64);

        let now = Utc::now();
        let mut status = shipment.status()?;
        let mut changes = Vec::new();
        if inserted > 0 {
            let context = ChangeContext {
                source: update.source,
                estimated_delivery: update.estimated_delivery,
                replay: false,
            };
            if let Some(change) = record_status(&mut tx, &shipment, &context, now).await? {
                status = change.status;
                changes.push(change);
            }
        }
        let last_news = if inserted > 0 {
            now
        } else {
            shipment.last_news_at
        };
        // SRO-009 and the like: the code is real but this account may not track it. Recorded on the shipment for
        // operators (and polled only at the longest interval, in case the label moves to our contract); cleared
        // by any other answer from the carrier.
        let not_trackable = match (update.source, update.carrier_message.as_deref()) {
            (Source::Carrier, Some(message)) => {
                tracking_carriers::not_trackable_reason(update.carrier, message)
            }
            _ => None,
        };
        let mut next = self.policy.next_poll(status, last_news, now);
        if let Some(reason) = &not_trackable {
            next = now
                + chrono::Duration::from_std(self.policy.max_interval)
                    .unwrap_or(chrono::Duration::days(1));
            if shipment.not_trackable_reason.is_none() {
                metrics::counter!("shipments_not_trackable_total", "carrier" => update.carrier.as_str())
                    .increment(1);
                tracing::warn!(carrier = %update.carrier, tracking_code = %update.tracking_code,
                    order_id = %shipment.order_id, reason = %reason,
                    "A shipment is not trackable with this carrier account; it is recorded as such (see trackctl shipment show).");
            }
        }
        // One statement per update: the carrier's answer (not a manual event) also sets or clears not-trackable.
        sqlx::query(
            "UPDATE shipments SET last_polled_at = CASE WHEN $2 THEN now() ELSE last_polled_at END, \
                 last_news_at = CASE WHEN $3 THEN now() ELSE last_news_at END, \
                 estimated_delivery = COALESCE($4, estimated_delivery), carrier_message = $5, next_poll_at = $6, \
                 not_trackable_reason = CASE WHEN $2 THEN $7 ELSE not_trackable_reason END, \
                 not_trackable_at = CASE WHEN NOT $2 THEN not_trackable_at WHEN $7::text IS NULL THEN NULL \
                     ELSE COALESCE(not_trackable_at, now()) END, \
                 updated_at = now() \
             WHERE id = $1",
        )
        .bind(shipment.id)
        .bind(update.source == Source::Carrier)
        .bind(inserted > 0)
        .bind(update.estimated_delivery.map(|d| d.with_timezone(&Utc)))
        .bind(update.carrier_message.as_deref())
        .bind(next)
        .bind(not_trackable.as_deref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(changes)
    }
}

/// What the update that triggered a recomputation says beyond its events.
struct ChangeContext {
    /// The source named in a change that no stored event decided (every mapped event was reversed).
    source: Source,
    estimated_delivery: Option<DateTime<FixedOffset>>,
    /// A recomputation from stored events after the event table changed, not news from the carrier.
    replay: bool,
}

/// Recomputes a locked shipment's status from all its stored events and, when it moved, records the change
/// (`status_changes`, the outbox) and the shipment's new status, in the caller's transaction.
async fn record_status(
    tx: &mut sqlx::PgConnection,
    shipment: &shipments::ShipmentRow,
    context: &ChangeContext,
    now: DateTime<Utc>,
) -> Result<Option<StatusChange>, ApplyError> {
    let previous = shipment.status()?;
    let rows = shipments::events(&mut *tx, shipment.id).await?;
    let rule_events: Vec<RuleEvent> = rows
        .iter()
        .map(|r| RuleEvent {
            occurred_at: r.occurred_at.fixed_offset(),
            seq: r.id,
            mapping: mapping_of(r),
        })
        .collect();
    let decision = current_status(&rule_events);
    let computed = decision.as_ref().map_or(Status::Registered, |d| d.status);
    // `expired` is ours, not the carrier's: recomputing what the carrier said never restores it, but news does.
    if computed == previous || (previous == Status::Expired && context.replay) {
        return Ok(None);
    }
    let (row, reason) = match &decision {
        Some(d) => (rows.get(d.index), d.reason.clone()),
        None => (None, None),
    };
    let change = change_for(shipment, context, previous, computed, row, reason, now)?;
    let payload = serde_json::to_value(&change).map_err(|e| ApplyError::Invalid(e.to_string()))?;
    let recorded = sqlx::query(
        "INSERT INTO status_changes (change_id, shipment_id, event_id, status, previous_status, occurred_at, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (change_id) DO NOTHING",
    )
    .bind(change.change_id)
    .bind(shipment.id)
    .bind(row.map(|r| r.id))
    .bind(computed.as_str())
    .bind(previous.as_str())
    .bind(change.occurred_at.with_timezone(&Utc))
    .bind(&payload)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    sqlx::query(
        "UPDATE shipments SET status = $2, status_reason = $3, status_at = $4, finished_at = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(shipment.id)
    .bind(computed.as_str())
    .bind(change.reason.as_deref())
    .bind(change.occurred_at.with_timezone(&Utc))
    .execute(&mut *tx)
    .await?;
    if !recorded {
        // The same change (same move, same deciding event) was recorded before, and published then.
        tracing::info!(change_id = %change.change_id, tracking_code = %change.tracking_code, from = %previous, to = %computed,
            "Status restored by a change recorded earlier; nothing new to publish.");
        return Ok(None);
    }
    tracing::info!(change_id = %change.change_id, order_id = %change.order_id, tracking_code = %change.tracking_code,
        from = %previous, to = %computed, "Status changed.");
    metrics::counter!("status_changes_total", "status" => computed.as_str()).increment(1);
    Ok(Some(change))
}

fn change_for(
    shipment: &shipments::ShipmentRow,
    context: &ChangeContext,
    previous: Status,
    status: Status,
    row: Option<&EventRow>,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<StatusChange, ApplyError> {
    let req = shipment.request()?;
    // A change without a deciding event happens only when every mapped event was reversed.
    let (fingerprint, occurred_at, event, source) = match row {
        Some(r) => (
            r.fingerprint.clone(),
            with_offset(r.occurred_at, r.utc_offset_secs),
            // Rows written by an older version may hold text the status change refuses (a line break in a
            // description): clean it as a carrier's text is cleaned today, so the change is always publishable.
            ChangeEvent {
                code: text::clean(&r.code, text::SHORT),
                kind: r.kind.as_deref().map(|k| text::clean(k, text::SHORT)),
                description: text::clean(&r.description, text::LONG),
                location: Location {
                    city: r.city.as_deref().map(|c| text::clean(c, text::SHORT)),
                    state: r.state.as_deref().map(|c| text::clean(c, text::SHORT)),
                },
            },
            if r.source == "manual" {
                Source::Manual
            } else {
                Source::Carrier
            },
        ),
        None => (
            format!("reverted-at-{}", now.timestamp_millis()),
            now.fixed_offset(),
            ChangeEvent {
                code: "EST".into(),
                kind: None,
                description: "previous information disregarded".into(),
                location: Location::default(),
            },
            context.source,
        ),
    };
    Ok(StatusChange {
        change_id: StatusChange::id_for(
            req.carrier,
            &req.tracking_code,
            previous,
            status,
            &fingerprint,
        ),
        order_id: req.order_id,
        tracking_code: req.tracking_code.clone(),
        carrier: req.carrier,
        status,
        previous_status: previous,
        occurred_at,
        source,
        event,
        reason,
        customer: req.customer,
        marketplace: req.marketplace,
        invoice_number: req.invoice_number,
        estimated_delivery: context
            .estimated_delivery
            .or_else(|| shipment.estimated_delivery.map(|d| d.fixed_offset())),
    })
}

/// Publishes one recorded change to `order.status` (message id = change id), with a confirm.
async fn publish_change(publisher: &Publisher, change: &StatusChange) -> anyhow::Result<()> {
    let body = serde_json::to_vec(change)?;
    let mut msg = Outgoing::json(ORDER_STATUS, change.status.as_str(), &body);
    msg.message_id = Some(change.change_id.to_string());
    publisher.publish(msg).await?;
    Ok(())
}

/// Publishes a recorded change to `order.status` (message id = change id) and marks it published in the relay's
/// transaction.
async fn publish_raw<'e>(
    publisher: &Publisher,
    db: impl sqlx::PgExecutor<'e>,
    change_id: uuid::Uuid,
    status: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let mut msg = Outgoing::json(ORDER_STATUS, status, body);
    msg.message_id = Some(change_id.to_string());
    publisher.publish(msg).await?;
    sqlx::query("UPDATE status_changes SET published_at = now() WHERE change_id = $1 AND published_at IS NULL")
        .bind(change_id)
        .execute(db)
        .await?;
    Ok(())
}

/// The outbox relay: publishes changes that were recorded but not published (a crash or a broker outage
/// between commit and publish), oldest first. Several normalizers share the work with `SKIP LOCKED`.
pub async fn outbox_relay(
    pool: PgPool,
    publisher: Publisher,
    every: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match relay_once(&pool, &publisher, grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                published = n,
                "The outbox relay published changes left unpublished."
            ),
            Err(e) => {
                tracing::warn!(error = %e, "The outbox relay could not run; it will try again.")
            }
        }
    }
}

pub async fn relay_once(
    pool: &PgPool,
    publisher: &Publisher,
    grace: Duration,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(uuid::Uuid, String, serde_json::Value)> = sqlx::query_as(
        "SELECT change_id, status, payload FROM status_changes \
         WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1) \
         ORDER BY created_at LIMIT 200 FOR UPDATE SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let mut published = 0;
    for (change_id, status, payload) in rows {
        let body = serde_json::to_vec(&payload)?;
        publish_raw(publisher, &mut *tx, change_id, &status, &body).await?;
        published += 1;
    }
    tx.commit().await?;
    metrics::counter!("outbox_relayed_total").increment(published as u64);
    Ok(published)
}

/// What [`recompute`] did.
#[derive(Debug, Default)]
pub struct RecomputeReport {
    pub shipments: usize,
    /// Stored events whose mapping (status, reason, reversal) the current tables changed.
    pub events_remapped: usize,
    /// The new changes recorded (in the outbox; the relay publishes them).
    pub changes: Vec<StatusChange>,
}

/// Re-reads every stored carrier event of the selected shipments (all when `only` is `None`) through `tables`,
/// for when the event-code table changed: stores each event's new mapping and records a status change where the
/// status moved. Only new changes are recorded: a shipment whose status stays puts nothing in the outbox, and
/// change ids derive from the move and its deciding event, so running it twice records nothing the second time.
/// Expired shipments stay expired (only carrier news revives them).
pub async fn recompute(
    pool: &PgPool,
    tables: &EventTables,
    only: Option<&str>,
) -> anyhow::Result<RecomputeReport> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM shipments WHERE $1::text IS NULL OR tracking_code = $1 ORDER BY id",
    )
    .bind(only)
    .fetch_all(pool)
    .await?;
    let mut report = RecomputeReport::default();
    let lock_sql = format!(
        "SELECT {} FROM shipments WHERE id = $1 FOR UPDATE",
        shipments::SHIPMENT_COLUMNS
    );
    for id in ids {
        let mut tx = pool.begin().await?;
        let Some(shipment) = sqlx::query_as::<_, shipments::ShipmentRow>(&lock_sql)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            continue;
        };
        report.shipments += 1;
        let carrier = shipment.request()?.carrier;
        let rows = shipments::events(&mut tx, shipment.id).await?;
        let mut remapped = 0;
        for row in rows.iter().filter(|r| r.source == "carrier") {
            let (status, reason, reverses) =
                match tables.lookup(carrier, &row.code, row.kind.as_deref()) {
                    Some(Mapping::Status { status, reason }) => {
                        (Some(status.as_str().to_owned()), reason.clone(), false)
                    }
                    Some(Mapping::Reverse) => (None, None, true),
                    None => (None, None, false),
                };
            if (&status, &reason, reverses) != (&row.status, &row.reason, row.reverses) {
                sqlx::query(
                    "UPDATE tracking_events SET status = $2, reason = $3, reverses = $4 WHERE id = $1",
                )
                .bind(row.id)
                .bind(status)
                .bind(reason)
                .bind(reverses)
                .execute(&mut *tx)
                .await?;
                remapped += 1;
            }
        }
        report.events_remapped += remapped;
        if remapped > 0 {
            let context = ChangeContext {
                source: Source::Carrier,
                estimated_delivery: None,
                replay: true,
            };
            if let Some(change) = record_status(&mut tx, &shipment, &context, Utc::now()).await? {
                report.changes.push(change);
            }
        }
        tx.commit().await?;
    }
    Ok(report)
}
