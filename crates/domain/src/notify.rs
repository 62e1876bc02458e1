//! Which status changes email the customer: a pure decision over the change, the statuses that notify (today
//! `EMAIL_STATUSES`, by default [`Status::notifies_customer_by_default`]; per store once the stores file's
//! `notify = [...]` lands: pass that store's set) and whether a parcel first seen already delivered is emailed
//! (`EMAIL_DELIVERED_WHEN_FIRST_SEEN`, default `false`).
//!
//! A parcel *first seen delivered* is one whose first status change goes from `registered` straight to
//! `delivered` on the carrier's word: our first news of it is that the customer has it in hand (a request
//! registered after the delivery, or a carrier that reported nothing before). A "your parcel was delivered" email
//! would tell them what they know, so by default none is sent. Support's delivery confirmation (`source:
//! manual`, tracking-api) is not held back: it is a deliberate act (the parcel left with a neighbour, a proof of
//! delivery found), and its one email is part of the contract.

use crate::{Source, Status, StatusChange};
use std::collections::HashSet;

/// What the rules decide for one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Email the customer.
    Email,
    /// The status is not one that emails customers (of this store).
    NotNotified,
    /// Delivered is the first status we saw: the customer has the parcel already.
    DeliveredWhenFirstSeen,
}

impl Notify {
    /// The label of this decision in metrics (`emails_total{result}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Email => "email",
            Notify::NotNotified => "not_notified",
            Notify::DeliveredWhenFirstSeen => "delivered_when_first_seen",
        }
    }
}

/// Today's default set: the statuses that email customers unless configured otherwise.
pub fn default_statuses() -> HashSet<Status> {
    Status::ALL
        .into_iter()
        .filter(|s| s.notifies_customer_by_default())
        .collect()
}

/// Whether `change` is a parcel first seen already delivered: its first change, from `registered` to
/// `delivered`, reported by the carrier.
pub fn first_seen_delivered(change: &StatusChange) -> bool {
    change.status == Status::Delivered
        && change.previous_status == Status::Registered
        && change.source == Source::Carrier
}

/// Whether `change` emails its customer, given the statuses that notify (`statuses`) and whether a parcel first
/// seen delivered still gets its "delivered" email (`delivered_when_first_seen`).
pub fn decide(
    change: &StatusChange,
    statuses: &HashSet<Status>,
    delivered_when_first_seen: bool,
) -> Notify {
    if !statuses.contains(&change.status) {
        Notify::NotNotified
    } else if first_seen_delivered(change) && !delivered_when_first_seen {
        Notify::DeliveredWhenFirstSeen
    } else {
        Notify::Email
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(status: Status, previous: Status) -> StatusChange {
        serde_json::from_value(json!({
            "change_id": "6a1f4c0e-9b7d-4e21-8f3a-2d5c7b91e044", "order_id": "1", "tracking_code": "DL746686536BR",
            "carrier": "correios", "status": status, "previous_status": previous,
            "occurred_at": "2026-11-23T15:00:00-03:00", "source": "carrier",
            "event": { "code": "BDE", "description": "Objeto entregue" },
            "customer": { "email": "ana@example.com", "locale": "pt-BR" }
        }))
        .unwrap()
    }

    #[test]
    fn the_default_set_is_the_seven_notified_statuses() {
        let set = default_statuses();
        assert_eq!(set.len(), 7);
        for s in Status::ALL {
            assert_eq!(set.contains(&s), s.notifies_customer_by_default(), "{s}");
        }
    }

    #[test]
    fn a_parcel_first_seen_delivered_is_not_emailed_unless_asked() {
        let set = default_statuses();
        let first_seen = change(Status::Delivered, Status::Registered);
        assert_eq!(
            decide(&first_seen, &set, false),
            Notify::DeliveredWhenFirstSeen
        );
        assert_eq!(decide(&first_seen, &set, true), Notify::Email);
        // Support's confirmation of a registered parcel is a deliberate act: emailed.
        let mut confirmed = first_seen.clone();
        confirmed.source = Source::Manual;
        assert_eq!(decide(&confirmed, &set, false), Notify::Email);
        // Delivered after any news of the parcel on its way is emailed.
        for before in [
            Status::Posted,
            Status::InTransit,
            Status::OutForDelivery,
            Status::DeliveryFailed,
            Status::AwaitingPickup,
            Status::Exception,
        ] {
            assert_eq!(
                decide(&change(Status::Delivered, before), &set, false),
                Notify::Email,
                "{before}"
            );
        }
        // Only delivered is held back: a first change to another status is news.
        assert_eq!(
            decide(&change(Status::Posted, Status::Registered), &set, false),
            Notify::Email
        );
        assert_eq!(
            decide(
                &change(Status::OutForDelivery, Status::Registered),
                &set,
                false
            ),
            Notify::Email
        );
    }

    #[test]
    fn statuses_outside_the_set_are_not_emailed() {
        let set = default_statuses();
        for s in [
            Status::Registered,
            Status::InTransit,
            Status::Returned,
            Status::Expired,
        ] {
            assert_eq!(
                decide(&change(s, Status::Posted), &set, true),
                Notify::NotNotified,
                "{s}"
            );
        }
        // A store's own set: only delivered.
        let only_delivered = HashSet::from([Status::Delivered]);
        assert_eq!(
            decide(
                &change(Status::Posted, Status::Registered),
                &only_delivered,
                false
            ),
            Notify::NotNotified
        );
        assert_eq!(
            decide(
                &change(Status::Delivered, Status::OutForDelivery),
                &only_delivered,
                false
            ),
            Notify::Email
        );
        // Delivered left out of a store's set: not emailed, whatever the first-seen setting.
        let without_delivered = HashSet::from([Status::Posted]);
        assert_eq!(
            decide(
                &change(Status::Delivered, Status::Registered),
                &without_delivered,
                true
            ),
            Notify::NotNotified
        );
    }
}
