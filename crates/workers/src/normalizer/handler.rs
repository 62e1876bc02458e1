//! The batch handler: read each message, apply the readable ones in one transaction, publish the changes it
//! recorded, and answer one outcome per message.
//!
//! Failures of the transaction, by kind ([`tracking_store::Failure`]):
//! - the database is unavailable: every message of the batch waits ([`Outcome::Unavailable`], no attempt spent);
//! - a serialization failure or deadlock: the transaction runs again (up to three times), then the messages are
//!   retried through the delay queues;
//! - the database refused the data (SQLSTATE classes 22, 23, a row that cannot be read): the batch is split in
//!   halves, each applied on its own in the batch's order, down to the one message that is refused, which is
//!   parked with the database's message.

use super::apply::{self, Applied};
use super::outbox::{Marker, publish_changes};
use super::prepare::{Prepared, prepare};
use crate::db_outcome;
use crate::policy::PollPolicy;
use std::time::Duration;
use tracking_domain::table::EventTables;
use tracking_runtime::amqp::{BatchHandler, Incoming, Outcome, Publisher};
use tracking_store::Db;
use tracking_store::{Failure, StoreError};

/// Transactions run again on a serialization failure or deadlock before the messages are retried later.
const CONFLICT_RETRIES: u32 = 3;

pub struct Normalizer {
    pub(super) pool: Db,
    pub(super) tables: EventTables,
    pub(super) policy: PollPolicy,
    pub(super) publisher: Publisher,
    pub(super) marker: Marker,
    pub(super) crash_after_commit: bool,
}

impl BatchHandler for Normalizer {
    async fn handle_batch(&self, batch: &[Incoming]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut items: Vec<(usize, Prepared)> = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            match prepare(&msg.body, &self.tables) {
                Ok(p) => items.push((i, p)),
                Err(reason) => outcomes[i] = Some(Outcome::Park { reason }),
            }
        }
        let refs: Vec<(usize, &Prepared)> = items.iter().map(|(i, p)| (*i, p)).collect();
        for (i, outcome) in self.apply_split(&refs).await {
            outcomes[i] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Park {
                    reason: "the normalizer decided nothing for this message".into(),
                })
            })
            .collect()
    }
}

impl Normalizer {
    /// Applies `items` in one transaction, or, when the database refuses their data, each half on its own.
    async fn apply_split(&self, items: &[(usize, &Prepared)]) -> Vec<(usize, Outcome)> {
        if items.is_empty() {
            return Vec::new();
        }
        let prepared: Vec<&Prepared> = items.iter().map(|(_, p)| *p).collect();
        let mut conflicts = 0;
        let error = loop {
            match apply::apply(&self.pool, &self.policy, &prepared).await {
                Ok(applied) => return self.committed(items, applied).await,
                Err(e) if e.failure() == Failure::Conflict && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(conflicts))).await;
                }
                Err(e) => break e,
            }
        };
        if error.failure() == Failure::Data && items.len() > 1 {
            tracing::warn!(error = %error, messages = items.len(),
                "The database refused a batch; applying it in halves to find the message it refuses.");
            let (first, second) = items.split_at(items.len() / 2);
            let mut outcomes = Box::pin(self.apply_split(first)).await;
            outcomes.extend(Box::pin(self.apply_split(second)).await);
            return outcomes;
        }
        let outcome = failed(&error);
        items.iter().map(|(i, _)| (*i, outcome.clone())).collect()
    }

    async fn committed(
        &self,
        items: &[(usize, &Prepared)],
        applied: Applied,
    ) -> Vec<(usize, Outcome)> {
        for note in &applied.notes {
            note.emit();
        }
        for change in &applied.restored {
            tracing::info!(change_id = %change.change_id, tracking_code = %change.tracking_code, from = %change.previous_status,
                to = %change.status, "Status restored by a change recorded earlier; nothing new to publish.");
        }
        for change in &applied.changes {
            tracing::info!(change_id = %change.change_id, order_id = %change.order_id, tracking_code = %change.tracking_code,
                from = %change.previous_status, to = %change.status, "Status changed.");
            metrics::counter!("status_changes_total", "status" => change.status.as_str())
                .increment(1);
        }
        if self.crash_after_commit && !applied.changes.is_empty() {
            tracing::error!(
                "FAILPOINT_CRASH_AFTER_COMMIT: aborting between the commit and the publish."
            );
            std::process::abort();
        }
        publish_changes(&self.publisher, &self.marker, &applied.changes).await;
        items
            .iter()
            .zip(applied.parked)
            .map(|((i, _), parked)| {
                (
                    *i,
                    match parked {
                        None => Outcome::Ack,
                        Some(reason) => Outcome::Park { reason },
                    },
                )
            })
            .collect()
    }
}

/// The outcome for every message of a transaction that failed.
fn failed(e: &StoreError) -> Outcome {
    db_outcome(e)
}
