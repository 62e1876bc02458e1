//! A Jadlog tracking simulator (`POST /embarcador/api/tracking/consultar`, as the project's Jadlog notes, kept
//! outside this repository, describe it):
//! a static bearer token, one entry per code asked, events oldest first with local times and no offset, and
//! `erro` "Nenhum registro encontrado" for codes it does not know.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::ServerGuard;

/// One Jadlog event: local time (`2026-03-20 10:12:06`), status word, unit.
#[derive(Clone, Debug)]
pub struct JadlogEvent {
    pub data: String,
    pub status: String,
    pub unidade: String,
}

impl JadlogEvent {
    pub fn new(data: &str, status: &str, unidade: &str) -> Self {
        Self {
            data: data.into(),
            status: status.into(),
            unidade: unidade.into(),
        }
    }
}

/// The journey of the example in the project's Jadlog notes: posted, in transfer, out for delivery, delivered.
pub fn delivered_journey() -> Vec<JadlogEvent> {
    vec![
        JadlogEvent::new("2026-03-20 10:12:06", "EMISSAO", "CO SAO PAULO 01"),
        JadlogEvent::new("2026-03-21 02:40:00", "TRANSFERENCIA", "HUB CAJAMAR"),
        JadlogEvent::new("2026-03-22 08:05:00", "EM ROTA", "FL CAMPINAS"),
        JadlogEvent::new("2026-03-22 15:12:06", "ENTREGUE", "FL CAMPINAS"),
    ]
}

struct Shared {
    token: String,
    objects: Mutex<HashMap<String, Vec<JadlogEvent>>>,
    /// code -> (key of the error object, `erro` or `error`; its `descricao`).
    errors: Mutex<HashMap<String, (String, String)>>,
    batches: Mutex<Vec<usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
pub struct JadlogSim {
    shared: Arc<Shared>,
    server: Arc<ServerGuard>,
}

impl JadlogSim {
    /// Serves on `addr` (port 0 allowed), accepting `Authorization: Bearer {token}`.
    pub async fn start(token: &str, addr: SocketAddr) -> anyhow::Result<JadlogSim> {
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            objects: Mutex::new(HashMap::new()),
            errors: Mutex::new(HashMap::new()),
            batches: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/embarcador/api/tracking/consultar", post(consultar))
            .with_state(shared.clone());
        let server = ServerGuard::spawn(router, addr)
            .await
            .context("starting the Jadlog simulator")?;
        Ok(JadlogSim {
            shared,
            server: Arc::new(server),
        })
    }

    /// `http://127.0.0.1:PORT`, to use as `JADLOG_BASE_URL`.
    pub fn base_url(&self) -> String {
        self.server.http_base()
    }

    /// What `code` answers: these events, oldest first.
    pub fn script(&self, code: &str, events: Vec<JadlogEvent>) {
        lock(&self.shared.objects).insert(code.to_owned(), events);
    }

    /// What `code` answers instead: an error object under `key` (`erro`, or `error` as other Jadlog versions
    /// send it) with this `descricao` (say `Nao localizado`).
    pub fn script_error(&self, code: &str, key: &str, descricao: &str) {
        lock(&self.shared.errors).insert(code.to_owned(), (key.to_owned(), descricao.to_owned()));
    }

    /// The number of codes in each answered call.
    pub fn batch_sizes(&self) -> Vec<usize> {
        lock(&self.shared.batches).clone()
    }
}

async fn consultar(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == shared.token);
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({ "status": 401, "error": "Unauthorized", "message": "Token inválido" }),
            ),
        )
            .into_response();
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({ "status": 400, "error": "Bad Request", "message": "JSON inválido" }),
            ),
        )
            .into_response();
    };
    let codes: Vec<String> = request
        .get("consulta")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("codigo").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    lock(&shared.batches).push(codes.len());
    let objects = lock(&shared.objects);
    let errors = lock(&shared.errors);
    let consulta: Vec<Value> = codes
        .iter()
        .map(|code| match (errors.get(code), objects.get(code)) {
            (Some((key, descricao)), _) => {
                let mut entry = serde_json::Map::new();
                entry.insert("codigo".into(), json!(code));
                entry.insert(key.clone(), json!({ "id": -1, "descricao": descricao }));
                Value::Object(entry)
            }
            (None, Some(events)) => {
                let status = events.last().map_or("", |e| e.status.as_str());
                json!({
                    "codigo": code,
                    "shipmentId": format!("9{}", &code[code.len().saturating_sub(7)..]),
                    "previsaoEntrega": "2026-03-24",
                    "tracking": {
                        "status": status,
                        "eventos": events.iter().map(|e| json!({ "data": e.data, "status": e.status, "unidade": e.unidade })).collect::<Vec<_>>(),
                    }
                })
            }
            (None, None) => json!({ "codigo": code, "erro": { "id": -1, "descricao": "Nenhum registro encontrado" } }),
        })
        .collect();
    tracing::info!("jadlog consultar codes={codes:?} -> 200");
    (StatusCode::OK, axum::Json(json!({ "consulta": consulta }))).into_response()
}
