//! The request budget of a carrier account, shared by every fetcher (a token bucket in PostgreSQL).

use super::settings::Rate;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracking_carriers::Budget;
use tracking_store::Db;

/// The token bucket of one carrier account, in PostgreSQL so that every fetcher draws on the same budget.
/// Without the database it falls back to pacing this process alone at the same rate (and says so once).
pub struct SharedBudget {
    pool: Db,
    account: String,
    rate: Rate,
    local: Mutex<Option<Instant>>,
    warned: std::sync::atomic::AtomicBool,
}

impl SharedBudget {
    pub fn new(pool: Db, account: String, rate: Rate) -> Self {
        Self {
            pool,
            account,
            rate,
            local: Mutex::new(None),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes one token; returns how long to wait before using it.
    async fn take(&self) -> Result<Duration, tracking_store::StoreError> {
        let tokens = tracking_store::carrier_budget::take(
            &self.pool,
            &self.account,
            self.rate.per_second,
            self.rate.burst,
        )
        .await?;
        Ok(if tokens < 0.0 {
            Duration::from_secs_f64(-tokens / self.rate.per_second)
        } else {
            Duration::ZERO
        })
    }

    fn local_wait(&self) -> Duration {
        let every = Duration::from_secs_f64(1.0 / self.rate.per_second);
        let mut next = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let slot = next.map_or(now, |n| n.max(now));
        *next = Some(slot + every);
        slot - now
    }
}

impl Budget for SharedBudget {
    fn spend(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let wait = match self.take().await {
                Ok(w) => w,
                Err(e) => {
                    if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(account = %self.account, error = %e,
                            "The shared carrier budget is unavailable; pacing this process alone meanwhile.");
                    }
                    self.local_wait()
                }
            };
            if !wait.is_zero() {
                metrics::histogram!("carrier_budget_wait_seconds", "account" => self.account.clone())
                    .record(wait);
                tokio::time::sleep(wait).await;
            }
        })
    }
}
