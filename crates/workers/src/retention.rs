//! Personal data kept only as long as needed (LGPD Art. 16; docs/privacy.md): every
//! `RETENTION_SCAN_INTERVAL_MS` the scheduler erases the customer name and email of orders whose every parcel
//! finished more than `PERSONAL_DATA_RETENTION_DAYS` ago ([`tracking_store::customers::erase_due`]), in
//! transactions of at most `RETENTION_BATCH` orders and at most `RETENTION_MAX_BATCHES` of them per scan, so one
//! scan never holds the database long; the rest waits for the next scan. Counted in
//! `personal_data_erased_total{reason="retention",table}`.

use std::time::Duration;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::Db;
use tracking_store::StoreError;
use tracking_store::customers::{self, Erased};

/// The default of `PERSONAL_DATA_RETENTION_DAYS`: half a year after an order's last parcel finished, long past
/// the returns and disputes window of Brazilian e-commerce (7 days of regret, 90 days of warranty claims).
pub const DEFAULT_RETENTION_DAYS: u32 = 180;

#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// `PERSONAL_DATA_RETENTION_DAYS` (default 180): how long after an order's last parcel finished its customer's
    /// name and email are kept. `0` erases them at the first scan after the parcels finished.
    pub days: u32,
    /// `RETENTION_SCAN_INTERVAL_MS` (default 3600000, an hour): how often the scan runs. Days of retention need no
    /// finer grain; each scan walks the orders not yet erased.
    pub interval: Duration,
    /// `RETENTION_BATCH` (default 200): orders erased per transaction.
    pub batch: i64,
    /// `RETENTION_MAX_BATCHES` (default 50): transactions per scan at most.
    pub max_batches: u32,
}

impl RetentionSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let batch = settings::parse("RETENTION_BATCH", 200i64)?;
        if batch < 1 {
            return Err(SettingsError::new("RETENTION_BATCH", "must be at least 1"));
        }
        let max_batches = settings::parse("RETENTION_MAX_BATCHES", 50u32)?;
        if max_batches < 1 {
            return Err(SettingsError::new(
                "RETENTION_MAX_BATCHES",
                "must be at least 1",
            ));
        }
        Ok(Self {
            days: settings::parse("PERSONAL_DATA_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)?,
            interval: settings::millis("RETENTION_SCAN_INTERVAL_MS", 3_600_000)?,
            batch,
            max_batches,
        })
    }
}

/// Counts what an erasure did, per table, under `reason` (`retention` or `request`).
pub fn count_erased(reason: &'static str, erased: &Erased) {
    for (table, n) in [
        ("orders", erased.orders),
        ("status_changes", erased.status_changes),
        ("carrier_responses", erased.carrier_responses),
        ("deliveries", erased.deliveries),
        ("email_opt_outs", erased.opt_outs),
    ] {
        if n > 0 {
            metrics::counter!("personal_data_erased_total", "reason" => reason, "table" => table)
                .increment(n);
        }
    }
}

/// Whether another batch should follow one that erased `erased_orders` orders, after `done` batches.
pub fn another_batch(erased_orders: u64, settings: &RetentionSettings, done: u32) -> bool {
    erased_orders >= settings.batch.unsigned_abs() && done < settings.max_batches
}

/// One scan: batches until none is full or `RETENTION_MAX_BATCHES` ran. Returns what it erased.
pub async fn scan(pool: &Db, settings: &RetentionSettings) -> Result<Erased, StoreError> {
    let mut total = Erased::default();
    let mut done = 0u32;
    loop {
        let erased = customers::erase_due(pool, settings.days, settings.batch).await?;
        done += 1;
        count_erased("retention", &erased);
        total = Erased {
            orders: total.orders + erased.orders,
            status_changes: total.status_changes + erased.status_changes,
            carrier_responses: total.carrier_responses + erased.carrier_responses,
            deliveries: total.deliveries + erased.deliveries,
            opt_outs: total.opt_outs + erased.opt_outs,
        };
        if !another_batch(erased.orders, settings, done) {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(batch: i64, max_batches: u32) -> RetentionSettings {
        RetentionSettings {
            days: 180,
            interval: Duration::from_secs(1),
            batch,
            max_batches,
        }
    }

    #[test]
    fn a_full_batch_is_followed_by_another_up_to_the_bound() {
        let s = settings(10, 3);
        assert!(another_batch(10, &s, 1));
        assert!(another_batch(10, &s, 2));
        assert!(!another_batch(10, &s, 3));
    }

    #[test]
    fn a_batch_short_of_full_ends_the_scan() {
        assert!(!another_batch(9, &settings(10, 3), 1));
        assert!(!another_batch(0, &settings(10, 3), 1));
    }
}
