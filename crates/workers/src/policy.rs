//! When to poll a shipment next. Shared by the normalizer (after each poll's result) and the scheduler.

use chrono::{DateTime, Utc};
use std::time::Duration;
use tracking_domain::Status;
use tracking_runtime::settings::{self, SettingsError};

#[derive(Debug, Clone)]
pub struct PollPolicy {
    /// `POLL_INTERVAL_SECS` (default 4 h): between polls of a parcel on its way.
    pub interval: Duration,
    /// `POLL_INTERVAL_NEAR_DELIVERY_SECS` (default 30 min): out for delivery, a failed attempt, awaiting pickup.
    pub near_delivery: Duration,
    /// `FINAL_POLL_AFTER_SECS` (default 24 h): one last poll this long after delivered/returned, for late events; then polling stops.
    pub final_poll_after: Duration,
    /// `EXPIRE_AFTER_DAYS` (default 30): a shipment with no news this long is marked expired and no longer polled.
    pub expire_after: Duration,
}

impl PollPolicy {
    pub fn from_env() -> Result<Self, SettingsError> {
        let days = settings::parse("EXPIRE_AFTER_DAYS", 30.0f64)?;
        if !days.is_finite() || days <= 0.0 {
            return Err(SettingsError::new(
                "EXPIRE_AFTER_DAYS",
                "must be a positive number of days",
            ));
        }
        Ok(Self {
            interval: settings::secs("POLL_INTERVAL_SECS", 4 * 3600)?,
            near_delivery: settings::secs("POLL_INTERVAL_NEAR_DELIVERY_SECS", 1800)?,
            final_poll_after: settings::secs("FINAL_POLL_AFTER_SECS", 86_400)?,
            expire_after: Duration::from_secs_f64(days * 86_400.0),
        })
    }

    pub fn delay_for(&self, status: Status) -> Duration {
        match status {
            Status::OutForDelivery | Status::DeliveryFailed | Status::AwaitingPickup => {
                self.near_delivery
            }
            Status::Delivered | Status::Returned => self.final_poll_after,
            _ => self.interval,
        }
    }

    /// The next poll time for a shipment in `status`, with ±10 % jitter so polls of a batch spread out.
    pub fn next_poll(&self, status: Status, now: DateTime<Utc>) -> DateTime<Utc> {
        let base = self.delay_for(status);
        let jittered = base.mul_f64(0.9 + fastrand::f64() * 0.2);
        now + chrono::Duration::from_std(jittered).unwrap_or(chrono::Duration::days(1))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn near_delivery_is_polled_more_often_and_jitter_stays_within_ten_percent() {
        let p = PollPolicy {
            interval: Duration::from_secs(1000),
            near_delivery: Duration::from_secs(100),
            final_poll_after: Duration::from_secs(5000),
            expire_after: Duration::from_secs(86_400),
        };
        let now = Utc::now();
        for _ in 0..100 {
            let d = (p.next_poll(Status::OutForDelivery, now) - now).num_milliseconds();
            assert!((90_000..=110_000).contains(&d), "{d}");
            let d = (p.next_poll(Status::InTransit, now) - now).num_milliseconds();
            assert!((900_000..=1_100_000).contains(&d), "{d}");
        }
        assert_eq!(p.delay_for(Status::Delivered), Duration::from_secs(5000));
    }
}
