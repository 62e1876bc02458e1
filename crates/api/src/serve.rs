//! Accepting HTTP connections within bounds.
//!
//! `axum::serve` (0.8) builds hyper's connection without a timer, so hyper's header read timeout never applies
//! (a client that connects and never finishes its headers holds its connection and task forever), and it accepts
//! every connection it is offered. This loop does what `axum::serve` does for HTTP/1 with both bounds:
//! - `API_HEADER_TIMEOUT_MS`: a connection whose request headers are not complete in time is closed; this also
//!   closes idle keep-alive connections after that long;
//! - `API_MAX_CONNECTIONS`: beyond it, nothing more is accepted: new connections wait in the listen backlog
//!   (and the kernel refuses them once that is full) until one closes.
//!
//! Bodies are bounded where they are read (`body::Body`, `API_BODY_TIMEOUT_MS`).

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `API_HEADER_TIMEOUT_MS`.
    pub header_timeout: Duration,
    /// `API_MAX_CONNECTIONS`.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown`, then stops accepting and waits for the open connections to
/// finish their calls (each is told to close once its call is answered).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut full = false;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: not fatal.
                    tracing::warn!(error = %e, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let at_cap = permits.available_permits() == 0;
        if at_cap && !full {
            tracing::warn!(
                max = limits.max_connections,
                "API_MAX_CONNECTIONS connections are open: further connections wait until one closes."
            );
        }
        full = at_cap;
        metrics::gauge!("api_open_connections").increment(1.0);
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let mut conn =
                pin!(builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app)));
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "Connection closed with an error.");
            }
            metrics::gauge!("api_open_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
