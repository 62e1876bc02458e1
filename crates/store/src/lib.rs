//! PostgreSQL: settings, the pool, the schema's migrations (`migrations/` at the workspace root), and every SQL
//! statement of the workers and `tracking-api`, one module per table or aggregate: shipments with their order
//! context, status changes, per-destination idempotency records (`deliveries`), the normalizer's set-based batch
//! statements and outbox (`normalize`), the carriers' shared budget, health and kept answers, read-only views for
//! `tracking-api` and `trackctl`, and the database side of a binary's start (`env`). Enums in text columns are
//! mapped by [`text`].
//!
//! The normalizer owns the schema and migrates it at start (as does `trackctl migrate`); the other
//! workers wait until the schema is at the version they were built with.

pub mod carrier_budget;
pub mod carrier_health;
pub mod carrier_responses;
pub mod changes;
pub mod customers;
pub mod deliveries;
pub mod env;
pub mod failure;
pub mod late;
pub mod normalize;
pub mod opt_outs;
pub mod orders;
pub mod shipments;
pub mod text;
pub mod views;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use std::str::FromStr;
use std::time::Duration;
use tracking_settings::tls::PemFile;

pub use failure::{Failure, classify};
pub use text::{Stored, Text};

/// The database, as the workers and `tracking-api` hold it: a pool of connections that only this crate's
/// functions run statements on. Workers and the API never name sqlx: they pass a `&Db` to the store's functions
/// (it dereferences to the pool they take) and open a unit of work with [`Db::begin`].
#[derive(Clone, Debug)]
pub struct Db(PgPool);

impl Db {
    /// A lazily connecting pool (see [`pool`]).
    pub fn connect_lazy(settings: &DbSettings) -> Result<Self, StoreError> {
        pool(settings).map(Db)
    }

    /// Begins a unit of work: every statement run on it commits together with [`Tx::commit`], or none does
    /// when it is dropped first (a failed publish between statements, an error).
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(Tx(self.0.begin().await?))
    }

    /// Closes the pool: waits for the connections in use to come back, then closes them.
    pub async fn close(&self) {
        self.0.close().await;
    }
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Db(pool)
    }
}

impl std::ops::Deref for Db {
    type Target = PgPool;
    fn deref(&self) -> &PgPool {
        &self.0
    }
}

/// A unit of work begun with [`Db::begin`]: the store's functions that take a connection run on it (it
/// dereferences to one); [`Tx::commit`] makes them durable together, and dropping it rolls them back.
#[derive(Debug)]
pub struct Tx(sqlx::Transaction<'static, Postgres>);

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}

impl std::ops::Deref for Tx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

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
    /// `DATABASE_CA_FILE`: the CA certificate that `sslmode=verify-ca`/`verify-full` check the server's certificate
    /// against, instead of the URL's `sslrootcert`. Read at start (an unreadable file stops the binary).
    pub ca_file: Option<PemFile>,
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
            ca_file: None,
        }
    }

    /// The connection options: the URL read as libpq reads it (`sslmode`: `disable`, `prefer` (the default),
    /// `require`, `verify-ca`, `verify-full`; `sslrootcert`, `sslcert`, `sslkey`, `application_name`), then
    /// `DATABASE_CA_FILE` over `sslrootcert`, and the program's name as `application_name` when the URL sets none
    /// (so that `pg_stat_activity` tells the workers apart).
    pub fn options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        let mut options = PgConnectOptions::from_str(self.url.expose_secret())?;
        if let Some(ca) = &self.ca_file {
            options = options.ssl_root_cert_from_pem(ca.pem.clone());
        }
        if options.get_application_name().is_none()
            && let Some(name) = program_name()
        {
            options = options.application_name(&name);
        }
        Ok(options)
    }
}

fn program_name() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.file_stem()?.to_string_lossy().into_owned())
}

/// A database error in words an operator can act on: a failed TLS handshake names the settings to check. Never
/// shows the URL.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Tls(inner) => format!(
            "the TLS handshake with PostgreSQL failed ({inner}): check DATABASE_CA_FILE (the CA that signed the server's certificate) and the sslmode and host name in DATABASE_URL (verify-full needs the name the certificate was issued for)"
        ),
        other => other.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", describe(.0))]
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
        .connect_lazy_with(settings.options()?))
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

/// Whether a new transaction on `pool` would be read-only: a hot standby, or `default_transaction_read_only`.
pub async fn read_only(pool: &PgPool) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT current_setting('transaction_read_only') = 'on'")
            .fetch_one(pool)
            .await?,
    )
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

/// Creates the database named in `url` when it does not exist (the demo, tests).
pub async fn create_database_if_missing(url: &str) -> Result<(), StoreError> {
    create_database_for(&DbSettings::new(url)).await
}

/// Creates the database the settings name when it does not exist (`trackctl migrate`), connecting to the
/// server's `postgres` database with the same TLS settings.
pub async fn create_database_for(settings: &DbSettings) -> Result<(), StoreError> {
    let url = settings.url.expose_secret();
    let Some((name, admin_url)) = split_database(url) else {
        return Err(StoreError::Corrupt(format!(
            "no database name in the database URL ending {:?}",
            url.rsplit('/').next()
        )));
    };
    let mut admin_settings = settings.clone();
    admin_settings.url = SecretString::from(admin_url);
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin_settings.options()?)
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
