//! `GET /t/{token}`: the customer's tracking page, HTML rendered on the server by the emails' renderer
//! (`tracking_email::page`), reached without a login through a signed token (`tracking_domain::page_token`).
//!
//! A token that does not verify, names an unknown order, or arrives while the page is off (no
//! `TRACKING_PAGE_SECRET`) gets the same plain 404 page: nothing tells an order that exists from one that does
//! not. Every answer is HTML that must not be cached stale or embedded: `Cache-Control: no-cache, private`, a
//! `Content-Security-Policy` that allows no script (only the page's own style, by hash), `nosniff`, and
//! `Referrer-Policy: no-referrer` (the token is in the URL: it must not leak to the carrier's site).
//!
//! The page is for the open internet, so what one client can cost is bounded: each client (its TCP peer,
//! [`crate::serve::client_of`]) gets `TRACKING_PAGE_BURST` pages at once and `TRACKING_PAGE_RATE_PER_MINUTE` after
//! that ([`RateLimit`]; beyond, 429 with `Retry-After`, before any token is checked or row read); the page reads
//! through its own pool of `TRACKING_PAGE_DB_CONNECTIONS` (the API's callers keep theirs), and only the newest
//! `TRACKING_PAGE_MAX_EVENTS` events of each of the newest `API_TRACKING_MAX_SHIPMENTS` shipments
//! ([`views::order_page`]).

use crate::AppState;
use crate::locale;
use crate::rate::RateLimit;
use crate::serve::client_of;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Instant;
use tracking_domain::{Locale, PageKey};
use tracking_email::{ErrorPage, OrderPage, PAGE_CSS, PageEvent, PageShipment, Renderer};
use tracking_store::views::{self, PageHistory};

/// What one anonymous client of the page can cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// `TRACKING_PAGE_DB_CONNECTIONS` (default 2): the page's own database pool.
    pub db_connections: u32,
    /// `TRACKING_PAGE_MAX_EVENTS` (default 50): the newest events read and shown per shipment.
    pub max_events: usize,
    /// `TRACKING_PAGE_RATE_PER_MINUTE` (default 30): pages per client and minute, once its burst is spent.
    pub rate_per_minute: usize,
    /// `TRACKING_PAGE_BURST` (default 10): pages a client may ask for at once.
    pub burst: usize,
}

/// What the page needs beyond the API's state.
pub struct Page {
    /// `TRACKING_PAGE_SECRET`; without it every token is unknown.
    pub key: Option<PageKey>,
    pub renderer: Renderer,
    /// The `Content-Security-Policy` header: no script, no frame, only the page's style (by its hash).
    csp: HeaderValue,
    limits: PageLimits,
    rate: RateLimit,
}

impl Page {
    pub fn new(key: Option<PageKey>, limits: PageLimits, renderer: Renderer) -> Self {
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
            limits,
            rate: RateLimit::new(limits.rate_per_minute, limits.burst),
        }
    }
}

fn count(result: &'static str) {
    metrics::counter!("tracking_page_total", "result" => result).increment(1);
}

/// `GET /t/{token}`.
pub async fn tracking_page(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
    if let Err(wait) = page.rate.take(client_of(peer.ip()), Instant::now()) {
        // Neither the address nor the token is logged: both are the customer's.
        tracing::debug!("Tracking page asked for beyond TRACKING_PAGE_RATE_PER_MINUTE (429).");
        count("rate_limited");
        let mut response = error_page(
            page,
            ErrorPage::Unavailable,
            chosen.unwrap_or_default(),
            StatusCode::TOO_MANY_REQUESTS,
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let opened = match (&page.key, token) {
        (Some(key), Ok(Path(token))) => key.open(&token),
        _ => None,
    };
    let Some((store, order_id)) = opened else {
        // The token's text is never logged: it opens the customer's page.
        tracing::info!("Tracking page asked for with a token that does not verify (404).");
        return not_found(page, chosen);
    };
    let history = match views::order_page(
        &state.inner.page_pool,
        order_id.as_str(),
        Some(&store),
        state.inner.tracking.max_shipments,
        page.limits.max_events,
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "The tracking page could not read the order (503).");
            count("unavailable");
            return error_page(
                page,
                ErrorPage::Unavailable,
                chosen.unwrap_or_default(),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    };
    let stored = history
        .iter()
        .find_map(|h| Locale::parse(&h.order.customer_locale).ok());
    let first_name = history
        .iter()
        .rev()
        .find_map(|h| tracking_email::first_name(h.order.customer_name.as_deref()));
    let shipments: Vec<PageShipment> = history.into_iter().filter_map(shipment).collect();
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
            error_page(
                page,
                ErrorPage::Unavailable,
                locale,
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    }
}

/// One shipment as the page shows it; `None` for a row that cannot be read.
fn shipment(h: PageHistory) -> Option<PageShipment> {
    let s = h.shipment;
    let (Ok(carrier), Ok(status)) = (s.carrier.known(), s.status.known()) else {
        tracing::warn!(
            shipment_id = s.id,
            "A shipment the tracking page cannot read was left out."
        );
        return None;
    };
    let (late_since, stalled_since) = (s.late(), s.stalled());
    let events = h
        .events
        .into_iter()
        .map(|e| PageEvent {
            occurred_at: e.occurred_at_local(),
            status: e.status(),
            manual: e.source() == tracking_domain::Source::Manual,
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
        older_events: h.older_events,
    })
}

/// The page for a wrong, altered or unknown token: the same whatever the reason.
fn not_found(page: &Page, locale: Option<Locale>) -> Response {
    count("not_found");
    error_page(
        page,
        ErrorPage::NotFound,
        locale.unwrap_or_default(),
        StatusCode::NOT_FOUND,
    )
}

/// `which` page with `status`: the "try again" page serves 503 (the database) and 429 (too many pages) alike.
fn error_page(page: &Page, which: ErrorPage, locale: Locale, status: StatusCode) -> Response {
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
