//! `carrier_health`: each carrier's last known state (`ok`, `degraded`, `broken`) as a fetcher saw it, for
//! `tracking-api`'s `GET /v1/carriers/health` and operators.

use crate::{StoreError, Text};
use sqlx::PgPool;
use tracking_domain::{Carrier, CarrierState};

/// Records `carrier`'s state, the reason and the counters behind it.
pub async fn record(
    pool: &PgPool,
    carrier: Carrier,
    state: CarrierState,
    reason: Option<&str>,
    counters: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO carrier_health (carrier, state, reason, counters, updated_at) VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (carrier) DO UPDATE SET state = $2, reason = $3, counters = $4, updated_at = now()",
    )
    .bind(Text(carrier))
    .bind(Text(state))
    .bind(reason)
    .bind(counters)
    .execute(pool)
    .await?;
    Ok(())
}
