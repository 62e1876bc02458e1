//! `tracking-api`: the pipeline over HTTP (crates/api/openapi.json; docs/features.md, "HTTP API").
//!
//! | route | what it does |
//! | --- | --- |
//! | `POST /v1/tracking-requests` | validates a tracking request and queues it on `tracking.requests` |
//! | `POST /v1/shipments/{tracking_code}/events` | a manual event for a known shipment, to `carrier.events` |
//! | `POST /v1/orders/{order_id}/delivery-confirmation` | a manual `delivered` event for each of the order's shipments |
//! | `GET /v1/orders/{order_id}/tracking` | the order's shipments with their events and status changes |
//! | `GET /v1/carriers/health` | the carriers' states as the fetchers last reported them |
//! | `GET /openapi.json` | the OpenAPI 3.1 document (`crates/api/openapi.json`), without a token |
//! | `GET /t/{token}` | the customer's tracking page (HTML, [`page`]), without a token: the signed `token` names the order |
//! | `GET /u/{token}`, `POST /u/{token}`, `POST /u/{token}/undo` | the emails' one-click unsubscribe ([`unsubscribe`]), without a token |
//! | `GET /v1/customers/{email}/data` | everything stored about an address ([`customers`]) |
//! | `DELETE /v1/customers/{email}` | erases an address from the database and the parked messages ([`customers`]) |
//!
//! Every `/v1` call needs `Authorization: Bearer {API_TOKEN}`. Manual events go through the normalizer like a
//! carrier's: stored once, deduplicated, decided by the status rules, emailed and relayed once. Nothing is
//! published for a request that is refused.

mod auth;
pub mod body;
pub mod customers;
mod error;
mod handlers;
pub mod locale;
pub mod marketplaces;
pub mod page;
pub mod rate;
pub mod serve;
pub mod tracking;
pub mod unsubscribe;

pub use error::ApiError;
pub use handlers::{CONFIRMATION_DESCRIPTION, MANUAL_CODE};
pub use marketplaces::KnownMarketplaces;
pub use serve::Limits;
pub use tracking::Bounds;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::handler::Handler;
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracking_domain::{OrderId, PageKey, PageLinks};
use tracking_email::{Renderer, TemplateSettings};
use tracking_runtime::amqp::{AmqpSettings, Publisher, watch_publisher};
use tracking_runtime::boot;
use tracking_runtime::ops::Health;
use tracking_runtime::settings::{self, SettingsError};
use tracking_store::Db;
use tracking_store::DbSettings;

/// The OpenAPI 3.1 document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `METRICS_ADDR`'s default for this binary.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9106";

pub struct Settings {
    /// `HTTP_ADDR` (default 127.0.0.1:8080).
    pub http_addr: SocketAddr,
    /// `API_TOKEN` (required).
    pub token: SecretString,
    /// `API_BODY_LIMIT_BYTES` (default 65536): larger bodies are refused with 413.
    pub body_limit: usize,
    /// `API_BODY_TIMEOUT_MS` (default 10000): a body not received in full by then is answered 408.
    pub body_timeout: Duration,
    /// `API_HEADER_TIMEOUT_MS` (default 5000), `API_WRITE_TIMEOUT_MS` (default 10000), `API_MAX_CONNECTIONS`
    /// (default 256) and `API_MAX_CONNECTIONS_PER_ADDRESS` (default 32).
    pub limits: Limits,
    /// `API_REQUEST_TIMEOUT_MS` (default 15000): a call not answered by then gets 503 (and is abandoned).
    pub request_timeout: Duration,
    /// `API_TRACKING_MAX_EVENTS` (default 500) and `API_TRACKING_MAX_SHIPMENTS` (default 100).
    pub tracking: Bounds,
    /// `MARKETPLACES_FILE`: the names tracking requests may give in `marketplace.name`.
    pub marketplaces: KnownMarketplaces,
    /// `STORES_FILE`: the stores requests may name, and each store's API token (its scope).
    pub stores: tracking_domain::Stores,
    /// `TRACKING_PAGE_SECRET`: the key of the tracking page's tokens (the email publisher signs with the same one).
    /// Without it the page is off: every `/t/{token}` answers the 404 page.
    pub page_key: Option<PageKey>,
    /// `UNSUBSCRIBE_SECRET`: the key of the unsubscribe links (the email publisher signs with the same one).
    /// Without it every `/u/{token}` answers the 404 page.
    pub unsubscribe_key: Option<tracking_domain::UnsubscribeKey>,
    /// `TRACKING_PAGE_DB_CONNECTIONS`, `TRACKING_PAGE_MAX_EVENTS`, `TRACKING_PAGE_RATE_PER_MINUTE` and
    /// `TRACKING_PAGE_BURST`: what one anonymous client of the page can cost.
    pub page_limits: page::PageLimits,
    /// What the page shares with the emails: `STORE_NAME`, the carriers' links (`CORREIOS_TRACKING_URL`,
    /// `JADLOG_TRACKING_URL`) and `CUSTOMER_TIME_ZONE`.
    pub templates: TemplateSettings,
    pub amqp: AmqpSettings,
    pub db: DbSettings,
}

/// The shortest `API_TOKEN` tracking-api starts with: a bearer token is the whole authentication, so it must be
/// too long to guess (32 random characters), and placeholders such as `REPLACE_ME` are refused.
pub const MIN_API_TOKEN_CHARS: usize = 32;

/// Refuses an `API_TOKEN` shorter than [`MIN_API_TOKEN_CHARS`], naming the setting but never the token.
pub fn check_token_length(token: &str) -> Result<(), SettingsError> {
    let chars = token.chars().count();
    if chars < MIN_API_TOKEN_CHARS {
        return Err(SettingsError::new(
            "API_TOKEN",
            format!(
                "must be at least {MIN_API_TOKEN_CHARS} characters long (it has {chars}): generate one, e.g. with `openssl rand -hex 32`"
            ),
        ));
    }
    Ok(())
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let token = settings::var("API_TOKEN").ok_or_else(|| {
            SettingsError::new(
                "API_TOKEN",
                "is required: the bearer token every call must carry (tracking-api does not start without one)",
            )
        })?;
        let token = token.trim().to_owned();
        check_token_length(&token)?;
        let body_limit = at_least_one("API_BODY_LIMIT_BYTES", 65_536)?;
        Ok(Self {
            http_addr: settings::socket_addr("HTTP_ADDR", "127.0.0.1:8080")?,
            token: SecretString::from(token.clone()),
            body_limit,
            body_timeout: positive_millis("API_BODY_TIMEOUT_MS", 10_000)?,
            limits: Limits {
                header_timeout: positive_millis("API_HEADER_TIMEOUT_MS", 5_000)?,
                write_timeout: positive_millis("API_WRITE_TIMEOUT_MS", 10_000)?,
                max_connections: at_least_one("API_MAX_CONNECTIONS", 256)?,
                max_per_client: at_least_one("API_MAX_CONNECTIONS_PER_ADDRESS", 32)?,
            },
            request_timeout: positive_millis("API_REQUEST_TIMEOUT_MS", 15_000)?,
            tracking: Bounds {
                max_events: at_least_one("API_TRACKING_MAX_EVENTS", 500)?,
                max_shipments: at_least_one("API_TRACKING_MAX_SHIPMENTS", 100)?,
            },
            marketplaces: KnownMarketplaces::from_env()?,
            stores: stores_from_env(&token)?,
            page_key: tracking_email::env::page_key()?,
            unsubscribe_key: tracking_email::env::unsubscribe_key()?,
            page_limits: page::PageLimits {
                db_connections: u32::try_from(at_least_one("TRACKING_PAGE_DB_CONNECTIONS", 2)?)
                    .map_err(|_| {
                        SettingsError::new("TRACKING_PAGE_DB_CONNECTIONS", "is too large")
                    })?,
                max_events: at_least_one("TRACKING_PAGE_MAX_EVENTS", 50)?,
                rate_per_minute: at_least_one("TRACKING_PAGE_RATE_PER_MINUTE", 30)?,
                burst: at_least_one("TRACKING_PAGE_BURST", 10)?,
            },
            templates: tracking_email::env::template_settings()?,
            amqp: AmqpSettings::from_env()?,
            db: tracking_store::env::db_settings(tracking_store::env::WORKER_POOL_SIZE)?,
        })
    }
}

/// `STORES_FILE`, refused when a store's token is the operator's `API_TOKEN` (the scope would be ambiguous).
fn stores_from_env(operator_token: &str) -> Result<tracking_domain::Stores, SettingsError> {
    let stores = tracking_marketplaces::stores_from_env()
        .map_err(|e| SettingsError::new(e.setting, e.message))?;
    if let Some(store) = stores.store_of_token(operator_token.trim()) {
        return Err(SettingsError::new(
            "STORES_FILE",
            format!(
                "store {:?}'s api_token is API_TOKEN: the operator's token must be its own",
                store.as_str()
            ),
        ));
    }
    Ok(stores)
}

fn at_least_one(name: &str, default: usize) -> Result<usize, SettingsError> {
    let n = settings::parse(name, default)?;
    if n == 0 {
        return Err(SettingsError::new(name, "must be at least 1"));
    }
    Ok(n)
}

fn positive_millis(name: &str, default: u64) -> Result<Duration, SettingsError> {
    let d = settings::millis(name, default)?;
    if d.is_zero() {
        return Err(SettingsError::new(name, "must be above 0 ms"));
    }
    Ok(d)
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    token_digest: [u8; 32],
    pool: Db,
    /// The tracking page's own small pool (`TRACKING_PAGE_DB_CONNECTIONS`): the open internet's page views
    /// cannot take the connections the API's callers need.
    page_pool: Db,
    publisher: Publisher,
    body_limit: usize,
    body_timeout: Duration,
    request_timeout: Duration,
    tracking: Bounds,
    marketplaces: KnownMarketplaces,
    stores: tracking_domain::Stores,
    page: page::Page,
    unsubscribe: unsubscribe::Unsubscribe,
    customers: customers::Customers,
}

impl AppState {
    pub fn new(
        settings: &Settings,
        pool: Db,
        page_pool: Db,
        publisher: Publisher,
        renderer: Renderer,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                token_digest: auth::digest(settings.token.expose_secret()),
                pool,
                page_pool,
                publisher,
                body_limit: settings.body_limit,
                body_timeout: settings.body_timeout,
                request_timeout: settings.request_timeout,
                tracking: settings.tracking,
                marketplaces: settings.marketplaces.clone(),
                stores: settings.stores.clone(),
                page: page::Page::new(settings.page_key.clone(), settings.page_limits, renderer),
                unsubscribe: unsubscribe::Unsubscribe::new(
                    settings.unsubscribe_key.clone(),
                    settings.templates.store_name.clone(),
                ),
                customers: customers::Customers::new(
                    settings.amqp.clone(),
                    settings.unsubscribe_key.clone(),
                ),
            }),
        }
    }
}

/// The routes, each recorded as it is added, so that [`routes`] lists exactly what the router serves.
struct Routes {
    router: Router<AppState>,
    served: Vec<(&'static str, &'static str)>,
    /// `API_REQUEST_TIMEOUT_MS`.
    deadline: Duration,
}

impl Routes {
    fn add<H, T>(mut self, method: &'static str, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = match method {
            "get" => MethodFilter::GET,
            "delete" => MethodFilter::DELETE,
            _ => MethodFilter::POST,
        };
        let deadline = self.deadline;
        let route =
            axum::routing::on(filter, handler).layer(from_fn(move |req: Request, next: Next| {
                observe(path, deadline, req, next)
            }));
        self.router = self.router.route(path, route);
        self.served.push((method, path));
        self
    }
}

fn build(deadline: Duration) -> Routes {
    Routes {
        router: Router::new(),
        served: Vec::new(),
        deadline,
    }
    .add(
        "post",
        "/v1/tracking-requests",
        handlers::create_tracking_request,
    )
    .add(
        "post",
        "/v1/shipments/{tracking_code}/events",
        handlers::create_manual_event,
    )
    .add(
        "post",
        "/v1/orders/{order_id}/delivery-confirmation",
        handlers::confirm_delivery,
    )
    .add(
        "get",
        "/v1/orders/{order_id}/tracking",
        handlers::order_tracking,
    )
    .add("get", "/v1/carriers/health", handlers::carriers_health)
    .add("get", "/openapi.json", handlers::openapi)
    .add("get", "/t/{token}", page::tracking_page)
    .add("get", "/u/{token}", unsubscribe::ask)
    .add("post", "/u/{token}", unsubscribe::unsubscribe)
    .add("post", "/u/{token}/undo", unsubscribe::undo)
    .add("get", "/v1/customers/{email}/data", customers::data)
    .add("delete", "/v1/customers/{email}", customers::erase)
}

/// Every `(method, path)` the router serves, methods in lower case and paths as in the OpenAPI document.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    build(Duration::from_secs(1)).served
}

/// The application: the routes, JSON answers for unknown routes and methods, and the body limit.
pub fn app(state: AppState) -> Router {
    let limit = state.inner.body_limit;
    build(state.inner.request_timeout)
        .router
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts and times each call by route (the path template, so tracking codes do not become labels), and answers
/// 503 for a call not answered within `deadline` (`API_REQUEST_TIMEOUT_MS`): its handler is dropped where it
/// waits (a database query, a publish), and the connection is closed after the answer.
async fn observe(route: &'static str, deadline: Duration, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let response = match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%method, route, deadline_ms = deadline.as_millis() as u64,
                "A call was not answered within API_REQUEST_TIMEOUT_MS: abandoned (503).");
            let mut response = ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not answered within API_REQUEST_TIMEOUT_MS; try again later",
            )
            .into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            // Its body may be half read: the connection cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("api_requests_total", "route" => route, "method" => method.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("api_request_seconds", "route" => route).record(elapsed);
    tracing::info!(%method, route, status, ms = elapsed.as_millis() as u64, "API call.");
    response
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let health = Health::new(&["rabbitmq", "postgres"]);
    boot::serve_ops(DEFAULT_METRICS_ADDR, health.clone(), shutdown.clone()).await?;
    let listener = serve::listen(settings.http_addr).map_err(|e| {
        SettingsError::new(
            "HTTP_ADDR",
            format!("cannot listen on {}: {e}", settings.http_addr),
        )
    })?;
    let pool = tracking_store::Db::connect_lazy(&settings.db)?;
    let page_pool = tracking_store::Db::connect_lazy(&DbSettings {
        max_connections: settings.page_limits.db_connections,
        ..settings.db.clone()
    })?;
    tokio::spawn(tracking_store::env::watch_database(
        pool.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let publisher = Publisher::new(settings.amqp.clone(), "tracking-api");
    publisher.report_to(health.clone(), "rabbitmq");
    tokio::spawn(watch_publisher(
        publisher.clone(),
        health,
        "rabbitmq",
        Duration::from_secs(2),
        shutdown.clone(),
    ));
    let renderer = Renderer::new(settings.templates.clone())?;
    let state = AppState::new(
        &settings,
        pool.clone(),
        page_pool.clone(),
        publisher.clone(),
        renderer,
    );
    let bound = listener.local_addr()?;
    tracing::info!(%bound, body_limit = settings.body_limit,
        body_timeout_ms = settings.body_timeout.as_millis() as u64,
        header_timeout_ms = settings.limits.header_timeout.as_millis() as u64,
        write_timeout_ms = settings.limits.write_timeout.as_millis() as u64,
        request_timeout_ms = settings.request_timeout.as_millis() as u64,
        max_connections = settings.limits.max_connections,
        max_connections_per_address = settings.limits.max_per_client,
        tracking_max_events = settings.tracking.max_events,
        tracking_max_shipments = settings.tracking.max_shipments,
        marketplaces = settings.marketplaces.len(),
        tracking_page = if settings.page_key.is_some() { "on" } else { "off (no TRACKING_PAGE_SECRET)" },
        unsubscribe = if settings.unsubscribe_key.is_some() { "on" } else { "off (no UNSUBSCRIBE_SECRET)" },
        "Serving the tracking API.");
    let server = serve::serve(listener, app(state), settings.limits, shutdown.clone());
    let grace = settings.amqp.shutdown_grace;
    tokio::select! {
        () = server => {},
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64,
                "Calls still in flight after SHUTDOWN_GRACE_MS; stopping anyway (their callers get no answer and may repeat them).");
        }
    }
    publisher.close().await;
    pool.close().await;
    page_pool.close().await;
    Ok(())
}

/// `tracking-api page-link ORDER_ID...`: each order's tracking page address, `{TRACKING_PAGE_URL}/t/{token}`, one a
/// line (for support, and `make demo`). Needs `TRACKING_PAGE_URL` and `TRACKING_PAGE_SECRET`.
pub fn page_links(order_ids: &[String]) -> Result<Vec<String>, SettingsError> {
    let url = settings::required("TRACKING_PAGE_URL")?;
    let key = tracking_email::env::page_key()?
        .ok_or_else(|| SettingsError::new("TRACKING_PAGE_SECRET", "is required and not set"))?;
    let links =
        PageLinks::new(&url, key).map_err(|e| SettingsError::new("TRACKING_PAGE_URL", e))?;
    order_ids
        .iter()
        .map(|id| {
            OrderId::parse(id)
                .map(|id| links.url(&id))
                .map_err(|e| SettingsError::new("ORDER_ID", format!("{id:?} {e}")))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn api_tokens_shorter_than_32_characters_are_refused_without_showing_them() {
        let e = check_token_length("replace-me").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("API_TOKEN") && text.contains("32"), "{text}");
        assert!(!text.contains("replace-me"), "{text}");
        assert!(check_token_length(&"x".repeat(31)).is_err());
        assert!(
            check_token_length(&"é".repeat(31)).is_err(),
            "characters, not bytes"
        );
        assert!(check_token_length(&"x".repeat(32)).is_ok());
    }

    #[test]
    fn the_openapi_document_describes_every_route_served_and_nothing_else() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
        let served = routes();
        for (method, path) in &served {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is served but not in openapi.json"
            );
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    assert!(
                        served.iter().any(|(m, p)| m == method && p == path),
                        "{method} {path} is in openapi.json but not served"
                    );
                }
            }
        }
    }
}
