//! The fetcher's settings: carrier credentials and clients, request budgets, batching, retries and health.

use crate::boot;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings, MAX_BATCH};
use tracking_carriers::jadlog::{JadlogClient, JadlogSettings};
use tracking_carriers::{CallRetry, CarrierClient, DEFAULT_MAX_BODY_BYTES};
use tracking_domain::Carrier;
use tracking_runtime::amqp::AmqpSettings;
use tracking_runtime::settings::{self, SettingsError};

/// A carrier account's request budget: `rate` calls per second on average, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

pub struct CarrierSettings {
    /// The global Correios account (`CORREIOS_USER`, ...): the default store's, and that of every store of the
    /// stores file that names none.
    pub correios: Option<CorreiosSettings>,
    /// The global Jadlog token (`JADLOG_TOKEN`), used as [`CarrierSettings::correios`] is.
    pub jadlog: Option<JadlogSettings>,
    /// What every Correios account's client shares (base URL, timeout, batch, retries); its credentials are
    /// empty: a store's account fills them in.
    pub correios_common: CorreiosSettings,
    /// What every Jadlog account's client shares; its token is empty.
    pub jadlog_common: JadlogSettings,
    /// `CORREIOS_RATE_PER_SECOND` (default 5), `CORREIOS_BURST` (default 10).
    pub correios_rate: Rate,
    /// `JADLOG_RATE_PER_SECOND` (default 2), `JADLOG_BURST` (default 5).
    pub jadlog_rate: Rate,
}

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
    pub carriers: CarrierSettings,
    /// `STORES_FILE`: the stores served, each with its carrier accounts (else one default store).
    pub stores: tracking_domain::Stores,
    /// `CARRIER_AUTH_HOLD_MS` (default 60000): once an account's credentials or access were refused, its requests
    /// are held without a call for this long, then one call tries again: a refused account costs one call per
    /// hold, however many requests wait, instead of a retry storm the carrier may answer by blocking us.
    pub auth_hold: Duration,
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

/// A request budget read from `per_second` and `burst` (each a setting's name and its default); the names are
/// spelled out so that the settings test finds them.
fn rate(per_second: (&str, f64), burst: (&str, f64)) -> Result<Rate, SettingsError> {
    let r = Rate {
        per_second: settings::parse(per_second.0, per_second.1)?,
        burst: settings::parse(burst.0, burst.1)?,
    };
    if !(r.per_second.is_finite() && r.per_second > 0.0) {
        return Err(SettingsError::new(
            per_second.0,
            "must be a positive number",
        ));
    }
    if !(r.burst.is_finite() && r.burst >= 1.0) {
        return Err(SettingsError::new(burst.0, "must be at least 1"));
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
        let batch = settings::parse("CORREIOS_BATCH_SIZE", MAX_BATCH)?;
        if !(1..=MAX_BATCH).contains(&batch) {
            return Err(SettingsError::new(
                "CORREIOS_BATCH_SIZE",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        let correios_common = CorreiosSettings {
            base_url: settings::var_or("CORREIOS_BASE_URL", "https://api.correios.com.br"),
            user: String::new(),
            access_code: String::new().into(),
            postage_card: None,
            timeout: settings::millis("CORREIOS_TIMEOUT_MS", 30_000)?,
            time_zone,
            batch,
            retry: retry.clone(),
            max_body,
        };
        let jadlog_common = JadlogSettings {
            base_url: settings::var_or("JADLOG_BASE_URL", "https://www.jadlog.com.br"),
            token: String::new().into(),
            timeout: settings::millis("JADLOG_TIMEOUT_MS", 30_000)?,
            time_zone,
            batch: settings::parse("JADLOG_BATCH_SIZE", 50usize)?.max(1),
            retry: retry.clone(),
            max_body,
        };
        let correios = match (
            settings::var("CORREIOS_USER"),
            settings::var("CORREIOS_ACCESS_CODE"),
        ) {
            (Some(user), Some(code)) => Some(CorreiosSettings {
                user,
                access_code: code.into(),
                postage_card: settings::var("CORREIOS_POSTAGE_CARD"),
                ..correios_common.clone()
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
        let jadlog = settings::var("JADLOG_TOKEN").map(|token| JadlogSettings {
            token: token.into(),
            ..jadlog_common.clone()
        });
        Ok(Self {
            correios,
            jadlog,
            correios_common,
            jadlog_common,
            correios_rate: rate(("CORREIOS_RATE_PER_SECOND", 5.0), ("CORREIOS_BURST", 10.0))?,
            jadlog_rate: rate(("JADLOG_RATE_PER_SECOND", 2.0), ("JADLOG_BURST", 5.0))?,
        })
    }

    /// A client per carrier for reading kept answers again (`trackctl carriers replay`): the global account's
    /// when configured, else one without credentials (reading an answer needs none), so that a deployment whose
    /// accounts are all in `STORES_FILE` can replay too.
    pub fn parsers(&self) -> anyhow::Result<BTreeMap<Carrier, Arc<dyn CarrierClient>>> {
        let mut out: BTreeMap<Carrier, Arc<dyn CarrierClient>> = BTreeMap::new();
        let correios = self
            .correios
            .clone()
            .unwrap_or_else(|| self.correios_common.clone());
        out.insert(Carrier::Correios, Arc::new(CorreiosClient::new(correios)?));
        let jadlog = self
            .jadlog
            .clone()
            .unwrap_or_else(|| self.jadlog_common.clone());
        out.insert(Carrier::Jadlog, Arc::new(JadlogClient::new(jadlog)?));
        Ok(out)
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let carriers = CarrierSettings::from_env()?;
        let stores = tracking_marketplaces::stores_from_env()
            .map_err(|e| SettingsError::new(e.setting, e.message))?;
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
            stores,
            auth_hold: settings::millis("CARRIER_AUTH_HOLD_MS", 60_000)?,
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
