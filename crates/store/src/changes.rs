//! Status changes as the publishers read them back: a message on `order.status` is only a pointer, and the
//! change the database recorded is what gets sent.

use crate::StoreError;
use sqlx::PgPool;
use uuid::Uuid;

/// A recorded change, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recorded {
    /// The message as the normalizer (or scheduler) recorded it.
    pub payload: serde_json::Value,
    /// The status of the newest later change of the same shipment, if any.
    pub superseded_by: Option<String>,
}

/// The recorded change `change_id`, or `None` when no such change was ever recorded.
pub async fn recorded(pool: &PgPool, change_id: Uuid) -> Result<Option<Recorded>, StoreError> {
    Ok(sqlx::query_as::<_, Recorded>(
        "SELECT sc.payload, \
             (SELECT later.status FROM status_changes later \
              WHERE later.shipment_id = sc.shipment_id AND later.seq > sc.seq \
              ORDER BY later.seq DESC LIMIT 1) AS superseded_by \
         FROM status_changes sc WHERE sc.change_id = $1",
    )
    .bind(change_id)
    .fetch_optional(pool)
    .await?)
}
