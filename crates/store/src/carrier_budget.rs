//! `carrier_budget`: one token bucket per carrier account, shared by every fetcher so that more fetchers never
//! mean more carrier calls than the account allows.

use crate::StoreError;
use sqlx::PgPool;

/// Takes one token from `account`'s bucket (refilled at `per_second` up to `burst`) and returns the tokens left
/// after it: negative means the caller must wait `-tokens / per_second` seconds before its call.
pub async fn take(
    pool: &PgPool,
    account: &str,
    per_second: f64,
    burst: f64,
) -> Result<f64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO carrier_budget AS b (account, tokens, refilled_at) VALUES ($1, $2 - 1, clock_timestamp()) \
         ON CONFLICT (account) DO UPDATE SET \
             tokens = LEAST($2, b.tokens + EXTRACT(EPOCH FROM clock_timestamp() - b.refilled_at)::float8 * $3) - 1, \
             refilled_at = clock_timestamp() \
         RETURNING tokens",
    )
    .bind(account)
    .bind(burst)
    .bind(per_second)
    .fetch_one(pool)
    .await?)
}
