//! Delivering one status change to one destination (an email, a marketplace call) once, with bounded retries:
//! first in this process, then through the delay queues.
//!
//! The change is claimed in `deliveries` (destination, id) under a row lock held until the outcome is recorded in
//! the same transaction, so a redelivered change waits for the first attempt and then finds it done. A transient
//! failure is retried in process (`RETRY_IN_PROCESS` times, from `RETRY_IN_PROCESS_BASE_MS`, doubling, jittered;
//! a `Retry-After` up to `RETRY_IN_PROCESS_MAX_WAIT_MS` is honoured in process); if it still fails the message goes
//! to the delay queues with the destination's backoff (and any longer `Retry-After`), and after `MAX_ATTEMPTS` it
//! is parked. A permanent failure is parked at once with the far end's answer.

use crate::{backoff, db_retry};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::time::Duration;
use tracking_runtime::amqp::Outcome;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::deliveries::{self, Progress};
use uuid::Uuid;

/// What one try of the effect gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Done; the detail is recorded (a Message-ID, an HTTP status).
    Done(String),
    /// Nothing to do for this destination, and why (recorded as done).
    Skipped(String),
    /// Try again later, not before `after` if given.
    Transient {
        reason: String,
        after: Option<Duration>,
    },
    /// Will never work as it is: park with this answer.
    Permanent(String),
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `RETRY_IN_PROCESS` (default 2): in-process retries of a transient failure before the delay queues.
    pub in_process: usize,
    /// `RETRY_IN_PROCESS_BASE_MS` (default 250): the first in-process delay, doubling, with jitter.
    pub in_process_base: Duration,
    /// `RETRY_IN_PROCESS_MAX_WAIT_MS` (default 5000): the longest in-process wait; a longer `Retry-After` goes to the queues.
    pub in_process_max_wait: Duration,
    /// The destination's first delay through the queues, doubling per attempt up to 10 minutes.
    pub queue_base: Duration,
    /// `MAX_ATTEMPTS`: the attempt after which the runtime parks the message (recorded as parked here).
    pub max_attempts: u32,
}

impl RetryPolicy {
    pub fn from_env(queue_base: Duration, max_attempts: u32) -> Result<Self, SettingsError> {
        Ok(Self {
            in_process: settings::parse("RETRY_IN_PROCESS", 2usize)?,
            in_process_base: settings::millis("RETRY_IN_PROCESS_BASE_MS", 250)?,
            in_process_max_wait: settings::millis("RETRY_IN_PROCESS_MAX_WAIT_MS", 5000)?,
            queue_base,
            max_attempts,
        })
    }

    /// The delay before the queue retry after `attempt` (1-based) failed.
    pub fn queue_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        backoff(attempt, self.queue_base, Duration::from_secs(600))
            .max(retry_after.unwrap_or_default())
    }
}

/// How a delivery ended, for the caller's log line and metric.
#[derive(Debug)]
pub struct Delivered {
    pub outcome: Outcome,
    /// `delivered`, `skipped`, `duplicate`, `failed` (retried later), `refused` (parked) or `database`.
    pub result: &'static str,
    /// How many tries this delivery made now (0 when it was a duplicate).
    pub tries: usize,
}

/// Claims `(destination, id)`, runs `effect` until it is done, skipped, permanent, or out of in-process retries,
/// and records the outcome. `what` names the destination in retry and park reasons.
pub async fn once<F, Fut>(
    pool: &sqlx::PgPool,
    destination: &str,
    id: Uuid,
    attempt: u32,
    policy: &RetryPolicy,
    what: &str,
    mut effect: F,
) -> Delivered
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let database = |e: &dyn std::fmt::Display| Delivered {
        outcome: db_retry(e),
        result: "database",
        tries: 0,
    };
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return database(&e),
    };
    match deliveries::claim(&mut tx, destination, id).await {
        Ok(Progress::Done) => {
            return Delivered {
                outcome: Outcome::Ack,
                result: "duplicate",
                tries: 0,
            };
        }
        Ok(Progress::ToDo { .. }) => {}
        Err(e) => return database(&e),
    }
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(policy.in_process_base)
        .with_max_delay(policy.in_process_max_wait)
        .with_max_times(policy.in_process)
        .with_jitter()
        .build();
    let mut tries = 0;
    let last = loop {
        tries += 1;
        let result = effect().await;
        let Attempt::Transient { reason, after } = &result else {
            break result;
        };
        let Some(delay) = delays.next() else {
            break result;
        };
        let wait = after.map_or(delay, |a| a.max(delay));
        if wait > policy.in_process_max_wait {
            break result;
        }
        tracing::info!(destination, reason = %reason, wait_ms = wait.as_millis() as u64, "Retrying in process.");
        tokio::time::sleep(wait).await;
    };
    let (outcome, result, recorded) = match &last {
        Attempt::Done(detail) | Attempt::Skipped(detail) => (
            Outcome::Ack,
            if matches!(last, Attempt::Done(_)) {
                "delivered"
            } else {
                "skipped"
            },
            deliveries::complete(&mut tx, destination, id, detail).await,
        ),
        Attempt::Transient { reason, after } => {
            let exhausted = attempt >= policy.max_attempts;
            (
                Outcome::Retry {
                    after: policy.queue_delay(attempt, *after),
                    reason: format!("{what}: {reason}"),
                },
                "failed",
                deliveries::fail(&mut tx, destination, id, reason, exhausted).await,
            )
        }
        Attempt::Permanent(reason) => (
            Outcome::Park {
                reason: format!("{what} refused: {reason}"),
            },
            "refused",
            deliveries::fail(&mut tx, destination, id, reason, true).await,
        ),
    };
    if let Err(e) = recorded {
        return database(&e);
    }
    if let Err(e) = tx.commit().await {
        // The effect happened but its record did not: a redelivery repeats it, with the same id for the far end.
        tracing::error!(destination, %id, error = %e, "Could not record a delivery's outcome.");
        return database(&e);
    }
    Delivered {
        outcome,
        result,
        tries,
    }
}
