//! Carrier health: what the fetcher's calls say about each carrier account (a carrier's integration as one set of
//! credentials sees it). One store's revoked credentials make its account broken, never the other accounts.

use super::accounts::AccountId;
use super::settings::HealthSettings;
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracking_carriers::FetchError;
use tracking_domain::{Carrier, CarrierState as State, StoreName};
use tracking_runtime::ops::Health;
use tracking_store::Db;

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
    /// The stores whose calls this account makes (none for a carrier listed without credentials).
    stores: Vec<StoreName>,
    /// When the account's credentials or access were last refused, while that is its state: its requests are
    /// held without a call until `CARRIER_AUTH_HOLD_MS` after it.
    refused_at: Option<Instant>,
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
            stores: Vec::new(),
            refused_at: None,
            calls: VecDeque::new(),
            stale: VecDeque::new(),
            consecutive_failures: 0,
        }
    }
}

/// Per-account health: counters over a window, a state (`ok`, `degraded`, `broken`) on `/health` (each carrier's
/// worst account, and each account with its stores under `accounts`), the `carrier_state` gauge (labels `carrier`,
/// `account`, `stores`, `state`), the `carrier_health` table (per carrier) and `carrier_account_health` (per
/// account), and an error log line naming the account and its stores when one turns broken.
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
    pool: Option<Db>,
    states: Arc<Mutex<BTreeMap<AccountId, Tracked>>>,
    /// `CARRIER_AUTH_HOLD_MS`.
    auth_hold: Duration,
}

/// The entry a carrier without any account is listed under (the primary carrier, broken: no credentials).
fn unconfigured(carrier: Carrier) -> AccountId {
    AccountId {
        carrier,
        key: String::new(),
    }
}

impl CarrierHealth {
    pub(super) fn new(
        health: Health,
        settings: HealthSettings,
        pool: Option<Db>,
        configured: &[(AccountId, Vec<StoreName>)],
        auth_hold: Duration,
    ) -> Self {
        let mut states = BTreeMap::new();
        for (id, stores) in configured {
            states.insert(
                id.clone(),
                Tracked {
                    stores: stores.clone(),
                    ..Tracked::default()
                },
            );
        }
        // The primary carrier is always listed (its requests are held while it has no credentials); others once
        // configured.
        let primary = tracking_carriers::PRIMARY;
        if !configured.iter().any(|(id, _)| id.carrier == primary) {
            states.insert(
                unconfigured(primary),
                Tracked {
                    state: State::Broken,
                    reason: Some(format!(
                        "{} are not set",
                        tracking_carriers::credential_settings(primary)
                    )),
                    ..Tracked::default()
                },
            );
        }
        let me = Self {
            health,
            settings,
            pool,
            states: Arc::new(Mutex::new(states)),
            auth_hold,
        };
        me.show();
        me
    }

    /// Why `account`'s calls are held without being made: its credentials or access were refused less than
    /// `CARRIER_AUTH_HOLD_MS` ago. Once the hold is over, the first caller gets `None` and makes the one probing
    /// call; the hold starts again for everyone else meanwhile (and goes on if the probe is refused too).
    pub(super) fn held(&self, account: &AccountId) -> Option<String> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let s = states.get_mut(account)?;
        let at = s.refused_at?;
        if at.elapsed() >= self.auth_hold {
            s.refused_at = Some(Instant::now());
            return None;
        }
        Some(format!(
            "account {account} is held after its access was refused ({}); one call tries again every {} ms",
            s.reason.as_deref().unwrap_or("no reason"),
            self.auth_hold.as_millis()
        ))
    }

    pub(super) fn record(
        &self,
        account: &AccountId,
        kind: CallKind,
        error: Option<&FetchError>,
        stale: usize,
        shape: &Shape,
    ) {
        let carrier = account.carrier;
        let now = Instant::now();
        let (before, after, reason, counters, stores, overall) = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let s = states.entry(account.clone()).or_default();
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
            s.refused_at = (kind == CallKind::Auth).then_some(now);
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
            let stores = join_stores(&s.stores);
            let overall = worst(&states, carrier);
            (before, state, reason, counters, stores, overall)
        };
        if before != after {
            match after {
                State::Broken => {
                    tracing::error!(%carrier, %account, %stores, reason = reason.as_deref().unwrap_or(""),
                    "Carrier account is BROKEN: its stores' requests are held for retry until an operator fixes the cause; other accounts go on.")
                }
                State::Degraded => {
                    tracing::warn!(%carrier, %account, %stores, reason = reason.as_deref().unwrap_or(""), "Carrier account is degraded.")
                }
                State::Ok => {
                    tracing::info!(%carrier, %account, %stores, "Carrier account is ok again.")
                }
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
            // Labels as before stores existed (dashboards and tests read them so); the account's errors show in
            // its health counters and `carrier_state`.
            metrics::counter!("carrier_errors_total", "carrier" => carrier.as_str(), "kind" => label)
                .increment(1);
        }
        if stale > 0 {
            metrics::counter!("carrier_stale_codes_total", "carrier" => carrier.as_str())
                .increment(stale as u64);
        }
        self.show();
        if let Some(pool) = self.pool.clone() {
            let key = account.key.clone();
            tokio::spawn(async move {
                let (state, why) = overall;
                let stored = tracking_store::carrier_health::record(
                    &pool,
                    carrier,
                    state,
                    why.as_deref(),
                    &counters,
                )
                .await;
                let stored = match stored {
                    Ok(()) => {
                        tracking_store::carrier_health::record_account(
                            &pool,
                            tracking_store::carrier_health::AccountHealth {
                                carrier,
                                account: &key,
                                stores: &stores,
                                state: after,
                                reason: reason.as_deref(),
                                counters: &counters,
                            },
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
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
    pub(super) fn changed_shape(&self, account: &AccountId, shape: &Shape) -> Option<String> {
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
                if let Some(s) = states.get(account) {
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
        self.health.set_section("carriers", section(&states));
        for (id, s) in states.iter() {
            for state in State::ALL {
                let value = if state == s.state { 1.0 } else { 0.0 };
                if id.key.is_empty() {
                    metrics::gauge!("carrier_state", "carrier" => id.carrier.as_str(), "state" => state.as_str())
                        .set(value);
                } else {
                    metrics::gauge!("carrier_state", "carrier" => id.carrier.as_str(), "state" => state.as_str(),
                        "account" => id.key.clone(), "stores" => join_stores(&s.stores))
                    .set(value);
                }
            }
        }
    }
}

/// The stores of an account, as labels and logs show them: `loja-a,loja-b`.
fn join_stores(stores: &[StoreName]) -> String {
    stores
        .iter()
        .map(StoreName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// A carrier's worst account, with its reason (naming the account when the carrier has several).
fn worst(states: &BTreeMap<AccountId, Tracked>, carrier: Carrier) -> (State, Option<String>) {
    let rank = |s: State| match s {
        State::Ok => 0,
        State::Degraded => 1,
        State::Broken => 2,
    };
    let mine: Vec<(&AccountId, &Tracked)> = states
        .iter()
        .filter(|(id, _)| id.carrier == carrier)
        .collect();
    let several = mine.len() > 1;
    mine.into_iter()
        .max_by_key(|(_, s)| rank(s.state))
        .map_or((State::Ok, None), |(id, s)| {
            let reason = s.reason.as_ref().map(|r| {
                if several {
                    format!("account {id} (stores {}): {r}", join_stores(&s.stores))
                } else {
                    r.clone()
                }
            });
            (s.state, reason)
        })
}

/// `/health`'s `carriers`: each carrier's worst state and reason (as before stores existed), and its accounts.
fn section(states: &BTreeMap<AccountId, Tracked>) -> serde_json::Value {
    let mut section = serde_json::Map::new();
    for carrier in Carrier::ALL {
        if !states.keys().any(|id| id.carrier == carrier) {
            continue;
        }
        let (state, reason) = worst(states, carrier);
        let mut entry = json!({ "state": state.as_str() });
        if let Some(r) = reason {
            entry["reason"] = json!(r);
        }
        let mut accounts = serde_json::Map::new();
        for (id, s) in states
            .iter()
            .filter(|(id, _)| id.carrier == carrier && !id.key.is_empty())
        {
            let mut a = json!({ "state": s.state.as_str(), "stores": s.stores });
            if let Some(r) = &s.reason {
                a["reason"] = json!(r);
            }
            accounts.insert(id.key.clone(), a);
        }
        entry["accounts"] = serde_json::Value::Object(accounts);
        section.insert(carrier.as_str().into(), entry);
    }
    serde_json::Value::Object(section)
}
