//! Which status a shipment is in, given all its events (docs/architecture.md, "Status rules").
//!
//! | rule | how |
//! | --- | --- |
//! | the newest event by carrier time decides, not arrival order | events are sorted by `occurred_at` (ties by arrival) |
//! | an event nobody mapped changes nothing | it is skipped (it is stored and counted elsewhere) |
//! | Correios `EST` ("disregard the previous information") | the effective event just before it in carrier time is removed |
//! | `delivered` does not flip back on a later in-transit or out-for-delivery event | after delivered only `returning`, `returned` and `exception` are honoured |
//! | `returned` is the end | nothing after it changes the status |
//! | `expired` is our rule, not the carrier's | any later carrier news revives the shipment |

use crate::status::Status;
use crate::table::Mapping;
use chrono::{DateTime, FixedOffset};

/// What the rules need of one event.
#[derive(Debug, Clone)]
pub struct RuleEvent {
    pub occurred_at: DateTime<FixedOffset>,
    /// Arrival order, to break ties between events at the same carrier time.
    pub seq: i64,
    /// `None` for an event nobody mapped.
    pub mapping: Option<Mapping>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub status: Status,
    pub reason: Option<String>,
    /// Index into the input slice of the event that set the status.
    pub index: usize,
}

/// Whether a shipment in `from` may move to `to` on a later event.
pub fn transition_allowed(from: Status, to: Status) -> bool {
    match from {
        Status::Returned => false,
        Status::Delivered => matches!(to, Status::Returning | Status::Returned | Status::Exception),
        _ => true,
    }
}

/// The status the events put the shipment in, or `None` when no mapped event remains
/// (the shipment stays `registered`).
pub fn current_status(events: &[RuleEvent]) -> Option<Decision> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| (events[i].occurred_at, events[i].seq));

    let mut effective: Vec<usize> = Vec::with_capacity(order.len());
    for i in order {
        match events[i].mapping {
            Some(Mapping::Reverse) => {
                effective.pop();
            }
            _ => effective.push(i),
        }
    }

    let mut decision: Option<Decision> = None;
    for i in effective {
        if let Some(Mapping::Status { status, reason }) = &events[i].mapping {
            let allowed = decision
                .as_ref()
                .is_none_or(|d| transition_allowed(d.status, *status));
            if allowed {
                decision = Some(Decision {
                    status: *status,
                    reason: reason.clone(),
                    index: i,
                });
            }
        }
    }
    decision
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(seq: i64, hour: u32, mapping: Option<Mapping>) -> RuleEvent {
        RuleEvent {
            occurred_at: DateTime::parse_from_rfc3339(&format!("2026-03-27T{hour:02}:00:00-03:00"))
                .unwrap(),
            seq,
            mapping,
        }
    }
    fn st(s: Status) -> Option<Mapping> {
        Some(Mapping::Status {
            status: s,
            reason: None,
        })
    }

    #[test]
    fn newest_by_carrier_time_wins_not_arrival() {
        // Delivered arrives first, the older out-for-delivery event arrives later.
        let events = [
            ev(1, 14, st(Status::Delivered)),
            ev(2, 9, st(Status::OutForDelivery)),
        ];
        let d = current_status(&events).unwrap();
        assert_eq!((d.status, d.index), (Status::Delivered, 0));
    }

    #[test]
    fn delivered_does_not_flip_back_but_a_return_after_it_counts() {
        let events = [
            ev(1, 10, st(Status::Delivered)),
            ev(2, 11, st(Status::InTransit)),
        ];
        assert_eq!(current_status(&events).unwrap().status, Status::Delivered);
        let events = [
            ev(1, 10, st(Status::Delivered)),
            ev(2, 12, st(Status::Returning)),
        ];
        assert_eq!(current_status(&events).unwrap().status, Status::Returning);
        let events = [
            ev(1, 10, st(Status::Returned)),
            ev(2, 12, st(Status::Exception)),
        ];
        assert_eq!(current_status(&events).unwrap().status, Status::Returned);
    }

    #[test]
    fn a_reversal_undoes_the_event_before_it() {
        let events = [
            ev(1, 8, st(Status::InTransit)),
            ev(2, 9, st(Status::Delivered)),
            ev(3, 10, Some(Mapping::Reverse)),
        ];
        let d = current_status(&events).unwrap();
        assert_eq!((d.status, d.index), (Status::InTransit, 0));
    }

    #[test]
    fn unmapped_events_change_nothing_and_nothing_mapped_means_none() {
        let events = [ev(1, 8, st(Status::Posted)), ev(2, 9, None)];
        assert_eq!(current_status(&events).unwrap().status, Status::Posted);
        assert_eq!(current_status(&[ev(1, 8, None)]), None);
        assert_eq!(current_status(&[]), None);
    }

    #[test]
    fn reasons_travel_with_the_status() {
        let events = [ev(
            1,
            8,
            Some(Mapping::Status {
                status: Status::Exception,
                reason: Some("customs".into()),
            }),
        )];
        assert_eq!(
            current_status(&events).unwrap().reason.as_deref(),
            Some("customs")
        );
    }
}
