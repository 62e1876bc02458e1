//! What a publisher's `/health` shows of the far ends it delivers to: a `far_ends` section with, per destination
//! (`email`, `marketplace:{name}`), `state` `ok` or `failing`, and while failing since when and the last error.
//!
//! Informational, as the fetcher's `carriers`: a far end that is down does not make the worker unhealthy
//! (restarting the worker would not bring the far end back, and the emails wait in the delay queues), but an
//! operator asking `/health` why nothing goes out reads it there, beside the `EmailFailures` and
//! `MarketplaceFailures` alerts.

use crate::deliver::Attempt;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tracking_domain::text;
use tracking_runtime::ops::Health;

/// The state of one destination.
#[derive(Default)]
struct FarEnd {
    /// Since when every try failed (transiently); `None` while it answers.
    failing_since: Option<DateTime<Utc>>,
    /// The last transient failure's reason (cleaned and cut at [`text::LONG`] characters), while failing.
    error: Option<String>,
}

/// The far ends of one publisher process. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct FarEnds {
    health: Health,
    states: Arc<Mutex<BTreeMap<String, FarEnd>>>,
}

impl FarEnds {
    /// Shows an empty `far_ends` section until the first delivery.
    pub fn new(health: Health) -> FarEnds {
        let far_ends = FarEnds {
            health,
            states: Arc::default(),
        };
        far_ends.show(&BTreeMap::new());
        far_ends
    }

    /// What the last try of a delivery to `destination` says of it: it answered (done, or a permanent refusal of
    /// this one message), or it failed transiently. A skipped delivery says nothing. The section is rebuilt only
    /// when something shows differently: a far end that answers again, as almost every delivery does, costs a
    /// lookup.
    pub fn record(&self, destination: &str, attempt: &Attempt) {
        let failure = match attempt {
            Attempt::Done(_) | Attempt::Permanent(_) => None,
            Attempt::Transient { reason, .. } => Some(text::clean(reason, text::LONG)),
            Attempt::Skipped(_) => return,
        };
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        match (states.get_mut(destination), failure) {
            (Some(state), None) if state.failing_since.is_none() => return,
            (Some(state), None) => *state = FarEnd::default(),
            (Some(state), Some(error)) => {
                state.failing_since.get_or_insert_with(Utc::now);
                state.error = Some(error);
            }
            (None, failure) => {
                let state = FarEnd {
                    failing_since: failure.as_ref().map(|_| Utc::now()),
                    error: failure,
                };
                states.insert(destination.to_owned(), state);
            }
        }
        self.show(&states);
    }

    fn show(&self, states: &BTreeMap<String, FarEnd>) {
        let section = states
            .iter()
            .map(|(destination, s)| {
                let entry = match (&s.failing_since, &s.error) {
                    (Some(since), error) => json!({
                        "state": "failing",
                        "since": since.to_rfc3339_opts(SecondsFormat::Secs, true),
                        "error": error,
                    }),
                    (None, _) => json!({ "state": "ok" }),
                };
                (destination.clone(), entry)
            })
            .collect();
        self.health.set_section("far_ends", Value::Object(section));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn section(health: &Health) -> Value {
        health.report().1["far_ends"].clone()
    }

    #[test]
    fn a_far_end_is_failing_from_its_first_transient_failure_until_it_answers() {
        let health = Health::new(&[]);
        let far_ends = FarEnds::new(health.clone());
        assert_eq!(section(&health), json!({}));
        let down = |reason: &str| Attempt::Transient {
            reason: reason.into(),
            after: None,
        };
        far_ends.record("email", &down("connection refused"));
        let first = section(&health)["email"].clone();
        assert_eq!(first["state"], "failing");
        far_ends.record("email", &down("timed out"));
        let second = section(&health)["email"].clone();
        assert_eq!(second["since"], first["since"], "failing since the first");
        assert_eq!(second["error"], "timed out", "the last error");
        far_ends.record("email", &down(&"x".repeat(5000)));
        let long = section(&health)["email"]["error"]
            .as_str()
            .unwrap()
            .chars()
            .count();
        assert!(long <= text::LONG, "{long} characters");
        far_ends.record("email", &Attempt::Skipped("superseded".into()));
        assert_eq!(section(&health)["email"]["state"], "failing");
        far_ends.record("marketplace:acme", &Attempt::Permanent("400".into()));
        far_ends.record("email", &Attempt::Done("<id@x>".into()));
        assert_eq!(
            section(&health),
            json!({"email": {"state": "ok"}, "marketplace:acme": {"state": "ok"}})
        );
        assert!(health.is_ok(), "a failing far end is informational");
    }
}
