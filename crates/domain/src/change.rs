//! The status change published on `order.status` (routing key: the new status).

use crate::code::{Carrier, TrackingCode};
use crate::event::{Location, Source};
use crate::request::{Customer, MarketplaceRef, OrderId};
use crate::status::Status;
use crate::store::StoreName;
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
    /// The store the order belongs to.
    #[serde(default)]
    pub store: StoreName,
    /// The order's progress over all its parcels once this change is applied. Absent only in changes recorded
    /// before orders and parcels were modelled apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderProgress>,
}

/// An order's state over its parcels: `delivered` only when every parcel is, `partially_delivered` when some
/// are; before any parcel is delivered, the status of its least advanced parcel (an order with one parcel has
/// that parcel's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderProgress {
    pub parcels: u32,
    pub delivered: u32,
    pub status: OrderStatus,
}

/// The order-level status of [`OrderProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Every parcel is delivered.
    Delivered,
    /// Some parcels are delivered, not all.
    PartiallyDelivered,
    /// No parcel is delivered: the least advanced parcel's status.
    #[serde(untagged)]
    Parcel(Status),
}

impl OrderProgress {
    /// The progress of an order whose parcels have `statuses`.
    pub fn of(statuses: &[Status]) -> Self {
        let parcels = statuses.len() as u32;
        let delivered = statuses.iter().filter(|s| **s == Status::Delivered).count() as u32;
        let status = if parcels > 0 && delivered == parcels {
            OrderStatus::Delivered
        } else if delivered > 0 {
            OrderStatus::PartiallyDelivered
        } else {
            OrderStatus::Parcel(
                statuses
                    .iter()
                    .copied()
                    .min_by_key(|s| s.progress_rank())
                    .unwrap_or(Status::Registered),
            )
        };
        Self {
            parcels,
            delivered,
            status,
        }
    }

    /// Every parcel of the order is delivered.
    pub fn is_delivered(&self) -> bool {
        self.status == OrderStatus::Delivered
    }
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Delivered => "delivered",
            OrderStatus::PartiallyDelivered => "partially_delivered",
            OrderStatus::Parcel(s) => s.as_str(),
        }
    }
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

    /// The id of a shipment's change as one of its orders receives it: the shipment's first order keeps the
    /// change's own id (so changes recorded before parcels could be shared keep theirs), each further order gets
    /// an id of its own, as stable as the change's.
    pub fn id_for_order(
        change_id: Uuid,
        first_order: bool,
        store: &StoreName,
        order: &OrderId,
    ) -> Uuid {
        if first_order {
            return change_id;
        }
        let name = format!("{change_id}:order:{store}:{order}");
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
        let order = OrderId::parse("A-1").unwrap();
        let store = StoreName::default();
        assert_eq!(StatusChange::id_for_order(a, true, &store, &order), a);
        let b = StatusChange::id_for_order(a, false, &store, &order);
        assert_ne!(b, a);
        assert_eq!(b, StatusChange::id_for_order(a, false, &store, &order));
        assert_ne!(
            b,
            StatusChange::id_for_order(a, false, &StoreName::parse("loja-b").unwrap(), &order)
        );
        // Back to posted after a reversal is not the first move to posted.
        assert_ne!(
            id(Status::Registered, Status::Posted, "f1"),
            id(Status::InTransit, Status::Posted, "f1")
        );
    }

    #[test]
    fn an_order_is_delivered_only_when_every_parcel_is() {
        use Status::*;
        let p = OrderProgress::of(&[Delivered, InTransit, Delivered]);
        assert_eq!((p.parcels, p.delivered), (3, 2));
        assert_eq!(p.status, OrderStatus::PartiallyDelivered);
        assert!(!p.is_delivered());
        let p = OrderProgress::of(&[Delivered, Delivered, Delivered]);
        assert!(p.is_delivered());
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::json!({"parcels": 3, "delivered": 3, "status": "delivered"})
        );
        let p = OrderProgress::of(&[OutForDelivery, Posted]);
        assert_eq!(p.status, OrderStatus::Parcel(Posted));
        assert_eq!(serde_json::to_value(p).unwrap()["status"], "posted");
        let back: OrderProgress = serde_json::from_value(
            serde_json::json!({"parcels": 2, "delivered": 1, "status": "partially_delivered"}),
        )
        .unwrap();
        assert_eq!(back.status, OrderStatus::PartiallyDelivered);
        let back: OrderProgress = serde_json::from_value(
            serde_json::json!({"parcels": 2, "delivered": 0, "status": "in_transit"}),
        )
        .unwrap();
        assert_eq!(back.status, OrderStatus::Parcel(InTransit));
    }
}
