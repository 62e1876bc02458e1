//! Carrier health: what the fetcher's calls say about each carrier integration.

use super::settings::HealthSettings;
use serde_json::json;
use sqlx::PgPool;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracking_carriers::FetchError;
use tracking_domain::{Carrier, CarrierState as State};
use tracking_runtime::ops::Health;

/// One call's outcome, as the health counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallKind {
    Ok,
    Auth,
    HttpError,
    Timeout,
    Unreadable,
}

impl CallKind {
    pub(super) fn of(e: &FetchError) -> Self {
        match e {
            FetchError::Transient { .. } => CallKind::HttpError,
            FetchError::Timeout(_) => CallKind::Timeout,
            FetchError::Auth(_) => CallKind::Auth,
            FetchError::Malformed { .. } => CallKind::Unreadable,
        }
    }
}

struct Tracked {
    state: State,
    reason: Option<String>,
    /// Recent calls (time, kind) within the window; stale codes seen (time).
    calls: VecDeque<(Instant, CallKind)>,
    stale: VecDeque<Instant>,
    consecutive_failures: usize,
}

impl Default for Tracked {
    fn default() -> Self {
        Self {
            state: State::Ok,
            reason: None,
            calls: VecDeque::new(),
            stale: VecDeque::new(),
            consecutive_failures: 0,
        }
    }
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
    states: Arc<Mutex<BTreeMap<Carrier, Tracked>>>,
}

impl CarrierHealth {
    pub(super) fn new(
        health: Health,
        settings: HealthSettings,
        pool: Option<PgPool>,
        configured: &[Carrier],
    ) -> Self {
        let mut states = BTreeMap::new();
        for c in Carrier::ALL {
            let mut s = Tracked::default();
            if !configured.contains(&c) {
                // The primary carrier is always listed (its requests are held while it has no credentials);
                // others once configured.
                if c != tracking_carriers::PRIMARY {
                    continue;
                }
                s.state = State::Broken;
                s.reason = Some(format!(
                    "{} are not set",
                    tracking_carriers::credential_settings(c)
                ));
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

    pub(super) fn record(
        &self,
        carrier: Carrier,
        kind: CallKind,
        error: Option<&FetchError>,
        stale: usize,
    ) {
        let now = Instant::now();
        let (before, after, reason, counters) = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let s = states.entry(carrier).or_default();
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
                (CallKind::Auth, Some(e)) => (State::Broken, Some(format!("authentication: {e}"))),
                (CallKind::Unreadable, Some(e)) => {
                    (State::Broken, Some(format!("unreadable answer: {e}")))
                }
                (_, Some(e)) if s.consecutive_failures >= self.settings.broken_after => (
                    State::Broken,
                    Some(format!(
                        "{} calls in a row failed; last: {e}",
                        s.consecutive_failures
                    )),
                ),
                (_, Some(e)) => (State::Degraded, Some(e.to_string())),
                _ => {
                    let failed = s.calls.iter().filter(|(_, k)| *k != CallKind::Ok).count();
                    if failed > 0 {
                        (
                            State::Degraded,
                            Some(format!(
                                "{failed} failed call(s) in the last {} s",
                                self.settings.window.as_secs()
                            )),
                        )
                    } else {
                        (State::Ok, None)
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
                State::Broken => {
                    tracing::error!(%carrier, reason = reason.as_deref().unwrap_or(""),
                    "Carrier integration is BROKEN: its requests are held for retry until an operator fixes the cause.")
                }
                State::Degraded => {
                    tracing::warn!(%carrier, reason = reason.as_deref().unwrap_or(""), "Carrier integration is degraded.")
                }
                State::Ok => tracing::info!(%carrier, "Carrier integration is ok again."),
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
                let stored = tracking_store::carrier_health::record(
                    &pool,
                    carrier,
                    after,
                    reason.as_deref(),
                    &counters,
                )
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
            let mut entry = json!({ "state": s.state.as_str() });
            if let Some(r) = &s.reason {
                entry["reason"] = json!(r);
            }
            section.insert(carrier.as_str().into(), entry);
            for state in State::ALL {
                metrics::gauge!("carrier_state", "carrier" => carrier.as_str(), "state" => state.as_str())
                    .set(if state == s.state { 1.0 } else { 0.0 });
            }
        }
        self.health
            .set_section("carriers", serde_json::Value::Object(section));
    }
}
