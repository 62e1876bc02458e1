//! `GET /health` and `GET /metrics` for every worker, on `METRICS_ADDR`.
//!
//! `/health` answers `{"status": "ok"}` (200) when every connection the worker needs is up, and
//! `{"status": "unavailable", "components": {...}}` (503) otherwise. Workers may add sections that do not
//! affect the status (the fetcher's `carriers`): a broken carrier makes the fetcher loud, not unhealthy. A component
//! that is down with a known cause shows it under `errors` (e.g. a refused TLS handshake naming `AMQP_CA_FILE`).
//!
//! Each component is also the gauge `health_component_up{component}` (1 up, 0 down) on `/metrics`, so that
//! Prometheus sees what `/health` says: the alert rules (`deploy/prometheus/alerts.yml`) fire on it.
//!
//! A component can also be `blocked` ([`Health::set_blocked`]): RabbitMQ refuses this process's publishes (a memory
//! or disk alarm). It counts as down (503), shows as `"blocked"` with the broker's reason under `errors`, and is
//! independent of the connection's own up/down, so that the connection coming back does not hide the block.
//!
//! `GET /health/live` is the liveness check: 200 while this process's async runtime runs its own timer loop (the
//! upkeep tick of [`serve`]), whatever its dependencies say; 503 when that tick is late. Kubernetes restarts on it,
//! and keeps `/health` (dependencies) for readiness: a database outage must not restart every pod in a loop.

use crate::catalog;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
pub use tracking_settings::health::Health;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once (histograms with the catalog's buckets, every metric with its
/// HELP text) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for m in catalog::installed() {
                if let catalog::Kind::Histogram(buckets) = m.kind {
                    builder = builder
                        .set_buckets_for_metric(Matcher::Full(m.name.to_owned()), buckets)
                        .expect("catalogued buckets are not empty");
                }
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A second install in the same process (tests) fails harmlessly; the handle still renders.
            let _ = metrics::set_global_recorder(recorder);
            catalog::describe(catalog::installed());
            handle
        })
        .clone()
}

#[derive(Clone)]
struct OpsState {
    health: Health,
    metrics: PrometheusHandle,
}

/// The last upkeep tick of [`serve`]'s own loop (milliseconds since [`START`]); `/health/live` fails when it is
/// older than [`LIVE_AFTER`].
static LAST_TICK_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static START: OnceLock<std::time::Instant> = OnceLock::new();
/// How often the upkeep loop ticks.
const TICK: Duration = Duration::from_secs(5);
/// How late the upkeep tick may be before `/health/live` answers 503: six ticks.
pub const LIVE_AFTER: Duration = Duration::from_secs(30);

fn since_start() -> Duration {
    START.get_or_init(std::time::Instant::now).elapsed()
}

fn ticked() {
    let ms = u64::try_from(since_start().as_millis()).unwrap_or(u64::MAX);
    LAST_TICK_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// `GET /health/live`: whether this process's runtime still runs its loops, and nothing about its dependencies.
async fn live() -> Response {
    let last = Duration::from_millis(LAST_TICK_MS.load(std::sync::atomic::Ordering::Relaxed));
    let late = since_start().saturating_sub(last);
    if late <= LIVE_AFTER {
        (StatusCode::OK, axum::Json(json!({"status": "alive"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "stuck",
                "error": format!("the process's upkeep loop last ran {}s ago", late.as_secs()),
            })),
        )
            .into_response()
    }
}

async fn health(State(s): State<OpsState>) -> Response {
    let (ok, body) = s.health.report();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics_page(State(s): State<OpsState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// The ops routes, for servers that want to merge them into their own router.
pub fn router(health_state: Health) -> Router {
    let metrics = metrics_handle();
    health_state.publish();
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/metrics", get(metrics_page))
        .with_state(OpsState {
            health: health_state,
            metrics,
        })
}

/// Binds `addr` and serves `/health` and `/metrics` until `shutdown`. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health_state: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = metrics_handle();
    let upkeep_stop = shutdown.clone();
    ticked();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    handle.run_upkeep();
                    ticked();
                }
                _ = upkeep_stop.cancelled() => break,
            }
        }
    });
    let app = router(health_state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "The /health and /metrics server stopped.");
        }
    });
    tracing::info!(%bound, "Serving /health and /metrics.");
    Ok(bound)
}
