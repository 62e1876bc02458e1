//! The worker runtime: everything a worker needs that knows nothing of carriers, orders or emails.
//!
//! - [`boot`]: what every binary's `main` does: telemetry, signals, the ops server, exit code 2 on bad settings.
//! - [`settings`]: reading typed settings from the environment, with errors that name the variable.
//! - [`telemetry`]: one tracing setup (`RUST_LOG`, `LOG_FORMAT` = `text` | `json`).
//! - [`catalog`]: every metric the project emits, with its kind, HELP text and buckets.
//! - [`ops`]: `GET /health` and `GET /metrics` on `METRICS_ADDR`, and the [`ops::Health`] the worker updates.
//! - [`shutdown`]: a `CancellationToken` cancelled on SIGTERM or SIGINT.
//! - [`tls`]: the PEM files TLS settings name (`AMQP_CA_FILE`, `DATABASE_CA_FILE`), read and checked at start.
//! - [`coalesce`]: many concurrent callers answered by one call (one statement, one commit) for all of them.
//! - [`amqp`]: the RabbitMQ topology of the contract, a publisher with confirms, and the
//!   consume → handle → ack / retry / park loop that every queue worker runs with its own [`amqp::Handler`].
//!
//! A worker's `main` is a composition root: telemetry, settings, clients, then its `run(…, shutdown)`.

pub mod amqp;
pub mod boot;
pub mod catalog;
pub mod coalesce;
pub mod ops;
pub mod parked;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
