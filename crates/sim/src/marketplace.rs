//! A marketplace webhook receiver for the signed webhook of the contract (`X-Signature: t={unix},v1={hex HMAC-SHA256
//! over "{t}.{raw body}"}`, `Idempotency-Key`). It accepts a POST or PUT on any path, records it, and answers
//! `200 {"ok":true}` unless told otherwise with [`Receiver::answer_next`].
//!
//! It also plays the marketplaces' request schemas, answering 400 with the reason to a body they would refuse:
//! VTEX's tracking update (`PUT .../api/oms/pvt/orders/{id}/invoice/{n}/tracking`) needs `isDelivered`, `events`
//! and `deliveredDate` (required, nullable: UpdateTrackingStatusRequest); with [`Receiver::meli_wants_tracking`],
//! a Mercado Livre seller notification needs `tracking_number` and `tracking_url` (its current ME1 documentation).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::ServerGuard;

type HmacSha256 = Hmac<Sha256>;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct ReceivedCall {
    pub method: String,
    pub path: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// `X-Signature` present and valid for the receiver's secret.
    pub signature_valid: bool,
    pub idempotency_key: Option<String>,
    /// The HTTP status answered.
    pub answered: u16,
    pub received_at: std::time::Instant,
}

struct Shared {
    secret: String,
    calls: Mutex<Vec<ReceivedCall>>,
    answers: Mutex<VecDeque<Answer>>,
    /// Seller notifications must carry `tracking_number` and `tracking_url`.
    meli_wants_tracking: std::sync::atomic::AtomicBool,
}

/// A scripted answer: a status, with `Retry-After` or `Location` when given, or a huge body of this size.
#[derive(Default)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    location: Option<String>,
    huge: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handle to a running receiver; clones share state. The server stops on [`Receiver::shutdown`] or when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Receiver {
    shared: Arc<Shared>,
    server: Arc<ServerGuard>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("url", &self.url())
            .finish()
    }
}

impl Receiver {
    /// Binds `addr` (port 0 allowed) and serves in the background on the current tokio runtime.
    pub async fn start(secret: String, addr: SocketAddr) -> anyhow::Result<Receiver> {
        let shared = Arc::new(Shared {
            secret,
            calls: Mutex::new(Vec::new()),
            answers: Mutex::new(VecDeque::new()),
            meli_wants_tracking: std::sync::atomic::AtomicBool::new(false),
        });
        let router = Router::new().fallback(receive).with_state(shared.clone());
        let server = ServerGuard::spawn(router, addr)
            .await
            .context("starting the marketplace receiver")?;
        Ok(Receiver {
            shared,
            server: Arc::new(server),
        })
    }

    /// `http://127.0.0.1:PORT/hooks/tracking`, the webhook URL to configure.
    pub fn url(&self) -> String {
        format!("{}/hooks/tracking", self.base_url())
    }

    /// `http://127.0.0.1:PORT` (any path under it is accepted).
    pub fn base_url(&self) -> String {
        self.server.http_base()
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<ReceivedCall> {
        lock(&self.shared.calls).clone()
    }

    /// How many calls were received so far (without copying them).
    pub fn call_count(&self) -> usize {
        lock(&self.shared.calls).len()
    }

    /// The next calls get these statuses (with a `Retry-After` header when given), then 200 again.
    pub fn answer_next(&self, statuses: Vec<(u16, Option<String>)>) {
        lock(&self.shared.answers).extend(statuses.into_iter().map(|(status, retry_after)| {
            Answer {
                status,
                retry_after,
                ..Answer::default()
            }
        }));
    }

    /// The next call gets this redirect status (301, 302, 303, 307, 308) with this `Location`, then 200 again.
    pub fn redirect_next(&self, status: u16, location: &str) {
        lock(&self.shared.answers).push_back(Answer {
            status,
            location: Some(location.to_owned()),
            ..Answer::default()
        });
    }

    /// The next call gets this status with a body of `bytes` bytes, streamed chunked and generated on the fly.
    pub fn answer_huge_next(&self, status: u16, bytes: u64) {
        lock(&self.shared.answers).push_back(Answer {
            status,
            huge: Some(bytes),
            ..Answer::default()
        });
    }

    /// From now on, plays the Mercado Livre version whose seller notifications need `tracking_number` and
    /// `tracking_url` (400 without them), or the earlier one that takes `status` and `substatus` alone.
    pub fn meli_wants_tracking(&self, on: bool) {
        self.shared
            .meli_wants_tracking
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the server (in-flight requests finish; idle connections close).
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

fn new_mac(secret: &str, t: i64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// `t={t},v1={hex HMAC-SHA256 over "{t}.{body}"}`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let v1 = new_mac(secret, t, body)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={t},v1={v1}")
}

/// Checks an `X-Signature` value (`t=..,v1=..`; any of several `v1` may match) in constant time. No freshness check.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.trim().parse::<i64>().ok(),
            Some(("v1", v)) => candidates.push(v.trim()),
            _ => {}
        }
    }
    let Some(mac) = t.and_then(|t| new_mac(secret, t, body)) else {
        return false;
    };
    candidates
        .iter()
        .filter_map(|c| hex::decode(c).ok())
        .any(|sig| mac.clone().verify_slice(&sig).is_ok())
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST && method != Method::PUT {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(json!({ "ok": false, "error": "POST or PUT only" })),
        )
            .into_response();
    }
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signature_valid =
        header_text("x-signature").is_some_and(|h| verify(&shared.secret, &h, &body));
    let idempotency_key = header_text("idempotency-key");
    let text = String::from_utf8_lossy(&body).into_owned();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let refusal = schema_refusal(
        &method,
        uri.path(),
        parsed.as_ref(),
        shared
            .meli_wants_tracking
            .load(std::sync::atomic::Ordering::SeqCst),
    );
    let Answer {
        status,
        retry_after,
        location,
        huge,
    } = match &refusal {
        Some(_) => Answer {
            status: 400,
            ..Answer::default()
        },
        None => lock(&shared.answers).pop_front().unwrap_or(Answer {
            status: 200,
            ..Answer::default()
        }),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);

    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string()
    };
    tracing::info!(
        "{method} {} idempotency-key={} signature={} status={} tracking_code={} -> {}",
        uri.path(),
        idempotency_key.as_deref().unwrap_or("-"),
        if signature_valid { "valid" } else { "INVALID" },
        field("status"),
        field("tracking_code"),
        status.as_u16(),
    );

    lock(&shared.calls).push(ReceivedCall {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: text,
        json: parsed,
        signature_valid,
        idempotency_key,
        answered: status.as_u16(),
        received_at: std::time::Instant::now(),
    });

    if let Some(size) = huge {
        let body = crate::huge_body(size, br#"{"ok":true,"echo":""#, b"0123456789abcdef");
        return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let body = if let Some(reason) = refusal {
        json!({ "ok": false, "error": "bad_request", "message": reason })
    } else if status.is_success() {
        json!({ "ok": true })
    } else {
        json!({ "ok": false, "error": format!("simulated {}", status.as_u16()) })
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    if let Some(value) = location.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Why VTEX or Mercado Livre would refuse this body, when they would.
fn schema_refusal(
    method: &Method,
    path: &str,
    body: Option<&Value>,
    meli_wants_tracking: bool,
) -> Option<String> {
    if *method == Method::PUT
        && path.contains("/api/oms/pvt/orders/")
        && path.ends_with("/tracking")
    {
        let Some(body) = body.and_then(Value::as_object) else {
            return Some("the body must be a JSON object".into());
        };
        if !body.get("isDelivered").is_some_and(Value::is_boolean) {
            return Some("isDelivered is required (a boolean)".into());
        }
        match body.get("deliveredDate") {
            None => return Some("deliveredDate is required (a date or null)".into()),
            Some(Value::Null | Value::String(_)) => {}
            Some(_) => return Some("deliveredDate must be a string or null".into()),
        }
        if !body.get("events").is_some_and(Value::is_array) {
            return Some("events is required (an array)".into());
        }
    }
    if meli_wants_tracking && *method == Method::POST && path.ends_with("/seller_notifications") {
        let has = |k: &str| {
            body.and_then(|b| b.get(k))
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        };
        if !has("tracking_number") || !has("tracking_url") {
            return Some("tracking_number and tracking_url are required".into());
        }
    }
    None
}

/// Runs the `marketplace-receiver` binary with this secret: listens on `RECEIVER_ADDR` (127.0.0.1:9090) and logs
/// each call on stdout until SIGINT/SIGTERM.
pub async fn run_with_secret(secret: String) -> anyhow::Result<()> {
    crate::init_logging();
    let addr_text = crate::env_or("RECEIVER_ADDR", "127.0.0.1:9090");
    let addr: SocketAddr = addr_text
        .parse()
        .with_context(|| format!("RECEIVER_ADDR {addr_text:?} is not host:port"))?;
    let receiver = Receiver::start(secret, addr).await?;
    println!("marketplace-receiver listening on {}", receiver.url());
    crate::wait_for_signal().await;
    receiver.shutdown();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip() {
        let body = br#"{"status":"delivered"}"#;
        let sig = sign("s3cret", 1_774_000_000, body);
        assert!(sig.starts_with("t=1774000000,v1="));
        assert!(verify("s3cret", &sig, body));
        assert!(verify("s3cret", &format!("{sig},v1=00"), body));
        assert!(!verify("other", &sig, body));
        assert!(!verify("s3cret", &sig, b"{}"));
        assert!(!verify("s3cret", "garbage", body));
        assert!(!verify("s3cret", "t=1774000001,v1=zz", body));
    }
}
