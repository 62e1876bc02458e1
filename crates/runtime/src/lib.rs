//! The worker runtime: everything a worker needs that knows nothing of carriers, orders or emails, nor of this
//! application's queues, secrets and metrics, which each binary gives it at start (`tracking_app::install`:
//! [`amqp::topology::install`], [`catalog::install`], `settings::declare_secrets`).
//!
//! - [`boot`]: what every binary's `main` does: telemetry, signals, the ops server, exit code 2 on bad settings.
//! - [`settings`], [`tls`]: `tracking-settings` re-exported (settings from the environment, the PEM files they
//!   name), for the binaries that read them through this crate.
//! - [`telemetry`]: one tracing setup (`RUST_LOG`, `LOG_FORMAT` = `text` | `json`).
//! - [`catalog`]: what a metric catalog entry is (kind, HELP text, buckets), and the catalog the application installed.
//! - [`ops`]: `GET /health` and `GET /metrics` on `METRICS_ADDR`, and the [`ops::Health`] the worker updates
//!   (`tracking_settings::health`, re-exported).
//! - [`shutdown`]: a `CancellationToken` cancelled on SIGTERM or SIGINT.
//! - [`coalesce`]: many concurrent callers answered by one call (one statement, one commit) for all of them.
//! - [`amqp`]: the RabbitMQ topology the application describes, a publisher with confirms, and the
//!   consume → handle → ack / retry / park loop that every queue worker runs with its own [`amqp::Handler`].
//!
//! A worker's `main` is a composition root: telemetry, settings, clients, then its `run(…, shutdown)`.

pub mod amqp;
pub mod boot;
pub mod catalog;
pub mod coalesce;
pub mod ops;
pub mod parked;
pub mod shutdown;
pub mod telemetry;

/// Settings from the environment, now `tracking-settings`' crate root: re-exported under the old path for the
/// workers and `tracking-api`.
pub use tracking_settings as settings;
/// PEM files named by settings, now `tracking_settings::tls`: re-exported under the old path.
pub use tracking_settings::tls;
