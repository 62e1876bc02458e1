//! The customer's rights over HTTP (LGPD Art. 18; docs/privacy.md), behind the bearer token like every `/v1` call:
//!
//! - `GET /v1/customers/{email}/data`: everything stored about the address as JSON
//!   ([`tracking_store::customers::data`]): its orders with their parcels, status changes, emails and late notices,
//!   and its opt-outs. An address nothing is stored about gets `200` with empty lists (the answer does not say
//!   whether an address is known beyond what it lists); a malformed address `422`.
//! - `DELETE /v1/customers/{email}`: erases the address from the database ([`tracking_store::customers::erase_address`])
//!   and drops the parked messages that carry it ([`tracking_runtime::parked::erase`]), and answers the counts.
//!   Repeating it is harmless (it finds nothing the second time). When RabbitMQ cannot be reached after the
//!   database was erased, `503` with what was erased: repeat it.
//!
//! Each request leaves an audit row (`customer_requests`): the keyed hash of the address (under
//! `UNSUBSCRIBE_SECRET`'s key; none without it), `requested_by` `api`, the time and the counts. Logs name no address.

use crate::AppState;
use crate::auth::Authorized;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tracking_domain::{AddressHash, EmailAddress, FieldError, UnsubscribeKey};
use tracking_runtime::amqp::AmqpSettings;
use tracking_store::customers::{self, RequestKind};

/// Orders listed at most in one access answer (`orders_truncated` says when there are more).
pub const MAX_ORDERS: i64 = 1000;

/// Who the audit records as asking through the API (the holder of `API_TOKEN`).
pub const REQUESTED_BY: &str = "api";

/// What the customer routes need beside the pool.
#[derive(Clone)]
pub struct Customers {
    amqp: AmqpSettings,
    key: Option<UnsubscribeKey>,
}

impl Customers {
    pub fn new(amqp: AmqpSettings, key: Option<UnsubscribeKey>) -> Self {
        Self { amqp, key }
    }

    fn hash(&self, address: &EmailAddress) -> Option<AddressHash> {
        self.key.as_ref().map(|k| k.address_hash(address))
    }
}

/// The path's address, or `422` naming the field.
pub fn address(p: Result<Path<String>, PathRejection>) -> Result<EmailAddress, ApiError> {
    let Path(raw) = p.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the path's email cannot be read: {}", e.body_text()),
        )
    })?;
    EmailAddress::parse(&raw).map_err(|_| {
        ApiError::fields(
            "invalid email address",
            &[FieldError {
                field: "email".into(),
                message: "is not an email address".into(),
            }],
        )
    })
}

pub async fn data(
    _: Authorized,
    State(state): State<AppState>,
    email: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let address = address(email)?;
    let c = &state.inner.customers;
    let hash = c.hash(&address);
    let data = customers::data(
        &state.inner.pool,
        address.as_str(),
        hash.as_ref(),
        MAX_ORDERS,
    )
    .await
    .map_err(ApiError::database)?;
    let counts = json!({
        "orders": data["orders"].as_array().map_or(0, Vec::len),
        "opt_outs": data["opt_outs"].as_array().map_or(0, Vec::len),
    });
    customers::audit(
        &state.inner.pool,
        RequestKind::Access,
        hash.as_ref(),
        REQUESTED_BY,
        &counts,
    )
    .await
    .map_err(ApiError::database)?;
    metrics::counter!("customer_requests_total", "kind" => "access", "result" => "ok").increment(1);
    tracing::info!(orders = %counts["orders"], "Served a customer's access request.");
    Ok(Json(data))
}

pub async fn erase(
    _: Authorized,
    State(state): State<AppState>,
    email: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let address = address(email)?;
    let c = &state.inner.customers;
    let hash = c.hash(&address);
    let erased = customers::erase_address(&state.inner.pool, address.as_str(), hash.as_ref())
        .await
        .map_err(ApiError::database)?;
    count_erased(&erased);
    let parked =
        tracking_runtime::parked::erase(&c.amqp, "tracking-api-erase", address.as_str()).await;
    let mut counts = erased.to_json();
    let (parked_json, failed) = match &parked {
        Ok(queues) => {
            counts["parked_messages"] = json!(queues.iter().map(|q| q.dropped).sum::<u64>());
            (
                json!(
                    queues
                        .iter()
                        .map(|q| json!({"queue": q.queue, "read": q.read, "dropped": q.dropped}))
                        .collect::<Vec<_>>()
                ),
                None,
            )
        }
        Err(e) => {
            counts["parked_messages"] = json!("not swept: RabbitMQ failed");
            (json!([]), Some(e.to_string()))
        }
    };
    let audit_id = customers::audit(
        &state.inner.pool,
        RequestKind::Erasure,
        hash.as_ref(),
        REQUESTED_BY,
        &counts,
    )
    .await
    .map_err(ApiError::database)?;
    if let Some(e) = failed {
        metrics::counter!("customer_requests_total", "kind" => "erasure", "result" => "partial")
            .increment(1);
        tracing::warn!(error = %e, audit_id, "Erased a customer from the database, but not from the parked messages.");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "erased from the database; the parked messages could not be swept (RabbitMQ refused or failed; see the log): repeat the request, or run `trackctl customer erase` with the operators' broker user",
        )
        .retry_after(5)
        .with_detail(json!({"erased": counts, "audit_id": audit_id})));
    }
    metrics::counter!("customer_requests_total", "kind" => "erasure", "result" => "ok")
        .increment(1);
    tracing::info!(audit_id, orders = erased.orders, parked = %counts["parked_messages"], "Erased a customer's personal data on request.");
    Ok(Json(
        json!({"erased": counts, "parked_queues": parked_json, "audit_id": audit_id}),
    ))
}

fn count_erased(erased: &customers::Erased) {
    for (table, n) in [
        ("orders", erased.orders),
        ("status_changes", erased.status_changes),
        ("carrier_responses", erased.carrier_responses),
        ("deliveries", erased.deliveries),
        ("email_opt_outs", erased.opt_outs),
    ] {
        if n > 0 {
            metrics::counter!("personal_data_erased_total", "reason" => "request", "table" => table)
                .increment(n);
        }
    }
}
