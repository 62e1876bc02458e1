//! Before any transaction: each message read, checked and mapped on its own, so a message that can never be
//! stored (not a carrier update, a request for another parcel) is parked without touching the others.

use chrono::Utc;
use tracking_domain::table::{EventTables, Mapping};
use tracking_domain::{CarrierEvent, CarrierUpdate, Source};
use tracking_store::normalize::NewEvent;

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

impl PreparedEvent {
    /// The row to store for this event on shipment `shipment_id`, reported by `source`.
    pub fn to_store(&self, shipment_id: i64, source: Source) -> NewEvent {
        let ev = &self.event;
        let (status, reason, reverses) = match &self.mapping {
            Some(Mapping::Status { status, reason }) => (Some(*status), reason.clone(), false),
            Some(Mapping::Reverse) => (None, None, true),
            None => (None, None, false),
        };
        NewEvent {
            shipment_id,
            source,
            fingerprint: self.fingerprint.clone(),
            code: ev.code.clone(),
            kind: ev.kind.clone(),
            description: ev.description.clone(),
            detail: ev.detail.clone(),
            city: ev.location.as_ref().and_then(|l| l.city.clone()),
            state: ev.location.as_ref().and_then(|l| l.state.clone()),
            unit: ev.unit.clone(),
            occurred_at: ev.occurred_at.with_timezone(&Utc),
            utc_offset_secs: ev.occurred_at.offset().local_minus_utc(),
            status,
            reason,
            reverses,
            raw: ev.raw.clone(),
        }
    }
}

impl Prepared {
    /// The shipment it is about.
    pub fn key(&self) -> tracking_store::normalize::ShipmentKey {
        tracking_store::normalize::ShipmentKey {
            store: self.update.store.clone(),
            carrier: self.update.carrier,
            tracking_code: self.update.tracking_code.clone(),
        }
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
