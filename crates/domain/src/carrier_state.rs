//! A carrier integration's state as the fetcher judges it (docs/features.md, "Fetcher"): on `/health`, the
//! `carrier_state` gauge, the `carrier_health` table and `GET /v1/carriers/health`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CarrierState {
    /// Calls succeed.
    Ok,
    /// A call failed within the window, but calls still succeed.
    Degraded,
    /// Credentials refused, an answer that cannot be read, or failures in a row: an operator must act.
    Broken,
}

impl CarrierState {
    pub const ALL: [CarrierState; 3] = [
        CarrierState::Ok,
        CarrierState::Degraded,
        CarrierState::Broken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CarrierState::Ok => "ok",
            CarrierState::Degraded => "degraded",
            CarrierState::Broken => "broken",
        }
    }
}

impl fmt::Display for CarrierState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CarrierState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CarrierState::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown carrier state {s:?} (known: ok, degraded, broken)"))
    }
}
