//! Publishing recorded changes: right after the commit that recorded them (marked published in batches, off the
//! handler's path), and by the relay for those left unpublished (a crash or a broker outage between commit and
//! publish).

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracking_app::topology::ORDER_STATUS;
use tracking_domain::StatusChange;
use tracking_runtime::amqp::{Outgoing, Publisher};
use tracking_store::Db;
use tracking_store::normalize;

/// Marks changes published in batches (one statement for all that were confirmed meanwhile), off the
/// handlers' path. A change published but not yet marked when the process dies is published again by the relay,
/// with the same change id, which both publishers deduplicate.
#[derive(Clone)]
pub(super) struct Marker {
    tx: tokio::sync::mpsc::UnboundedSender<uuid::Uuid>,
}

impl Marker {
    pub fn start(pool: Db) -> (Marker, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<uuid::Uuid>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ids = vec![first];
                // Let a few more confirms arrive, then mark them together.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while ids.len() < 1000 {
                    match rx.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                if let Err(e) = normalize::mark_published(&*pool, &ids).await {
                    tracing::warn!(error = %e, changes = ids.len(), "Could not mark published changes; the relay will publish them again.");
                }
            }
        });
        (Marker { tx }, task)
    }

    pub fn published(&self, change_id: uuid::Uuid) {
        let _ = self.tx.send(change_id);
    }
}

/// Publishes recorded changes to `order.status` (message id = change id), each with a confirm, all at once;
/// those confirmed go to the marker. A failure is not the message's failure: the change is stored, and the
/// relay publishes it later.
pub(super) async fn publish_changes(
    publisher: &Publisher,
    marker: &Marker,
    changes: &[StatusChange],
) {
    let sends = changes.iter().map(|change| async move {
        let body = serde_json::to_vec(change)?;
        let mut msg = Outgoing::json(ORDER_STATUS, change.status.as_str(), &body);
        msg.message_id = Some(change.change_id.to_string());
        publisher.publish(msg).await?;
        anyhow::Ok(())
    });
    let results = futures_util::future::join_all(sends).await;
    for (change, result) in changes.iter().zip(results) {
        match result {
            Ok(()) => marker.published(change.change_id),
            Err(e) => {
                tracing::warn!(change_id = %change.change_id, error = %e, "Status change stored but not yet published; the outbox relay will retry.");
            }
        }
    }
}

/// The outbox relay: publishes changes that were recorded but not published (a crash or a broker outage
/// between commit and publish), oldest first. Several normalizers share the work with `SKIP LOCKED`.
pub async fn outbox_relay(
    pool: Db,
    publisher: Publisher,
    every: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match relay_once(&pool, &publisher, grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                published = n,
                "The outbox relay published changes left unpublished."
            ),
            Err(e) => {
                tracing::warn!(error = %e, "The outbox relay could not run; it will try again.")
            }
        }
    }
}

/// One pass of the relay: up to 200 changes older than `grace`, each published with a confirm and marked
/// published in the relay's transaction.
pub async fn relay_once(
    pool: &Db,
    publisher: &Publisher,
    grace: Duration,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = normalize::take_unpublished(&mut tx, grace, 200).await?;
    let mut published = 0;
    for row in rows {
        let body = serde_json::to_vec(&row.payload)?;
        let mut msg = Outgoing::json(ORDER_STATUS, row.status.0.as_str(), &body);
        msg.message_id = Some(row.change_id.to_string());
        publisher.publish(msg).await?;
        normalize::mark_published(&mut *tx, &[row.change_id]).await?;
        published += 1;
    }
    tx.commit().await?;
    metrics::counter!("outbox_relayed_total").increment(published as u64);
    Ok(published)
}
