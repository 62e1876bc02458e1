//! What the runtime is told about this application, as data: the runtime (`tracking-runtime`) and the settings
//! reader (`tracking-settings`) know no queue, secret or metric by name, and every binary hands them these at start
//! ([`install`]).
//!
//! - [`topology`]: the contract's queues, exchanges and bindings.
//! - [`SECRET_SETTINGS`]: the settings that hold secrets, and so may come from a file named by `NAME_FILE`.
//! - [`catalog`]: every metric the binaries emit, with its kind, HELP text and buckets.
//!
//! Adding a worker with a queue of its own adds its queue here (and to the deploy files); the runtime is unchanged.

pub mod catalog;
pub mod topology;

/// The settings that hold secrets, and so may come from a file named by `{NAME}_FILE`.
pub const SECRET_SETTINGS: [&str; 10] = [
    "AMQP_URL",
    "DATABASE_URL",
    "CORREIOS_USER",
    "CORREIOS_ACCESS_CODE",
    "CORREIOS_POSTAGE_CARD",
    "JADLOG_TOKEN",
    "SMTP_URL",
    "API_TOKEN",
    "TRACKING_PAGE_SECRET",
    "UNSUBSCRIBE_SECRET",
];

/// Gives the runtime this application's secret settings, topology and metric catalog. Every binary calls it first,
/// before reading any setting; calling it again changes nothing.
pub fn install() {
    tracking_settings::declare_secrets(&SECRET_SETTINGS);
    tracking_runtime::amqp::topology::install(&topology::TOPOLOGY);
    tracking_runtime::catalog::install(catalog::METRICS);
}
