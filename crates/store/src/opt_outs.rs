//! Email opt-outs (`email_opt_outs`): the addresses, by keyed hash ([`tracking_domain::AddressHash`]), that asked
//! for no more status emails from a store through the one-click unsubscribe link. Recording one twice changes
//! nothing (the first time is kept); an undo deletes the row.

use crate::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracking_domain::OptOut;

/// Records the opt-out at once. Returns whether it is new (`false`: it was recorded already, and keeps its
/// first time).
pub async fn record(pool: &PgPool, opt_out: &OptOut) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO email_opt_outs (store, address_hash) VALUES ($1, $2) \
         ON CONFLICT (store, address_hash) DO NOTHING",
    )
    .bind(opt_out.store.as_str())
    .bind(opt_out.address.as_bytes().as_slice())
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Takes the opt-out back (the page's undo). Returns whether there was one.
pub async fn undo(pool: &PgPool, opt_out: &OptOut) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("DELETE FROM email_opt_outs WHERE store = $1 AND address_hash = $2")
            .bind(opt_out.store.as_str())
            .bind(opt_out.address.as_bytes().as_slice())
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// When the address opted out of the store's status emails, if it did.
pub async fn since(pool: &PgPool, opt_out: &OptOut) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT opted_out_at FROM email_opt_outs WHERE store = $1 AND address_hash = $2",
    )
    .bind(opt_out.store.as_str())
    .bind(opt_out.address.as_bytes().as_slice())
    .fetch_optional(pool)
    .await?)
}
