//! Settings from environment variables, the PEM files they name, and what a process reports of itself: the small
//! crate the store, the mailer and the marketplace relay read their settings through, without the runtime's broker
//! client and HTTP server (`tests/tests/structure.rs` keeps it so).
//!
//! - the crate root: typed settings from the environment. An empty variable counts as unset; a bad value is an
//!   error that names the variable and what was expected, so a binary exits with a message an operator can act on.
//! - [`tls`]: the PEM files TLS settings name (`AMQP_CA_FILE`, `DATABASE_CA_FILE`, `SMTP_CA_FILE`), read and checked
//!   at start.
//! - [`health`]: the [`health::Health`] a process updates and the runtime's ops server answers as `/health`.
//!
//! Every secret setting (the application declares which: [`declare_secrets`]) can also come from a file named by `NAME_FILE` (as Kubernetes and
//! Docker mount secrets): the file's content, without its trailing line break. [`check_files`] (run by
//! `boot::main` before anything else) refuses a `_FILE` that cannot be read, or one set together with its variable.

pub mod health;
pub mod tls;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("setting {variable}: {message}")]
pub struct SettingsError {
    pub variable: String,
    pub message: String,
}

impl SettingsError {
    pub fn new(variable: &str, message: impl Into<String>) -> Self {
        Self {
            variable: variable.into(),
            message: message.into(),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

static SECRETS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();

/// Names the settings that hold secrets, and so may come from a file named by `{NAME}_FILE`: the application's
/// list (`tracking_app::SECRET_SETTINGS`), given once at start before any setting is read (later calls keep the
/// first). Until then no setting is read from a file.
pub fn declare_secrets(names: &'static [&'static str]) {
    let _ = SECRETS.set(names);
}

/// The declared secret settings ([`declare_secrets`]); empty until declared.
pub fn secret_settings() -> &'static [&'static str] {
    SECRETS.get().copied().unwrap_or(&[])
}

/// The variable's value, or for a secret setting the content of the file `{name}_FILE` names; `None` when
/// unset or empty.
pub fn var(name: &str) -> Option<String> {
    env(name).or_else(|| {
        if !secret_settings().contains(&name) {
            return None;
        }
        let path = env(&format!("{name}_FILE"))?;
        let content = std::fs::read_to_string(path.trim()).ok()?;
        Some(content.trim_end_matches(['\n', '\r']).to_owned()).filter(|v| !v.trim().is_empty())
    })
}

/// Checks the `NAME_FILE` of every secret setting: readable, and not set together with `NAME`. The error names
/// the variable and never shows the file's content.
pub fn check_files() -> Result<(), SettingsError> {
    for base in secret_settings() {
        let key = format!("{base}_FILE");
        let Some(path) = env(&key) else {
            continue;
        };
        if env(base).is_some() {
            return Err(SettingsError::new(
                &key,
                format!("is set together with {base}: set one of them"),
            ));
        }
        if let Err(e) = std::fs::read_to_string(path.trim()) {
            return Err(SettingsError::new(
                &key,
                format!("cannot read {}: {e}", path.trim()),
            ));
        }
    }
    Ok(())
}

pub fn var_or(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_owned())
}

pub fn required(name: &str) -> Result<String, SettingsError> {
    var(name).ok_or_else(|| SettingsError::new(name, "is required and not set"))
}

pub fn parse<T: FromStr>(name: &str, default: T) -> Result<T, SettingsError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| SettingsError::new(name, format!("cannot parse {v:?}: {e}"))),
    }
}

/// A `host:port` to listen on.
pub fn socket_addr(name: &str, default: &str) -> Result<SocketAddr, SettingsError> {
    let v = var_or(name, default);
    v.trim()
        .parse()
        .map_err(|e| SettingsError::new(name, format!("{v:?} is not host:port: {e}")))
}

pub fn secs(name: &str, default: u64) -> Result<Duration, SettingsError> {
    parse_f64_duration(name, default as f64, 1.0)
}

pub fn millis(name: &str, default: u64) -> Result<Duration, SettingsError> {
    parse_f64_duration(name, default as f64, 0.001)
}

fn parse_f64_duration(name: &str, default: f64, unit_secs: f64) -> Result<Duration, SettingsError> {
    let value = parse(name, default)?;
    if !value.is_finite() || value < 0.0 {
        return Err(SettingsError::new(
            name,
            format!("must be a non-negative number, got {value}"),
        ));
    }
    Ok(Duration::from_secs_f64(value * unit_secs))
}

/// A comma-separated list of milliseconds, e.g. `1000,5000,30000`.
pub fn millis_list(name: &str, default: &[u64]) -> Result<Vec<Duration>, SettingsError> {
    let Some(v) = var(name) else {
        return Ok(default
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect());
    };
    let mut out = Vec::new();
    for part in v.split(',') {
        let ms: u64 = part.trim().parse().map_err(|_| {
            SettingsError::new(
                name,
                format!("{part:?} is not a whole number of milliseconds"),
            )
        })?;
        if ms == 0 {
            return Err(SettingsError::new(name, "delays must be above 0 ms"));
        }
        out.push(Duration::from_millis(ms));
    }
    out.sort();
    out.dedup();
    Ok(out)
}
