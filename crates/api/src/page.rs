//! `GET /t/{token}`: the customer's tracking page, HTML rendered on the server by the emails' renderer
//! (`tracking_email::page`), reached without a login through a signed token (`tracking_domain::page_token`).
//!
//! A token that does not verify, names an unknown order, or arrives while the page is off (no
//! `TRACKING_PAGE_SECRET`) gets the same plain 404 page: nothing tells an order that exists from one that does
//! not. Every answer is HTML that must not be cached stale or embedded: `Cache-Control: no-cache, private`, a
//! `Content-Security-Policy` that allows no script (only the page's own style, by hash), `nosniff`, and
//! `Referrer-Policy: no-referrer` (the token is in the URL: it must not leak to the carrier's site).

use crate::AppState;
use crate::locale;
use crate::tracking::newest;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tracking_domain::{Locale, PageKey};
use tracking_email::{ErrorPage, OrderPage, PAGE_CSS, PageEvent, PageShipment, Renderer};
use tracking_store::views::{self, ShipmentHistory};

/// What the page needs beyond the API's state.
pub struct Page {
    /// `TRACKING_PAGE_SECRET`; without it every token is unknown.
    pub key: Option<PageKey>,
    pub renderer: Renderer,
    /// The `Content-Security-Policy` header: no script, no frame, only the page's style (by its hash).
    csp: HeaderValue,
}

impl Page {
    pub fn new(key: Option<PageKey>, renderer: Renderer) -> Self {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(PAGE_CSS));
        let csp = format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self' data:; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        );
        Self {
            key,
            renderer,
            csp: HeaderValue::from_str(&csp)
                .unwrap_or(HeaderValue::from_static("default-src 'none'")),
        }
    }
}

fn count(result: &'static str) {
    metrics::counter!("tracking_page_total", "result" => result).increment(1);
}

/// `GET /t/{token}`.
pub async fn tracking_page(
    State(state): State<AppState>,
    token: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let page = &state.inner.page;
    let chosen = locale::from_query(query.as_deref()).or_else(|| {
        locale::from_accept_language(
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        )
    });
    let order_id = match (&page.key, token) {
        (Some(key), Ok(Path(token))) => key.verify(&token),
        _ => None,
    };
    let Some(order_id) = order_id else {
        // The token's text is never logged: it opens the customer's page.
        tracing::info!("Tracking page asked for with a token that does not verify (404).");
        return not_found(page, chosen);
    };
    let history = match views::order_history(&state.inner.pool, order_id.as_str()).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "The tracking page could not read the order (503).");
            count("unavailable");
            return error_page(page, ErrorPage::Unavailable, chosen.unwrap_or_default());
        }
    };
    let bounds = state.inner.tracking;
    let history = newest(history, bounds.max_shipments).items;
    let stored = history
        .iter()
        .find_map(|h| Locale::parse(&h.shipment.customer_locale).ok());
    let first_name = history
        .iter()
        .rev()
        .find_map(|h| tracking_email::first_name(h.shipment.customer_name.as_deref()));
    let shipments: Vec<PageShipment> = history
        .into_iter()
        .filter_map(|h| shipment(h, bounds.max_events))
        .collect();
    if shipments.is_empty() {
        tracing::info!(%order_id, "Tracking page asked for an order without shipments (404).");
        return not_found(page, chosen);
    }
    let locale = chosen.or(stored).unwrap_or_default();
    let order = OrderPage {
        order_id,
        first_name,
        shipments,
    };
    match page.renderer.page(&order, locale) {
        Ok(html) => {
            count("shown");
            respond(page, StatusCode::OK, html)
        }
        Err(e) => {
            tracing::error!(error = %e, order_id = %order.order_id, "The tracking page could not be rendered (503).");
            count("unavailable");
            error_page(page, ErrorPage::Unavailable, locale)
        }
    }
}

/// One shipment as the page shows it, its newest `max_events` events; `None` for a row that cannot be read.
fn shipment(h: ShipmentHistory, max_events: usize) -> Option<PageShipment> {
    let s = h.shipment;
    let (Ok(carrier), Ok(status)) = (s.carrier.known(), s.status.known()) else {
        tracing::warn!(
            shipment_id = s.id,
            "A shipment the tracking page cannot read was left out."
        );
        return None;
    };
    let (late_since, stalled_since) = (s.late(), s.stalled());
    let events = newest(h.events, max_events)
        .items
        .into_iter()
        .map(|e| PageEvent {
            occurred_at: e.occurred_at,
            status: e.status.as_deref().and_then(|st| st.parse().ok()),
            manual: e.source == "manual",
            description: e.description,
            city: e.city,
            state: e.state,
        })
        .collect();
    Some(PageShipment {
        carrier,
        tracking_code: s.tracking_code,
        status,
        estimated_delivery: s.estimated_delivery,
        late_since,
        stalled_since,
        events,
    })
}

/// The page for a wrong, altered or unknown token: the same whatever the reason.
fn not_found(page: &Page, locale: Option<Locale>) -> Response {
    count("not_found");
    error_page(page, ErrorPage::NotFound, locale.unwrap_or_default())
}

fn error_page(page: &Page, which: ErrorPage, locale: Locale) -> Response {
    let status = match which {
        ErrorPage::NotFound => StatusCode::NOT_FOUND,
        ErrorPage::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let html = page.renderer.error_page(which, locale).unwrap_or_else(|e| {
        tracing::error!(error = %e, "The tracking page's error page could not be rendered.");
        format!("<!DOCTYPE html><title>{status}</title><p>{status}</p>")
    });
    respond(page, status, html)
}

fn respond(page: &Page, status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_TYPE, "text/html; charset=utf-8");
    // Revalidated on every visit: a status change shows at once, and no shared cache keeps a customer's page.
    set(h, header::CACHE_CONTROL, "no-cache, private");
    set(h, header::VARY, "Accept-Language");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        HeaderName::from_static("x-robots-tag"),
        "noindex, nofollow",
    );
    h.insert(header::CONTENT_SECURITY_POLICY, page.csp.clone());
    response
}
