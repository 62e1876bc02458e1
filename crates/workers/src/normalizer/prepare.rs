//! Before any transaction: each message read, checked and mapped on its own, so a message that can never be
//! stored (not a carrier update, a request for another parcel) is parked without touching the others.

use tracking_domain::table::{EventTables, Mapping};
use tracking_domain::{CarrierEvent, CarrierUpdate, Source};

/// A carrier update ready to store.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    pub update: CarrierUpdate,
    /// The update's events, each once, with their fingerprints and mappings.
    pub events: Vec<PreparedEvent>,
}

#[derive(Debug, Clone)]
pub(super) struct PreparedEvent {
    pub event: CarrierEvent,
    pub fingerprint: String,
    pub mapping: Option<Mapping>,
}

impl Prepared {
    /// The shipment it is about: `(store, carrier, tracking_code)`.
    pub fn key(&self) -> tracking_store::normalize::ShipmentKey {
        (
            self.update.store.as_str().to_owned(),
            self.update.carrier.as_str().to_owned(),
            self.update.tracking_code.as_str().to_owned(),
        )
    }
}

/// Reads one message; `Err` is the reason to park it.
pub(super) fn prepare(body: &[u8], tables: &EventTables) -> Result<Prepared, String> {
    let update: CarrierUpdate =
        serde_json::from_slice(body).map_err(|e| format!("not a carrier update: {e}"))?;
    if let Some(req) = &update.request
        && (req.tracking_code != update.tracking_code
            || req.carrier != update.carrier
            || req.store != update.store)
    {
        return Err(format!(
            "the update is for {} {} but carries a request for {} {}",
            update.carrier, update.tracking_code, req.carrier, req.tracking_code
        ));
    }
    let mut events: Vec<PreparedEvent> = Vec::with_capacity(update.events.len());
    for ev in &update.events {
        let fingerprint = ev.fingerprint(update.carrier, &update.tracking_code, update.source);
        if events.iter().any(|e| e.fingerprint == fingerprint) {
            continue;
        }
        let mapping = match update.source {
            Source::Manual => ev.status.map(|status| Mapping::Status {
                status,
                reason: None,
            }),
            Source::Carrier => tables
                .lookup(update.carrier, &ev.code, ev.kind.as_deref())
                .cloned(),
        };
        events.push(PreparedEvent {
            event: ev.clone(),
            fingerprint,
            mapping,
        });
    }
    Ok(Prepared { update, events })
}
