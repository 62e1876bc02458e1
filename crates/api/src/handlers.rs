//! The endpoints of `tracking-api` (crates/api/openapi.json; docs/features.md, "HTTP API").

use crate::AppState;
use crate::auth::{Authorized, Scope};
use crate::body::{Body, DeliveryConfirmation, ManualEvent, json_object};
use crate::error::ApiError;
use crate::tracking::newest;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Map, Value, json};
use tracking_app::topology::{CARRIER_EVENTS, TRACKING_REQUESTS};
use tracking_domain::{
    Carrier, CarrierEvent, CarrierUpdate, FieldError, Location, OrderId, Source, Status,
    TrackingCode, TrackingRequest,
};
use tracking_runtime::amqp::{Outgoing, PublishError};
use tracking_store::shipments::{self, ShipmentRow};
use tracking_store::views;

type Accepted = (StatusCode, Json<Value>);

/// The event code of every event entered by hand.
pub const MANUAL_CODE: &str = "MANUAL";
/// The description of a delivery confirmation without a note.
pub const CONFIRMATION_DESCRIPTION: &str = "Delivery confirmed by support";

fn path_param(p: Result<Path<String>, PathRejection>, name: &str) -> Result<String, ApiError> {
    p.map(|Path(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the path's {name} cannot be read: {}", e.body_text()),
        )
    })
}

/// `Retry-After` when RabbitMQ blocks publishing (a resource alarm lasts until an operator or the broker clears it).
pub const BLOCKED_RETRY_AFTER_SECS: u32 = 30;
/// `Retry-After` when a publish failed otherwise (the broker unreachable, no confirm in time).
pub const PUBLISH_RETRY_AFTER_SECS: u32 = 5;

fn unavailable(what: &str, e: PublishError) -> ApiError {
    tracing::warn!(error = %e, "{what}");
    let after = if e.is_blocked() {
        BLOCKED_RETRY_AFTER_SECS
    } else {
        PUBLISH_RETRY_AFTER_SECS
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what}: {e}; try again (repeating the call is harmless)"),
    )
    .retry_after(after)
}

/// `POST /v1/tracking-requests`: validated as the fetcher would, and its marketplace known, then queued on
/// `tracking.requests`.
pub async fn create_tracking_request(
    Authorized(scope): Authorized,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Accepted, ApiError> {
    let map = json_object(&headers, body, state.inner.body_limit)?;
    let unknown = state.inner.marketplaces.check(&map);
    let named_store = map.contains_key("store");
    let request = match (TrackingRequest::from_value(&Value::Object(map)), unknown) {
        (Ok(mut request), None) => {
            let named = named_store.then_some(&request.store);
            match crate::auth::request_store(&scope, named, &state.inner.stores) {
                Ok(store) => {
                    request.store = store;
                    request
                }
                Err(e) => {
                    let errors = [e];
                    return Err(ApiError::fields(
                        invalid("tracking request", &errors),
                        &errors,
                    ));
                }
            }
        }
        (parsed, unknown) => {
            let mut errors = parsed.err().map(|e| e.details()).unwrap_or_default();
            if let Some(u) = unknown
                && !errors.iter().any(|e| e.field == u.field)
            {
                errors.push(u);
            }
            return Err(ApiError::fields(
                invalid("tracking request", &errors),
                &errors,
            ));
        }
    };
    let body = serde_json::to_vec(&request)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state
        .inner
        .publisher
        .publish(Outgoing::json(TRACKING_REQUESTS, TRACKING_REQUESTS, &body))
        .await
        .map_err(|e| unavailable("cannot queue the tracking request", e))?;
    tracing::info!(order_id = %request.order_id, tracking_code = %request.tracking_code, carrier = %request.carrier,
        store = %request.store, "Tracking request queued.");
    metrics::counter!("api_published_total", "kind" => "tracking_request").increment(1);
    let mut queued = json!({
        "status": "queued",
        "order_id": request.order_id,
        "tracking_code": request.tracking_code,
        "carrier": request.carrier,
    });
    // The default store's answer is as it was before stores existed.
    if !request.store.is_default() {
        queued["store"] = json!(request.store);
    }
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

/// Publishes one manual event for a known shipment to `carrier.events`, as the fetcher publishes a poll's
/// events: the normalizer stores it once, decides and emits the change.
async fn publish_manual(
    state: &AppState,
    shipment: &ShipmentRow,
    status: Status,
    event: &ManualEvent,
    raw: Value,
) -> Result<(Carrier, TrackingCode), ApiError> {
    let corrupt = |e: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored shipment {} is inconsistent: {e}", shipment.id),
        )
    };
    let carrier: Carrier = shipment
        .carrier
        .known()
        .map_err(|e| corrupt(e.to_string()))?;
    let code = TrackingCode::parse(&shipment.tracking_code).map_err(|e| corrupt(e.to_string()))?;
    let store = tracking_domain::StoreName::parse(&shipment.store).map_err(corrupt)?;
    let update = CarrierUpdate {
        carrier,
        tracking_code: code.clone(),
        store,
        source: Source::Manual,
        request: None,
        fetched_at: Utc::now(),
        estimated_delivery: None,
        carrier_message: None,
        events: vec![CarrierEvent {
            code: MANUAL_CODE.into(),
            kind: None,
            occurred_at: event.occurred_at,
            description: event.description.clone().unwrap_or_default(),
            detail: None,
            location: event.location.clone(),
            unit: None,
            status: Some(status),
            raw,
        }],
    };
    let body = serde_json::to_vec(&update)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let key = format!("{carrier}.{code}");
    state
        .inner
        .publisher
        .publish(Outgoing::json(CARRIER_EVENTS, &key, &body))
        .await
        .map_err(|e| unavailable("cannot queue the event", e))?;
    tracing::info!(%carrier, tracking_code = %code, %status, occurred_at = %event.occurred_at, "Manual event queued.");
    metrics::counter!("api_published_total", "kind" => "manual_event").increment(1);
    Ok((carrier, code))
}

/// `POST /v1/shipments/{tracking_code}/events`.
pub async fn create_manual_event(
    Authorized(scope): Authorized,
    State(state): State<AppState>,
    code: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Accepted, ApiError> {
    let code = path_param(code, "tracking_code")?;
    let map = json_object(&headers, body, state.inner.body_limit)?;
    let event = ManualEvent::from_map(&map, Utc::now())
        .map_err(|errors| ApiError::fields(invalid("event", &errors), &errors))?;
    let found = match TrackingCode::parse(&code) {
        Ok(c) => shipments::by_code(&state.inner.pool, c.as_str(), scope.store())
            .await
            .map_err(ApiError::database)?
            .into_iter()
            .map(|w| w.shipment)
            .filter(|s| s.retired_at.is_none())
            .collect(),
        Err(_) => Vec::new(),
    };
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "no shipment with tracking code {code:?} is registered; send a tracking request first"
        )));
    }
    let mut queued = Vec::new();
    for shipment in &found {
        let (carrier, code) = publish_manual(
            &state,
            shipment,
            event.status,
            &event,
            Value::Object(map.clone()),
        )
        .await?;
        queued.push(json!({ "carrier": carrier, "tracking_code": code }));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "queued",
            "event": {
                "status": event.status,
                "occurred_at": event.occurred_at,
                "description": event.description,
                "location": event.location,
            },
            "shipments": queued,
        })),
    ))
}

fn invalid(what: &str, errors: &[FieldError]) -> String {
    format!(
        "invalid {what}: {}",
        errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

async fn order_shipments(
    state: &AppState,
    order_id: &str,
    scope: &Scope,
) -> Result<Vec<ShipmentRow>, ApiError> {
    let found = match OrderId::parse(order_id) {
        Ok(id) => {
            let mut found: Vec<ShipmentRow> =
                shipments::by_order(&state.inner.pool, id.as_str(), scope.store())
                    .await
                    .map_err(ApiError::database)?
                    .into_iter()
                    .map(|f| f.shipment)
                    .collect();
            found.sort_by_key(|s| s.id);
            found.dedup_by_key(|s| s.id);
            found
        }
        Err(_) => Vec::new(),
    };
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "no shipment of order {order_id:?} is registered"
        )));
    }
    Ok(found)
}

/// `POST /v1/orders/{order_id}/delivery-confirmation`: a manual `delivered` event for each of the order's shipments.
pub async fn confirm_delivery(
    Authorized(scope): Authorized,
    State(state): State<AppState>,
    order_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Accepted, ApiError> {
    let order_id = path_param(order_id, "order_id")?;
    let map = json_object(&headers, body, state.inner.body_limit)?;
    let confirmation = DeliveryConfirmation::from_map(&map, Utc::now())
        .map_err(|errors| ApiError::fields(invalid("delivery confirmation", &errors), &errors))?;
    let found = order_shipments(&state, &order_id, &scope).await?;
    let event = ManualEvent {
        status: Status::Delivered,
        occurred_at: confirmation.delivered_at,
        description: Some(
            confirmation
                .note
                .clone()
                .unwrap_or_else(|| CONFIRMATION_DESCRIPTION.to_owned()),
        ),
        location: None,
    };
    let mut queued = Vec::new();
    for shipment in &found {
        match publish_manual(
            &state,
            shipment,
            Status::Delivered,
            &event,
            Value::Object(map.clone()),
        )
        .await
        {
            Ok((carrier, code)) => {
                queued.push(json!({ "carrier": carrier, "tracking_code": code }))
            }
            Err(mut e) => {
                if !queued.is_empty() {
                    e.error = format!(
                        "{} (queued for {} of {} shipments: repeat the call, the queued ones will not change twice)",
                        e.error,
                        queued.len(),
                        found.len()
                    );
                }
                return Err(e);
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "queued",
            "order_id": order_id,
            "delivered_at": confirmation.delivered_at,
            "shipments": queued,
        })),
    ))
}

fn location(city: &Option<String>, state: &Option<String>) -> Value {
    serde_json::to_value(Location {
        city: city.clone(),
        state: state.clone(),
    })
    .unwrap_or(Value::Null)
}

/// `GET /v1/orders/{order_id}/tracking`: at most `API_TRACKING_MAX_SHIPMENTS` shipments (the newest), each with at
/// most `API_TRACKING_MAX_EVENTS` events and as many status changes (the newest), with the totals.
pub async fn order_tracking(
    Authorized(scope): Authorized,
    State(state): State<AppState>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let order_id = path_param(order_id, "order_id")?;
    let history = match OrderId::parse(&order_id) {
        Ok(id) => views::order_history(&state.inner.pool, id.as_str(), scope.store())
            .await
            .map_err(ApiError::database)?,
        Err(_) => Vec::new(),
    };
    if history.is_empty() {
        return Err(ApiError::not_found(format!(
            "no shipment of order {order_id:?} is registered"
        )));
    }
    let progress = tracking_domain::OrderProgress::of(
        &history
            .iter()
            .filter_map(|h| h.shipment.status().ok())
            .collect::<Vec<_>>(),
    );
    let bounds = state.inner.tracking;
    let history = newest(history, bounds.max_shipments);
    let (shipments_total, shipments_truncated) = (history.total, history.truncated());
    if shipments_truncated {
        tracing::info!(
            order_id,
            total = history.total,
            kept = bounds.max_shipments,
            "Order tracking answered with the newest shipments only (API_TRACKING_MAX_SHIPMENTS)."
        );
    }
    let shipments: Vec<Value> = history
        .items
        .into_iter()
        .map(|h| {
            let s = &h.shipment;
            let history_events = newest(h.events, bounds.max_events);
            let history_changes = newest(h.changes, bounds.max_events);
            let events: Vec<Value> = history_events
                .items
                .iter()
                .map(|e| {
                    json!({
                        "occurred_at": e.occurred_at_local(),
                        "source": e.source(),
                        "code": e.code,
                        "type": e.kind,
                        "description": e.description,
                        "detail": e.detail,
                        "location": location(&e.city, &e.state),
                        "unit": e.unit,
                        "status": e.status(),
                        "reason": e.reason,
                        "reverses_previous": e.reverses,
                        "received_at": e.received_at,
                    })
                })
                .collect();
            let changes: Vec<Value> = history_changes
                .items
                .iter()
                .map(|c| {
                    json!({
                        "change_id": c.change_id.to_string(),
                        "previous_status": c.previous_status,
                        "status": c.status,
                        "occurred_at": c.occurred_at_local(),
                        "source": c.source,
                        "reason": c.reason,
                        "event": c.event,
                        "recorded_at": c.created_at,
                        "published": c.published,
                    })
                })
                .collect();
            json!({
                "store": s.store,
                "carrier": s.carrier.as_str(),
                "tracking_code": s.tracking_code,
                "status": s.status.as_str(),
                "status_reason": s.status_reason,
                "status_at": s.status_at,
                "estimated_delivery": s.estimated_delivery,
                "late": s.late().is_some(),
                "late_since": s.late(),
                "stalled": s.stalled().is_some(),
                "stalled_since": s.stalled(),
                "carrier_message": h.carrier_message,
                "not_trackable": s.not_trackable_reason.as_ref().map(|reason| json!({
                    "reason": reason,
                    "since": s.not_trackable_at,
                })),
                "finished_at": s.finished_at,
                "events": events,
                "events_total": history_events.total,
                "events_truncated": history_events.truncated(),
                "changes": changes,
                "changes_total": history_changes.total,
                "changes_truncated": history_changes.truncated(),
            })
        })
        .collect();
    Ok(Json(json!({
        "order_id": order_id,
        "order": progress,
        "shipments": shipments,
        "shipments_total": shipments_total,
        "shipments_truncated": shipments_truncated,
    })))
}

/// `GET /v1/carriers/health`: the fetchers' latest report per carrier (`carrier_health`), and under each carrier
/// its `accounts` (`carrier_account_health`: state, reason, the stores using it). A store's token sees only its
/// own store's accounts.
pub async fn carriers_health(
    Authorized(scope): Authorized,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let rows = views::carrier_health(&state.inner.pool)
        .await
        .map_err(ApiError::database)?;
    let accounts = tracking_store::carrier_health::accounts(&state.inner.pool)
        .await
        .map_err(ApiError::database)?;
    let mut carriers = Map::new();
    for row in rows {
        let mut entry = Map::new();
        entry.insert(
            "state".into(),
            json!(row.state.map_or("unknown", |s| s.as_str())),
        );
        if let Some(r) = row.reason {
            entry.insert("reason".into(), json!(r));
        }
        if let Some(at) = row.updated_at {
            entry.insert("updated_at".into(), json!(at));
        }
        if let Some(c) = row.counters {
            entry.insert("counters".into(), c);
        }
        let mut mine = Map::new();
        for a in accounts.iter().filter(|a| {
            a.carrier == row.carrier
                && scope
                    .store()
                    .is_none_or(|s| a.store_list().contains(&s.as_str()))
        }) {
            let mut account = json!({
                "state": a.state,
                "stores": a.store_list(),
                "updated_at": a.updated_at,
            });
            if let Some(r) = &a.reason {
                account["reason"] = json!(r);
            }
            mine.insert(a.account.clone(), account);
        }
        // Listed once a fetcher reported on an account (so a report from before stores existed reads as it did).
        if !mine.is_empty() {
            entry.insert("accounts".into(), Value::Object(mine.clone()));
        }
        if scope.store().is_some() {
            // A store sees its own accounts only: the carrier-wide state, reason and counters may be another
            // store's account's, so its entry is its worst account.
            let rank = |v: &Value| match v["state"].as_str() {
                Some("broken") => 2,
                Some("degraded") => 1,
                _ => 0,
            };
            let worst = mine.values().max_by_key(|v| rank(v)).cloned();
            entry.remove("counters");
            entry.remove("reason");
            entry.insert(
                "state".into(),
                worst
                    .as_ref()
                    .map_or(json!("unknown"), |w| w["state"].clone()),
            );
            if let Some(r) = worst.as_ref().and_then(|w| w.get("reason")) {
                entry.insert("reason".into(), r.clone());
            }
        }
        carriers.insert(row.carrier.as_str().to_owned(), Value::Object(entry));
    }
    Ok(Json(json!({ "carriers": carriers })))
}

/// `GET /openapi.json` (no token needed).
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {method} {}; see /openapi.json",
        uri.path()
    ))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}; see /openapi.json", uri.path()),
    )
}
