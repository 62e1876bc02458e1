//! The one-click unsubscribe of every status email (RFC 8058; docs/privacy.md), without a bearer token:
//!
//! | route | what it does |
//! | --- | --- |
//! | `POST /u/{token}` | records the opt-out of the token's address from the token's store's status emails, at once (idempotent), and answers 200 with a short page that offers an undo |
//! | `GET /u/{token}` | a short page saying what the button does, with the button (the same `POST`); changes nothing |
//! | `POST /u/{token}/undo` | takes the opt-out back (idempotent), and answers 200 with a short page to unsubscribe again |
//!
//! The token ([`tracking_domain::unsubscribe`]) is checked before anything is read or written: an altered,
//! truncated or foreign token, or any token while `UNSUBSCRIBE_SECRET` is unset, gets the same 404 page and
//! changes nothing. The `POST` body is not read (RFC 8058 bodies are `List-Unsubscribe=One-Click`, but a
//! browser's form or a provider that sends another one must work the same; `API_BODY_LIMIT_BYTES` bounds what
//! the server takes), nor are cookies or credentials asked for: one request is the whole action. `GET` never
//! unsubscribes: mail scanners follow links.
//!
//! Pages are in pt-BR, es or en (`?lang=`, else `Accept-Language`, else pt-BR) and answered like the tracking page
//! (`no-store`, no script, `nosniff`, `no-referrer`: the token is in the URL). No per-client rate limit: a mailbox
//! provider POSTs the unsubscribes of many customers from a few addresses, and none may be refused; the cost of
//! a request is one HMAC, and a write only for a token this deployment signed. Writes go through the tracking
//! page's own pool (`TRACKING_PAGE_DB_CONNECTIONS`): the open internet does not take the API's connections.

use crate::AppState;
use crate::locale;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracking_domain::{Locale, OptOut, UnsubscribeKey};
use tracking_email::{UnsubscribePage, unsubscribe_page};

/// What the unsubscribe routes need beyond the API's state.
pub struct Unsubscribe {
    /// `UNSUBSCRIBE_SECRET`; without it every token is unknown.
    key: Option<UnsubscribeKey>,
    /// `STORE_NAME`: how the pages name the store (per store once the stores file lands).
    store_name: String,
}

impl Unsubscribe {
    pub fn new(key: Option<UnsubscribeKey>, store_name: String) -> Self {
        Self { key, store_name }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Unsubscribe,
    Undo,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Unsubscribe => "unsubscribe",
            Action::Undo => "undo",
        }
    }
}

fn count(action: &'static str, result: &'static str) {
    metrics::counter!("unsubscribe_requests_total", "action" => action, "result" => result)
        .increment(1);
}

fn chosen_locale(query: Option<&str>, headers: &HeaderMap) -> Locale {
    locale::from_query(query)
        .or_else(|| {
            locale::from_accept_language(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok()),
            )
        })
        .unwrap_or_default()
}

/// The opt-out a token names, if it verifies.
fn verified(state: &AppState, token: &Result<Path<String>, PathRejection>) -> Option<OptOut> {
    match (&state.inner.unsubscribe.key, token) {
        (Some(key), Ok(Path(token))) => key.verify(token),
        _ => None,
    }
}

/// `GET /u/{token}`: the page with the button. Reads and writes nothing.
pub async fn ask(
    State(state): State<AppState>,
    token: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let locale = chosen_locale(query.as_deref(), &headers);
    let page = &state.inner.unsubscribe;
    match verified(&state, &token) {
        Some(_) => {
            count("ask", "shown");
            respond(
                StatusCode::OK,
                unsubscribe_page(
                    UnsubscribePage::Ask,
                    locale,
                    &page.store_name,
                    token.map(|Path(t)| t).as_deref().unwrap_or_default(),
                ),
            )
        }
        None => not_found(page, "ask", locale),
    }
}

/// `POST /u/{token}`: the opt-out, recorded at once.
pub async fn unsubscribe(
    State(state): State<AppState>,
    token: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    act(state, token, query, headers, Action::Unsubscribe).await
}

/// `POST /u/{token}/undo`: the opt-out taken back.
pub async fn undo(
    State(state): State<AppState>,
    token: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    act(state, token, query, headers, Action::Undo).await
}

async fn act(
    state: AppState,
    token: Result<Path<String>, PathRejection>,
    query: Option<String>,
    headers: HeaderMap,
    action: Action,
) -> Response {
    let locale = chosen_locale(query.as_deref(), &headers);
    let page = &state.inner.unsubscribe;
    let Some(opt_out) = verified(&state, &token) else {
        // The token's text is never logged: it names the customer.
        tracing::info!(
            action = action.as_str(),
            "An unsubscribe link that does not verify was used (404); nothing changed."
        );
        return not_found(page, action.as_str(), locale);
    };
    let pool = &state.inner.page_pool;
    let written = match action {
        Action::Unsubscribe => tracking_store::opt_outs::record(pool, &opt_out).await,
        Action::Undo => tracking_store::opt_outs::undo(pool, &opt_out).await,
    };
    let changed = match written {
        Ok(changed) => changed,
        Err(e) => {
            tracing::error!(action = action.as_str(), store = %opt_out.store, error = %e,
                "An unsubscribe link could not be recorded (503); the customer is asked to try again.");
            count(action.as_str(), "unavailable");
            let mut response = respond(
                StatusCode::SERVICE_UNAVAILABLE,
                unsubscribe_page(UnsubscribePage::Unavailable, locale, &page.store_name, ""),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return response;
        }
    };
    count(
        action.as_str(),
        if changed { "recorded" } else { "unchanged" },
    );
    tracing::info!(action = action.as_str(), store = %opt_out.store, changed,
        "An unsubscribe link was used.");
    let token = token.map(|Path(t)| t).unwrap_or_default();
    let which = match action {
        Action::Unsubscribe => UnsubscribePage::Done,
        Action::Undo => UnsubscribePage::Undone,
    };
    respond(
        StatusCode::OK,
        unsubscribe_page(which, locale, &page.store_name, &token),
    )
}

fn not_found(page: &Unsubscribe, action: &'static str, locale: Locale) -> Response {
    count(action, "not_found");
    respond(
        StatusCode::NOT_FOUND,
        unsubscribe_page(UnsubscribePage::NotFound, locale, &page.store_name, ""),
    )
}

fn respond(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_TYPE, "text/html; charset=utf-8");
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::VARY, "Accept-Language");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        HeaderName::from_static("x-robots-tag"),
        "noindex, nofollow",
    );
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    );
    response
}
