//! The database side of a binary's start: `DATABASE_URL` and the pool settings from the environment, and a watch
//! that keeps `/health`'s `postgres` component current. Used by the workers, `trackctl` and `tracking-api`.

use crate::DbSettings;
use tokio_util::sync::CancellationToken;
use tracking_settings::health::Health;
use tracking_settings::tls::{PemKind, pem_file};
use tracking_settings::{self as settings, SettingsError};

/// A `DATABASE_URL` that cannot be parsed, in words that never repeat the URL (it may hold a password).
fn describe_config_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(inner) => format!("cannot be read: {inner}"),
        _ => "cannot be read".to_owned(),
    }
}

/// `DATABASE_MAX_CONNECTIONS` of every long-running binary, whatever its `PREFETCH`: no worker holds a connection
/// across a send or a wait, only for short statements and transactions, so three copies of everything fit well
/// within PostgreSQL's default `max_connections` of 100.
pub const WORKER_POOL_SIZE: u32 = 4;

/// `DATABASE_URL` (its `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and `application_name` read as libpq reads
/// them), `DATABASE_CA_FILE`, `DATABASE_MAX_CONNECTIONS` (default `default_max`) and `DATABASE_ACQUIRE_TIMEOUT_MS`.
pub fn db_settings(default_max: u32) -> Result<DbSettings, SettingsError> {
    let url = settings::var_or("DATABASE_URL", crate::DEFAULT_DATABASE_URL);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(SettingsError::new(
            "DATABASE_URL",
            "must start with postgres:// or postgresql://",
        ));
    }
    let mut s = DbSettings::new(&url);
    s.max_connections = settings::parse("DATABASE_MAX_CONNECTIONS", default_max)?;
    s.acquire_timeout = settings::millis("DATABASE_ACQUIRE_TIMEOUT_MS", 5_000)?;
    s.ca_file = pem_file("DATABASE_CA_FILE", PemKind::Certificates)?;
    if let Some(ca) = &s.ca_file
        && ca.certificates > 1
    {
        // sqlx's native-tls handshake trusts the first certificate of the file only.
        tracing::warn!(
            path = %ca.path,
            certificates = ca.certificates,
            "DATABASE_CA_FILE holds several certificates and only the first is trusted: give the file of the one CA that signed the server's certificate."
        );
    }
    s.options()
        .map_err(|e| SettingsError::new("DATABASE_URL", describe_config_error(&e)))?;
    Ok(s)
}

/// Keeps `health`'s `postgres` component current, and waits (logging) until the schema is migrated.
pub async fn watch_database(pool: crate::Db, health: Health, shutdown: CancellationToken) {
    watch(pool, health, shutdown, false).await
}

/// [`watch_database`] for a process that writes: a read-only database (a failover to a replica in progress, or
/// `default_transaction_read_only`) is down for it, since none of its work can be done there.
pub async fn watch_writable_database(pool: crate::Db, health: Health, shutdown: CancellationToken) {
    watch(pool, health, shutdown, true).await
}

/// What the watch sees of the database, short of an error.
enum Seen {
    Ready,
    NoSchema,
    ReadOnly,
}

async fn look(pool: &sqlx::PgPool, writes: bool) -> Result<Seen, crate::StoreError> {
    if !crate::schema_ready(pool).await? {
        return Ok(Seen::NoSchema);
    }
    if writes && crate::read_only(pool).await? {
        return Ok(Seen::ReadOnly);
    }
    Ok(Seen::Ready)
}

async fn watch(pool: crate::Db, health: Health, shutdown: CancellationToken, writes: bool) {
    let mut warned = false;
    loop {
        match look(&pool, writes).await {
            Ok(Seen::Ready) => {
                if warned {
                    tracing::info!(
                        "PostgreSQL is reachable, migrated and takes this process's work."
                    );
                    warned = false;
                }
                health.set("postgres", true);
            }
            Ok(waiting) => {
                let why = match waiting {
                    Seen::ReadOnly => {
                        "the database is read-only (a failover to a replica, or default_transaction_read_only): waiting until it takes writes"
                    }
                    _ => {
                        "the database has no schema yet (or an older one): waiting for the normalizer or `trackctl migrate`"
                    }
                };
                if !warned {
                    tracing::warn!(
                        reason = why,
                        "PostgreSQL cannot take this process's work yet; waiting."
                    );
                    warned = true;
                }
                health.set_down("postgres", &why);
            }
            Err(e) => {
                if !warned {
                    tracing::error!(error = %e, "Cannot reach PostgreSQL.");
                    warned = true;
                }
                health.set_down("postgres", &e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
