//! The per-locale catalog files (`templates/<locale>.toml`): the words of every email and of the tracking page.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// One locale's catalog. Unknown keys are refused, so a misspelt key fails at start-up.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Catalog {
    /// chrono strftime pattern for dates (the estimated delivery).
    pub date_format: String,
    /// chrono strftime pattern for date and time (when the event happened).
    pub datetime_format: String,
    pub common: Common,
    pub labels: Labels,
    /// The mapping's reason words (`customs`, `blocked`, ...) in this language.
    pub reasons: HashMap<String, String>,
    /// Keyed by status name (`posted`, `out_for_delivery`, ...).
    pub status: BTreeMap<String, StatusTexts>,
    /// The "your parcel is late" email: the promised date (`estimated_delivery`) passed without delivery.
    pub late: StatusTexts,
    /// Every status's name (the tracking page's current status and timeline), keyed by status name.
    pub status_names: BTreeMap<String, String>,
    /// The tracking page's words.
    pub page: PageWords,
}

/// Templates shared by every email of a locale.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Common {
    pub greeting: String,
    pub signature: String,
    pub footer: String,
}

/// Field names for the details block; plain strings, handed to the layouts as `t`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Labels {
    pub order: String,
    pub tracking_code: String,
    pub carrier: String,
    pub place: String,
    pub occurred_at: String,
    pub estimated_delivery: String,
    pub carrier_says: String,
    pub reason: String,
    pub track: String,
    pub track_button: String,
    /// Beside an order with several parcels: how many of them are delivered ("2 of 3").
    pub parcels_delivered: String,
    /// "{delivered} of {parcels}".
    pub parcels_of: String,
}

/// The tracking page's words: plain strings, with `{order}`, `{name}`, `{n}`, `{total}`, `{carrier}`, `{zone}`
/// replaced where the page says so (see `page.rs`); handed to the page template as `t`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageWords {
    pub title: String,
    pub heading: String,
    pub greeting: String,
    pub greeting_anonymous: String,
    pub package: String,
    pub current_status: String,
    pub history: String,
    pub no_events: String,
    pub older_events: String,
    pub manual: String,
    pub carrier_link: String,
    pub language: String,
    pub times_in: String,
    pub not_found_title: String,
    pub not_found_text: String,
    pub unavailable_title: String,
    pub unavailable_text: String,
    /// A late shipment's line, `{date}` the promised date.
    pub late: String,
    /// A stalled shipment's line, `{date}` the last carrier news.
    pub stalled: String,
}

/// The templates for one status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusTexts {
    pub subject: String,
    pub body: String,
}

impl Catalog {
    pub(crate) fn parse(source: &str) -> Result<Self, String> {
        toml::from_str(source).map_err(|e| e.to_string())
    }
}
