//! What every long-running binary does before its own work: telemetry, signals, the ops server, and a clear
//! exit on bad configuration. Used by the queue workers (`tracking-workers`) and by `tracking-api`.

use crate::ops::Health;
use crate::settings::{self, SettingsError};
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Runs a binary: `run` gets the shutdown token (cancelled on SIGTERM/SIGINT). Bad configuration exits with 2
/// and a message naming the setting; a runtime failure exits with 1.
pub async fn main<F, Fut>(name: &'static str, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = crate::telemetry::init() {
        eprintln!("{name}: bad configuration: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = settings::check_files() {
        tracing::error!("{name}: bad configuration: {e}");
        eprintln!("{name}: bad configuration: {e}");
        return ExitCode::from(2);
    }
    let shutdown = crate::shutdown::on_signals();
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

/// `METRICS_ADDR`, with a default port per binary so that one of each can run side by side.
pub fn metrics_addr(default: &str) -> Result<SocketAddr, SettingsError> {
    settings::socket_addr("METRICS_ADDR", default)
}

/// Serves `/health` and `/metrics`; failing to bind is a configuration error.
pub async fn serve_ops(
    default_addr: &str,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr = metrics_addr(default_addr)?;
    crate::ops::serve(addr, health, shutdown)
        .await
        .map_err(|e| {
            SettingsError::new("METRICS_ADDR", format!("cannot listen on {addr}: {e}")).into()
        })
}
