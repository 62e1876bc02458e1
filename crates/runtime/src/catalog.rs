//! What a metric catalog entry is: its name, kind, HELP text and, for histograms, its buckets. The application
//! gives its catalog (every metric its binaries emit) at start ([`install`]); the runtime knows no metric by name.
//!
//! The names follow Prometheus' conventions: counters end in `_total`, durations are in seconds and say so, and
//! durations are histograms with buckets (not summaries), so that a percentile over many replicas is computed from
//! their summed buckets. The recorder describes every entry when it is installed ([`crate::ops::metrics_handle`]);
//! the exporter prints a HELP line only for the metrics a process has recorded. `tests/tests/deploy.rs` checks that
//! the application's list and the metrics the sources emit are the same set, and `tests/tests/metrics.rs` runs
//! `promtool check metrics` on every worker's `/metrics`.

/// What a metric is, as Prometheus types it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
}

/// One metric: its name, kind and HELP text.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// Buckets for the time spent handling one message or one HTTP request: 1 ms to 30 s.
pub const HANDLING_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for one carrier call, whose client timeout is tens of seconds: 10 ms to 60 s.
pub const CALL_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for the wait for a carrier account's call budget: none to ten minutes.
pub const WAIT_SECONDS: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 600.0];

/// Buckets for the number of tracking codes in one carrier call (Correios takes up to 50).
pub const BATCH_CODES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0];

/// A counter entry.
pub const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
    }
}

/// A gauge entry.
pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
    }
}

/// A histogram entry with its buckets.
pub const fn histogram(name: &'static str, buckets: &'static [f64], help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram(buckets),
        help,
    }
}

static INSTALLED: std::sync::OnceLock<&'static [Metric]> = std::sync::OnceLock::new();

/// Gives the process its application's catalog, once (later calls keep the first): the recorder takes its buckets
/// and HELP texts from it when the ops server starts. Binaries do it before anything else.
pub fn install(metrics: &'static [Metric]) {
    let _ = INSTALLED.set(metrics);
}

/// The installed catalog (empty when none was installed).
pub fn installed() -> &'static [Metric] {
    INSTALLED.get().copied().unwrap_or(&[])
}

/// Gives every catalogued metric its HELP text in the installed recorder.
pub fn describe(metrics: &[Metric]) {
    for m in metrics {
        match m.kind {
            Kind::Counter => ::metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => ::metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram(_) => ::metrics::describe_histogram!(m.name, m.help),
        }
    }
}
