//! The fetcher: takes tracking requests, asks the carrier, and publishes what the carrier said to `carrier.events`.
//!
//! - A request that is not valid (not JSON, a field missing or wrong, a carrier that cannot be detected) is parked
//!   in `tracking.requests.dead` with the reason.
//! - The carrier's answer per code: events (or none yet: `SRO-020`) → published, then acked; a refusal of the code
//!   (`SRO-019`, `SRO-009`) → parked with the carrier's message.
//! - A carrier failure: transient (timeouts, 429, 5xx) → retried later through the delay queues; credentials
//!   refused or an answer we cannot read → the carrier is marked `broken` (an error log line, `/health`, a metric)
//!   and the request is retried later, so that nothing is lost while an operator fixes the cause.

use crate::{backoff, boot};
use chrono::Utc;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings};
use tracking_carriers::{FetchError, ObjectResult};
use tracking_domain::{Carrier, CarrierUpdate, Source, TrackingRequest};
use tracking_runtime::amqp::topology::{CARRIER_EVENTS, TRACKING_REQUESTS};
use tracking_runtime::amqp::{
    AmqpSettings, Handler, Incoming, Outcome, Outgoing, Publisher, run_consumer,
};
use tracking_runtime::ops::Health;
use tracking_runtime::settings::{self, SettingsError};

pub struct Settings {
    pub amqp: AmqpSettings,
    pub correios: Option<CorreiosSettings>,
    /// `CARRIER_RETRY_BASE_MS` (default 5000): the first delay after a carrier failure; it doubles per attempt.
    pub retry_base: Duration,
    /// `CARRIER_RETRY_MAX_MS` (default 600000): the cap of that delay.
    pub retry_max: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let tz_name = settings::var_or("CARRIER_TIME_ZONE", "America/Sao_Paulo");
        let time_zone = tz_name
            .parse::<chrono_tz::Tz>()
            .map_err(|e| SettingsError::new("CARRIER_TIME_ZONE", e.to_string()))?;
        let correios = match (
            settings::var("CORREIOS_USER"),
            settings::var("CORREIOS_ACCESS_CODE"),
        ) {
            (Some(user), Some(code)) => Some(CorreiosSettings {
                base_url: settings::var_or("CORREIOS_BASE_URL", "https://api.correios.com.br"),
                user,
                access_code: code.into(),
                postage_card: settings::var("CORREIOS_POSTAGE_CARD"),
                timeout: settings::millis("CORREIOS_TIMEOUT_MS", 30_000)?,
                time_zone,
            }),
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
        Ok(Self {
            amqp: AmqpSettings::from_env()?,
            correios,
            retry_base: settings::millis("CARRIER_RETRY_BASE_MS", 5_000)?,
            retry_max: settings::millis("CARRIER_RETRY_MAX_MS", 600_000)?,
        })
    }
}

/// Each carrier's state (`ok`, `degraded`, `broken`) and why.
type CarrierStates = BTreeMap<Carrier, (&'static str, Option<String>)>;

/// Per-carrier state for `/health` and the `carrier_state` gauge.
#[derive(Clone)]
pub struct CarrierHealth {
    health: Health,
    states: Arc<Mutex<CarrierStates>>,
}

impl CarrierHealth {
    fn new(health: Health, configured: &[Carrier]) -> Self {
        // Correios is always listed (requests for it are held while it has no credentials); others once configured.
        let mut states = BTreeMap::new();
        for c in Carrier::ALL {
            if configured.contains(&c) {
                states.insert(c, ("ok", None));
            } else if c == Carrier::Correios {
                let reason = "CORREIOS_USER and CORREIOS_ACCESS_CODE are not set".to_owned();
                states.insert(c, ("broken", Some(reason)));
            }
        }
        let me = Self {
            health,
            states: Arc::new(Mutex::new(states)),
        };
        me.publish();
        me
    }

    fn set(&self, carrier: Carrier, state: &'static str, reason: Option<String>) {
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let before = states.get(&carrier).map(|s| s.0);
        if before != Some(state) {
            match state {
                "broken" => tracing::error!(%carrier, reason = reason.as_deref().unwrap_or(""),
                    "Carrier integration is BROKEN: requests for it are being held for retry until an operator fixes the cause."),
                "degraded" => {
                    tracing::warn!(%carrier, reason = reason.as_deref().unwrap_or(""), "Carrier integration is degraded.")
                }
                _ => tracing::info!(%carrier, "Carrier integration is ok again."),
            }
        }
        states.insert(carrier, (state, reason));
        drop(states);
        self.publish();
    }

    fn publish(&self) {
        let Ok(states) = self.states.lock() else {
            return;
        };
        let mut section = serde_json::Map::new();
        for (carrier, (state, reason)) in states.iter() {
            let mut entry = json!({ "state": state });
            if let Some(r) = reason {
                entry["reason"] = json!(r);
            }
            section.insert(carrier.as_str().into(), entry);
            for s in ["ok", "degraded", "broken"] {
                metrics::gauge!("carrier_state", "carrier" => carrier.as_str(), "state" => s)
                    .set(if s == *state { 1.0 } else { 0.0 });
            }
        }
        self.health
            .set_section("carriers", serde_json::Value::Object(section));
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let health = Health::new(&["rabbitmq"]);
    boot::serve_ops("127.0.0.1:9101", health.clone(), shutdown.clone()).await?;
    let correios = match settings.correios {
        Some(s) => Some(CorreiosClient::new(s)?),
        None => {
            tracing::warn!(
                "CORREIOS_USER and CORREIOS_ACCESS_CODE are not set: Correios requests will be held for retry."
            );
            None
        }
    };
    let configured: Vec<Carrier> = correios.iter().map(|_| Carrier::Correios).collect();
    let publisher = Publisher::new(settings.amqp.clone(), "fetcher");
    let handler = Arc::new(Fetcher {
        correios,
        publisher: publisher.clone(),
        carriers: CarrierHealth::new(health.clone(), &configured),
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
    correios: Option<CorreiosClient>,
    publisher: Publisher,
    carriers: CarrierHealth,
    retry_base: Duration,
    retry_max: Duration,
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
            after: after.unwrap_or_else(|| backoff(msg.attempt, self.retry_base, self.retry_max)),
            reason,
        };
        let client = match request.carrier {
            Carrier::Correios => match &self.correios {
                Some(c) => c,
                None => return retry("Correios credentials are not configured".into(), None),
            },
            Carrier::Jadlog => {
                return Outcome::Park {
                    reason: "the jadlog client is not in this version; replay once it is".into(),
                };
            }
        };
        let started = std::time::Instant::now();
        let result = client
            .track(std::slice::from_ref(&request.tracking_code))
            .await;
        metrics::histogram!("carrier_call_seconds", "carrier" => request.carrier.as_str())
            .record(started.elapsed());
        let mut answers = match result {
            Ok(a) => {
                self.carriers.set(request.carrier, "ok", None);
                a
            }
            Err(e) => {
                let kind = match &e {
                    FetchError::Transient { .. } => "transient",
                    FetchError::Auth(_) => "auth",
                    FetchError::Malformed { .. } => "malformed",
                };
                metrics::counter!("carrier_errors_total", "carrier" => request.carrier.as_str(), "kind" => kind).increment(1);
                return match e {
                    FetchError::Transient {
                        reason,
                        retry_after,
                    } => {
                        self.carriers
                            .set(request.carrier, "degraded", Some(reason.clone()));
                        retry(reason, retry_after)
                    }
                    FetchError::Auth(reason) => {
                        self.carriers.set(
                            request.carrier,
                            "broken",
                            Some(format!("authentication: {reason}")),
                        );
                        retry(format!("authentication refused: {reason}"), None)
                    }
                    FetchError::Malformed { reason, body } => {
                        self.carriers.set(
                            request.carrier,
                            "broken",
                            Some(format!("unreadable answer: {reason}")),
                        );
                        tracing::error!(reason = %reason, body = %body, "The carrier's answer could not be read.");
                        retry(format!("unreadable carrier answer: {reason}"), None)
                    }
                };
            }
        };
        let (events, estimated_delivery, carrier_message) =
            match answers.remove(&request.tracking_code) {
                Some(ObjectResult::Found {
                    events,
                    estimated_delivery,
                }) => (events, estimated_delivery, None),
                Some(ObjectResult::NotYet { message }) => (Vec::new(), None, Some(message)),
                Some(ObjectResult::Refused { message }) => {
                    return Outcome::Park {
                        reason: format!("the carrier refused {}: {message}", request.tracking_code),
                    };
                }
                None => {
                    return retry(
                        format!("the carrier's answer lacked {}", request.tracking_code),
                        None,
                    );
                }
            };
        let update = CarrierUpdate {
            carrier: request.carrier,
            tracking_code: request.tracking_code.clone(),
            source: Source::Carrier,
            request: Some(request),
            fetched_at: Utc::now(),
            estimated_delivery,
            carrier_message,
            events,
        };
        let body = match serde_json::to_vec(&update) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("cannot encode the carrier update: {e}"),
                };
            }
        };
        let key = format!("{}.{}", update.carrier, update.tracking_code);
        match self
            .publisher
            .publish(Outgoing::json(CARRIER_EVENTS, &key, &body))
            .await
        {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Retry {
                after: Duration::from_secs(1),
                reason: format!("publishing the carrier's events: {e}"),
            },
        }
    }
}
