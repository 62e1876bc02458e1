//! The canonical statuses (the product's list, kept outside this repository). Small and exact: every carrier code maps to one of these.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Registered,
    Posted,
    InTransit,
    OutForDelivery,
    DeliveryFailed,
    AwaitingPickup,
    Delivered,
    Returning,
    Returned,
    Exception,
    Expired,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Registered,
        Status::Posted,
        Status::InTransit,
        Status::OutForDelivery,
        Status::DeliveryFailed,
        Status::AwaitingPickup,
        Status::Delivered,
        Status::Returning,
        Status::Returned,
        Status::Exception,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Registered => "registered",
            Status::Posted => "posted",
            Status::InTransit => "in_transit",
            Status::OutForDelivery => "out_for_delivery",
            Status::DeliveryFailed => "delivery_failed",
            Status::AwaitingPickup => "awaiting_pickup",
            Status::Delivered => "delivered",
            Status::Returning => "returning",
            Status::Returned => "returned",
            Status::Exception => "exception",
            Status::Expired => "expired",
        }
    }

    /// Whether support may set this status by hand (tracking-api): not `registered` (the carrier has said nothing:
    /// there is nothing to enter) and not `expired` (our rule, set by the scheduler).
    pub fn settable_by_hand(self) -> bool {
        !matches!(self, Status::Registered | Status::Expired)
    }

    /// Delivered and returned end a parcel's journey: polling winds down after them.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Returned)
    }

    /// Whether a promised delivery date that passed makes a parcel in this status late: it is still on its way
    /// to the customer. Not once it is delivered, waits at a pickup point, heads back or expired.
    pub fn can_be_late(self) -> bool {
        matches!(
            self,
            Status::Registered
                | Status::Posted
                | Status::InTransit
                | Status::OutForDelivery
                | Status::DeliveryFailed
                | Status::Exception
        )
    }

    /// How far along its way a parcel in this status is, for an order's least advanced parcel
    /// ([`crate::change::OrderProgress`]): registered before posted before moving before at the door before
    /// arrived (delivered, returned, expired: nothing more to come).
    pub fn progress_rank(self) -> u8 {
        match self {
            Status::Registered => 0,
            Status::Posted => 1,
            Status::InTransit | Status::Exception | Status::Returning => 2,
            Status::DeliveryFailed | Status::AwaitingPickup => 3,
            Status::OutForDelivery => 4,
            Status::Delivered | Status::Returned | Status::Expired => 5,
        }
    }

    /// Whether a parcel in this status is expected to have carrier news: any but delivered, returned and expired.
    pub fn can_stall(self) -> bool {
        !self.is_final() && self != Status::Expired
    }

    /// The statuses a customer is emailed about by default (the product brief: posted, out for delivery,
    /// failed attempt, awaiting pickup, delivered, being returned, exception).
    pub fn notifies_customer_by_default(self) -> bool {
        matches!(
            self,
            Status::Posted
                | Status::OutForDelivery
                | Status::DeliveryFailed
                | Status::AwaitingPickup
                | Status::Delivered
                | Status::Returning
                | Status::Exception
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for s in Status::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert!("lost".parse::<Status>().is_err());
    }
}
