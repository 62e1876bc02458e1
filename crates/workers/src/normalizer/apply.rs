//! One transaction for a batch of prepared updates: lock their shipments in a fixed order (registering those
//! a request names, with their orders), store every new event in one statement, decide each shipment's changes,
//! record one copy per order the parcel carries in the outbox in one statement, update the shipments in one
//! statement, commit.

use super::decide::{self, Decided, Note};
use super::fanout;
use super::prepare::Prepared;
use crate::policy::PollPolicy;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tracking_domain::{OrderId, Status, StatusChange, StoreName, TrackingRequest};
use tracking_store::normalize::{self, NewEvent, PollResult, ShipmentKey};
use tracking_store::orders::{self, ParcelOrder};
use tracking_store::shipments::{EventRow, ShipmentRow};
use tracking_store::{Db, StoreError, Tx};

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
    db: &Db,
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

    let mut tx = db.begin().await?;
    let keys: Vec<ShipmentKey> = by_key.keys().cloned().collect();
    // The batch's live shipments; the other parcels of their orders are locked too (an order's progress).
    let mut rows: HashMap<ShipmentKey, ShipmentRow> = normalize::lock_sorted(&mut tx, &keys)
        .await?
        .into_iter()
        .filter(|r| r.retired_at.is_none())
        .filter_map(|r| Some((r.key().ok().filter(|k| by_key.contains_key(k))?, r)))
        .collect();
    let joined = if requests.is_empty() {
        HashSet::new()
    } else {
        register(&mut tx, policy, now, &requests, &mut rows).await?
    };
    let ids: Vec<i64> = rows.values().map(|r| r.id).collect();
    let mut orders_of: HashMap<i64, Vec<ParcelOrder>> = HashMap::new();
    for po in orders::of_parcels(&mut tx, &ids).await? {
        orders_of.entry(po.shipment_id).or_default().push(po);
    }
    let (ready, parked) = ready(&by_key, &rows, &orders_of, items.len());

    // Every new event of the batch in one statement, in the batch's order; then the events of the shipments
    // that got new ones, read back to decide with.
    let new_events = new_events(items, &ready);
    let stored = normalize::insert_events(&mut tx, &new_events).await?;
    let stored_now: HashSet<&str> = stored.iter().map(String::as_str).collect();
    let with_news: BTreeSet<i64> = new_events
        .iter()
        .filter(|e| stored_now.contains(e.fingerprint.as_str()))
        .map(|e| e.shipment_id)
        .collect();
    let events = if with_news.is_empty() {
        Vec::new()
    } else {
        normalize::events_of(&mut tx, &with_news.into_iter().collect::<Vec<_>>()).await?
    };
    let (decided, results, notes) = decide_all(&ready, items, &events, &stored_now, policy, now);

    // Each change goes to every order the parcel carries, with that order's progress over its parcels; orders
    // that joined a parcel with a history start from where it stands, before the batch's own changes.
    let decided: Vec<(i64, &StatusChange, Option<i64>)> = decided
        .iter()
        .map(|(id, d)| (*id, &d.change, d.event_id))
        .collect();
    let mut copies = fanout::catch_up(&mut tx, &joined, &orders_of).await?;
    copies.extend(fanout::copies(&mut tx, &decided, &orders_of).await?);
    let recorded = fanout::record(&mut tx, &copies).await?;
    normalize::update_after_poll(&mut tx, &results).await?;
    tx.commit().await?;

    let (changes, restored) = fanout::published(copies, &recorded);
    Ok(Applied {
        parked,
        changes,
        notes,
        restored,
    })
}

/// A shipment of the batch that can take its updates: its row, the request of its first order (what its changes
/// are decided with), its status, and the indexes of its updates in the batch.
struct Ready<'a> {
    row: &'a ShipmentRow,
    request: TrackingRequest,
    status: Status,
    indexes: &'a [usize],
}

/// The shipments that can take their updates, and per item why it is parked (`None` when it can be stored):
/// not registered, without an order, or a row that cannot be read back.
fn ready<'a>(
    by_key: &'a BTreeMap<ShipmentKey, Vec<usize>>,
    rows: &'a HashMap<ShipmentKey, ShipmentRow>,
    orders_of: &HashMap<i64, Vec<ParcelOrder>>,
    items: usize,
) -> (Vec<Ready<'a>>, Vec<Option<String>>) {
    let mut parked: Vec<Option<String>> = vec![None; items];
    let mut ready = Vec::new();
    for (key, indexes) in by_key {
        let Some(row) = rows.get(key) else {
            for &i in indexes {
                parked[i] = Some(format!(
                    "no shipment {} {} is registered for store {}",
                    key.carrier, key.tracking_code, key.store
                ));
            }
            continue;
        };
        let first = orders_of
            .get(&row.id)
            .and_then(|o| o.first())
            .ok_or_else(|| StoreError::Corrupt(format!("shipment {} has no order", row.id)));
        match (first.and_then(|o| row.request_for(&o.order)), row.status()) {
            (Ok(request), Ok(status)) => ready.push(Ready {
                row,
                request,
                status,
                indexes,
            }),
            (Err(e), _) | (_, Err(e)) => {
                for &i in indexes {
                    parked[i] = Some(format!("the database refused it: {e}"));
                }
            }
        }
    }
    (ready, parked)
}

/// The events of the ready shipments' updates to store, each fingerprint once, in the batch's order.
fn new_events(items: &[&Prepared], ready: &[Ready<'_>]) -> Vec<NewEvent> {
    let shipment_of: HashMap<usize, i64> = ready
        .iter()
        .flat_map(|r| r.indexes.iter().map(|&i| (i, r.row.id)))
        .collect();
    let mut queued: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (i, p) in items.iter().enumerate() {
        let Some(&shipment_id) = shipment_of.get(&i) else {
            continue;
        };
        for e in &p.events {
            if queued.insert(e.fingerprint.as_str()) {
                out.push(e.to_store(shipment_id, p.update.source));
            }
        }
    }
    out
}

/// Decides each ready shipment's updates: the changes (with their shipment's id), what to write on each
/// shipment, and the notes to emit once committed.
fn decide_all(
    ready: &[Ready<'_>],
    items: &[&Prepared],
    events: &[EventRow],
    stored_now: &HashSet<&str>,
    policy: &PollPolicy,
    now: DateTime<Utc>,
) -> (Vec<(i64, Decided)>, Vec<PollResult>, Vec<Note>) {
    let mut by_shipment: HashMap<i64, Vec<&EventRow>> = HashMap::new();
    for e in events {
        by_shipment.entry(e.shipment_id).or_default().push(e);
    }
    let (mut decided, mut results, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for r in ready {
        let updates: Vec<&Prepared> = r.indexes.iter().map(|&i| items[i]).collect();
        let shipment_events = by_shipment.get(&r.row.id).map_or(&[][..], Vec::as_slice);
        let outcome = decide::shipment_updates(
            r.row,
            &r.request,
            r.status,
            &updates,
            shipment_events,
            stored_now,
            policy,
            now,
        );
        decided.extend(outcome.changes.into_iter().map(|d| (r.row.id, d)));
        results.push(outcome.result);
        notes.extend(outcome.notes);
    }
    (decided, results, notes)
}

/// The requests of the batch, one per order and shipment: the last one's context, and the last invoice number
/// given (as applying the requests one after the other would leave it).
fn merged_requests(
    items: &[&Prepared],
    by_key: &BTreeMap<ShipmentKey, Vec<usize>>,
) -> Vec<(ShipmentKey, TrackingRequest)> {
    let mut out: Vec<(ShipmentKey, TrackingRequest)> = Vec::new();
    for (key, indexes) in by_key {
        let mut merged: BTreeMap<&OrderId, TrackingRequest> = BTreeMap::new();
        for &i in indexes {
            if let Some(req) = &items[i].update.request {
                let earlier = merged.get(&req.order_id);
                let invoice = req
                    .invoice_number
                    .clone()
                    .or_else(|| earlier.and_then(|m| m.invoice_number.clone()));
                let mut r = req.clone();
                r.invoice_number = invoice;
                merged.insert(&req.order_id, r);
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
    tx: &mut Tx,
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
        rows.insert(r.key()?, r);
    }
    let mut by_order: BTreeMap<(&StoreName, &OrderId), &TrackingRequest> = BTreeMap::new();
    for (_, r) in requests {
        by_order.insert((&r.store, &r.order_id), r);
    }
    let order_requests: Vec<&TrackingRequest> = by_order.values().copied().collect();
    let refs: HashMap<(&str, &str), i64> = orders::upsert(tx, &order_requests)
        .await?
        .into_iter()
        .filter_map(|(store, order_id, id)| {
            // The statement answers with the values it was given: find them back among the requests.
            let (s, o) = by_order
                .keys()
                .find(|(s, o)| s.as_str() == store && o.as_str() == order_id)?;
            Some(((s.as_str(), o.as_str()), id))
        })
        .collect();
    let links: Vec<(i64, i64)> = requests
        .iter()
        .filter_map(|(key, r)| {
            let order = refs.get(&(r.store.as_str(), r.order_id.as_str()))?;
            Some((*order, rows.get(key)?.id))
        })
        .collect();
    Ok(orders::link(tx, &links)
        .await?
        .into_iter()
        .map(|(order_ref, shipment_id)| (shipment_id, order_ref))
        .collect())
}
