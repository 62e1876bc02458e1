//! Idempotency records: one row per (destination, change id). A destination (`email`, `marketplace:acme`)
//! takes the row's lock for the duration of its effect, so a redelivered change waits for the first
//! attempt and then finds it done.

use crate::StoreError;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing was done yet, or an earlier attempt failed: do it now.
    ToDo { attempts: i32 },
    /// Already done: skip, ack.
    Done,
}

/// Claims the change for the destination inside `tx` (row lock held until commit or rollback).
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    destination: &str,
    change_id: Uuid,
) -> Result<Progress, StoreError> {
    sqlx::query(
        "INSERT INTO deliveries (destination, change_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(destination)
    .bind(change_id)
    .execute(&mut **tx)
    .await?;
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM deliveries WHERE destination = $1 AND change_id = $2 FOR UPDATE")
            .bind(destination)
            .bind(change_id)
            .fetch_one(&mut **tx)
            .await?;
    Ok(if state == "done" {
        Progress::Done
    } else {
        Progress::ToDo { attempts }
    })
}

pub async fn complete(
    conn: &mut PgConnection,
    destination: &str,
    change_id: Uuid,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET state = 'done', attempts = attempts + 1, completed_at = now(), detail = $3, last_error = NULL \
         WHERE destination = $1 AND change_id = $2",
    )
    .bind(destination)
    .bind(change_id)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn fail(
    conn: &mut PgConnection,
    destination: &str,
    change_id: Uuid,
    error: &str,
    parked: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET state = $4, attempts = attempts + 1, last_error = $3 WHERE destination = $1 AND change_id = $2",
    )
    .bind(destination)
    .bind(change_id)
    .bind(error)
    .bind(if parked { "parked" } else { "failed" })
    .execute(conn)
    .await?;
    Ok(())
}
