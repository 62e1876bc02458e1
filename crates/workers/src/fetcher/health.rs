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
    /// The answer read, but most of its objects were unrecognised: the carrier changed its answers' shape.
    Schema,
}

impl CallKind {
    pub(super) fn of(e: &FetchError) -> Self {
        match e {
            FetchError::Transient { .. } => CallKind::HttpError,
            FetchError::Timeout(_) => CallKind::Timeout,
            FetchError::Auth(_) => CallKind::Auth,
            FetchError::Malformed { .. } => CallKind::Unreadable,
            FetchError::Schema { .. } => CallKind::Schema,
        }
    }
}

/// What a call's answer held, for judging the carrier's answers over the window.
#[derive(Debug, Clone, Default)]
pub(super) struct Shape {
    /// Objects (codes) in the answer.
    pub objects: usize,
    /// Of those, the ones we did not recognise (`ObjectResult::Unrecognised`).
    pub unrecognised: usize,
    /// A few of their messages ([`tracking_carriers::unrecognised_sample`]).
    pub sample: String,
}

/// How many of a carrier's newest answered objects a small call is judged with.
const RECENT_OBJECTS: usize = 10;

impl Shape {
    pub(super) fn of(answers: &tracking_carriers::Answers) -> Self {
        let unrecognised = answers
            .values()
            .filter(|a| matches!(a, tracking_carriers::ObjectResult::Unrecognised { .. }))
            .count();
        Self {
            objects: answers.len(),
            unrecognised,
            sample: if unrecognised > 0 {
                tracking_carriers::unrecognised_sample(answers.values())
            } else {
                String::new()
            },
        }
    }
}

struct Tracked {
    state: State,
    reason: Option<String>,
    /// Recent calls (time, kind, objects answered, of which unrecognised) within the window; stale codes seen.
    calls: VecDeque<(Instant, CallKind, usize, usize)>,
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
///   first call after the change), or most of its objects were unrecognised ([`CallKind::Schema`]), or the last
///   call had unrecognised objects and so had most objects of the calls within the window (small calls judged
///   together: `tracking_carriers::shape_changed`), or `CARRIER_BROKEN_AFTER_FAILURES` calls in a row failed; no
///   credentials at all.
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
        shape: &Shape,
    ) {
        let now = Instant::now();
        let (before, after, reason, counters) = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let s = states.entry(carrier).or_default();
            s.calls
                .push_back((now, kind, shape.objects, shape.unrecognised));
            for _ in 0..stale {
                s.stale.push_back(now);
            }
            let horizon = now.checked_sub(self.settings.window).unwrap_or(now);
            while s.calls.front().is_some_and(|(t, ..)| *t < horizon) {
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
            let objects: usize = s.calls.iter().map(|c| c.2).sum();
            let unrecognised: usize = s.calls.iter().map(|c| c.3).sum();
            let (state, reason) = match (kind, error) {
                (CallKind::Auth, Some(e)) => (State::Broken, Some(format!("authentication: {e}"))),
                (CallKind::Unreadable | CallKind::Schema, Some(e)) => {
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
                    let failed = s.calls.iter().filter(|c| c.1 != CallKind::Ok).count();
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
            let count = |k: CallKind| s.calls.iter().filter(|c| c.1 == k).count();
            let counters = json!({
                "window_secs": self.settings.window.as_secs(),
                "calls": s.calls.len(),
                "auth_failures": count(CallKind::Auth),
                "http_errors": count(CallKind::HttpError),
                "timeouts": count(CallKind::Timeout),
                "unreadable": count(CallKind::Unreadable),
                "schema_changes": count(CallKind::Schema),
                "objects": objects,
                "unrecognised_objects": unrecognised,
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
            CallKind::Schema => "schema",
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

    /// Why this call's answer counts as a changed shape, if it does: most of its own objects were unrecognised,
    /// or, with the carrier's newest calls within the window (back to [`RECENT_OBJECTS`] objects), most of theirs
    /// ([`tracking_carriers::shape_changed`]). Small calls are thus judged together; a call with no unrecognised
    /// object never is, so a mended carrier's first good answer goes through.
    pub(super) fn changed_shape(&self, carrier: Carrier, shape: &Shape) -> Option<String> {
        if shape.unrecognised == 0 {
            return None;
        }
        let (objects, unrecognised, over) =
            if tracking_carriers::shape_changed(shape.objects, shape.unrecognised) {
                (
                    shape.objects,
                    shape.unrecognised,
                    "of the answer's".to_owned(),
                )
            } else {
                let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
                let horizon = Instant::now()
                    .checked_sub(self.settings.window)
                    .unwrap_or_else(Instant::now);
                let (mut objects, mut unrecognised) = (shape.objects, shape.unrecognised);
                if let Some(s) = states.get(&carrier) {
                    for (_, _, n, u) in s.calls.iter().rev().take_while(|c| c.0 >= horizon) {
                        if objects >= RECENT_OBJECTS {
                            break;
                        }
                        objects += n;
                        unrecognised += u;
                    }
                }
                if !tracking_carriers::shape_changed(objects, unrecognised) {
                    return None;
                }
                (
                    objects,
                    unrecognised,
                    format!("of the last {} s's newest", self.settings.window.as_secs()),
                )
            };
        Some(format!(
            "{unrecognised} {over} {objects} objects were not recognised, e.g. {}",
            shape.sample
        ))
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
