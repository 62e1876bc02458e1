//! Far ends are bulkheads: each destination a publisher calls (the SMTP relay, each marketplace) has its own bound
//! on calls in flight, so a far end that hangs holds at most its own bound of the consumer's shared slots
//! (`PREFETCH`), never all of them.
//!
//! A delivery enters its far end's bulkhead once it claimed the change, for the far end's call alone
//! ([`Bulkhead::enter`]):
//! - a free place: it goes on, and holds the place until its tries are over;
//! - no free place while the far end answers: it waits for one up to `FAR_END_WAIT_MS` (a far end that is only
//!   busy frees places quickly);
//! - no free place while the far end is slow (its oldest call in flight is older than that wait) or failing (its
//!   last try failed): it does not wait at all, and the change goes back through the delay queues
//!   ([`Bulkhead::deferral`]), holding no slot meanwhile.
//!
//! A try that fails slowly (a timeout, an answer that took longer than `RETRY_IN_PROCESS_MAX_WAIT_MS`) is not
//! retried in process either: see `deliver::once`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One far end's bound on calls in flight, and what its last tries said of it.
#[derive(Debug)]
pub struct Bulkhead {
    /// The far end's name in metrics: `email`, `marketplace:{name}`.
    name: String,
    max_in_flight: usize,
    places: Arc<Semaphore>,
    /// How long a delivery waits for a place while the far end answers.
    wait: Duration,
    /// When each call in flight entered, by entry number: the oldest says whether the far end is slow.
    in_flight: Mutex<BTreeSet<(Instant, u64)>>,
    entries: AtomicU64,
    /// Since when every try failed transiently; `None` while the far end answers.
    failing_since: Mutex<Option<Instant>>,
}

/// Why a delivery did not enter: the far end's places are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Taken by calls that are slow to end (the oldest in flight is older than the wait), or taken and waited for.
    Busy,
    /// Taken while the far end fails: since when.
    Failing(Instant),
}

/// A place in a far end's bulkhead, held while the delivery's tries run; given back on drop.
#[derive(Debug)]
pub struct Place {
    bulkhead: Arc<Bulkhead>,
    key: (Instant, u64),
    _permit: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.bulkhead.lock_in_flight().remove(&self.key);
        self.bulkhead.gauge();
    }
}

impl Bulkhead {
    /// A bulkhead of `max_in_flight` places (at least 1) where a delivery waits up to `wait` for a place while
    /// the far end answers.
    pub fn new(name: &str, max_in_flight: usize, wait: Duration) -> Arc<Bulkhead> {
        let max_in_flight = max_in_flight.max(1);
        Arc::new(Bulkhead {
            name: name.to_owned(),
            max_in_flight,
            places: Arc::new(Semaphore::new(max_in_flight)),
            wait,
            in_flight: Mutex::new(BTreeSet::new()),
            entries: AtomicU64::new(0),
            failing_since: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Instant, u64)>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn gauge(&self) {
        let n = self.max_in_flight - self.places.available_permits().min(self.max_in_flight);
        metrics::gauge!("far_end_in_flight", "far_end" => self.name.clone()).set(n as f64);
    }

    /// Since when the far end fails, if it does.
    pub fn failing_since(&self) -> Option<Instant> {
        *self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the oldest call in flight has been running.
    fn oldest_in_flight(&self) -> Option<Duration> {
        self.lock_in_flight()
            .first()
            .map(|(entered, _)| entered.elapsed())
    }

    /// Takes a place: at once when one is free; after waiting up to the bulkhead's wait while the far end answers
    /// and its calls end quickly; not at all while it fails or its calls hang.
    pub async fn enter(self: &Arc<Self>) -> Result<Place, Full> {
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(since) = self.failing_since() {
                    return Err(self.full(Full::Failing(since)));
                }
                if self.oldest_in_flight().is_some_and(|age| age >= self.wait) {
                    return Err(self.full(Full::Busy));
                }
                match tokio::time::timeout(self.wait, self.places.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(self.full(Full::Busy)),
                }
            }
        };
        let key = (Instant::now(), self.entries.fetch_add(1, Ordering::Relaxed));
        self.lock_in_flight().insert(key);
        self.gauge();
        Ok(Place {
            bulkhead: self.clone(),
            key,
            _permit: permit,
        })
    }

    fn full(&self, why: Full) -> Full {
        let label = match why {
            Full::Busy => "busy",
            Full::Failing(_) => "failing",
        };
        metrics::counter!("far_end_deferred_total", "far_end" => self.name.clone(), "why" => label)
            .increment(1);
        why
    }

    /// What a try said of the far end: `Some(true)` it failed transiently, `Some(false)` it answered (done, or a
    /// refusal of this one message); `None` says nothing.
    pub fn record(&self, failed: Option<bool>) {
        let Some(failed) = failed else { return };
        let mut since = self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (failed, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => *since = None,
            _ => {}
        }
    }

    /// How long a change that found no place waits in the delay queues: `base` while the far end is only busy;
    /// while it fails, as long as it has been failing (at least `base`, at most `cap`), so that the changes of a
    /// far end that stays down come back less and less often.
    pub fn deferral(why: Full, base: Duration, cap: Duration) -> Duration {
        match why {
            Full::Busy => base,
            Full::Failing(since) => since.elapsed().clamp(base, cap.max(base)),
        }
    }
}

/// The bulkheads of one publisher process, by key (a marketplace's name): built at start from the settings.
#[derive(Debug, Clone, Default)]
pub struct Bulkheads {
    by_name: HashMap<String, Arc<Bulkhead>>,
}

impl Bulkheads {
    pub fn insert(&mut self, key: &str, bulkhead: Arc<Bulkhead>) {
        self.by_name.insert(key.to_owned(), bulkhead);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Bulkhead>> {
        self.by_name.get(name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Real time: a wait shows as the time it took, within a loaded machine's slack (half the bulkhead's wait).
    #[tokio::test]
    async fn a_full_bulkhead_waits_for_a_quick_far_end_and_not_for_a_slow_or_failing_one() {
        let wait = Duration::from_secs(1);
        let within = |took: Duration, expected: Duration| {
            assert!(
                took >= expected && took < expected + Duration::from_millis(500),
                "took {took:?}, expected {expected:?}"
            );
        };
        let b = Bulkhead::new("marketplace:acme", 2, wait);
        let first = b.enter().await.unwrap();
        let _second = b.enter().await.unwrap();
        // Full, and the calls in flight are young: the third waits for a place, and gets the first's.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(first);
        });
        let started = Instant::now();
        let third = b.enter().await.unwrap();
        within(started.elapsed(), Duration::from_millis(200));
        release.await.unwrap();
        // Full, and nothing ends within the wait: busy after waiting it.
        let started = Instant::now();
        assert_eq!(b.enter().await.unwrap_err(), Full::Busy);
        within(started.elapsed(), wait);
        // Full, and the oldest call is older than the wait: busy at once.
        let started = Instant::now();
        assert_eq!(b.enter().await.unwrap_err(), Full::Busy);
        within(started.elapsed(), Duration::ZERO);
        // Failing: not waited for either, and the deferral grows with the failure's age.
        b.record(Some(true));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let why = b.enter().await.unwrap_err();
        within(started.elapsed(), Duration::ZERO);
        assert!(matches!(why, Full::Failing(_)));
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(600);
        let deferral = Bulkhead::deferral(why, base, cap);
        assert!(
            deferral >= Duration::from_millis(300) && deferral < Duration::from_secs(2),
            "{deferral:?}"
        );
        assert_eq!(
            Bulkhead::deferral(why, Duration::from_secs(2), cap),
            Duration::from_secs(2),
            "at least the base"
        );
        assert_eq!(Bulkhead::deferral(Full::Busy, base, cap), base);
        b.record(None);
        assert!(b.failing_since().is_some(), "nothing said");
        b.record(Some(false));
        assert!(b.failing_since().is_none(), "it answered");
        drop(third);
        assert!(b.enter().await.is_ok(), "a place is free again");
    }
}
