//! One transaction for a batch of prepared updates: lock their shipments in a fixed order (registering those
//! a request names), store every new event in one statement, decide each shipment's changes, record them in the
//! outbox in one statement, update the shipments in one statement, commit.

use super::decide::{self, Note};
use super::prepare::Prepared;
use crate::policy::PollPolicy;
use chrono::Utc;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use tracking_domain::{StatusChange, TrackingRequest};
use tracking_store::StoreError;
use tracking_store::normalize::{self, NewChange, NewEvent};
use tracking_store::shipments::{EventRow, ShipmentRow};

/// What a committed batch did.
pub(super) struct Applied {
    /// Per item, in the order given: `None` when stored, else why it is parked.
    pub parked: Vec<Option<String>>,
    /// The changes recorded now, in the order recorded: to publish.
    pub changes: Vec<StatusChange>,
    /// To log and count now that it is committed.
    pub notes: Vec<Note>,
    /// Changes that restored a status through a change recorded earlier (nothing to publish).
    pub restored: Vec<StatusChange>,
}

/// Applies `items` in one transaction. An error means nothing was written.
pub(super) async fn apply(
    pool: &PgPool,
    policy: &PollPolicy,
    items: &[&Prepared],
) -> Result<Applied, StoreError> {
    let now = Utc::now();
    // Each shipment's updates, in the batch's order; shipments sorted by key (the lock order).
    let mut by_key: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, p) in items.iter().enumerate() {
        by_key.entry(p.key()).or_default().push(i);
    }
    // One request per shipment: the last one's context, and the last invoice number given (as applying the
    // requests one after the other would leave it).
    let mut requests: Vec<TrackingRequest> = Vec::new();
    for indexes in by_key.values() {
        let mut merged: Option<TrackingRequest> = None;
        for &i in indexes {
            if let Some(req) = &items[i].update.request {
                let invoice = req
                    .invoice_number
                    .clone()
                    .or_else(|| merged.as_ref().and_then(|m| m.invoice_number.clone()));
                let mut r = req.clone();
                r.invoice_number = invoice;
                merged = Some(r);
            }
        }
        requests.extend(merged);
    }

    let mut tx = pool.begin().await?;
    let keys: Vec<(String, String)> = by_key.keys().cloned().collect();
    let mut rows: HashMap<(String, String), ShipmentRow> = normalize::lock_sorted(&mut tx, &keys)
        .await?
        .into_iter()
        .map(|r| ((r.carrier.as_str().to_owned(), r.tracking_code.clone()), r))
        .collect();
    if !requests.is_empty() {
        let refs: Vec<&TrackingRequest> = requests.iter().collect();
        for r in normalize::register_sorted(&mut tx, &refs).await? {
            rows.insert((r.carrier.as_str().to_owned(), r.tracking_code.clone()), r);
        }
    }

    // Shipments that cannot take their updates: not registered, or a row that cannot be read back.
    let mut parked: Vec<Option<String>> = vec![None; items.len()];
    let mut ready: Vec<(
        &ShipmentRow,
        TrackingRequest,
        tracking_domain::Status,
        &[usize],
    )> = Vec::new();
    for (key, indexes) in &by_key {
        let Some(row) = rows.get(key) else {
            for &i in indexes {
                parked[i] = Some(format!("no shipment {} {} is registered", key.0, key.1));
            }
            continue;
        };
        match (row.request(), row.status()) {
            (Ok(req), Ok(status)) => ready.push((row, req, status, indexes)),
            (Err(e), _) | (_, Err(e)) => {
                for &i in indexes {
                    parked[i] = Some(format!("the database refused it: {e}"));
                }
            }
        }
    }

    // Every new event of the batch in one statement, in the batch's order.
    let mut new_events: Vec<NewEvent> = Vec::new();
    let mut queued: HashSet<&str> = HashSet::new();
    let shipment_of: HashMap<usize, i64> = ready
        .iter()
        .flat_map(|(row, _, _, indexes)| indexes.iter().map(|&i| (i, row.id)))
        .collect();
    for (i, p) in items.iter().enumerate() {
        let Some(&shipment_id) = shipment_of.get(&i) else {
            continue;
        };
        for e in &p.events {
            if !queued.insert(e.fingerprint.as_str()) {
                continue;
            }
            let ev = &e.event;
            let (status, reason, reverses) = match &e.mapping {
                Some(tracking_domain::table::Mapping::Status { status, reason }) => {
                    (Some(status.as_str().to_owned()), reason.clone(), false)
                }
                Some(tracking_domain::table::Mapping::Reverse) => (None, None, true),
                None => (None, None, false),
            };
            new_events.push(NewEvent {
                shipment_id,
                source: p.update.source.as_str(),
                fingerprint: e.fingerprint.clone(),
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
            });
        }
    }
    let stored = normalize::insert_events(&mut tx, &new_events).await?;
    let stored_now: HashSet<&str> = stored.iter().map(String::as_str).collect();

    // Read back the events of the shipments that got new ones, and decide.
    let with_news: Vec<i64> = new_events
        .iter()
        .filter(|e| stored_now.contains(e.fingerprint.as_str()))
        .map(|e| e.shipment_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let events = if with_news.is_empty() {
        Vec::new()
    } else {
        normalize::events_of(&mut tx, &with_news).await?
    };
    let mut events_by_shipment: HashMap<i64, Vec<&EventRow>> = HashMap::new();
    for e in &events {
        events_by_shipment
            .entry(e.shipment_id)
            .or_default()
            .push(&e.event);
    }
    let mut decided = Vec::new();
    let mut results = Vec::new();
    let mut notes = Vec::new();
    for (row, req, status, indexes) in &ready {
        let updates: Vec<&Prepared> = indexes.iter().map(|&i| items[i]).collect();
        let none = Vec::new();
        let shipment_events = events_by_shipment.get(&row.id).unwrap_or(&none);
        let outcome = decide::shipment_updates(
            row,
            req,
            *status,
            &updates,
            shipment_events,
            &stored_now,
            policy,
            now,
        );
        decided.extend(outcome.changes);
        results.push(outcome.result);
        notes.extend(outcome.notes);
    }

    // The outbox, in one statement (a change id decided twice in one batch is recorded once).
    let mut ids = HashSet::new();
    let mut new_changes = Vec::new();
    for d in &decided {
        if !ids.insert(d.change.change_id) {
            continue;
        }
        let payload = serde_json::to_value(&d.change)
            .map_err(|e| StoreError::Corrupt(format!("a change cannot be written: {e}")))?;
        new_changes.push(NewChange {
            change_id: d.change.change_id,
            shipment_id: rows
                .get(&(
                    d.change.carrier.as_str().to_owned(),
                    d.change.tracking_code.as_str().to_owned(),
                ))
                .map_or(0, |r| r.id),
            event_id: d.event_id,
            status: d.change.status.as_str().to_owned(),
            previous_status: d.change.previous_status.as_str().to_owned(),
            occurred_at: d.change.occurred_at.with_timezone(&Utc),
            payload,
        });
    }
    let recorded: HashSet<uuid::Uuid> = normalize::record_changes(&mut tx, &new_changes)
        .await?
        .into_iter()
        .collect();
    normalize::update_after_poll(&mut tx, &results).await?;
    tx.commit().await?;

    let mut changes = Vec::new();
    let mut restored = Vec::new();
    let mut published = HashSet::new();
    for d in decided {
        if recorded.contains(&d.change.change_id) && published.insert(d.change.change_id) {
            changes.push(d.change);
        } else {
            restored.push(d.change);
        }
    }
    Ok(Applied {
        parked,
        changes,
        notes,
        restored,
    })
}
