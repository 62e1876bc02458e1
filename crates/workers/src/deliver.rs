//! Delivering one status change to one destination (an email, a marketplace call) once, with bounded retries:
//! first in this process, then through the delay queues for as long as the far end's retry window lasts.
//!
//! 1. Claim `(destination, id)` in `deliveries` with a short committed lease (`DELIVERY_LEASE_SECS`, 30 s) that
//!    the process extends while it works (every third of the lease, all its claims in one statement): no database
//!    connection is held while the far end is called. A change already done is acked. One leased by another
//!    worker is tried again when that lease ends: waited for in process when it ends within
//!    `DELIVERY_LEASE_WAIT_IN_PROCESS_MS`, else through the longest delay tier that ends before it (it comes back
//!    early and waits for the rest), never a tier after it. The claims of every handler of the process that are
//!    waiting at the same moment are made in one statement ([`Ledger`]). Then take a place in the far end's
//!    bulkhead ([`crate::bulkhead`]): a far end whose places are all taken by calls that hang, or that fails,
//!    sends the change back through the delay queues at once (the claim given back) instead of holding a
//!    consumer slot.
//! 2. Call the far end: a transient failure is retried in process (`RETRY_IN_PROCESS` times, from
//!    `RETRY_IN_PROCESS_BASE_MS`, doubling, jittered; a `Retry-After` up to `RETRY_IN_PROCESS_MAX_WAIT_MS` is
//!    honoured in process), unless the try itself took longer than `RETRY_IN_PROCESS_MAX_WAIT_MS` (a timeout): a
//!    far end that hangs is waited out in the delay queues, not in process.
//! 3. Record the outcome in one short statement (the successes waiting together in one statement, as the claims).
//!    If the database is unavailable just then, the record (never the send) is retried until it answers: a
//!    database outage doubles nothing.
//!
//! A far end that stays down is waited out: the change comes back through the delay queues with capped backoff
//! (`{EMAIL,MARKETPLACE}_RETRY_BASE_MS` doubling up to `PUBLISHER_RETRY_MAX_DELAY_MS`), counting no attempt, and is
//! parked only once `PUBLISHER_RETRY_FOR_SECS` (48 h) have passed since its first failure. A permanent refusal is
//! parked at once with the far end's answer.

use crate::bulkhead::{Bulkhead, Full};
use crate::far_ends::FarEnds;
use crate::{backoff, db_outcome};
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tracking_domain::text;
use tracking_runtime::amqp::{Outcome, tier_at_most};
use tracking_runtime::coalesce::{Coalescer, Gone};
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::deliveries::{self, Claim, ClaimRequest, Completed, Held};
use tracking_store::{Failure, StoreError};
use uuid::Uuid;

/// Requests batched into one statement at most; also how many may wait for the next (each handler has at most
/// one waiting, so `PREFETCH` bounds it first).
const LEDGER_BATCH: usize = 256;

/// A delivery record's answer, shared by every request of the batch it was in.
pub(crate) type Answer<T> = Result<T, Arc<StoreError>>;

/// The delivery records of one publisher process: claims, and successes recorded, of all its concurrent
/// handlers, each batched into one statement (one commit) with those waiting at the same moment. A batch the
/// database refuses as data is made again request by request, so one bad record refuses only itself. What each
/// delivery's tries say of its far end goes to `/health` ([`FarEnds`]).
#[derive(Clone)]
pub struct Ledger {
    pool: tracking_store::Db,
    claims: Coalescer<ClaimRequest, Answer<Claim>>,
    completions: Coalescer<Completed, Answer<()>>,
    far_ends: FarEnds,
    /// The claims this process holds now, by (destination, change), with their owner: the heartbeat extends
    /// their leases.
    held: Arc<Mutex<HashMap<(String, Uuid), Uuid>>>,
}

/// A claim this process holds: its lease is extended by the heartbeat until the guard is dropped (the outcome
/// recorded, or given up).
struct Holding {
    held: Arc<Mutex<HashMap<(String, Uuid), Uuid>>>,
    key: (String, Uuid),
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Ledger {
    /// Starts the two batching tasks and the heartbeat; they stop when the last clone of the ledger is dropped.
    pub fn start(pool: tracking_store::Db, lease: Duration, far_ends: FarEnds) -> Ledger {
        let held = Arc::default();
        tokio::spawn(heartbeat(pool.clone(), lease, Arc::downgrade(&held)));
        Ledger {
            far_ends,
            held,
            claims: batching(&pool, move |pool, batch: Vec<ClaimRequest>| async move {
                deliveries::claim_many(&pool, &batch, lease).await
            }),
            completions: batching(&pool, |pool, batch: Vec<Completed>| async move {
                deliveries::complete_many(&pool, &batch).await?;
                Ok(vec![(); batch.len()])
            }),
            pool,
        }
    }
}

/// Extends the leases of every claim the process holds, every third of the lease, in one statement: a claim
/// is held as long as its holder works on it (a send, its in-process retries, a record waiting for the database),
/// and a holder that died stops extending it, so its changes are taken over one lease after its death.
async fn heartbeat(
    pool: tracking_store::Db,
    lease: Duration,
    held: Weak<Mutex<HashMap<(String, Uuid), Uuid>>>,
) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let Some(held) = held.upgrade() else { return };
        let claims: Vec<Held> = held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((destination, change_id), owner)| Held {
                destination: destination.clone(),
                change_id: *change_id,
                owner: *owner,
            })
            .collect();
        drop(held);
        if claims.is_empty() {
            continue;
        }
        match deliveries::extend_leases(&pool, &claims, lease).await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(
                    claims = claims.len(),
                    "Extending the leases of this process's claims again."
                );
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, claims = claims.len(), "Could not extend the leases of this process's claims; trying again at the next beat.");
            }
            Err(_) => {}
        }
    }
}

/// A batching task making `run`'s statement for the requests waiting together.
pub(crate) fn batching<Req, T, F, Fut>(
    pool: &tracking_store::Db,
    run: F,
) -> Coalescer<Req, Answer<T>>
where
    Req: Clone + Send + 'static,
    T: Clone + Send + 'static,
    F: Fn(tracking_store::Db, Vec<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<T>, StoreError>> + Send,
{
    let pool = pool.clone();
    let (coalescer, _task) = Coalescer::start(LEDGER_BATCH, LEDGER_BATCH, move |reqs| {
        let (pool, run) = (pool.clone(), run.clone());
        async move { one_by_one_if_refused(reqs, |batch| run(pool.clone(), batch)).await }
    });
    coalescer
}

/// Runs `run` on the whole batch; when the database refuses it as data, on each request alone, so that only
/// the request it refuses gets the refusal. Other failures (unavailable, conflict) answer every request.
async fn one_by_one_if_refused<Req: Clone, T: Clone, F, Fut>(
    reqs: Vec<Req>,
    mut run: F,
) -> Vec<Answer<T>>
where
    F: FnMut(Vec<Req>) -> Fut,
    Fut: Future<Output = Result<Vec<T>, StoreError>>,
{
    let count = reqs.len();
    match run(reqs.clone()).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) if e.failure() == Failure::Data && count > 1 => {
            let mut answers = Vec::with_capacity(count);
            for req in reqs {
                answers.push(match run(vec![req]).await {
                    Ok(mut one) => one.pop().ok_or_else(|| {
                        Arc::new(StoreError::Corrupt("a record gave no answer".into()))
                    }),
                    Err(e) => Err(Arc::new(e)),
                });
            }
            answers
        }
        Err(e) => {
            let e = Arc::new(e);
            vec![Err(e); count]
        }
    }
}

/// A record that could not be made: the database's error, or no answer from the batching task (it is stopping).
#[derive(Debug)]
enum RecordError {
    Store(Arc<StoreError>),
    Gone,
}

impl RecordError {
    /// What the batching task answered a request, or that it did not.
    fn answer<T>(call: Result<Answer<T>, Gone>) -> Result<T, RecordError> {
        call.map_err(|_| RecordError::Gone)?
            .map_err(RecordError::Store)
    }

    fn failure(&self) -> Failure {
        match self {
            RecordError::Store(e) => e.failure(),
            RecordError::Gone => Failure::Unavailable,
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Store(e) => e.fmt(f),
            RecordError::Gone => Gone.fmt(f),
        }
    }
}

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
    /// `RETRY_IN_PROCESS_MAX_WAIT_MS` (default 5000): the longest in-process wait; a longer `Retry-After` goes to
    /// the queues, and a try that took longer than this (a timeout) is not retried in process.
    pub in_process_max_wait: Duration,
    /// The destination's first delay through the queues, doubling per failure up to `queue_max`.
    pub queue_base: Duration,
    /// `PUBLISHER_RETRY_MAX_DELAY_MS` (default 600000): the cap of that backoff.
    pub queue_max: Duration,
    /// `PUBLISHER_RETRY_FOR_SECS` (default 172800, 48 h): how long after its first failure a change is still retried.
    pub retry_for: Duration,
    /// `DELIVERY_LEASE_SECS` (default 30): how long a claim holds unless its holder extends it (it does every third
    /// of the lease while it works); a dead holder's changes are taken over this long after its last beat.
    pub lease: Duration,
    /// `DELIVERY_LEASE_WAIT_IN_PROCESS_MS` (default 10000): a change leased by another worker whose lease ends
    /// within this is waited for in process (its slot held); a longer one goes through the delay queues.
    pub lease_wait_in_process: Duration,
    /// The delay tiers (`RETRY_DELAYS_MS`): a change waiting for a lease goes through the longest that ends before it.
    pub tiers: Vec<Duration>,
    /// `DELIVERY_RECORD_RETRY_SECS` (default 3600): how long recording an outcome is retried while the database
    /// is unavailable, before the message goes back (and, once the lease expired, may be sent again).
    pub record_retry_for: Duration,
}

impl RetryPolicy {
    pub fn from_env(queue_base: Duration, tiers: &[Duration]) -> Result<Self, SettingsError> {
        let policy = Self {
            in_process: settings::parse("RETRY_IN_PROCESS", 2usize)?,
            in_process_base: settings::millis("RETRY_IN_PROCESS_BASE_MS", 250)?,
            in_process_max_wait: settings::millis("RETRY_IN_PROCESS_MAX_WAIT_MS", 5000)?,
            queue_base,
            queue_max: settings::millis("PUBLISHER_RETRY_MAX_DELAY_MS", 600_000)?,
            retry_for: settings::secs("PUBLISHER_RETRY_FOR_SECS", 172_800)?,
            lease: settings::secs("DELIVERY_LEASE_SECS", 30)?,
            lease_wait_in_process: settings::millis("DELIVERY_LEASE_WAIT_IN_PROCESS_MS", 10_000)?,
            tiers: tiers.to_vec(),
            record_retry_for: settings::secs("DELIVERY_RECORD_RETRY_SECS", 3600)?,
        };
        if policy.lease < Duration::from_secs(1) {
            return Err(SettingsError::new(
                "DELIVERY_LEASE_SECS",
                "must be at least 1",
            ));
        }
        Ok(policy)
    }

    /// The delay before the queue retry after the `failures`-th failure (1-based).
    pub fn queue_delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        backoff(failures, self.queue_base, self.queue_max).max(retry_after.unwrap_or_default())
    }

    /// How a change found leased by another worker for `remaining` more waits: `None` in process (the lease
    /// ends soon), else through the longest delay tier that ends before the lease (or the lease itself when
    /// every tier is longer).
    pub fn lease_wait(&self, remaining: Duration) -> Option<Duration> {
        if remaining <= self.lease_wait_in_process {
            return None;
        }
        Some(tier_at_most(&self.tiers, remaining).unwrap_or(remaining))
    }
}

/// Where a delivery goes: the name its reasons use, and the bulkhead its calls go through (none for an outcome
/// decided without a call).
#[derive(Clone, Copy)]
pub struct To<'a> {
    pub what: &'a str,
    pub bulkhead: Option<&'a Arc<Bulkhead>>,
}

/// How a delivery ended, for the caller's log line and metric.
#[derive(Debug)]
pub struct Delivered {
    pub outcome: Outcome,
    /// `delivered`, `skipped`, `duplicate`, `leased` (another worker holds it), `busy` (the far end's bulkhead
    /// is full: waits in the delay queues), `failed` (retried later), `refused` (parked) or `database`.
    pub result: &'static str,
    /// How many tries this delivery made now (0 when it was a duplicate).
    pub tries: usize,
}

impl Delivered {
    /// No place in the far end's bulkhead: the change waits in the delay queues, counting no attempt.
    fn deferred(bulkhead: &Bulkhead, full: Full, policy: &RetryPolicy, what: &str) -> Self {
        let after = Bulkhead::deferral(full, policy.queue_base, policy.queue_max);
        let why = match full {
            Full::Busy => "by calls that have not ended",
            Full::Failing(_) => "while it fails",
        };
        Delivered {
            outcome: Outcome::Wait {
                after,
                reason: format!(
                    "{what}: its {} places for calls in flight are taken {why}",
                    bulkhead.max_in_flight()
                ),
            },
            result: "busy",
            tries: 0,
        }
    }

    fn database(e: &RecordError) -> Self {
        let outcome = match e {
            RecordError::Store(e) => db_outcome(e),
            RecordError::Gone => Outcome::Wait {
                after: Duration::from_secs(1),
                reason: format!("the delivery record: {e}"),
            },
        };
        Delivered {
            outcome,
            result: "database",
            tries: 0,
        }
    }
}

/// Claims `(destination, id)`, runs `effect` until it is done, skipped, permanent, or out of in-process retries,
/// and records the outcome. `to.what` names the destination in retry and park reasons; the effect runs holding a
/// place in `to.bulkhead`. `skip_if_waited`: a change that already failed before (it waited in the delay queues)
/// is recorded as skipped with this reason instead of being sent late (an email whose status a later change
/// superseded).
pub async fn once<F, Fut>(
    ledger: &Ledger,
    destination: &str,
    id: Uuid,
    policy: &RetryPolicy,
    to: To<'_>,
    skip_if_waited: Option<String>,
    mut effect: F,
) -> Delivered
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let what = to.what;
    let mut waited_in_process = false;
    let (place, _holding, failures, first_failed_at) = loop {
        let owner = Uuid::new_v4();
        let claim = ledger
            .claims
            .call(ClaimRequest {
                destination: destination.to_owned(),
                change_id: id,
                owner,
            })
            .await;
        match RecordError::answer(claim) {
            Ok(Claim::Claimed {
                failures,
                first_failed_at,
            }) => {
                // The place covers the far end's call alone (not the claim, which waits for the database).
                let place = match to.bulkhead {
                    Some(bulkhead) => match bulkhead.enter().await {
                        Ok(place) => Some(place),
                        Err(full) => {
                            // Given back at once; if the database does not take it, it expires with its lease.
                            if let Err(e) =
                                deliveries::release(&ledger.pool, destination, id, owner).await
                            {
                                tracing::debug!(error = %e, %id, "Could not give a claim back; it expires with its lease.");
                            }
                            return Delivered::deferred(bulkhead, full, policy, what);
                        }
                    },
                    None => None,
                };
                let key = (destination.to_owned(), id);
                ledger
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone(), owner);
                let holding = Holding {
                    held: ledger.held.clone(),
                    key,
                };
                break (place, holding, failures, first_failed_at);
            }
            Ok(Claim::Done) => {
                return Delivered {
                    outcome: Outcome::Ack,
                    result: "duplicate",
                    tries: 0,
                };
            }
            Ok(Claim::Leased { remaining }) => match policy.lease_wait(remaining) {
                None if !waited_in_process => {
                    waited_in_process = true;
                    let margin = Duration::from_millis(100 + fastrand::u64(0..200));
                    tokio::time::sleep(remaining + margin).await;
                }
                wait => {
                    let after = wait.unwrap_or(remaining).max(Duration::from_millis(1));
                    return Delivered {
                        outcome: Outcome::Wait {
                            after,
                            reason: format!(
                                "{what}: another worker is delivering this change (its lease ends in {} s)",
                                remaining.as_secs()
                            ),
                        },
                        result: "leased",
                        tries: 0,
                    };
                }
            },
            Err(e) => return Delivered::database(&e),
        }
    };
    let (last, tries) = match skip_if_waited {
        Some(why) if failures > 0 => (Attempt::Skipped(why), 0),
        _ => try_in_process(policy, destination, &mut effect).await,
    };
    // The far end is done with: its place is free while the outcome is recorded.
    drop(place);
    ledger.far_ends.record(destination, &last);
    if let Some(bulkhead) = to.bulkhead {
        bulkhead.record(match &last {
            Attempt::Transient { .. } => Some(true),
            Attempt::Done(_) | Attempt::Permanent(_) => Some(false),
            Attempt::Skipped(_) => None,
        });
    }
    let failures = u32::try_from(failures).unwrap_or(0).saturating_add(1);
    let (outcome, result) = match &last {
        Attempt::Done(_) => (Outcome::Ack, "delivered"),
        Attempt::Skipped(_) => (Outcome::Ack, "skipped"),
        Attempt::Transient { reason, after } => {
            let failing_since = first_failed_at.unwrap_or_else(Utc::now);
            let failing_for = (Utc::now() - failing_since).to_std().unwrap_or_default();
            if failing_for >= policy.retry_for {
                let reason = format!(
                    "{what}: still failing {} h after the first failure ({failures} tries): {reason}",
                    failing_for.as_secs() / 3600
                );
                (Outcome::Park { reason }, "refused")
            } else {
                let after = policy.queue_delay(failures, *after);
                let reason = format!("{what}: {reason}");
                (Outcome::RetryUncounted { after, reason }, "failed")
            }
        }
        Attempt::Permanent(reason) => (
            Outcome::Park {
                reason: format!("{what} refused: {reason}"),
            },
            "refused",
        ),
    };
    let record = || async {
        match &last {
            Attempt::Done(detail) | Attempt::Skipped(detail) => RecordError::answer(
                ledger
                    .completions
                    .call(Completed {
                        destination: destination.to_owned(),
                        change_id: id,
                        detail: text::clean(detail, text::LONG),
                    })
                    .await,
            ),
            Attempt::Transient { reason, .. } | Attempt::Permanent(reason) => {
                let parked = matches!(outcome, Outcome::Park { .. });
                let reason = text::clean(reason, text::LONG);
                deliveries::fail(&ledger.pool, destination, id, &reason, parked)
                    .await
                    .map(drop)
                    .map_err(|e| RecordError::Store(Arc::new(e)))
            }
        }
    };
    if let Err(e) = record_until_recorded(policy, destination, id, record).await {
        // The effect may have happened but its record did not: a redelivery repeats it, with the same id for
        // the far end, once the lease has expired.
        tracing::error!(destination, %id, error = %e, "Could not record a delivery's outcome.");
        return Delivered::database(&e);
    }
    Delivered {
        outcome,
        result,
        tries,
    }
}

/// Runs the effect with in-process retries of transient failures. Returns the last try's result and the tries.
async fn try_in_process<F, Fut>(
    policy: &RetryPolicy,
    destination: &str,
    effect: &mut F,
) -> (Attempt, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(policy.in_process_base)
        .with_max_delay(policy.in_process_max_wait)
        .with_max_times(policy.in_process)
        .with_jitter()
        .build();
    let mut tries = 0;
    loop {
        tries += 1;
        let started = tokio::time::Instant::now();
        let result = effect().await;
        let Attempt::Transient { reason, after } = &result else {
            return (result, tries);
        };
        // A try that failed slowly (a timeout) is not made again in process: a far end that hangs would hold the
        // slot for every try. It is waited out in the delay queues.
        if started.elapsed() >= policy.in_process_max_wait {
            return (result, tries);
        }
        let Some(delay) = delays.next() else {
            return (result, tries);
        };
        let wait = after.map_or(delay, |a| a.max(delay));
        if wait > policy.in_process_max_wait {
            return (result, tries);
        }
        tracing::info!(destination, reason = %reason, wait_ms = wait.as_millis() as u64, "Retrying in process.");
        tokio::time::sleep(wait).await;
    }
}

/// Runs `record` until it succeeds, retrying (with capped backoff, up to `record_retry_for`) while the database is
/// unavailable: the far end already answered, so it is the record that is tried again, never the send.
async fn record_until_recorded<F, Fut>(
    policy: &RetryPolicy,
    destination: &str,
    id: Uuid,
    mut record: F,
) -> Result<(), RecordError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), RecordError>>,
{
    let started = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        match record().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(destination, %id, tries = failures + 1, "Recorded a delivery's outcome once the database answered.");
                }
                return Ok(());
            }
            Err(e)
                if e.failure() != Failure::Data && started.elapsed() < policy.record_retry_for =>
            {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    metrics::counter!("delivery_record_retries_total").increment(1);
                    tracing::warn!(destination, %id, error = %e, "The far end answered but the database did not take the record; retrying the record, not the send.");
                }
                let wait = backoff(failures, Duration::from_millis(100), Duration::from_secs(5));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}
