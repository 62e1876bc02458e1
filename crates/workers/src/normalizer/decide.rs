//! The decisions, without I/O: from a shipment's stored events, its status and the change to record.
//!
//! A batch may hold several updates of one shipment. They are decided one after the other, in the batch's
//! order, each seeing the events stored before the batch and those the updates before it (and itself) added:
//! the changes recorded, their order and their ids are those that handling the updates one by one would give.

use super::prepare::Prepared;
use crate::policy::PollPolicy;
use chrono::{DateTime, FixedOffset, Utc};
use std::collections::HashSet;
use tracking_domain::rules::{RuleEvent, current_status};
use tracking_domain::table::Mapping;
use tracking_domain::{ChangeEvent, Location, Source, Status, StatusChange, TrackingRequest, text};
use tracking_store::normalize::PollResult;
use tracking_store::shipments::{EventRow, ShipmentRow};

/// What the update that triggered a recomputation says beyond its events.
pub(super) struct ChangeContext {
    /// The source named in a change that no stored event decided (every mapped event was reversed).
    pub source: Source,
    pub estimated_delivery: Option<DateTime<FixedOffset>>,
    /// A recomputation from stored events after the event table changed, not news from the carrier.
    pub replay: bool,
    /// Events dated after this decide nothing yet ([`crate::policy::PollPolicy::decidable_until`]).
    pub decidable_until: DateTime<Utc>,
}

/// A change decided, with the stored event that decided it.
pub(super) struct Decided {
    pub change: StatusChange,
    pub event_id: Option<i64>,
}

/// Something to log and count once the transaction committed.
pub(super) enum Note {
    Unmapped {
        carrier: &'static str,
        code: String,
        kind: Option<String>,
        description: String,
    },
    Stored {
        carrier: &'static str,
        events: usize,
    },
    NotTrackable {
        carrier: &'static str,
        tracking_code: String,
        order_id: String,
        reason: String,
    },
    /// An event dated further ahead than the tolerance: stored, deciding nothing until its time.
    FutureDated {
        carrier: &'static str,
        tracking_code: String,
        code: String,
        occurred_at: DateTime<FixedOffset>,
    },
}

impl Note {
    pub fn emit(&self) {
        match self {
            Note::Unmapped {
                carrier,
                code,
                kind,
                description,
            } => {
                metrics::counter!("unmapped_events_total", "carrier" => *carrier, "code" => code.clone(),
                    "type" => kind.clone().unwrap_or_default())
                .increment(1);
                tracing::warn!(carrier = %carrier, code = %code, kind = ?kind, description = %description,
                    "An event code nobody mapped was stored; add it to the event table.");
            }
            Note::Stored { carrier, events } => {
                metrics::counter!("events_stored_total", "carrier" => *carrier)
                    .increment(*events as u64);
            }
            Note::NotTrackable {
                carrier,
                tracking_code,
                order_id,
                reason,
            } => {
                metrics::counter!("shipments_not_trackable_total", "carrier" => *carrier)
                    .increment(1);
                tracing::warn!(carrier = %carrier, tracking_code = %tracking_code, order_id = %order_id, reason = %reason,
                    "A shipment is not trackable with this carrier account; it is recorded as such (see trackctl shipment show).");
            }
            Note::FutureDated {
                carrier,
                tracking_code,
                code,
                occurred_at,
            } => {
                metrics::counter!("events_future_dated_total", "carrier" => *carrier).increment(1);
                tracing::warn!(carrier = %carrier, tracking_code = %tracking_code, code = %code, occurred_at = %occurred_at,
                    "The carrier dated an event in the future (beyond EVENT_FUTURE_TOLERANCE_SECS); it is stored but decides the status only once its time comes.");
            }
        }
    }
}

pub(super) fn mapping_of(row: &EventRow) -> Option<Mapping> {
    if row.reverses {
        return Some(Mapping::Reverse);
    }
    let status = row.status()?;
    Some(Mapping::Status {
        status,
        reason: row.reason.clone(),
    })
}

/// The status `events` (a shipment's, in carrier-time order) give, and the change from `previous` when it moved.
/// `estimated` is the shipment's stored estimate, used when the context brings none.
pub(super) fn next_change(
    req: &TrackingRequest,
    events: &[&EventRow],
    previous: Status,
    context: &ChangeContext,
    estimated: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<Decided> {
    // An event dated further ahead than the tolerance (a carrier's typo) would stay the newest for years and
    // hide every real event after it: it waits for its time.
    let events: Vec<&EventRow> = events
        .iter()
        .copied()
        .filter(|r| r.occurred_at <= context.decidable_until)
        .collect();
    let rule_events: Vec<RuleEvent> = events
        .iter()
        .map(|r| RuleEvent {
            occurred_at: r.occurred_at.fixed_offset(),
            seq: r.id,
            mapping: mapping_of(r),
        })
        .collect();
    let decision = current_status(&rule_events);
    let computed = decision.as_ref().map_or(Status::Registered, |d| d.status);
    // `expired` is ours, not the carrier's: recomputing what the carrier said never restores it, but news does.
    if computed == previous || (previous == Status::Expired && context.replay) {
        return None;
    }
    let (row, reason) = match &decision {
        Some(d) => (events.get(d.index).copied(), d.reason.clone()),
        None => (None, None),
    };
    let change = change_for(
        req, context, previous, computed, row, reason, estimated, now,
    );
    Some(Decided {
        change,
        event_id: row.map(|r| r.id),
    })
}

#[allow(clippy::too_many_arguments)]
fn change_for(
    req: &TrackingRequest,
    context: &ChangeContext,
    previous: Status,
    status: Status,
    row: Option<&EventRow>,
    reason: Option<String>,
    estimated: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> StatusChange {
    // A change without a deciding event happens only when every mapped event was reversed.
    let (fingerprint, occurred_at, event, source) = match row {
        Some(r) => (
            r.fingerprint.clone(),
            r.occurred_at_local(),
            // Rows written by an older version may hold text the status change refuses (a line break in a
            // description): clean it as a carrier's text is cleaned today, so the change is always publishable.
            ChangeEvent {
                code: text::clean(&r.code, text::SHORT),
                kind: r.kind.as_deref().map(|k| text::clean(k, text::SHORT)),
                description: text::clean(&r.description, text::LONG),
                location: Location {
                    city: r.city.as_deref().map(|c| text::clean(c, text::SHORT)),
                    state: r.state.as_deref().map(|c| text::clean(c, text::SHORT)),
                },
            },
            r.source(),
        ),
        None => (
            format!("reverted-at-{}", now.timestamp_millis()),
            now.fixed_offset(),
            ChangeEvent {
                code: "EST".into(),
                kind: None,
                description: "previous information disregarded".into(),
                location: Location::default(),
            },
            context.source,
        ),
    };
    StatusChange {
        change_id: StatusChange::id_for(
            req.carrier,
            &req.tracking_code,
            previous,
            status,
            &fingerprint,
        ),
        order_id: req.order_id.clone(),
        tracking_code: req.tracking_code.clone(),
        carrier: req.carrier,
        status,
        previous_status: previous,
        occurred_at,
        source,
        event,
        reason,
        customer: req.customer.clone(),
        marketplace: req.marketplace.clone(),
        invoice_number: req.invoice_number.clone(),
        estimated_delivery: context
            .estimated_delivery
            .or_else(|| estimated.map(|d| d.fixed_offset())),
        store: req.store.clone(),
        order: None,
    }
}

/// What a batch's updates do to one shipment.
pub(super) struct ShipmentOutcome {
    pub changes: Vec<Decided>,
    pub result: PollResult,
    pub notes: Vec<Note>,
}

/// Decides one locked shipment's updates (in the batch's order). `events` are all its stored events now, in
/// carrier-time order; `stored_now` the fingerprints this batch stored.
#[allow(clippy::too_many_arguments)]
pub(super) fn shipment_updates(
    shipment: &ShipmentRow,
    req: &TrackingRequest,
    mut status: Status,
    updates: &[&Prepared],
    events: &[&EventRow],
    stored_now: &HashSet<&str>,
    policy: &PollPolicy,
    now: DateTime<Utc>,
) -> ShipmentOutcome {
    let mut seen: HashSet<&str> = events
        .iter()
        .map(|e| e.fingerprint.as_str())
        .filter(|f| !stored_now.contains(f))
        .collect();
    let mut estimated = shipment.estimated_delivery;
    let mut not_trackable = shipment.not_trackable_reason.clone();
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let mut news = false;
    let mut polled = false;
    let mut carrier_message = None;
    let mut last_not_trackable = None;
    let mut last_status = None;
    for p in updates {
        let update = &p.update;
        let carrier = update.carrier.as_str();
        let mut inserted = 0;
        for e in &p.events {
            let fp = e.fingerprint.as_str();
            if stored_now.contains(fp) && seen.insert(fp) {
                inserted += 1;
                if e.event.occurred_at.with_timezone(&Utc) > policy.decidable_until(now) {
                    notes.push(Note::FutureDated {
                        carrier,
                        tracking_code: update.tracking_code.as_str().to_owned(),
                        code: e.event.code.clone(),
                        occurred_at: e.event.occurred_at,
                    });
                }
                if e.mapping.is_none() {
                    notes.push(Note::Unmapped {
                        carrier,
                        code: e.event.code.clone(),
                        kind: e.event.kind.clone(),
                        description: e.event.description.clone(),
                    });
                }
            }
        }
        notes.push(Note::Stored {
            carrier,
            events: inserted,
        });
        if inserted > 0 {
            news = true;
            let visible: Vec<&EventRow> = events
                .iter()
                .copied()
                .filter(|e| seen.contains(e.fingerprint.as_str()))
                .collect();
            let context = ChangeContext {
                source: update.source,
                estimated_delivery: update.estimated_delivery,
                replay: false,
                decidable_until: policy.decidable_until(now),
            };
            if let Some(decided) = next_change(req, &visible, status, &context, estimated, now) {
                status = decided.change.status;
                last_status = Some((
                    status,
                    decided.change.reason.clone(),
                    decided.change.occurred_at.with_timezone(&Utc),
                ));
                changes.push(decided);
            }
        }
        if let Some(e) = update.estimated_delivery {
            estimated = Some(e.with_timezone(&Utc));
        }
        carrier_message = update.carrier_message.clone();
        // SRO-009 and the like: the code is real but this account may not track it. Recorded on the shipment
        // for operators (and polled only at the longest interval, in case the label moves to our contract);
        // cleared by any other answer from the carrier.
        last_not_trackable = match (update.source, update.carrier_message.as_deref()) {
            (Source::Carrier, Some(message)) => {
                tracking_carriers::not_trackable_reason(update.carrier, message)
            }
            _ => None,
        };
        if update.source == Source::Carrier {
            polled = true;
            if let Some(reason) = &last_not_trackable
                && not_trackable.is_none()
            {
                notes.push(Note::NotTrackable {
                    carrier,
                    tracking_code: update.tracking_code.as_str().to_owned(),
                    order_id: req.order_id.to_string(),
                    reason: reason.clone(),
                });
            }
            not_trackable = last_not_trackable.clone();
        }
    }
    let last_news = if news { now } else { shipment.last_news_at };
    let next_poll_at = if last_not_trackable.is_some() {
        now + chrono::Duration::from_std(policy.max_interval).unwrap_or(chrono::Duration::days(1))
    } else {
        policy.next_poll(status, last_news, now)
    };
    ShipmentOutcome {
        changes,
        result: PollResult {
            shipment_id: shipment.id,
            status: last_status,
            polled,
            news,
            estimated_delivery: estimated.filter(|_| {
                updates
                    .iter()
                    .any(|p| p.update.estimated_delivery.is_some())
            }),
            carrier_message,
            next_poll_at,
            not_trackable_reason: not_trackable,
        },
        notes,
    }
}
