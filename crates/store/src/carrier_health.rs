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

/// One carrier account's health, as a fetcher saw it.
pub struct AccountHealth<'a> {
    pub carrier: Carrier,
    /// The account's key (`correios:{user}:{card}`): never a secret.
    pub account: &'a str,
    /// The stores using it, comma-separated.
    pub stores: &'a str,
    pub state: CarrierState,
    pub reason: Option<&'a str>,
    pub counters: &'a serde_json::Value,
}

/// Records one account's state (`carrier_account_health`).
pub async fn record_account(pool: &PgPool, h: AccountHealth<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO carrier_account_health (carrier, account, stores, state, reason, counters, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now()) \
         ON CONFLICT (carrier, account) DO UPDATE SET stores = $3, state = $4, reason = $5, counters = $6, \
             updated_at = now()",
    )
    .bind(Text(h.carrier))
    .bind(h.account)
    .bind(h.stores)
    .bind(Text(h.state))
    .bind(h.reason)
    .bind(h.counters)
    .execute(pool)
    .await?;
    Ok(())
}

/// A carrier account's last recorded state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub carrier: Text<Carrier>,
    pub account: String,
    pub stores: String,
    pub state: Text<CarrierState>,
    pub reason: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl AccountRow {
    /// The stores using the account.
    pub fn store_list(&self) -> Vec<&str> {
        self.stores.split(',').filter(|s| !s.is_empty()).collect()
    }
}

/// Every account's last recorded state, by carrier and account.
pub async fn accounts(pool: &PgPool) -> Result<Vec<AccountRow>, StoreError> {
    Ok(sqlx::query_as::<_, AccountRow>(
        "SELECT carrier, account, stores, state, reason, updated_at FROM carrier_account_health \
         ORDER BY carrier, account",
    )
    .fetch_all(pool)
    .await?)
}
