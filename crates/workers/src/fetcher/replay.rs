//! `trackctl carriers replay`: the kept unreadable answers, read again with today's parsers.

use super::handler::{publish_update, update_for};
use std::collections::BTreeMap;
use std::sync::Arc;
use tracking_carriers::CarrierClient;
use tracking_domain::{Carrier, TrackingRequest};
use tracking_runtime::amqp::Publisher;
use tracking_store::Db;

/// What [`replay_responses`] did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub replayed: usize,
    pub published: usize,
    pub still_unreadable: usize,
}

/// Reads the kept unreadable answers again with today's parsers and publishes their events (the normalizer
/// deduplicates whatever the retried requests already brought). Answers that still cannot be read keep their row,
/// with the new error in `replay_error`.
pub async fn replay_responses(
    pool: &Db,
    clients: &BTreeMap<Carrier, Arc<dyn CarrierClient>>,
    publisher: &Publisher,
) -> anyhow::Result<ReplayReport> {
    let kept = tracking_store::carrier_responses::pending(pool).await?;
    let mut report = ReplayReport::default();
    for tracking_store::carrier_responses::Kept {
        id,
        carrier,
        requests,
        body,
    } in kept
    {
        let carrier: Carrier = carrier.0;
        let Some(client) = clients.get(&carrier) else {
            anyhow::bail!("carrier_responses {id} is for {carrier}, which is not configured here");
        };
        let requests: Vec<TrackingRequest> = serde_json::from_value(requests)?;
        let codes: Vec<_> = requests.iter().map(|r| r.tracking_code.clone()).collect();
        // Judged as the live calls are: an answer whose objects are still mostly unrecognised is still unreadable.
        match client
            .parse(&codes, &body)
            .and_then(|answers| tracking_carriers::judge_shape(answers, &body))
        {
            Ok(answers) => {
                for request in requests {
                    let Some(answer) = answers.get(&request.tracking_code).cloned() else {
                        continue;
                    };
                    if let Ok(update) = update_for(request, answer) {
                        publish_update(publisher, &update).await?;
                        report.published += 1;
                    }
                }
                tracking_store::carrier_responses::replayed(pool, id).await?;
                report.replayed += 1;
            }
            Err(e) => {
                tracking_store::carrier_responses::still_unreadable(pool, id, &e.to_string())
                    .await?;
                report.still_unreadable += 1;
            }
        }
    }
    Ok(report)
}
