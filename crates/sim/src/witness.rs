//! A witness: an HTTP server on 127.0.0.1 that records every request it gets, whatever the method and path, and
//! answers `200 {"ok":true}`. Point a redirect at it to show that no call (and no credential) ever arrives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::ServerGuard;

/// One request the witness got.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn lock(m: &Mutex<Vec<Seen>>) -> MutexGuard<'_, Vec<Seen>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handle to a running witness; the server stops when the last handle is dropped.
#[derive(Clone)]
pub struct Witness {
    seen: Log,
    server: Arc<ServerGuard>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("base_url", &self.base_url())
            .finish()
    }
}

impl Witness {
    /// Binds `addr` (port 0 allowed) and serves in the background on the current tokio runtime.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Witness> {
        let seen: Log = Arc::default();
        let router = Router::new().fallback(record).with_state(seen.clone());
        let server = ServerGuard::spawn(router, addr)
            .await
            .context("starting the witness")?;
        Ok(Witness {
            seen,
            server: Arc::new(server),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.server.http_base()
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }
}

async fn record(
    State(seen): State<Log>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tracing::info!("witness: {method} {}", uri.path());
    lock(&seen).push(Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "ok": true })),
    )
        .into_response()
}
