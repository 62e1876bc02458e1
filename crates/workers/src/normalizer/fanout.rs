//! A parcel's change, as each order it carries receives it: that order's id, customer, marketplace and invoice,
//! the change id of that order ([`StatusChange::id_for_order`]: the first order keeps the parcel's), and the
//! order's progress over all its parcels once the change is applied.

use chrono::Utc;
use std::collections::{HashMap, HashSet};
use tracking_domain::{OrderProgress, Status, StatusChange, StoreName};
use tracking_store::normalize::{self, NewChange};
use tracking_store::orders::{self, ParcelOrder};
use tracking_store::{StoreError, Tx};
use uuid::Uuid;

/// One order's copy of a parcel's change.
pub(crate) struct Copy {
    pub change: StatusChange,
    pub shipment_id: i64,
    pub order_ref: i64,
    pub event_id: Option<i64>,
}

/// The copies of `decided` (each with its shipment id, in the order decided) for every order of its parcel
/// (`orders_of`, by shipment, the first order first). The orders' other parcels must be locked by the caller
/// (`normalize::lock_sorted` does): their statuses are read here.
pub(crate) async fn copies(
    tx: &mut Tx,
    decided: &[(i64, &StatusChange, Option<i64>)],
    orders_of: &HashMap<i64, Vec<ParcelOrder>>,
) -> Result<Vec<Copy>, StoreError> {
    let mut refs: Vec<i64> = decided
        .iter()
        .flat_map(|(sid, ..)| orders_of.get(sid).into_iter().flatten())
        .map(|po| po.order.order_ref)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    refs.sort_unstable();
    let mut parcels: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut status: HashMap<i64, Status> = HashMap::new();
    for (order_ref, shipment_id, stored) in orders::parcel_statuses(tx, &refs).await? {
        parcels.entry(order_ref).or_default().push(shipment_id);
        if let Ok(s) = stored.known() {
            status.insert(shipment_id, s);
        }
    }
    let mut out = Vec::new();
    for &(shipment_id, change, event_id) in decided {
        status.insert(shipment_id, change.status);
        for (i, po) in orders_of
            .get(&shipment_id)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let statuses: Vec<Status> = parcels
                .get(&po.order.order_ref)
                .into_iter()
                .flatten()
                .filter_map(|p| status.get(p).copied())
                .collect();
            out.push(Copy {
                change: for_order(change, i == 0, po, OrderProgress::of(&statuses))?,
                shipment_id,
                order_ref: po.order.order_ref,
                event_id,
            });
        }
    }
    Ok(out)
}

/// For each order that joined a parcel now (`joined`: `(shipment_id, order_ref)`) after the parcel's first order
/// had changes: a copy of the latest of them, so the new order's customer and marketplace learn where the parcel
/// stands; its id derives from that change's, so recording it again adds nothing.
pub(crate) async fn catch_up(
    tx: &mut Tx,
    joined: &HashSet<(i64, i64)>,
    orders_of: &HashMap<i64, Vec<ParcelOrder>>,
) -> Result<Vec<Copy>, StoreError> {
    let mut ids: Vec<i64> = joined.iter().map(|(s, _)| *s).collect();
    ids.sort_unstable();
    ids.dedup();
    let latest = tracking_store::normalize::latest_changes_of_first_orders(tx, &ids).await?;
    let mut out = Vec::new();
    for (shipment_id, event_id, payload) in latest {
        let Ok(base) = serde_json::from_value::<StatusChange>(payload) else {
            continue;
        };
        let parcel_orders = orders_of.get(&shipment_id).into_iter().flatten();
        for po in parcel_orders
            .skip(1)
            .filter(|po| joined.contains(&(shipment_id, po.order.order_ref)))
        {
            let mut statuses = Vec::new();
            for (_, _, stored) in orders::parcel_statuses(tx, &[po.order.order_ref]).await? {
                statuses.extend(stored.known().ok());
            }
            out.push(Copy {
                change: for_order(&base, false, po, OrderProgress::of(&statuses))?,
                shipment_id,
                order_ref: po.order.order_ref,
                event_id,
            });
        }
    }
    Ok(out)
}

/// `base` as the order `po` receives it.
pub(crate) fn for_order(
    base: &StatusChange,
    first: bool,
    po: &ParcelOrder,
    progress: OrderProgress,
) -> Result<StatusChange, StoreError> {
    let store = StoreName::parse(&po.store)
        .map_err(|e| StoreError::Corrupt(format!("order {}: store: {e}", po.order.order_ref)))?;
    let req = po
        .order
        .request(store, base.carrier, base.tracking_code.clone())?;
    let mut c = base.clone();
    c.change_id = StatusChange::id_for_order(base.change_id, first, &req.store, &req.order_id);
    c.order_id = req.order_id;
    c.customer = req.customer;
    c.marketplace = req.marketplace;
    c.invoice_number = req.invoice_number;
    c.store = req.store;
    c.order = Some(progress);
    Ok(c)
}

/// Records the copies in the outbox, in one statement and in their order (a change id given twice is recorded
/// once): the one way a status change is recorded, for the normalizer, `recompute` and the scheduler. Returns
/// the ids recorded now; a copy whose id was recorded earlier restores a status and has nothing new to publish.
pub(crate) async fn record(tx: &mut Tx, copies: &[Copy]) -> Result<HashSet<Uuid>, StoreError> {
    let rows = copies
        .iter()
        .map(new_change)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(normalize::record_changes(tx, &rows)
        .await?
        .into_iter()
        .collect())
}

/// The copies' changes: those `recorded` now, each once and in order (to publish), and the others (restored
/// through a change recorded earlier, or a second copy of one).
pub(crate) fn published(
    copies: Vec<Copy>,
    recorded: &HashSet<Uuid>,
) -> (Vec<StatusChange>, Vec<StatusChange>) {
    let (mut changes, mut restored, mut seen) = (Vec::new(), Vec::new(), HashSet::new());
    for c in copies {
        if recorded.contains(&c.change.change_id) && seen.insert(c.change.change_id) {
            changes.push(c.change);
        } else {
            restored.push(c.change);
        }
    }
    (changes, restored)
}

/// The outbox row of a copy.
fn new_change(c: &Copy) -> Result<NewChange, StoreError> {
    Ok(NewChange {
        change_id: c.change.change_id,
        shipment_id: c.shipment_id,
        order_ref: Some(c.order_ref),
        event_id: c.event_id,
        status: c.change.status,
        previous_status: c.change.previous_status,
        occurred_at: c.change.occurred_at.with_timezone(&Utc),
        payload: serde_json::to_value(&c.change)
            .map_err(|e| StoreError::Corrupt(format!("a change cannot be written: {e}")))?,
    })
}
