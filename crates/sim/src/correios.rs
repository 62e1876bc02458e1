//! A Correios "API Rastro" simulator: token endpoints, `srorastro/v1/objetos`, SRO messages and gateway errors,
//! shaped like the real API (as the project's notes on it, kept outside this repository, describe it).
//!
//! Objects follow a [`Script`]: a [`Journey`] reveals `reveal_per_poll` more events on every tracking call that
//! asks for the code; `NotFound` answers `SRO-020` forever; `Invalid` answers `SRO-019`; `Message` any per-object
//! message (such as [`SRO_009`]), alone or with an empty `eventos`. Unscripted codes answer
//! `SRO-020`, or with [`SimConfig::auto_journey`] get [`Journey::delivered`] on their first poll.
//!
//! Several accounts: the configured user is one; [`CorreiosSim::add_account`] adds others, each with its own
//! credentials (and postage card). A code [`CorreiosSim::assign`]ed to an account's contract answers `SRO-009` to
//! every other account's token, as API Rastro does since 2025; unassigned codes answer every account.
//! [`CorreiosSim::revoke`] refuses an account's credentials and tokens; [`CorreiosSim::refuse_access`] makes its
//! calls answer `GTW-012` (tracking) or `GTW-014` (the postage-card token). Calls are counted per account.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ServerGuard;

/// `dtHrCriado`, `emissao`, `expiraEm`, `dtPrevista`: Brazil local time, no offset.
const LOCAL_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";
const MAX_CODES: usize = 50;
const LANGUAGES: [&str; 3] = ["pt-BR", "en", "es-ES"];
const SRO_020: &str = "SRO-020: Objeto não encontrado na base de dados dos Correios.";
const SRO_019: &str = "SRO-019: Objeto inválido.";
const GTW_008: &str = "GTW-008: Token não válido para este ambiente.";
/// The token has no scope for this API (API Rastro not enabled for the card's contract).
pub const GTW_012: &str = "GTW-012: Token sem permissão de acesso a esta API.";
/// The authorisation does not fit the postage-card token.
pub const GTW_014: &str = "GTW-014: Autorização inválida para o token de cartão de postagem.";

/// Another account of the simulator (beside [`SimConfig::user`]).
#[derive(Clone, Debug)]
pub struct SimAccount {
    pub user: String,
    pub access_code: String,
    /// The only postage card this account's card token accepts; `None` accepts any.
    pub postage_card: Option<String>,
}

/// How an account's access is refused (see [`CorreiosSim::refuse_access`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessRefusal {
    /// Tracking calls with its tokens answer 403 `GTW-012`.
    Gtw012,
    /// Its postage-card token requests answer 403 `GTW-014`.
    Gtw014,
}

#[derive(Clone, Debug, Default)]
struct AccountState {
    access_code: String,
    postage_card: Option<String>,
    revoked: bool,
    refusal: Option<AccessRefusal>,
    tracking_calls: usize,
    token_requests: usize,
    polls: HashMap<String, usize>,
}
/// A huge answer: an `objetos` array that never ends.
const HUGE_PREFIX: &[u8] = br#"{"objetos":["#;
const HUGE_ENTRY: &[u8] =
    br#"{"codObjeto":"PG747937788BR","mensagem":"SRO-020: Objeto nao encontrado."},"#;

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Basic-auth user for the token endpoints.
    pub user: String,
    /// Basic-auth password ("código de acesso").
    pub access_code: String,
    /// The only postage card accepted by `/token/v1/autentica/cartaopostagem`; `None` accepts any card number.
    pub postage_card: Option<String>,
    /// Lifetime of issued tokens (`expiraEm` = `emissao` + this).
    pub token_ttl: Duration,
    /// When true, an unscripted code with a valid S10 format and check digit gets [`Journey::delivered`] on its first
    /// poll (and an unscripted malformed one answers `SRO-019`).
    pub auto_journey: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            user: "sim-user".to_string(),
            access_code: "sim-code".to_string(),
            postage_card: None,
            token_ttl: Duration::hours(24),
            auto_journey: false,
        }
    }
}

/// One carrier event of a scripted journey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimEvent {
    pub codigo: String,
    pub tipo: String,
    pub descricao: String,
    pub cidade: String,
    pub uf: String,
    pub unidade_tipo: String,
    /// Brazil local time, no offset, as Correios sends it.
    pub at: NaiveDateTime,
}

impl SimEvent {
    pub fn new(
        codigo: &str,
        tipo: &str,
        descricao: &str,
        cidade: &str,
        uf: &str,
        unidade_tipo: &str,
        at: NaiveDateTime,
    ) -> Self {
        SimEvent {
            codigo: codigo.to_string(),
            tipo: tipo.to_string(),
            descricao: descricao.to_string(),
            cidade: cidade.to_string(),
            uf: uf.to_string(),
            unidade_tipo: unidade_tipo.to_string(),
            at,
        }
    }
}

/// A scripted history, revealed a few events per poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journey {
    /// Oldest first.
    pub events: Vec<SimEvent>,
    /// Events newly visible per poll (the first poll shows this many); 0 behaves as 1.
    pub reveal_per_poll: usize,
    pub dt_prevista: Option<NaiveDateTime>,
}

fn local(day: u32, h: u32, m: u32, s: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 3, day)
        .and_then(|d| d.and_hms_opt(h, m, s))
        .unwrap_or_default()
}

impl Journey {
    /// A journey with these events (oldest first), one revealed per poll, no delivery estimate.
    pub fn new(events: Vec<SimEvent>) -> Journey {
        Journey {
            events,
            reveal_per_poll: 1,
            dt_prevista: None,
        }
    }

    /// Posted in São Paulo, in transit, out for delivery and delivered in Campinas, from 2026-03-25T16:55:42.
    pub fn delivered() -> Journey {
        Journey {
            events: vec![
                SimEvent::new(
                    "PO",
                    "01",
                    "Objeto postado",
                    "SAO PAULO",
                    "SP",
                    "Agência dos Correios",
                    local(25, 16, 55, 42),
                ),
                SimEvent::new(
                    "RO",
                    "01",
                    "Objeto em trânsito - por favor aguarde",
                    "SAO PAULO",
                    "SP",
                    "Unidade de Tratamento",
                    local(25, 21, 10, 0),
                ),
                SimEvent::new(
                    "OEC",
                    "01",
                    "Objeto saiu para entrega ao destinatário",
                    "CAMPINAS",
                    "SP",
                    "Unidade de Distribuição",
                    local(26, 9, 2, 11),
                ),
                SimEvent::new(
                    "BDE",
                    "01",
                    "Objeto entregue ao destinatário",
                    "CAMPINAS",
                    "SP",
                    "Unidade de Distribuição",
                    local(26, 14, 40, 30),
                ),
            ],
            reveal_per_poll: 1,
            dt_prevista: Some(local(30, 23, 59, 59)),
        }
    }

    /// Reveal every event on the first poll.
    pub fn all_at_once(mut self) -> Journey {
        self.reveal_per_poll = self.events.len().max(1);
        self
    }
}

/// A failure the next tracking call answers with, instead of the objects (after the token and language checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status with a gateway error body, and a `Retry-After` header when given.
    Status(u16, Option<String>),
    /// Answer normally, but only after this long (a client with a shorter timeout gives up).
    Delay(std::time::Duration),
    /// HTTP 200 with this body as is (say, JSON cut short).
    Body(String),
    /// HTTP 200 with a body of this many bytes, streamed in chunks (no `Content-Length`) and generated on the fly:
    /// a hostile or broken answer far larger than any client should read.
    Huge(u64),
    /// This redirect status (301, 302, 303, 307, 308) with this `Location`.
    Redirect(u16, String),
}

/// How the token endpoints answer, instead of API Rastro's usual shape (the token is still issued and valid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenQuirk {
    /// `expiraEm` as a number (Unix milliseconds).
    ExpiraEmNumber,
    /// `expiraEm` as text no client reads (`amanhã às 14h`).
    ExpiraEmText,
    /// The token under another key (say, `accessToken`).
    TokenKey(String),
    /// Not JSON: `text/plain` lines `token=...` and `expira=...`.
    PlainText,
    /// JSON with a raw NUL byte inside `expiraEm` (invalid JSON; PostgreSQL text refuses NUL).
    NulByte,
}

/// What the simulator answers for a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Script {
    Journey(Journey),
    /// `SRO-020` forever.
    NotFound,
    /// `SRO-019`.
    Invalid,
    /// This per-object `mensagem` and no `eventos` (say `SRO-009`, or a message no client knows).
    Message(String),
    /// This `mensagem` together with an empty `eventos` array (seen from API Rastro).
    MessageAndNoEvents(String),
}

/// `SRO-009`: the object does not belong to the contract of the token (labels bought through a shipping platform).
pub const SRO_009: &str = "SRO-009: Objeto não pertence ao contrato do cliente.";

struct Object {
    script: Script,
    revealed: usize,
}

#[derive(Default)]
struct Book {
    objects: HashMap<String, Object>,
    polls: HashMap<String, usize>,
    /// token -> expiry instant
    tokens: HashMap<String, DateTime<Utc>>,
    /// token -> the account (user) it was issued to
    token_owner: HashMap<String, String>,
    /// user -> its credentials and counters (the configured user included)
    accounts: HashMap<String, AccountState>,
    /// code -> the account (user) whose contract it belongs to
    code_owner: HashMap<String, String>,
    faults: std::collections::VecDeque<Fault>,
    /// Every event's field `.0` is sent as `.1` (the API changed under us).
    drift: Option<(String, String)>,
    /// Every object's field `.0` is sent as `.1` (say `eventos` as `events`).
    object_drift: Option<(String, String)>,
    /// The number of codes of each tracking call answered with 200, in order.
    batches: Vec<usize>,
    /// How the token endpoints answer from now on (`None`: as API Rastro does).
    token_quirk: Option<TokenQuirk>,
    /// Every token issued, in order.
    issued: Vec<String>,
    /// Events' `tipo` sent as a JSON number (`1`) instead of a string (`"01"`).
    numeric_tipo: bool,
    /// The HTTP status that answers `GTW-008` to an invalid token (401 unless set: 403 and 400 are seen too).
    refusal_status: Option<u16>,
}

struct Shared {
    config: SimConfig,
    book: Mutex<Book>,
    tracking_calls: AtomicUsize,
    token_requests: AtomicUsize,
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Handle to a running simulator; clones share state. The server stops on [`CorreiosSim::shutdown`] or when the
/// last handle is dropped.
#[derive(Clone)]
pub struct CorreiosSim {
    shared: Arc<Shared>,
    server: Arc<ServerGuard>,
}

impl std::fmt::Debug for CorreiosSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorreiosSim")
            .field("base_url", &self.base_url())
            .finish()
    }
}

impl CorreiosSim {
    /// Binds `addr` (port 0 allowed) and serves in the background on the current tokio runtime.
    pub async fn start(config: SimConfig, addr: SocketAddr) -> anyhow::Result<CorreiosSim> {
        let mut book = Book::default();
        book.accounts.insert(
            config.user.clone(),
            AccountState {
                access_code: config.access_code.clone(),
                postage_card: config.postage_card.clone(),
                ..AccountState::default()
            },
        );
        let shared = Arc::new(Shared {
            config,
            book: Mutex::new(book),
            tracking_calls: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/token/v1/autentica", post(autentica))
            .route("/token/v1/autentica/cartaopostagem", post(autentica_cartao))
            .route("/srorastro/v1/objetos", get(track_many))
            .route("/srorastro/v1/objetos/{code}", get(track_one))
            .route("/_sim/objects/{code}", get(control_get).put(control_put))
            .route("/_sim/answers", get(answers_get).put(answers_put))
            .with_state(shared.clone());
        let server = ServerGuard::spawn(router, addr)
            .await
            .context("starting the Correios simulator")?;
        Ok(CorreiosSim {
            shared,
            server: Arc::new(server),
        })
    }

    /// `http://127.0.0.1:PORT`, to use as `CORREIOS_BASE_URL`.
    pub fn base_url(&self) -> String {
        self.server.http_base()
    }

    /// Sets (or replaces, starting over) what `code` answers.
    pub fn script(&self, code: &str, script: Script) {
        self.shared.book().objects.insert(
            code.to_string(),
            Object {
                script,
                revealed: 0,
            },
        );
    }

    /// How many answered (HTTP 200) tracking calls included `code`.
    pub fn polls(&self, code: &str) -> usize {
        self.shared.book().polls.get(code).copied().unwrap_or(0)
    }

    /// Number of tracking requests answered with HTTP 200.
    pub fn tracking_calls(&self) -> usize {
        self.shared.tracking_calls.load(Ordering::SeqCst)
    }

    /// Number of requests to the token endpoints (successful or not).
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// The next tracking calls answer these failures, one each, then normal answers again.
    pub fn fail_next(&self, faults: Vec<Fault>) {
        self.shared.book().faults.extend(faults);
    }

    /// From now on every object's field `from` is sent as `to` (say `eventos` as `events`); `None` stops it.
    pub fn rename_object_field(&self, rename: Option<(&str, &str)>) {
        self.shared.book().object_drift = rename.map(|(a, b)| (a.to_owned(), b.to_owned()));
    }

    /// From now on every event's field `from` is sent as `to` (schema drift); `None` stops it.
    pub fn rename_event_field(&self, rename: Option<(&str, &str)>) {
        self.shared.book().drift = rename.map(|(a, b)| (a.to_owned(), b.to_owned()));
    }

    /// The number of codes in each answered tracking call, in order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.shared.book().batches.clone()
    }

    /// From now on the token endpoints answer in this unusual shape; `None` goes back to API Rastro's.
    pub fn token_quirk(&self, quirk: Option<TokenQuirk>) {
        self.shared.book().token_quirk = quirk;
    }

    /// Every token issued so far, oldest first (whatever shape it was sent in).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.book().issued.clone()
    }

    /// From now on events carry `tipo` as a number (`1`) rather than a string (`"01"`), or back.
    pub fn numeric_tipo(&self, on: bool) {
        self.shared.book().numeric_tipo = on;
    }

    /// From now on an invalid token is answered `GTW-008` with this HTTP status (API Rastro's gateway has been
    /// seen sending 401, 403 and 400 with it).
    pub fn refuse_tokens_with(&self, status: u16) {
        self.shared.book().refusal_status = Some(status);
    }

    /// Invalidates every token issued so far (they answer `GTW-008`); new tokens work.
    pub fn expire_tokens(&self) {
        self.shared.book().tokens.clear();
    }

    /// Adds an account (its own credentials and contract).
    pub fn add_account(&self, account: SimAccount) {
        self.shared.book().accounts.insert(
            account.user,
            AccountState {
                access_code: account.access_code,
                postage_card: account.postage_card,
                ..AccountState::default()
            },
        );
    }

    /// `code` belongs to `user`'s contract: other accounts' tokens get `SRO-009` for it.
    pub fn assign(&self, code: &str, user: &str) {
        self.shared
            .book()
            .code_owner
            .insert(code.to_owned(), user.to_owned());
    }

    /// Revokes `user`'s credentials: its token requests answer 401 and its tokens `GTW-008`.
    pub fn revoke(&self, user: &str) {
        let mut book = self.shared.book();
        if let Some(a) = book.accounts.get_mut(user) {
            a.revoked = true;
        }
        let owned: Vec<String> = book
            .token_owner
            .iter()
            .filter(|(_, u)| *u == user)
            .map(|(t, _)| t.clone())
            .collect();
        for t in owned {
            book.tokens.remove(&t);
        }
    }

    /// From now on `user`'s access is refused this way (`None`: no longer).
    pub fn refuse_access(&self, user: &str, refusal: Option<AccessRefusal>) {
        if let Some(a) = self.shared.book().accounts.get_mut(user) {
            a.refusal = refusal;
        }
    }

    /// Tracking calls made with `user`'s tokens (answered or refused after the token was read).
    pub fn tracking_calls_by(&self, user: &str) -> usize {
        self.shared
            .book()
            .accounts
            .get(user)
            .map_or(0, |a| a.tracking_calls)
    }

    /// Token requests with `user`'s credentials (successful or not).
    pub fn token_requests_by(&self, user: &str) -> usize {
        self.shared
            .book()
            .accounts
            .get(user)
            .map_or(0, |a| a.token_requests)
    }

    /// How many answered tracking calls of `user` included `code`.
    pub fn polls_by(&self, user: &str, code: &str) -> usize {
        self.shared
            .book()
            .accounts
            .get(user)
            .and_then(|a| a.polls.get(code).copied())
            .unwrap_or(0)
    }

    /// Stops the server (in-flight requests finish; idle connections close).
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

/// Runs the `correios-sim` binary: settings from `SIM_ADDR` (127.0.0.1:9080), `SIM_USER` (sim-user),
/// `SIM_ACCESS_CODE` (sim-code), `SIM_POSTAGE_CARD` (any), `SIM_AUTO_JOURNEY` (on; `0` turns it off) and
/// `SIM_TOKEN_TTL_SECS` (86400); serves until SIGINT/SIGTERM.
pub async fn run_from_env() -> anyhow::Result<()> {
    crate::init_logging();
    let addr_text = crate::env_or("SIM_ADDR", "127.0.0.1:9080");
    let addr: SocketAddr = addr_text
        .parse()
        .with_context(|| format!("SIM_ADDR {addr_text:?} is not host:port"))?;
    let ttl_text = crate::env_or("SIM_TOKEN_TTL_SECS", "86400");
    let ttl: i64 = ttl_text
        .parse()
        .with_context(|| format!("SIM_TOKEN_TTL_SECS {ttl_text:?} is not a number of seconds"))?;
    let auto = crate::env_or("SIM_AUTO_JOURNEY", "1");
    let config = SimConfig {
        user: crate::env_or("SIM_USER", "sim-user"),
        access_code: crate::env_or("SIM_ACCESS_CODE", "sim-code"),
        postage_card: std::env::var("SIM_POSTAGE_CARD")
            .ok()
            .filter(|c| !c.trim().is_empty()),
        token_ttl: Duration::seconds(ttl),
        auto_journey: !matches!(
            auto.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        ),
    };
    let sim = CorreiosSim::start(config, addr).await?;
    println!("correios-sim listening on {}", sim.base_url());
    crate::wait_for_signal().await;
    sim.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP

fn brazil_now() -> NaiveDateTime {
    (Utc::now() - Duration::hours(3)).naive_utc()
}

fn gateway_error(status: StatusCode, msg: &str, path: &str, method: &str) -> Response {
    let body = json!({
        "msgs": [msg],
        "date": brazil_now().format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
        "causa": status.canonical_reason().unwrap_or("Error"),
        "path": path,
        "method": method,
    });
    (status, axum::Json(body)).into_response()
}

/// The account whose Basic credentials `headers` carry (counting the request for it), unless they are wrong or
/// revoked.
fn credentials_ok(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    let encoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, code) = decoded.split_once(':')?;
    let mut book = shared.book();
    let account = book.accounts.get_mut(user)?;
    account.token_requests += 1;
    (account.access_code == code && !account.revoked).then(|| user.to_owned())
}

fn issue_token(shared: &Shared, user: &str, card: Option<String>) -> Response {
    let now = Utc::now();
    let ttl = shared.config.token_ttl;
    let expiry = now
        .checked_add_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let emissao = brazil_now();
    let expira = emissao
        .checked_add_signed(ttl)
        .unwrap_or(NaiveDateTime::MAX);
    let token = fake_jwt(user, expiry.timestamp());
    let quirk = {
        let mut book = shared.book();
        book.tokens.insert(token.clone(), expiry);
        book.token_owner.insert(token.clone(), user.to_owned());
        book.issued.push(token.clone());
        book.token_quirk.clone()
    };
    let mut body = json!({
        "ambiente": "HOMOLOGACAO",
        "id": user,
        "perfil": "PJ",
        "cnpj": "00000000000191",
        "emissao": emissao.format(LOCAL_FORMAT).to_string(),
        "expiraEm": expira.format(LOCAL_FORMAT).to_string(),
        "zoneOffset": "-03:00",
        "token": token,
    });
    if let (Some(card), Some(obj)) = (card, body.as_object_mut()) {
        obj.insert(
            "cartaoPostagem".to_string(),
            json!({ "numero": card, "contrato": "9912345678", "dr": 72, "api": [87] }),
        );
    }
    let Some(obj) = body.as_object_mut() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match quirk {
        None => {}
        Some(TokenQuirk::ExpiraEmNumber) => {
            obj.insert("expiraEm".into(), json!(expiry.timestamp_millis()));
        }
        Some(TokenQuirk::ExpiraEmText) => {
            obj.insert("expiraEm".into(), json!("amanhã às 14h"));
        }
        Some(TokenQuirk::TokenKey(key)) => {
            if let Some(t) = obj.remove("token") {
                obj.insert(key, t);
            }
        }
        Some(TokenQuirk::PlainText) => {
            let text = format!("token={token}\nexpira={}\n", expira.format(LOCAL_FORMAT));
            return (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "text/plain")],
                text,
            )
                .into_response();
        }
        Some(TokenQuirk::NulByte) => {
            let text = format!(
                "{{\"token\":\"{token}\",\"expiraEm\":\"{}\u{0}\",\"zoneOffset\":\"-03:00\"}}",
                expira.format(LOCAL_FORMAT)
            );
            return (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                text,
            )
                .into_response();
        }
    }
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// Looks like the real thing (a JWT); only the simulator's own table decides validity.
fn fake_jwt(user: &str, exp: i64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(br#"{"alg":"RS512","typ":"JWT"}"#);
    let claims = b64.encode(json!({ "iss": "tracking-sim", "sub": user, "exp": exp }).to_string());
    let sig = b64.encode(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ));
    format!("{head}.{claims}.{sig}")
}

async fn autentica(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let Some(user) = credentials_ok(&shared, &headers) else {
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "Credenciais de acesso inválidas.",
            "/token/v1/autentica",
            "POST",
        );
    };
    issue_token(&shared, &user, None)
}

#[derive(Deserialize)]
struct CardBody {
    numero: String,
}

async fn autentica_cartao(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const PATH: &str = "/token/v1/autentica/cartaopostagem";
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let Some(user) = credentials_ok(&shared, &headers) else {
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "Credenciais de acesso inválidas.",
            PATH,
            "POST",
        );
    };
    let (expected_card, refusal) = {
        let book = shared.book();
        let a = book.accounts.get(&user);
        (
            a.and_then(|a| a.postage_card.clone()),
            a.and_then(|a| a.refusal),
        )
    };
    if refusal == Some(AccessRefusal::Gtw014) {
        return gateway_error(StatusCode::FORBIDDEN, GTW_014, PATH, "POST");
    }
    let card = match serde_json::from_slice::<CardBody>(&body) {
        Ok(b) if !b.numero.trim().is_empty() => b.numero.trim().to_string(),
        _ => {
            return gateway_error(
                StatusCode::BAD_REQUEST,
                "Número do cartão de postagem não informado.",
                PATH,
                "POST",
            );
        }
    };
    if expected_card
        .as_deref()
        .is_some_and(|expected| expected != card)
    {
        let msg = format!("Cartão de postagem {card} não pertence ao usuário {user}.");
        return gateway_error(StatusCode::BAD_REQUEST, &msg, PATH, "POST");
    }
    issue_token(&shared, &user, Some(card))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

async fn track_one(
    State(shared): State<Arc<Shared>>,
    Path(code): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = parse_query(query.as_deref());
    let path = format!("/srorastro/v1/objetos/{code}");
    track(
        &shared,
        vec![code.trim().to_string()],
        &params,
        &headers,
        &path,
    )
    .await
}

async fn track_many(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = parse_query(query.as_deref());
    let codes = params
        .iter()
        .filter(|(k, _)| k == "codigosObjetos")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    track(&shared, codes, &params, &headers, "/srorastro/v1/objetos").await
}

async fn track(
    shared: &Shared,
    codes: Vec<String>,
    params: &[(String, String)],
    headers: &HeaderMap,
    path: &str,
) -> Response {
    let answer = |status: StatusCode, msg: &str| {
        tracing::info!(
            "tracking GET {path} codes={codes:?} -> {} {msg}",
            status.as_u16()
        );
        gateway_error(status, msg, path, "GET")
    };

    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let now = Utc::now();
    let owner = token.and_then(|t| {
        let book = shared.book();
        book.tokens
            .get(t)
            .is_some_and(|expiry| now < *expiry)
            .then(|| book.token_owner.get(t).cloned())
            .flatten()
    });
    let refusal = owner.as_ref().and_then(|user| {
        let mut book = shared.book();
        let a = book.accounts.get_mut(user)?;
        a.tracking_calls += 1;
        a.refusal
    });
    if refusal == Some(AccessRefusal::Gtw012) {
        return answer(StatusCode::FORBIDDEN, GTW_012);
    }
    if owner.is_none() {
        let status = shared
            .book()
            .refusal_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::UNAUTHORIZED);
        return answer(status, GTW_008);
    }

    let language = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    if !language.is_some_and(|l| LANGUAGES.contains(&l)) {
        let msg = format!(
            "SRO-018: Idioma inválido: {:?}. Informe pt-BR, en ou es-ES no cabeçalho Accept-Language.",
            language.unwrap_or("")
        );
        return answer(StatusCode::BAD_REQUEST, &msg);
    }

    if codes.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            "Informe ao menos um código de objeto em codigosObjetos.",
        );
    }
    if codes.len() > MAX_CODES {
        let msg = format!(
            "Quantidade de objetos ({}) excede o máximo permitido de {MAX_CODES}.",
            codes.len()
        );
        return answer(StatusCode::BAD_REQUEST, &msg);
    }

    let resultado = params
        .iter()
        .rev()
        .find(|(k, _)| k == "resultado")
        .map(|(_, v)| v.as_str())
        .unwrap_or("T");
    let (resultado, descricao) = match resultado {
        "T" => (Resultado::All, "Todos os eventos"),
        "U" => (Resultado::Last, "Último evento"),
        "P" => (Resultado::First, "Primeiro evento"),
        other => {
            let msg = format!("Parâmetro resultado inválido: {other:?}. Use T, U ou P.");
            return answer(StatusCode::BAD_REQUEST, &msg);
        }
    };

    let fault = shared.book().faults.pop_front();
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = answer(status, "Serviço temporariamente indisponível (simulado).");
            if let Some(value) = retry_after.and_then(|v| header::HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Fault::Body(body)) => {
            tracing::info!("tracking GET {path} codes={codes:?} -> 200 (scripted body)");
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
        Some(Fault::Huge(size)) => {
            tracing::info!("tracking GET {path} codes={codes:?} -> 200 (streaming {size} bytes)");
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                crate::huge_body(size, HUGE_PREFIX, HUGE_ENTRY),
            )
                .into_response();
        }
        Some(Fault::Redirect(code, location)) => {
            tracing::info!("tracking GET {path} codes={codes:?} -> {code} to {location}");
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::TEMPORARY_REDIRECT);
            return (status, [(header::LOCATION, location)]).into_response();
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }

    let mut objetos = Vec::with_capacity(codes.len());
    let mut summary = Vec::with_capacity(codes.len());
    {
        let mut book = shared.book();
        book.batches.push(codes.len());
        let drift = book.drift.clone();
        let object_drift = book.object_drift.clone();
        let numeric_tipo = book.numeric_tipo;
        // The real API guarantees no order; answering in reverse keeps clients honest.
        for code in codes.iter().rev() {
            let caller = owner.clone().unwrap_or_default();
            if let Some(a) = book.accounts.get_mut(&caller) {
                *a.polls.entry(code.clone()).or_insert(0) += 1;
            }
            if book
                .code_owner
                .get(code)
                .is_some_and(|contract| *contract != caller)
            {
                objetos.push(json!({ "codObjeto": code, "mensagem": SRO_009 }));
                summary.push(format!("{code}: SRO-009 (another contract's)"));
                continue;
            }
            let (mut object, what) = poll(&mut book, &shared.config, code, resultado);
            if numeric_tipo
                && let Some(events) = object.get_mut("eventos").and_then(Value::as_array_mut)
            {
                for ev in events.iter_mut().filter_map(Value::as_object_mut) {
                    let number = ev
                        .get("tipo")
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<u64>().ok());
                    if let Some(n) = number {
                        ev.insert("tipo".to_string(), json!(n));
                    }
                }
            }
            if let (Some((from, to)), Some(events)) = (
                &drift,
                object.get_mut("eventos").and_then(Value::as_array_mut),
            ) {
                for ev in events.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(v) = ev.remove(from) {
                        ev.insert(to.clone(), v);
                    }
                }
            }
            if let (Some((from, to)), Some(fields)) = (&object_drift, object.as_object_mut())
                && let Some(v) = fields.remove(from)
            {
                fields.insert(to.clone(), v);
            }
            objetos.push(object);
            summary.push(format!("{code}: {what}"));
        }
    }
    shared.tracking_calls.fetch_add(1, Ordering::SeqCst);
    tracing::info!(
        "tracking GET {path} codes={codes:?} -> 200 [{}]",
        summary.join("; ")
    );
    let body = json!({
        "objetos": objetos,
        "quantidade": codes.len(),
        "resultado": descricao,
        "versao": "3.5.0-sim",
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[derive(Clone, Copy)]
enum Resultado {
    All,
    Last,
    First,
}

/// S10: two letters, eight digits, the check digit, two letters.
fn valid_s10(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() != 13
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..11].iter().all(u8::is_ascii_digit)
        || !b[11..].iter().all(u8::is_ascii_uppercase)
    {
        return false;
    }
    // Deliberately not tracking_domain's: the simulator plays Correios and must not share the code under test.
    let sum: u32 = b[2..10]
        .iter()
        .zip([8u32, 6, 4, 2, 3, 5, 9, 7])
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let check = match sum % 11 {
        0 => 5,
        1 => 0,
        r => 11 - r,
    };
    u32::from(b[10] - b'0') == check
}

fn poll(book: &mut Book, config: &SimConfig, code: &str, resultado: Resultado) -> (Value, String) {
    *book.polls.entry(code.to_string()).or_insert(0) += 1;
    if config.auto_journey && !book.objects.contains_key(code) {
        let script = if valid_s10(code) {
            Script::Journey(Journey::delivered())
        } else {
            Script::Invalid
        };
        book.objects.insert(
            code.to_string(),
            Object {
                script,
                revealed: 0,
            },
        );
    }
    let Some(Object { script, revealed }) = book.objects.get_mut(code) else {
        return (
            json!({ "codObjeto": code, "mensagem": SRO_020 }),
            "SRO-020".to_string(),
        );
    };
    let journey = match script {
        Script::NotFound => {
            return (
                json!({ "codObjeto": code, "mensagem": SRO_020 }),
                "SRO-020".to_string(),
            );
        }
        Script::Invalid => {
            return (
                json!({ "codObjeto": code, "mensagem": SRO_019 }),
                "SRO-019".to_string(),
            );
        }
        Script::Message(message) => {
            return (
                json!({ "codObjeto": code, "mensagem": message }),
                message.clone(),
            );
        }
        Script::MessageAndNoEvents(message) => {
            return (
                json!({ "codObjeto": code, "mensagem": message, "eventos": [] }),
                format!("{message} with eventos []"),
            );
        }
        Script::Journey(j) => j,
    };
    *revealed = revealed
        .saturating_add(journey.reveal_per_poll.max(1))
        .min(journey.events.len());
    let visible = *revealed;
    let shown: Vec<usize> = match resultado {
        _ if visible == 0 => Vec::new(),
        Resultado::All => (0..visible).rev().collect(),
        Resultado::Last => vec![visible - 1],
        Resultado::First => vec![0],
    };
    let eventos: Vec<Value> = shown
        .iter()
        .map(|&i| event_json(&journey.events, i))
        .collect();
    let sigla: String = code.chars().take(2).collect();
    let mut object = json!({
        "codObjeto": code,
        "tipoPostal": { "sigla": sigla, "descricao": "ETIQUETA LÓGICA SEDEX", "categoria": "SEDEX" },
        "modalidade": "F",
        "eventos": eventos,
    });
    if let (Some(dt), Some(obj)) = (journey.dt_prevista, object.as_object_mut()) {
        obj.insert(
            "dtPrevista".to_string(),
            Value::String(dt.format(LOCAL_FORMAT).to_string()),
        );
    }
    let newest = journey
        .events
        .get(visible.wrapping_sub(1))
        .map(|e| format!(", newest {} {}", e.codigo, e.tipo))
        .unwrap_or_default();
    (
        object,
        format!("{visible}/{} events{newest}", journey.events.len()),
    )
}

fn event_json(events: &[SimEvent], i: usize) -> Value {
    let Some(ev) = events.get(i) else {
        return Value::Null;
    };
    let mut v = json!({
        "codigo": ev.codigo,
        "tipo": ev.tipo,
        "dtHrCriado": ev.at.format(LOCAL_FORMAT).to_string(),
        "descricao": ev.descricao,
        "unidade": { "tipo": ev.unidade_tipo, "endereco": { "cidade": ev.cidade, "uf": ev.uf } },
    });
    if ev.codigo == "RO" || ev.codigo == "DO" {
        // Forwarded to the unit of the next event, when the journey has one.
        let (cidade, uf) = events
            .get(i + 1)
            .map_or((&ev.cidade, &ev.uf), |n| (&n.cidade, &n.uf));
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "unidadeDestino".to_string(),
                json!({ "tipo": "Unidade de Distribuição", "endereco": { "cidade": cidade, "uf": uf } }),
            );
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------------------------
// Control API (no auth), for the demo and the tests that drive the `correios-sim` process.

#[derive(Deserialize)]
struct ControlBody {
    journey: Option<String>,
    #[serde(default)]
    all_at_once: bool,
    #[serde(default)]
    not_found: bool,
    #[serde(default)]
    invalid: bool,
}

async fn control_put(
    State(shared): State<Arc<Shared>>,
    Path(code): Path<String>,
    body: Bytes,
) -> Response {
    let bad =
        |msg: &str| (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response();
    let body: ControlBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad(&format!("invalid JSON: {e}")),
    };
    let script = match (body.journey.as_deref(), body.not_found, body.invalid) {
        (Some("delivered"), false, false) if body.all_at_once => {
            Script::Journey(Journey::delivered().all_at_once())
        }
        (Some("delivered"), false, false) => Script::Journey(Journey::delivered()),
        (Some(other), false, false) => {
            return bad(&format!("unknown journey {other:?} (known: delivered)"));
        }
        (None, true, false) => Script::NotFound,
        (None, false, true) => Script::Invalid,
        _ => {
            return bad(
                r#"send exactly one of {"journey":"delivered"}, {"not_found":true}, {"invalid":true}"#,
            );
        }
    };
    tracing::info!("scripted {code}: {script:?}");
    shared.book().objects.insert(
        code,
        Object {
            script,
            revealed: 0,
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

/// `PUT /_sim/answers`: how every answer is shaped from now on. `{"rename_event_field": ["dtHrCriado", "dataHora"]}`
/// sends each event's `dtHrCriado` as `dataHora` (Correios changed its API: the fetcher can no longer read the
/// answers, and the carrier turns broken); `{"rename_event_field": null}` goes back to API Rastro's shape.
#[derive(Deserialize)]
struct AnswersBody {
    rename_event_field: Option<(String, String)>,
}

async fn answers_put(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: AnswersBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!(
                r#"invalid body ({e}): send {{"rename_event_field": ["dtHrCriado", "dataHora"]}} or {{"rename_event_field": null}}"#
            );
            return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response();
        }
    };
    match &body.rename_event_field {
        Some((from, to)) => tracing::info!("answers: every event's {from} is sent as {to}"),
        None => tracing::info!("answers: API Rastro's shape again"),
    }
    shared.book().drift = body.rename_event_field;
    StatusCode::NO_CONTENT.into_response()
}

async fn answers_get(State(shared): State<Arc<Shared>>) -> Response {
    let drift = shared.book().drift.clone();
    axum::Json(json!({ "rename_event_field": drift })).into_response()
}

async fn control_get(State(shared): State<Arc<Shared>>, Path(code): Path<String>) -> Response {
    let polls = shared.book().polls.get(&code).copied().unwrap_or(0);
    axum::Json(json!({ "polls": polls })).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn s10_check_digit() {
        for ok in [
            "DL746686536BR",
            "PG747937788BR",
            "SW091892778BR",
            "JT124720455BR",
            "DU713842539BR",
        ] {
            assert!(valid_s10(ok), "{ok}");
        }
        assert!(!valid_s10("AA123456789BR"));
        assert!(!valid_s10("AA12345678BR"));
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(Some(
            "codigosObjetos=A%2CB&codigosObjetos=C+D&resultado=T&x",
        ));
        assert_eq!(q[0], ("codigosObjetos".to_string(), "A,B".to_string()));
        assert_eq!(q[1].1, "C D");
        assert_eq!(q[3], ("x".to_string(), String::new()));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
