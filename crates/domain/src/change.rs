//! The status change published on `order.status` (routing key: the new status).

use crate::code::{Carrier, TrackingCode};
use crate::event::{Location, Source};
use crate::request::{Customer, MarketplaceRef, OrderId};
use crate::status::Status;
use crate::text::serde_checked as checked;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The namespace of change ids (UUID v5): the same change always gets the same id.
pub const CHANGE_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_4c0e_9b7d_4e21_8f3a_2d5c_7b91_e044);

/// The carrier's own words for the event that caused a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    #[serde(deserialize_with = "checked::short")]
    pub code: String,
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "checked::short_opt"
    )]
    pub kind: Option<String>,
    #[serde(deserialize_with = "checked::long")]
    pub description: String,
    #[serde(default)]
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub change_id: Uuid,
    pub order_id: OrderId,
    pub tracking_code: TrackingCode,
    pub carrier: Carrier,
    pub status: Status,
    pub previous_status: Status,
    /// The carrier's event time (RFC 3339 with offset).
    pub occurred_at: DateTime<FixedOffset>,
    pub source: Source,
    pub event: ChangeEvent,
    /// Why, for statuses that carry one (exception: customs, blocked; in_transit: delayed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "checked::long_opt"
    )]
    pub reason: Option<String>,
    pub customer: Customer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketplace: Option<MarketplaceRef>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "checked::short_opt"
    )]
    pub invoice_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_delivery: Option<DateTime<FixedOffset>>,
}

impl StatusChange {
    /// A change is identified by the shipment, the status it left, the status it entered and the event that
    /// caused it: recomputing the same history gives the same ids, and a return to an earlier status (after a
    /// reversal) is a change of its own.
    pub fn id_for(
        carrier: Carrier,
        code: &TrackingCode,
        previous: Status,
        status: Status,
        event_fingerprint: &str,
    ) -> Uuid {
        let name = format!("{carrier}:{code}:{previous}:{status}:{event_fingerprint}");
        Uuid::new_v5(&CHANGE_NAMESPACE, name.as_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn change_ids_are_stable_and_distinct() {
        let code = TrackingCode::parse("DL746686536BR").unwrap();
        let id = |previous, status, fp| {
            StatusChange::id_for(Carrier::Correios, &code, previous, status, fp)
        };
        let a = id(Status::OutForDelivery, Status::Delivered, "f1");
        assert_eq!(a, id(Status::OutForDelivery, Status::Delivered, "f1"));
        assert_ne!(a, id(Status::OutForDelivery, Status::Delivered, "f2"));
        assert_ne!(a, id(Status::OutForDelivery, Status::Returned, "f1"));
        // Back to posted after a reversal is not the first move to posted.
        assert_ne!(
            id(Status::Registered, Status::Posted, "f1"),
            id(Status::InTransit, Status::Posted, "f1")
        );
    }
}
