//! Every metric any binary of this project emits: its kind, its HELP text and, for histograms, its buckets (the
//! types and the bucket sets are the runtime's, `tracking_runtime::catalog`). `tests/tests/deploy.rs` checks that
//! this list and the metrics the sources emit are the same set, and `tests/tests/metrics.rs` that docs/operations.md
//! documents each with this HELP text.

pub use tracking_runtime::catalog::{
    BATCH_CODES, CALL_SECONDS, HANDLING_SECONDS, Kind, Metric, WAIT_SECONDS, counter, gauge,
    histogram,
};

/// The catalog, grouped by the part of the system that emits each metric.
pub const METRICS: &[Metric] = &[
    // Every binary (the ops server).
    gauge(
        "health_component_up",
        "Whether a component /health reports on is up (1) or down (0): rabbitmq, postgres, progress, ticks.",
    ),
    // Every publisher (workers, tracking-api).
    gauge(
        "amqp_publisher_blocked",
        "1 while RabbitMQ blocks the publishing connection (a memory or disk alarm: publishes fail), else 0.",
    ),
    counter(
        "amqp_publish_resent_total",
        "Publishes sent again on a new connection because the first one's channel was lost before its confirm.",
    ),
    // Every queue worker (the runtime's consumer).
    counter(
        "messages_total",
        "Messages settled per queue and outcome (acked, retried, parked, waited, ...).",
    ),
    histogram(
        "message_handling_seconds",
        HANDLING_SECONDS,
        "Seconds a worker spent handling one message, per queue.",
    ),
    counter(
        "consumer_batches_total",
        "Batches a batch consumer (the normalizer's) handled, per queue.",
    ),
    gauge(
        "consumer_stalled",
        "1 while a consumer holds or has ready messages and settled none for STALL_AFTER_SECS, else 0.",
    ),
    // The fetcher.
    gauge(
        "carrier_state",
        "1 for the state each carrier account is in (ok, degraded, broken), 0 for the others; labels carrier, account, stores.",
    ),
    counter(
        "carrier_errors_total",
        "Failed carrier calls per carrier and kind (auth, http_error, timeout, unreadable, schema).",
    ),
    counter(
        "carrier_calls_total",
        "Carrier API calls made, per carrier and account.",
    ),
    histogram(
        "carrier_call_seconds",
        CALL_SECONDS,
        "Seconds one carrier API call took, per carrier.",
    ),
    histogram(
        "carrier_batch_size",
        BATCH_CODES,
        "Tracking codes asked for in one carrier API call, per carrier.",
    ),
    histogram(
        "carrier_budget_wait_seconds",
        WAIT_SECONDS,
        "Seconds a carrier call waited for its account's call budget.",
    ),
    counter(
        "carrier_stale_codes_total",
        "Codes whose carrier answer was older than CARRIER_STALE_AFTER_HOURS, per carrier.",
    ),
    counter(
        "carrier_unrecognised_answers_total",
        "Carrier answers for a code that matched no known shape, per carrier.",
    ),
    counter(
        "carrier_not_trackable_answers_total",
        "Codes the carrier would not let this account track (Correios SRO-009: another contract's label), per carrier and account.",
    ),
    // The normalizer.
    counter(
        "events_stored_total",
        "New carrier events stored, per carrier.",
    ),
    counter(
        "unmapped_events_total",
        "Carrier events whose code no event table maps, per carrier, code and type.",
    ),
    counter(
        "events_future_dated_total",
        "Carrier events dated further ahead than EVENT_FUTURE_TOLERANCE_SECS: stored, deciding no status until their time, per carrier.",
    ),
    counter(
        "shipments_not_trackable_total",
        "Tracking codes the carrier says it does not know or cannot track, per carrier.",
    ),
    counter(
        "status_changes_total",
        "Order status changes recorded, per new status.",
    ),
    counter(
        "shipments_recycled_total",
        "Codes requested for a new order RECYCLE_AFTER_DAYS after their parcel finished: the old parcel retired, a new one registered, per carrier.",
    ),
    counter(
        "outbox_relayed_total",
        "Status changes published by the outbox relay because the inline publish failed.",
    ),
    // The publishers.
    counter(
        "emails_total",
        "Status changes handled by the email publisher, per result (sent, duplicate, skipped, unsubscribed, not_notified, delivered_when_first_seen, failed, refused, ...).",
    ),
    counter(
        "unsubscribe_requests_total",
        "tracking-api: uses of the emails' unsubscribe link, per action (ask, unsubscribe, undo) and result (shown, recorded, unchanged, not_found, unavailable).",
    ),
    counter(
        "emails_skipped_total",
        "Emails recorded as skipped without a send, per reason (unsubscribed: the recipient opted out of the store's emails; erased: the customer's personal data was erased).",
    ),
    counter(
        "personal_data_erased_total",
        "Rows whose customer name or email was erased, per reason (retention: PERSONAL_DATA_RETENTION_DAYS after the order finished; request: the customer asked) and table.",
    ),
    counter(
        "customer_requests_total",
        "Customers' access and erasure requests served by tracking-api, per kind (access, erasure) and result (ok; partial: the parked messages could not be swept).",
    ),
    counter(
        "marketplace_calls_total",
        "Status changes handled by the marketplace publisher, per marketplace and result.",
    ),
    gauge(
        "far_end_in_flight",
        "Calls in flight to a far end (email, marketplace:{name}) from this publisher: places taken in its bulkhead.",
    ),
    counter(
        "far_end_deferred_total",
        "Changes sent back to the delay queues because their far end's bulkhead was full, per far end and why (busy, failing).",
    ),
    counter(
        "delivery_record_retries_total",
        "Times a publisher retried recording a send the far end had already accepted.",
    ),
    counter(
        "changes_refused_total",
        "Status change messages a publisher refused, per reason (not_recorded, altered).",
    ),
    counter(
        "rows_quarantined_total",
        "Stored rows that could not be read back and were set aside, per table.",
    ),
    counter(
        "late_emails_total",
        "Late notices the email publisher handled, per result (sent, duplicate, not_late, unsubscribed, failed, ...).",
    ),
    // The scheduler.
    counter(
        "scheduled_polls_total",
        "Tracking requests the scheduler published for due shipments.",
    ),
    counter(
        "shipments_expired_total",
        "Shipments expired after EXPIRE_AFTER_DAYS without news, per carrier.",
    ),
    counter(
        "scheduler_tick_failures_total",
        "Scheduler ticks that failed (the database or RabbitMQ was unavailable).",
    ),
    gauge(
        "scheduler_last_tick_timestamp_seconds",
        "Unix time of the scheduler's last successful tick.",
    ),
    gauge(
        "shipments_open",
        "Shipments still followed (not finished, not quarantined), per carrier, as of the last late scan.",
    ),
    gauge(
        "shipments_late",
        "Shipments whose promised date passed by LATE_GRACE_HOURS without delivery, per carrier.",
    ),
    gauge(
        "shipments_stalled",
        "Shipments with no carrier event for CARRIER_STALE_AFTER_HOURS, per carrier.",
    ),
    counter(
        "late_notices_total",
        "Late notices (one \"your parcel is late\" email each) the scheduler recorded.",
    ),
    // tracking-api.
    counter(
        "api_requests_total",
        "HTTP requests answered, per route, method and status.",
    ),
    histogram(
        "api_request_seconds",
        HANDLING_SECONDS,
        "Seconds tracking-api took to answer one request, per route.",
    ),
    counter(
        "api_published_total",
        "Messages tracking-api published, per kind (tracking_request, manual_event).",
    ),
    gauge(
        "api_open_connections",
        "HTTP connections tracking-api holds open now.",
    ),
    counter(
        "api_connections_refused_total",
        "Connections tracking-api answered 429 and closed at once: their client already held \
         API_MAX_CONNECTIONS_PER_ADDRESS.",
    ),
    counter(
        "tracking_page_total",
        "Tracking pages served, per result (shown, not_found, unavailable, rate_limited).",
    ),
];

/// The values of one label whose values are a closed list.
#[derive(Clone, Copy, Debug)]
pub struct LabelValues {
    pub metric: &'static str,
    pub label: &'static str,
    pub values: &'static [&'static str],
}

/// The label values written once: docs/operations.md's metrics table and the Grafana dashboard's panel descriptions
/// are checked against them (`tests/tests/metrics.rs`), and each value must appear as a literal in the sources.
pub const LABEL_VALUES: &[LabelValues] = &[
    LabelValues {
        metric: "carrier_errors_total",
        label: "kind",
        values: &["http_error", "timeout", "auth", "unreadable", "schema"],
    },
    LabelValues {
        metric: "marketplace_calls_total",
        label: "result",
        values: &[
            "delivered",
            "duplicate",
            "skipped",
            "failed",
            "refused",
            "waiting",
            "database",
            "busy",
            "leased",
        ],
    },
    LabelValues {
        metric: "emails_total",
        label: "result",
        values: &[
            "sent",
            "duplicate",
            "skipped",
            "unsubscribed",
            "erased",
            "failed",
            "refused",
            "not_notified",
            "delivered_when_first_seen",
            "marketplace_emails",
            "no_template",
            "database",
            "busy",
            "leased",
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut seen = BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(!m.help.is_empty() && m.help.ends_with('.'), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram(buckets) => {
                    assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                }
            }
            if m.help.to_lowercase().starts_with("seconds") {
                assert!(m.name.ends_with("_seconds"), "{} counts seconds", m.name);
            }
        }
    }
}
