//! Settings from environment variables. An empty variable counts as unset; a bad value is an error that
//! names the variable and what was expected, so a worker exits with a message an operator can act on.

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

/// The variable's value, or `None` when unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
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
