//! What the fetcher publishes on `carrier.events`: one message per tracking code per poll, carrying the
//! carrier's events parsed into a common shape but otherwise untouched (the carrier's own JSON is kept in `raw`).

use crate::code::{Carrier, TrackingCode};
use crate::request::TrackingRequest;
use crate::status::Status;
use crate::text::serde_cleaned as cleaned;
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Polled from the carrier.
    Carrier,
    /// Entered by support staff (tracking-api).
    Manual,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Carrier => "carrier",
            Source::Manual => "manual",
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "carrier" => Ok(Source::Carrier),
            "manual" => Ok(Source::Manual),
            other => Err(format!("unknown source {other:?} (known: carrier, manual)")),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleaned::short_opt"
    )]
    pub city: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleaned::short_opt"
    )]
    pub state: Option<String>,
}

/// One event as the carrier reported it. Reading one (from a queue message or a kept answer) cleans its texts
/// with [`crate::text::clean`]: control characters go, lengths are capped, so no carrier answer can hold a value
/// PostgreSQL refuses and freeze its parcel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierEvent {
    /// The carrier's event code (Correios `codigo`, e.g. `BDE`; Jadlog's status word; `MANUAL` for manual events).
    #[serde(deserialize_with = "cleaned::short")]
    pub code: String,
    /// The carrier's event type (Correios `tipo`, e.g. `01`), when it has one.
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleaned::short_opt"
    )]
    pub kind: Option<String>,
    /// The carrier's event time, with the offset we read it in (Correios sends none: see the carrier client).
    pub occurred_at: DateTime<FixedOffset>,
    #[serde(deserialize_with = "cleaned::long")]
    pub description: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleaned::long_opt"
    )]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The unit that reported the event (its name or type), part of the event's identity.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleaned::short_opt"
    )]
    pub unit: Option<String>,
    /// Only for manual events: the status the operator set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The carrier's event as received, its strings cleaned.
    #[serde(default, deserialize_with = "cleaned::json")]
    pub raw: serde_json::Value,
}

impl CarrierEvent {
    /// The event with its texts cleaned exactly as reading it from a message cleans them: what a carrier client
    /// publishes is then what the normalizer reads.
    pub fn cleaned(mut self) -> Self {
        use crate::text::{LONG, SHORT, clean, clean_json};
        let opt = |s: Option<String>, max| s.map(|s| clean(&s, max));
        self.code = clean(&self.code, SHORT);
        self.kind = opt(self.kind, SHORT);
        self.description = clean(&self.description, LONG);
        self.detail = opt(self.detail, LONG);
        self.unit = opt(self.unit, SHORT);
        self.location = self.location.map(|l| Location {
            city: opt(l.city, SHORT),
            state: opt(l.state, SHORT),
        });
        clean_json(&mut self.raw);
        self
    }

    /// The event's identity: carrier, code, the carrier's event code and type, its time and its unit
    /// (and, for manual events, the status and text the operator gave). A carrier returns the whole
    /// history on every poll; equal fingerprints are the same event.
    pub fn fingerprint(&self, carrier: Carrier, code: &TrackingCode, source: Source) -> String {
        let loc = self.location.clone().unwrap_or_default();
        let mut h = Sha256::new();
        for part in [
            carrier.as_str(),
            code.as_str(),
            source.as_str(),
            &self.code,
            self.kind.as_deref().unwrap_or(""),
            &self.occurred_at.with_timezone(&Utc).to_rfc3339(),
            self.unit.as_deref().unwrap_or(""),
            loc.city.as_deref().unwrap_or(""),
            loc.state.as_deref().unwrap_or(""),
            self.status.map(Status::as_str).unwrap_or(""),
            if source == Source::Manual {
                &self.description
            } else {
                ""
            },
        ] {
            h.update(part.as_bytes());
            h.update([0x1f]);
        }
        hex::encode(h.finalize())
    }
}

/// The fetcher's (or tracking-api's) message on `carrier.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierUpdate {
    pub carrier: Carrier,
    pub tracking_code: TrackingCode,
    /// The store whose carrier account made the call (or whose operator recorded a manual event): the parcel
    /// is that store's shipment of the code.
    #[serde(default)]
    pub store: crate::store::StoreName,
    pub source: Source,
    /// The request that caused this poll: the order context the normalizer stores with the shipment.
    /// Absent for manual events on a shipment we already know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<TrackingRequest>,
    pub fetched_at: DateTime<Utc>,
    /// The carrier's delivery estimate, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_delivery: Option<DateTime<FixedOffset>>,
    /// The carrier's per-object message when it has no events (e.g. `SRO-020: Objeto não encontrado`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleaned::long_opt"
    )]
    pub carrier_message: Option<String>,
    /// Newest first or oldest first, as the carrier sent them: order is by `occurred_at`, never by position.
    pub events: Vec<CarrierEvent>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(code: &str, kind: &str, at: &str) -> CarrierEvent {
        CarrierEvent {
            code: code.into(),
            kind: Some(kind.into()),
            occurred_at: DateTime::parse_from_rfc3339(at).unwrap(),
            description: "x".into(),
            detail: None,
            location: Some(Location {
                city: Some("CAMPINAS".into()),
                state: Some("SP".into()),
            }),
            unit: Some("Unidade de Distribuição".into()),
            status: None,
            raw: serde_json::Value::Null,
        }
    }

    #[test]
    fn fingerprints_ignore_description_drift_and_offsets_but_not_identity() {
        let code = TrackingCode::parse("DL746686536BR").unwrap();
        let a = ev("BDE", "01", "2026-03-27T14:40:30-03:00");
        let mut b = a.clone();
        b.description = "Objeto entregue".into();
        b.occurred_at = DateTime::parse_from_rfc3339("2026-03-27T17:40:30+00:00").unwrap();
        let fp = |e: &CarrierEvent| e.fingerprint(Carrier::Correios, &code, Source::Carrier);
        assert_eq!(fp(&a), fp(&b));
        assert_ne!(fp(&a), fp(&ev("BDE", "20", "2026-03-27T14:40:30-03:00")));
        assert_ne!(fp(&a), fp(&ev("BDE", "01", "2026-03-27T14:40:31-03:00")));
        assert_ne!(
            fp(&a),
            a.fingerprint(Carrier::Correios, &code, Source::Manual)
        );
    }
}
