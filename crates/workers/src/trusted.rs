//! Publishers trust the database, not the message: a status change from `order.status` is sent only when the
//! normalizer recorded exactly that change in `status_changes`, so a forged or altered message cannot email a
//! customer or tell a marketplace that an order was delivered. The recorded change is what gets sent.

use crate::db_outcome;
use crate::deliver::{Answer, batching};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use tracking_domain::{Status, StatusChange};
use tracking_runtime::amqp::Outcome;
use tracking_runtime::coalesce::Coalescer;
use tracking_store::changes::{self, Recorded};
use uuid::Uuid;

/// The trust reads of one publisher process: those of every handler waiting at the same moment are made in one
/// statement.
#[derive(Clone)]
pub struct Reads {
    recorded: Coalescer<Uuid, Answer<Option<Recorded>>>,
}

impl Reads {
    /// Starts the batching task; it stops when the last clone is dropped.
    pub fn start(pool: &tracking_store::Db) -> Reads {
        Reads {
            recorded: batching(pool, |pool, ids: Vec<Uuid>| async move {
                changes::recorded_many(&pool, &ids).await
            }),
        }
    }
}

/// A change as recorded, with what happened to its shipment since.
pub struct Trusted {
    pub change: StatusChange,
    /// The status of a later change of the same shipment, when there is one.
    pub superseded_by: Option<Status>,
    /// The order's customer was erased since the message was published: `change.customer` is the placeholder,
    /// and the customer gets nothing.
    pub erased: bool,
}

/// Reads the message as a status change and checks it against the recorded one. `Err` is the message's outcome:
/// parked when it is not a change, not recorded, or not what was recorded; held while the database is down.
pub async fn recorded(reads: &Reads, body: &[u8]) -> Result<Trusted, Outcome> {
    let park = |reason: String| Outcome::Park { reason };
    let message: StatusChange =
        serde_json::from_slice(body).map_err(|e| park(format!("not a status change: {e}")))?;
    let read = match reads.recorded.call(message.change_id).await {
        Ok(read) => read.map_err(|e| db_outcome(&e))?,
        Err(gone) => {
            return Err(Outcome::Wait {
                after: Duration::from_secs(1),
                reason: format!("the recorded change: {gone}"),
            });
        }
    };
    let Some(row) = read else {
        metrics::counter!("changes_refused_total", "reason" => "not_recorded").increment(1);
        tracing::warn!(change_id = %message.change_id, "A status change that was never recorded arrived; parking it.");
        return Err(park(format!(
            "change {} is not recorded in status_changes: only changes the normalizer recorded are sent",
            message.change_id
        )));
    };
    let change: StatusChange = match StatusChange::deserialize(&row.payload) {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("rows_quarantined_total", "table" => "status_changes").increment(1);
            tracing::error!(change_id = %message.change_id, error = %e, "A recorded status change cannot be read back; parking its message.");
            return Err(park(format!(
                "the recorded change {} cannot be read: {e}",
                message.change_id
            )));
        }
    };
    // A change published before its customer was erased still carries the customer: every other field must
    // match what was recorded.
    let message = if row.erased {
        StatusChange {
            customer: change.customer.clone(),
            ..message
        }
    } else {
        message
    };
    if change != message {
        metrics::counter!("changes_refused_total", "reason" => "altered").increment(1);
        let field = first_difference(&row.payload, body).unwrap_or_else(|| "?".into());
        tracing::warn!(change_id = %message.change_id, field = %field, "A status change differs from the recorded one; parking it.");
        return Err(park(format!(
            "change {} differs from the recorded change (field {field}): only what the normalizer recorded is sent",
            message.change_id
        )));
    }
    Ok(Trusted {
        change,
        superseded_by: row.superseded_by.map(|s| s.0),
        erased: row.erased,
    })
}

/// The first top-level field whose value differs between the recorded payload and the message.
fn first_difference(recorded: &Value, body: &[u8]) -> Option<String> {
    let message: Value = serde_json::from_slice(body).ok()?;
    let (Value::Object(a), Value::Object(b)) = (recorded, &message) else {
        return None;
    };
    a.keys()
        .chain(b.keys())
        .find(|k| a.get(*k) != b.get(*k))
        .cloned()
}
