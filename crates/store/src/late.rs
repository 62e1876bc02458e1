//! Late and stalled shipments: the scheduler's scans that mark them (bounded batches over partial indexes), the
//! "your parcel is late" notices it records and relays, and the lists and counts operators read.
//!
//! A shipment is late once the carrier's promised date (`estimated_delivery`) passed by the grace without
//! delivery, while its status [can be late](tracking_domain::Status::can_be_late); `late_since` holds that date. It
//! is stalled once no carrier news arrived for the stale time while its status
//! [can stall](tracking_domain::Status::can_stall); `stalled_since` holds the last news. Neither is a status: an
//! in-transit parcel that is late is still `in_transit`.

use crate::StoreError;
use crate::shipments::{SHIPMENT_COLUMNS, ShipmentRow};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use tracking_domain::Status;
use uuid::Uuid;

fn statuses(keep: impl Fn(Status) -> bool) -> Vec<String> {
    Status::ALL
        .into_iter()
        .filter(|s| keep(*s))
        .map(|s| s.as_str().to_owned())
        .collect()
}

fn late_statuses() -> Vec<String> {
    statuses(Status::can_be_late)
}

fn stall_statuses() -> Vec<String> {
    statuses(Status::can_stall)
}

/// Marks up to `limit` shipments late whose promised date is before `promised_before` (now minus the grace),
/// skipping those another transaction holds, and returns them (locked for the rest of the transaction).
/// Served by `shipments_late_due`.
pub async fn mark_late(
    conn: &mut PgConnection,
    promised_before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ShipmentRow>, StoreError> {
    let returning = SHIPMENT_COLUMNS
        .split(", ")
        .map(|c| format!("s.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH due AS ( \
             SELECT id FROM shipments \
             WHERE late_since IS NULL AND finished_at IS NULL AND quarantined_at IS NULL \
               AND estimated_delivery IS NOT NULL AND estimated_delivery < $1 AND status = ANY($2) \
             ORDER BY estimated_delivery LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE shipments s SET late_since = s.estimated_delivery FROM due WHERE s.id = due.id \
         RETURNING {returning}"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(promised_before)
        .bind(late_statuses())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?)
}

/// Marks up to `limit` shipments stalled whose last carrier news is before `news_before`; returns how many.
/// Served by `shipments_stall_due`.
pub async fn mark_stalled(
    conn: &mut PgConnection,
    news_before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "WITH due AS ( \
             SELECT id FROM shipments \
             WHERE stalled_since IS NULL AND finished_at IS NULL AND quarantined_at IS NULL \
               AND last_news_at < $1 AND status = ANY($2) \
             ORDER BY last_news_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE shipments s SET stalled_since = s.last_news_at FROM due WHERE s.id = due.id",
    )
    .bind(news_before)
    .bind(stall_statuses())
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Lifts up to `limit` marks each that no longer hold (delivered, finished, a later promise, news since); returns
/// how many shipments were cleared. The normalizer lifts them as soon as the parcel moves; this catches the rest.
pub async fn clear(
    conn: &mut PgConnection,
    promised_before: DateTime<Utc>,
    news_before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, StoreError> {
    let late = sqlx::query(
        "WITH gone AS ( \
             SELECT id FROM shipments WHERE late_since IS NOT NULL \
               AND (finished_at IS NOT NULL OR status <> ALL($2) OR estimated_delivery IS NULL \
                    OR estimated_delivery >= $1) \
             LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE shipments s SET late_since = NULL FROM gone WHERE s.id = gone.id",
    )
    .bind(promised_before)
    .bind(late_statuses())
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let stalled = sqlx::query(
        "WITH gone AS ( \
             SELECT id FROM shipments WHERE stalled_since IS NOT NULL \
               AND (finished_at IS NOT NULL OR status <> ALL($2) OR last_news_at >= $1) \
             LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE shipments s SET stalled_since = NULL FROM gone WHERE s.id = gone.id",
    )
    .bind(news_before)
    .bind(stall_statuses())
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(late + stalled)
}

/// Records the late notice of a shipment, unless it already has one (at most one per shipment, ever); returns
/// whether this call recorded it.
pub async fn record_notice(
    conn: &mut PgConnection,
    shipment_id: i64,
    promised_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO late_notices (shipment_id, notice_id, promised_at) VALUES ($1, $2, $3) \
         ON CONFLICT (shipment_id) DO NOTHING",
    )
    .bind(shipment_id)
    .bind(Uuid::new_v4())
    .bind(promised_at)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// Up to `limit` notices not yet published, oldest first, locked for the rest of the transaction (other
/// schedulers skip them).
pub async fn take_unpublished_notices(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT notice_id FROM late_notices WHERE published_at IS NULL \
         ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Marks a notice published (its broker confirm arrived).
pub async fn mark_notice_published(
    conn: &mut PgConnection,
    notice_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE late_notices SET published_at = now() WHERE notice_id = $1")
        .bind(notice_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A recorded notice with its shipment as it is now, and the shipment's orders (the first first).
#[derive(Debug, Clone, FromRow)]
pub struct RecordedNotice {
    #[sqlx(flatten)]
    pub shipment: ShipmentRow,
    pub promised_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub orders: Vec<crate::orders::OrderRow>,
}

impl RecordedNotice {
    /// Whether the shipment is still late (it may have been delivered, or given a later date, since).
    pub fn still_late(&self) -> bool {
        self.shipment.late_since.is_some()
            && self.shipment.finished_at.is_none()
            && self.shipment.status().is_ok_and(Status::can_be_late)
    }
}

/// The notice `notice_id` and its shipment, or `None` when no such notice was recorded.
pub async fn notice(pool: &PgPool, notice_id: Uuid) -> Result<Option<RecordedNotice>, StoreError> {
    let columns = SHIPMENT_COLUMNS
        .split(", ")
        .map(|c| format!("s.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns}, n.promised_at FROM late_notices n JOIN shipments s ON s.id = n.shipment_id \
         WHERE n.notice_id = $1"
    );
    let Some(mut found) = sqlx::query_as::<_, RecordedNotice>(&sql)
        .bind(notice_id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let mut conn = pool.acquire().await?;
    found.orders = crate::orders::of_parcels(&mut conn, &[found.shipment.id])
        .await?
        .into_iter()
        .map(|p| p.order)
        .collect();
    Ok(Some(found))
}

/// A shipment's late notice as `trackctl shipment show` lists it.
#[derive(Debug, Clone, FromRow)]
pub struct NoticeState {
    pub notice_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub published: bool,
    /// The email publisher's record (`pending`, `done`, `parked`, ...), when it took the notice.
    pub email: Option<String>,
}

pub async fn notice_of(pool: &PgPool, shipment_id: i64) -> Result<Option<NoticeState>, StoreError> {
    Ok(sqlx::query_as::<_, NoticeState>(
        "SELECT n.notice_id, n.created_at, n.published_at IS NOT NULL AS published, d.state AS email \
         FROM late_notices n LEFT JOIN deliveries d ON d.destination = 'email' AND d.change_id = n.notice_id \
         WHERE n.shipment_id = $1",
    )
    .bind(shipment_id)
    .fetch_optional(pool)
    .await?)
}

/// Which marks a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Late,
    Stalled,
}

/// The shipments marked late (or stalled), the longest-waiting first: of `carrier` when given, marked against a
/// date at or after `since` when given, at most `limit`. Served by `shipments_late` / `shipments_stalled`.
pub async fn list(
    pool: &PgPool,
    mark: Mark,
    carrier: Option<tracking_domain::Carrier>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<ShipmentRow>, StoreError> {
    let (column, statuses) = match mark {
        Mark::Late => ("late_since", late_statuses()),
        Mark::Stalled => ("stalled_since", stall_statuses()),
    };
    let sql = format!(
        "SELECT {SHIPMENT_COLUMNS} FROM shipments \
         WHERE {column} IS NOT NULL AND finished_at IS NULL AND status = ANY($1) \
           AND ($2::text IS NULL OR carrier = $2) AND ($3::timestamptz IS NULL OR {column} >= $3) \
         ORDER BY {column}, id LIMIT $4"
    );
    Ok(sqlx::query_as::<_, ShipmentRow>(&sql)
        .bind(statuses)
        .bind(carrier.map(crate::Text))
        .bind(since)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Per carrier: shipments still followed, and how many of them are late and stalled (the gauges).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct CarrierCounts {
    /// Read as stored: a shipment of a carrier this version does not know counts under its spelling (it is
    /// quarantined when the scheduler meets it) instead of failing the gauges.
    pub carrier: crate::Stored<tracking_domain::Carrier>,
    pub open: i64,
    pub late: i64,
    pub stalled: i64,
}

pub async fn counts(conn: &mut PgConnection) -> Result<Vec<CarrierCounts>, StoreError> {
    Ok(sqlx::query_as::<_, CarrierCounts>(
        "SELECT carrier, count(*) AS open, \
             count(*) FILTER (WHERE late_since IS NOT NULL AND status = ANY($1)) AS late, \
             count(*) FILTER (WHERE stalled_since IS NOT NULL AND status = ANY($2)) AS stalled \
         FROM shipments WHERE finished_at IS NULL AND quarantined_at IS NULL GROUP BY carrier ORDER BY carrier",
    )
    .bind(late_statuses())
    .bind(stall_statuses())
    .fetch_all(&mut *conn)
    .await?)
}
