//! What a process reports about itself: the components it needs (up, down with a cause, or blocked by the far end)
//! and informational sections, which the runtime's ops server answers as `GET /health`.
//!
//! Each component is also the gauge `health_component_up{component}` (1 up, 0 down), through the `metrics` facade:
//! the recorder and the server are the runtime's (`tracking_runtime::ops`), so that the store's database watch can
//! report here without linking a broker or an HTTP server.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a worker reports about itself. Cheap to clone; all clones share state.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<HealthState>>,
}

#[derive(Default)]
struct HealthState {
    components: BTreeMap<&'static str, bool>,
    /// Why a component is down, when known; cleared when it comes up.
    errors: BTreeMap<&'static str, String>,
    /// Components blocked by the far end (the broker's reason), shown as `blocked` whatever their up/down.
    blocked: BTreeMap<&'static str, String>,
    sections: Map<String, Value>,
}

impl Health {
    /// A health with the named components, all down until set up.
    pub fn new(components: &[&'static str]) -> Self {
        let h = Health::default();
        for c in components {
            h.set(c, false);
        }
        h
    }

    pub fn set(&self, component: &'static str, up: bool) {
        let mut shown = up;
        if let Ok(mut s) = self.inner.lock() {
            s.components.insert(component, up);
            if up {
                s.errors.remove(component);
            }
            shown = up && !s.blocked.contains_key(component);
        }
        gauge(component, shown);
    }

    /// The component is down, and why (shown under `errors` until it is up again). The text must hold no secret.
    pub fn set_down(&self, component: &'static str, why: &dyn std::fmt::Display) {
        if let Ok(mut s) = self.inner.lock() {
            s.components.insert(component, false);
            s.errors.insert(component, why.to_string());
        }
        gauge(component, false);
    }

    /// The component is blocked (`Some(reason)`: RabbitMQ refuses publishes) or no longer (`None`). While blocked
    /// it counts as down and shows as `"blocked"`, with the reason under `errors`; its up/down is kept apart.
    pub fn set_blocked(&self, component: &'static str, reason: Option<&str>) {
        let up = if let Ok(mut s) = self.inner.lock() {
            match reason {
                Some(r) => {
                    s.blocked.insert(component, r.to_owned());
                }
                None => {
                    s.blocked.remove(component);
                }
            }
            reason.is_none() && s.components.get(component).copied().unwrap_or(true)
        } else {
            false
        };
        gauge(component, up);
    }

    /// Whether the component is blocked now.
    pub fn is_blocked(&self, component: &str) -> bool {
        self.inner
            .lock()
            .map(|s| s.blocked.contains_key(component))
            .unwrap_or(false)
    }

    /// Sets every component's gauge again: components set before the recorder was installed (by the runtime's
    /// ops server, when it starts) were recorded nowhere.
    pub fn publish(&self) {
        if let Ok(s) = self.inner.lock() {
            for (component, up) in &s.components {
                gauge(component, *up && !s.blocked.contains_key(component));
            }
        }
    }

    /// An informational section (e.g. `carriers`) shown in `/health` without changing its status.
    pub fn set_section(&self, name: &str, value: Value) {
        if let Ok(mut s) = self.inner.lock() {
            s.sections.insert(name.to_owned(), value);
        }
    }

    /// Whether one component is up (a component never set counts as up; a blocked one is not up).
    pub fn is_up(&self, component: &str) -> bool {
        self.inner
            .lock()
            .map(|s| {
                s.components.get(component).copied().unwrap_or(true)
                    && !s.blocked.contains_key(component)
            })
            .unwrap_or(false)
    }

    pub fn is_ok(&self) -> bool {
        self.inner
            .lock()
            .map(|s| s.components.values().all(|up| *up) && s.blocked.is_empty())
            .unwrap_or(false)
    }

    pub fn report(&self) -> (bool, Value) {
        let Ok(s) = self.inner.lock() else {
            return (false, json!({"status": "unavailable"}));
        };
        let ok = s.components.values().all(|up| *up) && s.blocked.is_empty();
        let mut body = Map::new();
        body.insert(
            "status".into(),
            json!(if ok { "ok" } else { "unavailable" }),
        );
        let mut components: Map<String, Value> = s
            .components
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(if *v { "up" } else { "down" })))
            .collect();
        let mut errors: Map<String, Value> = s
            .errors
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        for (k, reason) in &s.blocked {
            components.insert((*k).to_owned(), json!("blocked"));
            errors.insert((*k).to_owned(), json!(format!("broker blocked: {reason}")));
        }
        body.insert("components".into(), Value::Object(components));
        if !errors.is_empty() {
            body.insert("errors".into(), Value::Object(errors));
        }
        for (k, v) in &s.sections {
            body.insert(k.clone(), v.clone());
        }
        (ok, Value::Object(body))
    }
}

fn gauge(component: &'static str, up: bool) {
    metrics::gauge!("health_component_up", "component" => component).set(if up {
        1.0
    } else {
        0.0
    });
}
