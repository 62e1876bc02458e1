//! Gathers one carrier account's requests into calls: up to the carrier's batch size or the linger time, a bounded number
//! of calls at once; each request gets its own code's answer back.

use super::accounts::AccountId;
use super::health::{CallKind, CarrierHealth, Shape};
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracking_carriers::{CarrierClient, FetchError, ObjectResult, redact};
use tracking_domain::TrackingRequest;
use tracking_store::Db;

pub(super) type Reply = Result<ObjectResult, FetchError>;

pub(super) struct Pending {
    pub(super) request: TrackingRequest,
    pub(super) reply: oneshot::Sender<Reply>,
}

/// Gathers one carrier's requests into calls.
pub(super) struct Batcher {
    pub(super) tx: mpsc::Sender<Pending>,
}

pub(super) struct BatchContext {
    /// The account whose credentials `client` holds: health, budget and metrics are this account's.
    pub(super) account: AccountId,
    pub(super) client: Arc<dyn CarrierClient>,
    pub(super) health: CarrierHealth,
    pub(super) pool: Option<Db>,
    pub(super) stale_after: Duration,
}

impl Batcher {
    pub(super) fn start(
        ctx: BatchContext,
        linger: Duration,
        in_flight: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(1024);
        let ctx = Arc::new(ctx);
        let slots = Arc::new(Semaphore::new(in_flight));
        tokio::spawn(async move {
            let max = ctx.client.max_batch();
            loop {
                let first = tokio::select! {
                    p = rx.recv() => match p { Some(p) => p, None => return },
                    _ = shutdown.cancelled() => return,
                };
                let mut batch: Vec<Pending> = vec![first];
                let mut distinct = 1;
                let deadline = tokio::time::Instant::now() + linger;
                while distinct < max {
                    tokio::select! {
                        p = rx.recv() => match p {
                            Some(p) => {
                                if !batch.iter().any(|b| b.request.tracking_code == p.request.tracking_code) {
                                    distinct += 1;
                                }
                                batch.push(p);
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    call(&ctx, batch).await;
                    drop(permit);
                });
            }
        });
        Self { tx }
    }
}

async fn call(ctx: &BatchContext, batch: Vec<Pending>) {
    let carrier = ctx.client.carrier();
    let account = &ctx.account;
    // An account whose access was refused is not asked again before its hold ends, however many requests wait
    // (they go back to the delay queues): no retry storm against a carrier that already said no.
    if let Some(reason) = ctx.health.held(account) {
        for p in batch {
            let _ = p.reply.send(Err(FetchError::Auth(reason.clone())));
        }
        return;
    }
    let mut codes = Vec::with_capacity(batch.len());
    for p in &batch {
        if !codes.contains(&p.request.tracking_code) {
            codes.push(p.request.tracking_code.clone());
        }
    }
    let started = Instant::now();
    let result = ctx.client.track(&codes).await;
    metrics::histogram!("carrier_call_seconds", "carrier" => carrier.as_str())
        .record(started.elapsed());
    metrics::counter!("carrier_calls_total", "carrier" => carrier.as_str(), "account" => account.key.clone())
        .increment(1);
    metrics::histogram!("carrier_batch_size", "carrier" => carrier.as_str())
        .record(codes.len() as f64);
    // An answer that reads but whose objects are mostly unrecognised (alone, or with the carrier's newest calls)
    // is the carrier changing its shape for everyone: a failure of the call, kept for replay, not each code's
    // problem.
    let (result, shape) = match result {
        Ok(answered) => {
            let shape = Shape::of(&answered);
            match ctx.health.changed_shape(account, &shape) {
                Some(reason) => (
                    Err(FetchError::Schema {
                        reason,
                        body: answered.body,
                    }),
                    shape,
                ),
                None => (Ok(answered.answers), shape),
            }
        }
        Err(e) => (Err(e), Shape::default()),
    };
    match result {
        Ok(mut answers) => {
            let horizon = Utc::now()
                - chrono::Duration::from_std(ctx.stale_after).unwrap_or(chrono::Duration::days(5));
            let stale = answers
                .values()
                .filter(|a| match a {
                    ObjectResult::Found { events, .. } => {
                        events
                            .iter()
                            .map(|e| e.occurred_at)
                            .max()
                            .is_some_and(|newest| newest < horizon)
                            && !events
                                .iter()
                                .any(|e| tracking_carriers::is_final_code(carrier, &e.code))
                    }
                    _ => false,
                })
                .count();
            ctx.health
                .record(account, CallKind::Ok, None, stale, &shape);
            for (code, answer) in &answers {
                if let ObjectResult::NotTrackable { message } = answer {
                    metrics::counter!("carrier_not_trackable_answers_total", "carrier" => carrier.as_str(),
                        "account" => account.key.clone())
                    .increment(1);
                    tracing::warn!(%carrier, %account, tracking_code = %code, message = %message,
                        "This account may not track the code (another contract's label); it stays polled rarely.");
                }
                if let ObjectResult::Unrecognised { message } = answer {
                    metrics::counter!("carrier_unrecognised_answers_total", "carrier" => carrier.as_str())
                        .increment(1);
                    tracing::warn!(%carrier, tracking_code = %code, message = %message,
                        "The carrier answered this code with something we do not recognise; the code stays polled and the other codes of the call go on.");
                }
            }
            for p in batch {
                let answer = answers
                    .get(&p.request.tracking_code)
                    .cloned()
                    .ok_or_else(|| FetchError::Transient {
                        reason: format!("the answer lacked {}", p.request.tracking_code),
                        retry_after: None,
                    });
                let _ = p.reply.send(answer);
            }
            answers.clear();
        }
        Err(e) => {
            ctx.health
                .record(account, CallKind::of(&e), Some(&e), 0, &shape);
            let unreadable = match &e {
                FetchError::Malformed {
                    reason,
                    http_status,
                    body,
                } => Some((reason, *http_status, body)),
                FetchError::Schema { reason, body } => Some((reason, Some(200), body)),
                _ => None,
            };
            if let Some((reason, http_status, body)) = unreadable {
                // The client already redacted it; this keeps the table safe whatever a client returns (no
                // secret-shaped text, no NUL that PostgreSQL refuses, a bounded size).
                let body = redact::keepable(body);
                let reason = redact::keepable(reason);
                let snippet: String = body.chars().take(500).collect();
                tracing::error!(%carrier, reason = %reason, body = %snippet, "The carrier's answer could not be read; it is kept in carrier_responses.");
                if let Some(pool) = &ctx.pool {
                    let requests: Vec<&TrackingRequest> =
                        batch.iter().map(|p| &p.request).collect();
                    let stored = tracking_store::carrier_responses::keep(
                        pool,
                        tracking_store::carrier_responses::Unreadable {
                            carrier,
                            requests: json!(requests),
                            http_status,
                            body: &body,
                            error: &reason,
                        },
                    )
                    .await;
                    if let Err(db) = stored {
                        tracing::error!(error = %db, "Could not keep the unreadable answer.");
                    }
                }
            }
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}
