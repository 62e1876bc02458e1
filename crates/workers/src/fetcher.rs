//! The fetcher: takes tracking requests, asks the carrier in batches, and publishes what the carrier said to
//! `carrier.events`.
//!
//! - A request that is not valid (not JSON, a field missing or wrong, a carrier that cannot be detected) is parked
//!   in `tracking.requests.dead` with the reason.
//! - Requests are gathered per carrier up to the carrier's batch size (Correios: 50) or `FETCH_LINGER_MS`, then one
//!   call asks for all their codes (after spending the carrier account's budget, a token bucket shared by every
//!   fetcher through PostgreSQL). Each request's events are published, and the request acked once the broker
//!   confirmed them. One carrier's calls never wait for another's.
//! - The carrier's answer per code: events (or none yet: `SRO-020`) → published, then acked; a refusal of the code
//!   (`SRO-019`, `SRO-009`) → parked with the carrier's message.
//! - A failed call (after the client's own bounded retries) delays its requests through the delay queues: nothing is
//!   lost. Credentials refused or an answer we cannot read make the carrier `broken` (an error log line, `/health`,
//!   `carrier_state`, the `carrier_health` table); the unreadable answer is stored in `carrier_responses` for
//!   `trackctl carriers replay`, redacted of secrets and made storable (see `tracking_carriers::redact`).
//! - An answer larger than `CARRIER_MAX_BODY_BYTES` is refused unread, as an HTTP error.

use crate::{backoff, boot};
use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings, MAX_BATCH};
use tracking_carriers::jadlog::{JadlogClient, JadlogSettings};
use tracking_carriers::{
    Budget, CallRetry, CarrierClient, DEFAULT_MAX_BODY_BYTES, FetchError, ObjectResult, redact,
};
use tracking_domain::{Carrier, CarrierUpdate, Source, TrackingRequest};
use tracking_runtime::amqp::topology::{CARRIER_EVENTS, TRACKING_REQUESTS};
use tracking_runtime::amqp::{
    AmqpSettings, Handler, Incoming, Outcome, Outgoing, Publisher, run_consumer,
};
use tracking_runtime::ops::Health;
use tracking_runtime::settings::{self, SettingsError};

/// A carrier account's request budget: `rate` calls per second on average, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

pub struct CarrierSettings {
    pub correios: Option<CorreiosSettings>,
    pub jadlog: Option<JadlogSettings>,
    /// `CORREIOS_RATE_PER_SECOND` (default 5), `CORREIOS_BURST` (default 10).
    pub correios_rate: Rate,
    /// `JADLOG_RATE_PER_SECOND` (default 2), `JADLOG_BURST` (default 5).
    pub jadlog_rate: Rate,
}

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
    pub carriers: CarrierSettings,
    /// `CARRIER_RETRY_BASE_MS` (default 5000): the first queue delay after a failed carrier call; it doubles per attempt.
    pub retry_base: Duration,
    /// `CARRIER_RETRY_MAX_MS` (default 600000): the cap of that delay.
    pub retry_max: Duration,
    /// `FETCH_LINGER_MS` (default 200): how long a batch waits for more codes before the call.
    pub linger: Duration,
    /// `FETCH_CALLS_IN_FLIGHT` (default 4): calls per carrier at once in this process.
    pub calls_in_flight: usize,
    pub health: HealthSettings,
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// `CARRIER_HEALTH_WINDOW_SECS` (default 300): counters cover this much recent time.
    pub window: Duration,
    /// `CARRIER_BROKEN_AFTER_FAILURES` (default 5): consecutive failed calls that make a carrier broken.
    pub broken_after: usize,
    /// `CARRIER_STALE_AFTER_HOURS` (default 120): a code whose newest event is older than this, and not delivered
    /// or returned, counts as a code that stopped updating.
    pub stale_after: Duration,
}

fn rate(prefix: &str, per_second: f64, burst: f64) -> Result<Rate, SettingsError> {
    let r = Rate {
        per_second: settings::parse(&format!("{prefix}_RATE_PER_SECOND"), per_second)?,
        burst: settings::parse(&format!("{prefix}_BURST"), burst)?,
    };
    if !(r.per_second.is_finite() && r.per_second > 0.0) {
        return Err(SettingsError::new(
            &format!("{prefix}_RATE_PER_SECOND"),
            "must be a positive number",
        ));
    }
    if !(r.burst.is_finite() && r.burst >= 1.0) {
        return Err(SettingsError::new(
            &format!("{prefix}_BURST"),
            "must be at least 1",
        ));
    }
    Ok(r)
}

impl CarrierSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let tz_name = settings::var_or("CARRIER_TIME_ZONE", "America/Sao_Paulo");
        let time_zone = tz_name
            .parse::<chrono_tz::Tz>()
            .map_err(|e| SettingsError::new("CARRIER_TIME_ZONE", e.to_string()))?;
        let retry = CallRetry {
            retries: settings::parse("CARRIER_CALL_RETRIES", 2usize)?,
            base: settings::millis("CARRIER_CALL_RETRY_BASE_MS", 500)?,
            max_wait: settings::millis("CARRIER_CALL_RETRY_MAX_WAIT_MS", 10_000)?,
        };
        let max_body = settings::parse("CARRIER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?;
        if max_body < 1024 {
            return Err(SettingsError::new(
                "CARRIER_MAX_BODY_BYTES",
                "must be at least 1024",
            ));
        }
        let correios = match (
            settings::var("CORREIOS_USER"),
            settings::var("CORREIOS_ACCESS_CODE"),
        ) {
            (Some(user), Some(code)) => {
                let batch = settings::parse("CORREIOS_BATCH_SIZE", MAX_BATCH)?;
                if !(1..=MAX_BATCH).contains(&batch) {
                    return Err(SettingsError::new(
                        "CORREIOS_BATCH_SIZE",
                        format!("must be between 1 and {MAX_BATCH}"),
                    ));
                }
                Some(CorreiosSettings {
                    base_url: settings::var_or("CORREIOS_BASE_URL", "https://api.correios.com.br"),
                    user,
                    access_code: code.into(),
                    postage_card: settings::var("CORREIOS_POSTAGE_CARD"),
                    timeout: settings::millis("CORREIOS_TIMEOUT_MS", 30_000)?,
                    time_zone,
                    batch,
                    retry: retry.clone(),
                    max_body,
                })
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(SettingsError::new(
                    "CORREIOS_ACCESS_CODE",
                    "is required when CORREIOS_USER is set",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingsError::new(
                    "CORREIOS_USER",
                    "is required when CORREIOS_ACCESS_CODE is set",
                ));
            }
        };
        let jadlog = match settings::var("JADLOG_TOKEN") {
            Some(token) => Some(JadlogSettings {
                base_url: settings::var_or("JADLOG_BASE_URL", "https://www.jadlog.com.br"),
                token: token.into(),
                timeout: settings::millis("JADLOG_TIMEOUT_MS", 30_000)?,
                time_zone,
                batch: settings::parse("JADLOG_BATCH_SIZE", 50usize)?.max(1),
                retry,
                max_body,
            }),
            None => None,
        };
        Ok(Self {
            correios,
            jadlog,
            correios_rate: rate("CORREIOS", 5.0, 10.0)?,
            jadlog_rate: rate("JADLOG", 2.0, 5.0)?,
        })
    }

    /// The configured clients, each spending its account's budget in `pool` (when given).
    pub fn clients(
        &self,
        pool: Option<&PgPool>,
    ) -> anyhow::Result<BTreeMap<Carrier, Arc<dyn CarrierClient>>> {
        let mut out: BTreeMap<Carrier, Arc<dyn CarrierClient>> = BTreeMap::new();
        if let Some(s) = &self.correios {
            let mut client = CorreiosClient::new(s.clone())?;
            if let Some(pool) = pool {
                let account = match &s.postage_card {
                    Some(card) => format!("correios:{}:{card}", s.user),
                    None => format!("correios:{}", s.user),
                };
                client = client.with_budget(Arc::new(SharedBudget::new(
                    pool.clone(),
                    account,
                    self.correios_rate,
                )));
            }
            out.insert(Carrier::Correios, Arc::new(client));
        }
        if let Some(s) = &self.jadlog {
            let mut client = JadlogClient::new(s.clone())?;
            if let Some(pool) = pool {
                client = client.with_budget(Arc::new(SharedBudget::new(
                    pool.clone(),
                    "jadlog".into(),
                    self.jadlog_rate,
                )));
            }
            out.insert(Carrier::Jadlog, Arc::new(client));
        }
        Ok(out)
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let carriers = CarrierSettings::from_env()?;
        let mut amqp = AmqpSettings::from_env()?;
        if settings::var("PREFETCH").is_none() {
            // Enough deliveries in hand to fill two batches.
            let batch = carriers
                .correios
                .as_ref()
                .map_or(MAX_BATCH, |c| c.batch)
                .max(carriers.jadlog.as_ref().map_or(1, |j| j.batch));
            amqp.prefetch = u16::try_from(batch * 2)
                .unwrap_or(u16::MAX)
                .max(amqp.prefetch);
        }
        Ok(Self {
            db: boot::db_settings(tracking_store::env::WORKER_POOL_SIZE)?,
            amqp,
            carriers,
            retry_base: settings::millis("CARRIER_RETRY_BASE_MS", 5_000)?,
            retry_max: settings::millis("CARRIER_RETRY_MAX_MS", 600_000)?,
            linger: settings::millis("FETCH_LINGER_MS", 200)?,
            calls_in_flight: settings::parse("FETCH_CALLS_IN_FLIGHT", 4usize)?.max(1),
            health: HealthSettings {
                window: settings::secs("CARRIER_HEALTH_WINDOW_SECS", 300)?,
                broken_after: settings::parse("CARRIER_BROKEN_AFTER_FAILURES", 5usize)?.max(1),
                stale_after: settings::secs("CARRIER_STALE_AFTER_HOURS", 120)?.saturating_mul(3600),
            },
        })
    }
}

/// The token bucket of one carrier account, in PostgreSQL so that every fetcher draws on the same budget.
/// Without the database it falls back to pacing this process alone at the same rate (and says so once).
pub struct SharedBudget {
    pool: PgPool,
    account: String,
    rate: Rate,
    local: Mutex<Option<Instant>>,
    warned: std::sync::atomic::AtomicBool,
}

impl SharedBudget {
    pub fn new(pool: PgPool, account: String, rate: Rate) -> Self {
        Self {
            pool,
            account,
            rate,
            local: Mutex::new(None),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes one token; returns how long to wait before using it.
    async fn take(&self) -> Result<Duration, sqlx::Error> {
        let tokens: f64 = sqlx::query_scalar(
            "INSERT INTO carrier_budget AS b (account, tokens, refilled_at) VALUES ($1, $2 - 1, clock_timestamp()) \
             ON CONFLICT (account) DO UPDATE SET \
                 tokens = LEAST($2, b.tokens + EXTRACT(EPOCH FROM clock_timestamp() - b.refilled_at)::float8 * $3) - 1, \
                 refilled_at = clock_timestamp() \
             RETURNING tokens",
        )
        .bind(&self.account)
        .bind(self.rate.burst)
        .bind(self.rate.per_second)
        .fetch_one(&self.pool)
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

/// One call's outcome, as the health counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Ok,
    Auth,
    HttpError,
    Timeout,
    Unreadable,
}

impl CallKind {
    fn of(e: &FetchError) -> Self {
        match e {
            FetchError::Transient { .. } => CallKind::HttpError,
            FetchError::Timeout(_) => CallKind::Timeout,
            FetchError::Auth(_) => CallKind::Auth,
            FetchError::Malformed { .. } => CallKind::Unreadable,
        }
    }
}

#[derive(Default)]
struct CarrierState {
    state: &'static str,
    reason: Option<String>,
    /// Recent calls (time, kind) within the window; stale codes seen (time).
    calls: VecDeque<(Instant, CallKind)>,
    stale: VecDeque<Instant>,
    consecutive_failures: usize,
}

/// Per-carrier health: counters over a window, a state (`ok`, `degraded`, `broken`) on `/health`, the
/// `carrier_state` gauge and the `carrier_health` table, and an error log line when a carrier turns broken.
///
/// - broken: the last call's credentials were refused, or its answer could not be read (a changed API shows on the
///   first call after the change), or `CARRIER_BROKEN_AFTER_FAILURES` calls in a row failed; no credentials at all.
/// - degraded: a call failed (HTTP error, timeout) within the window, but calls still succeed.
/// - ok: otherwise.
#[derive(Clone)]
pub struct CarrierHealth {
    health: Health,
    settings: HealthSettings,
    pool: Option<PgPool>,
    states: Arc<Mutex<BTreeMap<Carrier, CarrierState>>>,
}

impl CarrierHealth {
    fn new(
        health: Health,
        settings: HealthSettings,
        pool: Option<PgPool>,
        configured: &[Carrier],
    ) -> Self {
        let mut states = BTreeMap::new();
        for c in Carrier::ALL {
            let mut s = CarrierState {
                state: "ok",
                ..CarrierState::default()
            };
            if !configured.contains(&c) {
                // Correios is always listed (its requests are held while it has no credentials); others once configured.
                if c != Carrier::Correios {
                    continue;
                }
                s.state = "broken";
                s.reason = Some("CORREIOS_USER and CORREIOS_ACCESS_CODE are not set".into());
            }
            states.insert(c, s);
        }
        let me = Self {
            health,
            settings,
            pool,
            states: Arc::new(Mutex::new(states)),
        };
        me.show();
        me
    }

    fn record(&self, carrier: Carrier, kind: CallKind, error: Option<&FetchError>, stale: usize) {
        let now = Instant::now();
        let (before, after, reason, counters) = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let s = states.entry(carrier).or_insert_with(|| CarrierState {
                state: "ok",
                ..CarrierState::default()
            });
            s.calls.push_back((now, kind));
            for _ in 0..stale {
                s.stale.push_back(now);
            }
            let horizon = now.checked_sub(self.settings.window).unwrap_or(now);
            while s.calls.front().is_some_and(|(t, _)| *t < horizon) {
                s.calls.pop_front();
            }
            while s.stale.front().is_some_and(|t| *t < horizon) {
                s.stale.pop_front();
            }
            s.consecutive_failures = if kind == CallKind::Ok {
                0
            } else {
                s.consecutive_failures + 1
            };
            let before = s.state;
            let (state, reason) = match (kind, error) {
                (CallKind::Auth, Some(e)) => ("broken", Some(format!("authentication: {e}"))),
                (CallKind::Unreadable, Some(e)) => {
                    ("broken", Some(format!("unreadable answer: {e}")))
                }
                (_, Some(e)) if s.consecutive_failures >= self.settings.broken_after => (
                    "broken",
                    Some(format!(
                        "{} calls in a row failed; last: {e}",
                        s.consecutive_failures
                    )),
                ),
                (_, Some(e)) => ("degraded", Some(e.to_string())),
                _ => {
                    let failed = s.calls.iter().filter(|(_, k)| *k != CallKind::Ok).count();
                    if failed > 0 {
                        (
                            "degraded",
                            Some(format!(
                                "{failed} failed call(s) in the last {} s",
                                self.settings.window.as_secs()
                            )),
                        )
                    } else {
                        ("ok", None)
                    }
                }
            };
            s.state = state;
            s.reason = reason.clone();
            let count = |k: CallKind| s.calls.iter().filter(|(_, c)| *c == k).count();
            let counters = json!({
                "window_secs": self.settings.window.as_secs(),
                "calls": s.calls.len(),
                "auth_failures": count(CallKind::Auth),
                "http_errors": count(CallKind::HttpError),
                "timeouts": count(CallKind::Timeout),
                "unreadable": count(CallKind::Unreadable),
                "stale_codes": s.stale.len(),
                "consecutive_failures": s.consecutive_failures,
            });
            (before, state, reason, counters)
        };
        if before != after {
            match after {
                "broken" => tracing::error!(%carrier, reason = reason.as_deref().unwrap_or(""),
                    "Carrier integration is BROKEN: its requests are held for retry until an operator fixes the cause."),
                "degraded" => {
                    tracing::warn!(%carrier, reason = reason.as_deref().unwrap_or(""), "Carrier integration is degraded.")
                }
                _ => tracing::info!(%carrier, "Carrier integration is ok again."),
            }
        }
        let label = match kind {
            CallKind::Ok => "ok",
            CallKind::Auth => "auth",
            CallKind::HttpError => "http_error",
            CallKind::Timeout => "timeout",
            CallKind::Unreadable => "unreadable",
        };
        if kind != CallKind::Ok {
            metrics::counter!("carrier_errors_total", "carrier" => carrier.as_str(), "kind" => label).increment(1);
        }
        if stale > 0 {
            metrics::counter!("carrier_stale_codes_total", "carrier" => carrier.as_str())
                .increment(stale as u64);
        }
        self.show();
        if let Some(pool) = self.pool.clone() {
            tokio::spawn(async move {
                let stored = sqlx::query(
                    "INSERT INTO carrier_health (carrier, state, reason, counters, updated_at) VALUES ($1, $2, $3, $4, now()) \
                     ON CONFLICT (carrier) DO UPDATE SET state = $2, reason = $3, counters = $4, updated_at = now()",
                )
                .bind(carrier.as_str())
                .bind(after)
                .bind(reason)
                .bind(counters)
                .execute(&pool)
                .await;
                if let Err(e) = stored {
                    tracing::debug!(error = %e, "Could not store the carrier's health.");
                }
            });
        }
    }

    fn show(&self) {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut section = serde_json::Map::new();
        for (carrier, s) in states.iter() {
            let mut entry = json!({ "state": s.state });
            if let Some(r) = &s.reason {
                entry["reason"] = json!(r);
            }
            section.insert(carrier.as_str().into(), entry);
            for state in ["ok", "degraded", "broken"] {
                metrics::gauge!("carrier_state", "carrier" => carrier.as_str(), "state" => state)
                    .set(if state == s.state { 1.0 } else { 0.0 });
            }
        }
        self.health
            .set_section("carriers", serde_json::Value::Object(section));
    }
}

type Reply = Result<ObjectResult, FetchError>;

struct Pending {
    request: TrackingRequest,
    reply: oneshot::Sender<Reply>,
}

/// Gathers one carrier's requests into calls.
struct Batcher {
    tx: mpsc::Sender<Pending>,
}

struct BatchContext {
    client: Arc<dyn CarrierClient>,
    health: CarrierHealth,
    pool: Option<PgPool>,
    stale_after: Duration,
}

impl Batcher {
    fn start(
        ctx: BatchContext,
        linger: Duration,
        in_flight: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(1024);
        let ctx = Arc::new(ctx);
        let slots = Arc::new(Semaphore::new(in_flight));
        tokio::spawn(async move {
            let max = ctx.client.max_batch();
            loop {
                let first = tokio::select! {
                    p = rx.recv() => match p { Some(p) => p, None => return },
                    _ = shutdown.cancelled() => return,
                };
                let mut batch: Vec<Pending> = vec![first];
                let mut distinct = 1;
                let deadline = tokio::time::Instant::now() + linger;
                while distinct < max {
                    tokio::select! {
                        p = rx.recv() => match p {
                            Some(p) => {
                                if !batch.iter().any(|b| b.request.tracking_code == p.request.tracking_code) {
                                    distinct += 1;
                                }
                                batch.push(p);
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    call(&ctx, batch).await;
                    drop(permit);
                });
            }
        });
        Self { tx }
    }
}

async fn call(ctx: &BatchContext, batch: Vec<Pending>) {
    let carrier = ctx.client.carrier();
    let mut codes = Vec::with_capacity(batch.len());
    for p in &batch {
        if !codes.contains(&p.request.tracking_code) {
            codes.push(p.request.tracking_code.clone());
        }
    }
    let started = Instant::now();
    let result = ctx.client.track(&codes).await;
    metrics::histogram!("carrier_call_seconds", "carrier" => carrier.as_str())
        .record(started.elapsed());
    metrics::counter!("carrier_calls_total", "carrier" => carrier.as_str()).increment(1);
    metrics::histogram!("carrier_batch_size", "carrier" => carrier.as_str())
        .record(codes.len() as f64);
    match result {
        Ok(mut answers) => {
            let horizon = Utc::now()
                - chrono::Duration::from_std(ctx.stale_after).unwrap_or(chrono::Duration::days(5));
            let stale = answers
                .values()
                .filter(|a| match a {
                    ObjectResult::Found { events, .. } => {
                        events
                            .iter()
                            .map(|e| e.occurred_at)
                            .max()
                            .is_some_and(|newest| newest < horizon)
                            && !events.iter().any(|e| {
                                ["BDE", "BDI", "BDR", "ENTREGUE"].contains(&e.code.as_str())
                            })
                    }
                    _ => false,
                })
                .count();
            ctx.health.record(carrier, CallKind::Ok, None, stale);
            for (code, answer) in &answers {
                if let ObjectResult::Unrecognised { message } = answer {
                    metrics::counter!("carrier_unrecognised_answers_total", "carrier" => carrier.as_str())
                        .increment(1);
                    tracing::warn!(%carrier, tracking_code = %code, message = %message,
                        "The carrier answered this code with something we do not recognise; the code stays polled and the other codes of the call go on.");
                }
            }
            for p in batch {
                let answer = answers
                    .get(&p.request.tracking_code)
                    .cloned()
                    .ok_or_else(|| FetchError::Transient {
                        reason: format!("the answer lacked {}", p.request.tracking_code),
                        retry_after: None,
                    });
                let _ = p.reply.send(answer);
            }
            answers.clear();
        }
        Err(e) => {
            ctx.health.record(carrier, CallKind::of(&e), Some(&e), 0);
            if let FetchError::Malformed {
                reason,
                http_status,
                body,
            } = &e
            {
                // The client already redacted it; this keeps the table safe whatever a client returns (no
                // secret-shaped text, no NUL that PostgreSQL refuses, a bounded size).
                let body = redact::keepable(body);
                let reason = redact::keepable(reason);
                let snippet: String = body.chars().take(500).collect();
                tracing::error!(%carrier, reason = %reason, body = %snippet, "The carrier's answer could not be read; it is kept in carrier_responses.");
                if let Some(pool) = &ctx.pool {
                    let requests: Vec<&TrackingRequest> =
                        batch.iter().map(|p| &p.request).collect();
                    let stored = sqlx::query(
                        "INSERT INTO carrier_responses (carrier, requests, http_status, body, error) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(carrier.as_str())
                    .bind(json!(requests))
                    .bind(http_status.map(i32::from))
                    .bind(&body)
                    .bind(&reason)
                    .execute(pool)
                    .await;
                    if let Err(db) = stored {
                        tracing::error!(error = %db, "Could not keep the unreadable answer.");
                    }
                }
            }
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let health = Health::new(&["rabbitmq", "postgres"]);
    boot::serve_ops("127.0.0.1:9101", health.clone(), shutdown.clone()).await?;
    let pool = tracking_store::pool(&settings.db)?;
    tokio::spawn(boot::watch_database(
        pool.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let clients = settings.carriers.clients(Some(&pool))?;
    if !clients.contains_key(&Carrier::Correios) {
        tracing::warn!(
            "CORREIOS_USER and CORREIOS_ACCESS_CODE are not set: Correios requests will be held for retry."
        );
    }
    let configured: Vec<Carrier> = clients.keys().copied().collect();
    let carrier_health = CarrierHealth::new(
        health.clone(),
        settings.health.clone(),
        Some(pool.clone()),
        &configured,
    );
    let batchers = clients
        .into_iter()
        .map(|(carrier, client)| {
            let ctx = BatchContext {
                client,
                health: carrier_health.clone(),
                pool: Some(pool.clone()),
                stale_after: settings.health.stale_after,
            };
            (
                carrier,
                Batcher::start(
                    ctx,
                    settings.linger,
                    settings.calls_in_flight,
                    shutdown.clone(),
                ),
            )
        })
        .collect();
    let publisher = Publisher::new(settings.amqp.clone(), "fetcher");
    let handler = Arc::new(Fetcher {
        batchers,
        publisher: publisher.clone(),
        retry_base: settings.retry_base,
        retry_max: settings.retry_max,
    });
    run_consumer(
        settings.amqp,
        TRACKING_REQUESTS,
        publisher.clone(),
        handler,
        health,
        shutdown,
    )
    .await;
    publisher.close().await;
    Ok(())
}

pub struct Fetcher {
    batchers: HashMap<Carrier, Batcher>,
    publisher: Publisher,
    retry_base: Duration,
    retry_max: Duration,
}

/// What one code's answer becomes: a carrier update to publish, or the reason to park the request.
pub fn update_for(request: TrackingRequest, answer: ObjectResult) -> Result<CarrierUpdate, String> {
    let (events, estimated_delivery, carrier_message) = match answer {
        ObjectResult::Found {
            events,
            estimated_delivery,
        } => (events, estimated_delivery, None),
        // Kept and polled: the normalizer records the message (and, for SRO-009, that the shipment is not
        // trackable with this account: `tracking_carriers::not_trackable_reason`).
        ObjectResult::NotYet { message }
        | ObjectResult::NotTrackable { message }
        | ObjectResult::Unrecognised { message } => (Vec::new(), None, Some(message)),
        ObjectResult::Refused { message } => {
            return Err(format!(
                "the carrier refused {}: {message}",
                request.tracking_code
            ));
        }
    };
    Ok(CarrierUpdate {
        carrier: request.carrier,
        tracking_code: request.tracking_code.clone(),
        source: Source::Carrier,
        request: Some(request),
        fetched_at: Utc::now(),
        estimated_delivery,
        carrier_message,
        events,
    })
}

/// Publishes a carrier update to `carrier.events` (routing key `{carrier}.{code}`) and waits for the confirm.
pub async fn publish_update(publisher: &Publisher, update: &CarrierUpdate) -> anyhow::Result<()> {
    let body = serde_json::to_vec(update)?;
    let key = format!("{}.{}", update.carrier, update.tracking_code);
    publisher
        .publish(Outgoing::json(CARRIER_EVENTS, &key, &body))
        .await?;
    Ok(())
}

impl Handler for Fetcher {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let request = match TrackingRequest::parse(&msg.body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("invalid tracking request: {e}"),
                };
            }
        };
        let retry = |reason: String, after: Option<Duration>| Outcome::Retry {
            after: after.unwrap_or_default().max(backoff(
                msg.attempt,
                self.retry_base,
                self.retry_max,
            )),
            reason,
        };
        let Some(batcher) = self.batchers.get(&request.carrier) else {
            let setting = match request.carrier {
                Carrier::Correios => "CORREIOS_USER and CORREIOS_ACCESS_CODE",
                Carrier::Jadlog => "JADLOG_TOKEN",
            };
            return retry(
                format!("{} is not configured ({setting})", request.carrier),
                None,
            );
        };
        let (tx, rx) = oneshot::channel();
        if batcher
            .tx
            .send(Pending {
                request: request.clone(),
                reply: tx,
            })
            .await
            .is_err()
        {
            return retry("the fetcher is stopping".into(), None);
        }
        let answer = match rx.await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let after = match &e {
                    FetchError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                return retry(e.to_string(), after);
            }
            Err(_) => return retry("the carrier call was cut short".into(), None),
        };
        let update = match update_for(request, answer) {
            Ok(u) => u,
            Err(reason) => return Outcome::Park { reason },
        };
        match publish_update(&self.publisher, &update).await {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Retry {
                after: Duration::from_secs(1),
                reason: format!("publishing the carrier's events: {e}"),
            },
        }
    }
}

/// What [`replay_responses`] did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub replayed: usize,
    pub published: usize,
    pub still_unreadable: usize,
}

/// Reads the kept unreadable answers again with today's parsers and publishes their events (the normalizer
/// deduplicates whatever the retried requests already brought). Answers that still cannot be read keep their row,
/// with the new error in `replay_error`.
pub async fn replay_responses(
    pool: &PgPool,
    clients: &BTreeMap<Carrier, Arc<dyn CarrierClient>>,
    publisher: &Publisher,
) -> anyhow::Result<ReplayReport> {
    let rows: Vec<(i64, String, serde_json::Value, String)> = sqlx::query_as(
        "SELECT id, carrier, requests, body FROM carrier_responses WHERE replayed_at IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let mut report = ReplayReport::default();
    for (id, carrier, requests, body) in rows {
        let carrier: Carrier = carrier
            .parse()
            .map_err(|e| anyhow::anyhow!("carrier_responses {id}: {e}"))?;
        let Some(client) = clients.get(&carrier) else {
            anyhow::bail!("carrier_responses {id} is for {carrier}, which is not configured here");
        };
        let requests: Vec<TrackingRequest> = serde_json::from_value(requests)?;
        let codes: Vec<_> = requests.iter().map(|r| r.tracking_code.clone()).collect();
        match client.parse(&codes, &body) {
            Ok(answers) => {
                for request in requests {
                    let Some(answer) = answers.get(&request.tracking_code).cloned() else {
                        continue;
                    };
                    if let Ok(update) = update_for(request, answer) {
                        publish_update(publisher, &update).await?;
                        report.published += 1;
                    }
                }
                sqlx::query("UPDATE carrier_responses SET replayed_at = now(), replay_error = NULL WHERE id = $1")
                    .bind(id)
                    .execute(pool)
                    .await?;
                report.replayed += 1;
            }
            Err(e) => {
                sqlx::query("UPDATE carrier_responses SET replay_error = $2 WHERE id = $1")
                    .bind(id)
                    .bind(e.to_string())
                    .execute(pool)
                    .await?;
                report.still_unreadable += 1;
            }
        }
    }
    Ok(report)
}
