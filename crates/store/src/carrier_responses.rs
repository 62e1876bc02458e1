//! `carrier_responses`: carrier answers that could not be read, kept whole (redacted) with the requests of their
//! call, so that `trackctl carriers replay` can read them again once the parser is fixed.

use crate::StoreError;
use sqlx::PgPool;

/// An unreadable answer and the call it answered.
pub struct Unreadable<'a> {
    pub carrier: tracking_domain::Carrier,
    /// The tracking requests of the call, as JSON.
    pub requests: serde_json::Value,
    pub http_status: Option<u16>,
    pub body: &'a str,
    pub error: &'a str,
}

pub async fn keep(pool: &PgPool, answer: Unreadable<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO carrier_responses (carrier, requests, http_status, body, error) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(crate::Text(answer.carrier))
    .bind(answer.requests)
    .bind(answer.http_status.map(i32::from))
    .bind(answer.body)
    .bind(answer.error)
    .execute(pool)
    .await?;
    Ok(())
}

/// A kept answer not replayed yet.
#[derive(Debug, sqlx::FromRow)]
pub struct Kept {
    pub id: i64,
    pub carrier: crate::Text<tracking_domain::Carrier>,
    pub requests: serde_json::Value,
    pub body: String,
}

/// Every kept answer not replayed yet, oldest first.
pub async fn pending(pool: &PgPool) -> Result<Vec<Kept>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, carrier, requests, body FROM carrier_responses WHERE replayed_at IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}

/// The answer `id` was read and its events published.
pub async fn replayed(pool: &PgPool, id: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE carrier_responses SET replayed_at = now(), replay_error = NULL WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The answer `id` still cannot be read: why.
pub async fn still_unreadable(pool: &PgPool, id: i64, error: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE carrier_responses SET replay_error = $2 WHERE id = $1")
        .bind(id)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}
