//! What every worker binary does before its own work: telemetry, settings common to all, the ops server,
//! and a clear exit on bad configuration.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracking_runtime::ops::Health;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::DbSettings;

/// Runs a worker: `run` gets the shutdown token (cancelled on SIGTERM/SIGINT). Bad configuration exits with 2
/// and a message naming the setting; a runtime failure exits with 1.
pub async fn main<F, Fut>(name: &'static str, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = tracking_runtime::telemetry::init() {
        eprintln!("{name}: bad configuration: {e}");
        return ExitCode::from(2);
    }
    let shutdown = tracking_runtime::shutdown::on_signals();
    match run(shutdown).await {
        Ok(()) => {
            tracing::info!("{name} stopped.");
            ExitCode::SUCCESS
        }
        Err(e) if e.downcast_ref::<SettingsError>().is_some() => {
            tracing::error!("{name}: bad configuration: {e:#}");
            eprintln!("{name}: bad configuration: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{name} failed: {e:#}");
            eprintln!("{name} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `METRICS_ADDR`, with a default port per worker so that one of each can run side by side.
pub fn metrics_addr(default: &str) -> Result<SocketAddr, SettingsError> {
    let v = settings::var_or("METRICS_ADDR", default);
    v.parse()
        .map_err(|e| SettingsError::new("METRICS_ADDR", format!("{v:?} is not host:port: {e}")))
}

/// Serves `/health` and `/metrics`; failing to bind is a configuration error.
pub async fn serve_ops(
    default_addr: &str,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr = metrics_addr(default_addr)?;
    tracking_runtime::ops::serve(addr, health, shutdown)
        .await
        .map_err(|e| {
            SettingsError::new("METRICS_ADDR", format!("cannot listen on {addr}: {e}")).into()
        })
}

pub fn db_settings(default_max: u32) -> Result<DbSettings, SettingsError> {
    let url = settings::var_or("DATABASE_URL", tracking_store::DEFAULT_DATABASE_URL);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(SettingsError::new(
            "DATABASE_URL",
            "must start with postgres:// or postgresql://",
        ));
    }
    let mut s = DbSettings::new(&url);
    s.max_connections = settings::parse("DATABASE_MAX_CONNECTIONS", default_max)?;
    s.acquire_timeout = settings::millis("DATABASE_ACQUIRE_TIMEOUT_MS", 5_000)?;
    Ok(s)
}

/// Keeps `health`'s `postgres` component current, and waits (logging) until the schema is migrated.
pub async fn watch_database(pool: sqlx::PgPool, health: Health, shutdown: CancellationToken) {
    let mut warned = false;
    loop {
        let ok = match tracking_store::schema_ready(&pool).await {
            Ok(true) => true,
            Ok(false) => {
                if !warned {
                    tracing::warn!(
                        "The database has no schema yet (or an older one); waiting for the normalizer or `trackctl migrate`."
                    );
                    warned = true;
                }
                false
            }
            Err(e) => {
                if !warned {
                    tracing::error!(error = %e, "Cannot reach PostgreSQL.");
                    warned = true;
                }
                false
            }
        };
        if ok && warned {
            tracing::info!("PostgreSQL is reachable and migrated.");
            warned = false;
        }
        health.set("postgres", ok);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
