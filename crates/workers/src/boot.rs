//! What every worker binary does before its own work: telemetry, settings common to all, the ops server,
//! and a clear exit on bad configuration. The pieces live where `tracking-api` shares them: the process
//! side in `tracking_runtime::boot`, the database side in `tracking_store::env`.

pub use tracking_runtime::boot::{main, metrics_addr, serve_ops};
pub use tracking_store::env::{db_settings, watch_database};
