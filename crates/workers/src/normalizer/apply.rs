//! One transaction for a batch of prepared updates: lock their shipments in a fixed order (registering those
//! a request names, with their orders), store every new event in one statement, decide each shipment's changes,
//! record one copy per order the parcel carries in the outbox in one statement, update the shipments in one
//! statement, commit.

use super::decide::{self, Decided, Note};
use super::fanout;
use super::prepare::Prepared;
use crate::policy::PollPolicy;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use tracking_domain::{StatusChange, TrackingRequest};
use tracking_store::StoreError;
use tracking_store::normalize::{self, NewEvent, ShipmentKey};
use tracking_store::orders::{self, ParcelOrder};
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
    let mut by_key: BTreeMap<ShipmentKey, Vec<usize>> = BTreeMap::new();
    for (i, p) in items.iter().enumerate() {
        by_key.entry(p.key()).or_default().push(i);
    }
    let requests = merged_requests(items, &by_key);

    let mut tx = pool.begin().await?;
    let keys: Vec<ShipmentKey> = by_key.keys().cloned().collect();
    // The batch's live shipments; the other parcels of their orders are locked too (an order's progress).
    let mut rows: HashMap<ShipmentKey, ShipmentRow> = normalize::lock_sorted(&mut tx, &keys)
        .await?
        .into_iter()
        .filter(|r| r.retired_at.is_none() && by_key.contains_key(&r.key()))
        .map(|r| (r.key(), r))
        .collect();
    let joined = if requests.is_empty() {
        HashSet::new()
    } else {
        register(&mut tx, policy, now, &requests, &mut rows).await?
    };

    // Shipments that cannot take their updates: not registered, without an order, or a row that cannot be
    // read back. Each ready one with the request of its first order (what its changes are decided with).
    let ids: Vec<i64> = rows.values().map(|r| r.id).collect();
    let mut orders_of: HashMap<i64, Vec<ParcelOrder>> = HashMap::new();
    for po in orders::of_parcels(&mut tx, &ids).await? {
        orders_of.entry(po.shipment_id).or_default().push(po);
    }
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
                parked[i] = Some(format!(
                    "no shipment {} {} is registered for store {}",
                    key.1, key.2, key.0
                ));
            }
            continue;
        };
        let first = orders_of
            .get(&row.id)
            .and_then(|o| o.first())
            .ok_or_else(|| StoreError::Corrupt(format!("shipment {} has no order", row.id)));
        match (first.and_then(|o| row.request_for(&o.order)), row.status()) {
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

    // Each change goes to every order the parcel carries, with that order's progress over its parcels.
    let shipment_of_change: HashMap<ShipmentKey, i64> =
        ready.iter().map(|(row, ..)| (row.key(), row.id)).collect();
    let decided: Vec<(i64, Decided)> = decided
        .into_iter()
        .filter_map(|d| {
            let key = (
                d.change.store.as_str().to_owned(),
                d.change.carrier.as_str().to_owned(),
                d.change.tracking_code.as_str().to_owned(),
            );
            shipment_of_change.get(&key).map(|&id| (id, d))
        })
        .collect();
    let decided: Vec<(i64, &StatusChange, Option<i64>)> = decided
        .iter()
        .map(|(id, d)| (*id, &d.change, d.event_id))
        .collect();
    // Orders that joined a parcel with a history start from where it stands, before the batch's own changes.
    let mut copies = fanout::catch_up(&mut tx, &joined, &orders_of).await?;
    copies.extend(fanout::copies(&mut tx, &decided, &orders_of).await?);

    // The outbox, in one statement (a change id decided twice in one batch is recorded once).
    let mut ids = HashSet::new();
    let mut new_changes = Vec::new();
    for c in &copies {
        if !ids.insert(c.change.change_id) {
            continue;
        }
        new_changes.push(fanout::new_change(c)?);
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
    for c in copies {
        if recorded.contains(&c.change.change_id) && published.insert(c.change.change_id) {
            changes.push(c.change);
        } else {
            restored.push(c.change);
        }
    }
    Ok(Applied {
        parked,
        changes,
        notes,
        restored,
    })
}

/// The requests of the batch, one per order and shipment: the last one's context, and the last invoice number
/// given (as applying the requests one after the other would leave it).
fn merged_requests(
    items: &[&Prepared],
    by_key: &BTreeMap<ShipmentKey, Vec<usize>>,
) -> Vec<(ShipmentKey, TrackingRequest)> {
    let mut out: Vec<(ShipmentKey, TrackingRequest)> = Vec::new();
    for (key, indexes) in by_key {
        let mut merged: BTreeMap<String, TrackingRequest> = BTreeMap::new();
        for &i in indexes {
            if let Some(req) = &items[i].update.request {
                let earlier = merged.get(req.order_id.as_str());
                let invoice = req
                    .invoice_number
                    .clone()
                    .or_else(|| earlier.and_then(|m| m.invoice_number.clone()));
                let mut r = req.clone();
                r.invoice_number = invoice;
                merged.insert(req.order_id.as_str().to_owned(), r);
            }
        }
        out.extend(merged.into_values().map(|r| (key.clone(), r)));
    }
    out
}

/// Registers what the batch's requests name: a parcel whose code came back for an order it does not carry long
/// after it finished is retired and a new one takes the code ([`PollPolicy::recycles`]); missing parcels are
/// registered (a quarantined one is lifted); each order is registered or its context updated, and linked to its
/// parcel. `rows` ends with every live parcel the requests name. Returns the links made now
/// (`(shipment_id, order_ref)`).
async fn register(
    tx: &mut PgConnection,
    policy: &PollPolicy,
    now: DateTime<Utc>,
    requests: &[(ShipmentKey, TrackingRequest)],
    rows: &mut HashMap<ShipmentKey, ShipmentRow>,
) -> Result<HashSet<(i64, i64)>, StoreError> {
    let known: Vec<i64> = rows.values().map(|r| r.id).collect();
    let mut carried: HashSet<(i64, String)> = HashSet::new();
    for po in orders::of_parcels(tx, &known).await? {
        carried.insert((po.shipment_id, po.order.order_id));
    }
    let mut retired = Vec::new();
    let mut request_keys: Vec<ShipmentKey> = Vec::new();
    for (key, req) in requests {
        if request_keys.last() != Some(key) {
            request_keys.push(key.clone());
        }
        let Some(row) = rows.get(key) else { continue };
        let carries_one = requests
            .iter()
            .filter(|(k, _)| k == key)
            .any(|(_, r)| carried.contains(&(row.id, r.order_id.as_str().to_owned())));
        if !carries_one && policy.recycles(row.finished_at, now) {
            tracing::info!(shipment_id = row.id, tracking_code = %req.tracking_code, finished_at = ?row.finished_at,
                "A code came back for a new order long after its parcel finished: a new parcel takes it, the old one keeps its history and orders.");
            metrics::counter!("shipments_recycled_total", "carrier" => req.carrier.as_str())
                .increment(1);
            retired.push(row.id);
            rows.remove(key);
        }
    }
    normalize::retire(tx, &retired).await?;
    for r in normalize::register_sorted(tx, &request_keys).await? {
        rows.insert(r.key(), r);
    }
    let mut by_order: BTreeMap<(String, String), &TrackingRequest> = BTreeMap::new();
    for (_, r) in requests {
        by_order.insert(
            (r.store.as_str().to_owned(), r.order_id.as_str().to_owned()),
            r,
        );
    }
    let order_requests: Vec<&TrackingRequest> = by_order.values().copied().collect();
    let refs: HashMap<(String, String), i64> = orders::upsert(tx, &order_requests)
        .await?
        .into_iter()
        .map(|(store, order_id, id)| ((store, order_id), id))
        .collect();
    let links: Vec<(i64, i64)> = requests
        .iter()
        .filter_map(|(key, r)| {
            let order = refs.get(&(r.store.as_str().to_owned(), r.order_id.as_str().to_owned()))?;
            Some((*order, rows.get(key)?.id))
        })
        .collect();
    Ok(orders::link(tx, &links)
        .await?
        .into_iter()
        .map(|(order_ref, shipment_id)| (shipment_id, order_ref))
        .collect())
}
