//! `trackctl shipment recompute`: the stored events read again through new code tables.

use super::decide::{self, ChangeContext};
use super::fanout;
use crate::policy::PollPolicy;
use chrono::Utc;
use std::collections::HashMap;
use tracking_domain::table::{EventTables, Mapping};
use tracking_domain::{Source, StatusChange};
use tracking_store::Db;
use tracking_store::orders;
use tracking_store::shipments;
use tracking_store::{Text, normalize};

/// What [`recompute`] did.
#[derive(Debug, Default)]
pub struct RecomputeReport {
    pub shipments: usize,
    /// Stored events whose mapping (status, reason, reversal) the current tables changed.
    pub events_remapped: usize,
    /// The new changes recorded (in the outbox; the relay publishes them).
    pub changes: Vec<StatusChange>,
}

/// Re-reads every stored carrier event of the selected shipments (all when `only` is `None`) through `tables`,
/// for when the event-code table changed: stores each event's new mapping and records a status change where the
/// status moved. Only new changes are recorded: a shipment whose status stays puts nothing in the outbox, and
/// change ids derive from the move and its deciding event, so running it twice records nothing the second time.
/// Expired shipments stay expired (only carrier news revives them).
pub async fn recompute(
    pool: &Db,
    tables: &EventTables,
    policy: &PollPolicy,
    only: Option<&str>,
) -> anyhow::Result<RecomputeReport> {
    let keys = normalize::shipment_keys(pool, only).await?;
    let mut report = RecomputeReport::default();
    for key in keys {
        let mut tx = pool.begin().await?;
        // The shipment and the other parcels of its orders (an order's progress), in the normalizer's lock order.
        let Some(shipment) = normalize::lock_sorted(&mut tx, std::slice::from_ref(&key))
            .await?
            .into_iter()
            .find(|r| r.retired_at.is_none() && r.key().is_ok_and(|k| k == key))
        else {
            continue;
        };
        report.shipments += 1;
        let parcel_orders = orders::of_parcels(&mut tx, &[shipment.id]).await?;
        let Some(first) = parcel_orders.first() else {
            continue;
        };
        let req = shipment.request_for(&first.order)?;
        let mut rows = shipments::events(&mut tx, shipment.id).await?;
        let mut remapped = 0;
        for row in rows.iter_mut().filter(|r| r.source() == Source::Carrier) {
            let (status, reason, reverses) =
                match tables.lookup(req.carrier, &row.code, row.kind.as_deref()) {
                    Some(Mapping::Status { status, reason }) => {
                        (Some(*status), reason.clone(), false)
                    }
                    Some(Mapping::Reverse) => (None, None, true),
                    None => (None, None, false),
                };
            if (status, &reason, reverses) != (row.status(), &row.reason, row.reverses) {
                normalize::remap_event(&mut tx, row.id, status, reason.as_deref(), reverses)
                    .await?;
                (row.status, row.reason, row.reverses) = (status.map(Text), reason, reverses);
                remapped += 1;
            }
        }
        report.events_remapped += remapped;
        if remapped > 0 {
            let now = Utc::now();
            let context = ChangeContext {
                source: Source::Carrier,
                estimated_delivery: None,
                replay: true,
                decidable_until: policy.decidable_until(now),
            };
            let events: Vec<&shipments::EventRow> = rows.iter().collect();
            let previous = shipment.status()?;
            if let Some(d) = decide::next_change(
                &req,
                &events,
                previous,
                &context,
                shipment.estimated_delivery,
                now,
            ) {
                let change = d.change;
                let orders_of = HashMap::from([(shipment.id, parcel_orders)]);
                let copies =
                    fanout::copies(&mut tx, &[(shipment.id, &change, d.event_id)], &orders_of)
                        .await?;
                let recorded = fanout::record(&mut tx, &copies).await?;
                normalize::set_status(
                    &mut tx,
                    shipment.id,
                    change.status,
                    change.reason.as_deref(),
                    change.occurred_at.with_timezone(&Utc),
                )
                .await?;
                for copy in copies {
                    let change = copy.change;
                    if !recorded.contains(&change.change_id) {
                        tracing::info!(change_id = %change.change_id, tracking_code = %change.tracking_code, from = %previous,
                            to = %change.status, "Status restored by a change recorded earlier; nothing new to publish.");
                    } else {
                        tracing::info!(change_id = %change.change_id, order_id = %change.order_id, tracking_code = %change.tracking_code,
                            from = %previous, to = %change.status, "Status changed.");
                        metrics::counter!("status_changes_total", "status" => change.status.as_str())
                            .increment(1);
                        report.changes.push(change);
                    }
                }
            }
        }
        tx.commit().await?;
    }
    Ok(report)
}
