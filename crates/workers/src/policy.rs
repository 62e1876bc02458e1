//! When to poll a shipment next, and which of its events may decide its status now. Shared by the normalizer
//! (after each poll's result), the scheduler and `trackctl recompute`.

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
    /// `POLL_INTERVAL_MAX_SECS` (default 24 h): the longest gap between polls of a parcel that has gone quiet.
    pub max_interval: Duration,
    /// `EVENT_FUTURE_TOLERANCE_SECS` (default 6 h): an event dated further than this ahead of the moment its
    /// shipment's status is decided (a carrier's typo: a year 2099) is stored and counted, but decides nothing
    /// until its time comes, so the parcel's real later events still change its status. Six hours covers a
    /// carrier clock or time zone that is off by a few hours.
    pub future_tolerance: Duration,
    /// `RECYCLE_AFTER_DAYS` (default 90): a code requested for an order its parcel does not carry, this long
    /// after that parcel finished (delivered, returned, expired), is a new parcel: carriers reuse codes (Correios
    /// S10 ranges come round again), and a new order's parcel must not take the old history or write to the old
    /// customer. Within this time the order joins the parcel (one box for several orders). Fractions allowed.
    pub recycle_after: Duration,
}

/// A quiet parcel is polled at most every `quiet time / QUIET_DIVISOR`: after 2 days without news, every 12 h.
const QUIET_DIVISOR: u32 = 4;

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
            max_interval: settings::secs("POLL_INTERVAL_MAX_SECS", 86_400)?,
            future_tolerance: settings::secs("EVENT_FUTURE_TOLERANCE_SECS", 6 * 3600)?,
            recycle_after: {
                let days = settings::parse("RECYCLE_AFTER_DAYS", 90.0f64)?;
                if !days.is_finite() || days < 0.0 {
                    return Err(SettingsError::new(
                        "RECYCLE_AFTER_DAYS",
                        "must be a number of days, 0 or more",
                    ));
                }
                Duration::from_secs_f64(days * 86_400.0)
            },
        })
    }

    /// Whether a request for an order that the live parcel of its code does not carry starts a new parcel: the
    /// parcel finished at `finished_at` more than [`Self::recycle_after`] before `now`. A parcel still on its way,
    /// or finished recently, takes the order as one more it carries.
    pub fn recycles(&self, finished_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        finished_at.is_some_and(|f| (now - f).to_std().is_ok_and(|ago| ago > self.recycle_after))
    }

    /// The delay before the next poll of a shipment in `status` that has had no news for `quiet`.
    /// A parcel on its way is polled at its status's interval, and less often the longer it stays quiet
    /// (a quarter of the quiet time, never more than `max_interval`); the final poll keeps its own delay.
    pub fn delay_for(&self, status: Status, quiet: Duration) -> Duration {
        let base = match status {
            Status::OutForDelivery | Status::DeliveryFailed | Status::AwaitingPickup => {
                self.near_delivery
            }
            Status::Delivered | Status::Returned => return self.final_poll_after,
            _ => self.interval,
        };
        let slowed = (quiet / QUIET_DIVISOR).min(self.max_interval);
        base.max(slowed)
    }

    /// The latest event time that may decide a status at `now`.
    pub fn decidable_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.future_tolerance)
            .unwrap_or(chrono::Duration::hours(6))
    }

    /// The next poll time for a shipment in `status` whose last news came at `last_news_at`, with ±10 % jitter
    /// so polls of a batch spread out.
    pub fn next_poll(
        &self,
        status: Status,
        last_news_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let quiet = (now - last_news_at).to_std().unwrap_or_default();
        let base = self.delay_for(status, quiet);
        let jittered = base.mul_f64(0.9 + fastrand::f64() * 0.2);
        now + chrono::Duration::from_std(jittered).unwrap_or(chrono::Duration::days(1))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> PollPolicy {
        PollPolicy {
            future_tolerance: Duration::from_secs(6 * 3600),
            interval: Duration::from_secs(1000),
            near_delivery: Duration::from_secs(100),
            final_poll_after: Duration::from_secs(5000),
            expire_after: Duration::from_secs(86_400),
            max_interval: Duration::from_secs(10_000),
            recycle_after: Duration::from_secs(90 * 86_400),
        }
    }

    #[test]
    fn only_a_parcel_finished_longer_ago_than_the_window_is_recycled() {
        let p = policy();
        let now = Utc::now();
        assert!(
            !p.recycles(None, now),
            "a parcel on its way is never recycled"
        );
        assert!(!p.recycles(Some(now - chrono::Duration::days(89)), now));
        assert!(p.recycles(Some(now - chrono::Duration::days(91)), now));
        assert!(!p.recycles(Some(now + chrono::Duration::days(1)), now));
    }

    #[test]
    fn near_delivery_is_polled_more_often_and_jitter_stays_within_ten_percent() {
        let p = policy();
        let now = Utc::now();
        for _ in 0..100 {
            let d = (p.next_poll(Status::OutForDelivery, now, now) - now).num_milliseconds();
            assert!((90_000..=110_000).contains(&d), "{d}");
            let d = (p.next_poll(Status::InTransit, now, now) - now).num_milliseconds();
            assert!((900_000..=1_100_000).contains(&d), "{d}");
        }
        assert_eq!(
            p.delay_for(Status::Delivered, Duration::ZERO),
            Duration::from_secs(5000)
        );
    }

    #[test]
    fn a_quiet_parcel_is_polled_less_often_up_to_the_maximum() {
        let p = policy();
        let secs = |s: u64| Duration::from_secs(s);
        // Recent news: the status's own interval.
        assert_eq!(p.delay_for(Status::InTransit, secs(2000)), secs(1000));
        assert_eq!(p.delay_for(Status::OutForDelivery, secs(200)), secs(100));
        // Quiet for 6000 s: every 1500 s, whatever the status's interval.
        assert_eq!(p.delay_for(Status::InTransit, secs(6000)), secs(1500));
        assert_eq!(p.delay_for(Status::OutForDelivery, secs(6000)), secs(1500));
        // Quiet for days: capped.
        assert_eq!(p.delay_for(Status::InTransit, secs(400_000)), secs(10_000));
        // The final poll after delivery keeps its delay.
        assert_eq!(p.delay_for(Status::Delivered, secs(400_000)), secs(5000));
        let now = Utc::now();
        let quiet_since = now - chrono::Duration::seconds(6000);
        let d = (p.next_poll(Status::InTransit, quiet_since, now) - now).num_seconds();
        assert!((1350..=1650).contains(&d), "{d}");
    }
}
