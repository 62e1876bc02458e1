//! PostgreSQL: settings, the pool, the schema's migrations (`migrations/` at the workspace root), and the
//! queries more than one worker shares: shipments with their order context, per-destination
//! idempotency records, read-only views for `tracking-api` and `trackctl`, the normalizer's set-based batch
//! statements and outbox (`normalize`), and the database side of a binary's start (`env`).
//!
//! The normalizer owns the schema and migrates it at start (as does `trackctl migrate`); the other
//! workers wait until the schema is at the version they were built with.

pub mod changes;
pub mod deliveries;
pub mod env;
pub mod failure;
pub mod normalize;
pub mod shipments;
pub mod views;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

pub use failure::{Failure, classify};
pub use sqlx;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tracking";

#[derive(Clone)]
pub struct DbSettings {
    /// `DATABASE_URL`: may hold a password, so it is a secret.
    pub url: SecretString,
    /// `DATABASE_MAX_CONNECTIONS`: the pool's size; at least the worker's concurrency (`PREFETCH`) for queue workers.
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`: how long to wait for a connection; a down database shows up as this timeout.
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for DbSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSettings")
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl DbSettings {
    pub fn new(url: &str) -> Self {
        Self {
            url: SecretString::from(url.to_owned()),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// A lazily connecting pool: workers start (and report unhealthy) while the database is down.
pub fn pool(settings: &DbSettings) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy(settings.url.expose_secret())?)
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether the database answers and carries every migration this build knows.
pub async fn schema_ready(pool: &PgPool) -> Result<bool, StoreError> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await?;
    if exists.is_none() {
        return Ok(false);
    }
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(applied.is_some_and(|v| v >= latest))
}

/// `(database name, URL of the server's maintenance database)` for a database URL.
pub fn split_database(url: &str) -> Option<(String, String)> {
    let (base, rest) = url.rsplit_once('/')?;
    let (name, query) = match rest.split_once('?') {
        Some((n, q)) => (n, format!("?{q}")),
        None => (rest, String::new()),
    };
    (!name.is_empty()).then(|| (name.to_owned(), format!("{base}/postgres{query}")))
}

/// Creates the database named in `url` when it does not exist (`trackctl migrate`, the demo, tests).
pub async fn create_database_if_missing(url: &str) -> Result<(), StoreError> {
    let Some((name, admin_url)) = split_database(url) else {
        return Err(StoreError::Corrupt(format!(
            "no database name in the database URL ending {:?}",
            url.rsplit('/').next()
        )));
    };
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(&sql).execute(&admin).await {
            // Another process may have created it at the same moment.
            let raced: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&admin)
                    .await?;
            if !raced {
                return Err(e.into());
            }
        }
    }
    admin.close().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_split_into_name_and_admin_url() {
        assert_eq!(
            split_database("postgres://postgres@127.0.0.1:5432/tracking"),
            Some((
                "tracking".into(),
                "postgres://postgres@127.0.0.1:5432/postgres".into()
            ))
        );
        assert_eq!(
            split_database("postgres://u:p@h/db?sslmode=disable"),
            Some((
                "db".into(),
                "postgres://u:p@h/postgres?sslmode=disable".into()
            ))
        );
    }
}
