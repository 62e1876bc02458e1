//! Correios API Rastro (the project's notes on it are kept outside this repository).
//!
//! - Token: `POST /token/v1/autentica` (Basic `user:access-code`), or `/token/v1/autentica/cartaopostagem` with the
//!   postage card when one is configured. Cached and refreshed five minutes before `expiraEm` (read with `zoneOffset`).
//!   A 401/403 on a tracking call, or `GTW-008` with any status (401, 403 or 400 are seen), drops the token,
//!   refreshes once and retries once; a second refusal, or a 401/403 from the token endpoint itself, is
//!   [`FetchError::Auth`].
//! - `GTW-012` (the token lacks the scope of API Rastro) and `GTW-014` (the authorisation does not fit the
//!   postage-card token), on the token endpoint or a tracking call, whatever the HTTP status: [`FetchError::Auth`]
//!   at once, without the refresh-and-retry (a new token of the same account would be refused the same way); the
//!   fetcher then holds the account's calls (`CARRIER_AUTH_HOLD_MS`).
//! - Per-object answers concern their object alone: `SRO-020` not yet, `SRO-019` refused, `SRO-009` not trackable
//!   with this contract, anything else (or a message with an empty `eventos`) [`ObjectResult::Unrecognised`].
//!   `tipo` is read as a string or a number.
//! - Tracking: `GET /srorastro/v1/objetos?codigosObjetos=A&codigosObjetos=B&resultado=T` with `Accept-Language: pt-BR`;
//!   results are matched by `codObjeto` (the API guarantees no order).
//! - Event times come without an offset: they are read in the configured time zone (America/Sao_Paulo).

use crate::redact::{RedactFetch, Redactor};
use crate::{
    Answered, Answers, Budget, CallRetry, CarrierClient, FetchError, ObjectResult, TrackFuture,
    read_answer, transport, with_retries,
};
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tracking_domain::{Carrier, CarrierEvent, Location, TrackingCode};

/// The most codes API Rastro takes in one call.
pub const MAX_BATCH: usize = 50;

/// Event codes after which the object moves no more (`BDE`, `BDI`, `BDR`: delivery, its attempts and returns
/// close with one of these); a code whose newest event is one of them is not "stopped updating".
pub const FINAL_CODES: [&str; 3] = ["BDE", "BDI", "BDR"];

#[derive(Clone)]
pub struct CorreiosSettings {
    /// `CORREIOS_BASE_URL`.
    pub base_url: String,
    /// `CORREIOS_USER`.
    pub user: String,
    /// `CORREIOS_ACCESS_CODE`.
    pub access_code: SecretString,
    /// `CORREIOS_POSTAGE_CARD`: when set, the token is requested for this card.
    pub postage_card: Option<String>,
    /// `CORREIOS_TIMEOUT_MS`: per HTTP call; public clients report answers slower than 20 s under load.
    pub timeout: Duration,
    /// `CARRIER_TIME_ZONE`: how to read event times that carry no offset.
    pub time_zone: Tz,
    /// `CORREIOS_BATCH_SIZE` (default and maximum 50): codes per tracking call.
    pub batch: usize,
    /// `CARRIER_CALL_RETRIES`, `CARRIER_CALL_RETRY_BASE_MS`, `CARRIER_CALL_RETRY_MAX_WAIT_MS`.
    pub retry: CallRetry,
    /// `CARRIER_MAX_BODY_BYTES` (default [`crate::DEFAULT_MAX_BODY_BYTES`]): a longer answer is refused unread.
    pub max_body: usize,
}

impl CorreiosSettings {
    /// The account whose request budget these credentials spend: the user, and the postage card when the token
    /// is requested for one (each card is its own contract).
    pub fn account(&self) -> String {
        match &self.postage_card {
            Some(card) => format!("correios:{}:{card}", self.user),
            None => format!("correios:{}", self.user),
        }
    }
}

impl std::fmt::Debug for CorreiosSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorreiosSettings")
            .field("base_url", &self.base_url)
            .field("user", &self.user)
            .field("postage_card", &self.postage_card)
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

struct Token {
    value: SecretString,
    refresh_after: DateTime<Utc>,
}

pub struct CorreiosClient {
    http: reqwest::Client,
    settings: CorreiosSettings,
    token: Mutex<Option<Token>>,
    budget: Option<Arc<dyn Budget>>,
    /// Knows the access code (and its Basic form) and every token received: every error passes through it.
    redactor: Redactor,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenAnswer {
    token: String,
    expira_em: String,
    zone_offset: Option<String>,
}

#[derive(Deserialize)]
struct TrackingAnswer {
    objetos: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Objeto {
    cod_objeto: String,
    mensagem: Option<String>,
    dt_prevista: Option<String>,
    eventos: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Evento {
    codigo: String,
    #[serde(default, deserialize_with = "tipo")]
    tipo: Option<String>,
    dt_hr_criado: String,
    descricao: String,
    detalhe: Option<String>,
    unidade: Option<Unidade>,
}

#[derive(Deserialize)]
struct Unidade {
    tipo: Option<String>,
    nome: Option<String>,
    endereco: Option<Endereco>,
}

#[derive(Deserialize)]
struct Endereco {
    cidade: Option<String>,
    uf: Option<String>,
}

/// `tipo` as API Rastro documents it (`"01"`), or as a number (`1`, seen from some gateways): both give `"01"`.
fn tipo<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) => Ok(Some(format!("{n:02}"))),
            None => Err(serde::de::Error::custom(format!(
                "tipo {n} is not a whole number"
            ))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "tipo {other} is neither a string nor a number"
        ))),
    }
}

/// The names of an object's fields (at most 10, each cut at 40 characters): what an operator needs to see a
/// renamed field, without its values.
pub(crate) fn field_names(raw: &Value) -> String {
    match raw.as_object() {
        Some(fields) => fields
            .keys()
            .take(10)
            .map(|k| tracking_domain::text::clean(k, 40))
            .collect::<Vec<_>>()
            .join(", "),
        None => "not an object".into(),
    }
}

/// Why Correios refused this account's access for good (a new token would not help), when `body` says so:
/// `GTW-012` (the token has no scope for API Rastro) or `GTW-014` (the authorisation does not fit the postage-card
/// token). The reason names what an operator must fix.
pub fn access_refusal(body: &str) -> Option<String> {
    let (code, fix) = if body.contains("GTW-012") {
        (
            "GTW-012",
            "the token has no scope for API Rastro: have Correios enable API Rastro (SRO) for this contract's postage card, or configure the card that has it",
        )
    } else if body.contains("GTW-014") {
        (
            "GTW-014",
            "the authorisation does not fit the postage-card token: check that the postage card belongs to this user and contract",
        )
    } else {
        return None;
    };
    Some(format!("{code}: {fix} ({})", crate::snippet(body)))
}

/// What a per-object `mensagem` means. Only SRO-019 refuses a code; anything we do not know concerns that
/// object alone.
fn per_object(message: String) -> ObjectResult {
    let message = tracking_domain::text::clean(&message, tracking_domain::text::LONG);
    if message.starts_with("SRO-020") {
        ObjectResult::NotYet { message }
    } else if message.starts_with("SRO-019") {
        ObjectResult::Refused { message }
    } else if message.starts_with("SRO-009") {
        ObjectResult::NotTrackable { message }
    } else {
        ObjectResult::Unrecognised { message }
    }
}

impl CorreiosClient {
    pub fn new(settings: CorreiosSettings) -> Result<Self, reqwest::Error> {
        let http = crate::http_client(settings.timeout)?;
        let basic = base64_basic(&settings.user, settings.access_code.expose_secret());
        let redactor = Redactor::new([settings.access_code.clone(), SecretString::from(basic)]);
        Ok(Self {
            http,
            settings,
            token: Mutex::new(None),
            budget: None,
            redactor,
        })
    }

    /// Spend `budget` before every tracking call.
    pub fn with_budget(mut self, budget: Arc<dyn Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url.trim_end_matches('/'))
    }

    async fn token(&self) -> Result<SecretString, FetchError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && Utc::now() < t.refresh_after
        {
            return Ok(t.value.clone());
        }
        let (path, body) = match &self.settings.postage_card {
            Some(card) => (
                "/token/v1/autentica/cartaopostagem",
                Some(serde_json::json!({ "numero": card })),
            ),
            None => ("/token/v1/autentica", None),
        };
        let mut req = self.http.post(self.url(path)).basic_auth(
            &self.settings.user,
            Some(self.settings.access_code.expose_secret()),
        );
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let text = match read_answer(resp, "token endpoint", self.settings.max_body).await {
            Err(FetchError::Auth(reason)) | Err(FetchError::Malformed { body: reason, .. })
                if access_refusal(&reason).is_some() =>
            {
                return Err(FetchError::Auth(format!(
                    "token endpoint answered {status}: {}",
                    access_refusal(&reason).unwrap_or_default()
                )));
            }
            other => other?,
        };
        let malformed = |reason: String| FetchError::Malformed {
            reason,
            http_status: Some(status.as_u16()),
            body: text.clone(),
        };
        // Whatever else is wrong with the answer, a token in it is a secret from now on.
        let value: Value =
            serde_json::from_str(&text).map_err(|e| malformed(format!("token answer: {e}")))?;
        if let Some(token) = value.get("token").and_then(Value::as_str) {
            self.redactor.remember(token);
        }
        let answer: TokenAnswer =
            serde_json::from_value(value).map_err(|e| malformed(format!("token answer: {e}")))?;
        let expires = parse_local(
            &answer.expira_em,
            answer.zone_offset.as_deref(),
            self.settings.time_zone,
        )
        .ok_or_else(|| malformed("token answer: bad expiraEm".into()))?;
        let refresh_after = expires
            .with_timezone(&Utc)
            .checked_sub_signed(chrono::Duration::minutes(5))
            .ok_or_else(|| malformed("token answer: expiraEm out of range".into()))?;
        let value = SecretString::from(answer.token);
        *guard = Some(Token {
            value: value.clone(),
            refresh_after,
        });
        tracing::info!(expires_at = %expires, "Got a Correios token.");
        Ok(value)
    }

    async fn drop_token(&self) {
        *self.token.lock().await = None;
    }

    /// Tracks up to 50 codes in one call, retrying transient failures (bounded). Every code asked is in the
    /// answer map, or the call is an error.
    pub async fn track(&self, codes: &[TrackingCode]) -> Result<Answered, FetchError> {
        with_retries(
            Carrier::Correios,
            &self.settings.retry,
            self.budget.as_ref(),
            || self.track_refreshing(codes),
        )
        .await
    }

    async fn track_refreshing(&self, codes: &[TrackingCode]) -> Result<Answered, FetchError> {
        match self.track_once(codes).await {
            // Refused for good: a new token of the same account would be refused the same way.
            Err(FetchError::Auth(first))
                if first.contains("GTW-012") || first.contains("GTW-014") =>
            {
                Err(FetchError::Auth(first))
            }
            Err(FetchError::Auth(first)) => {
                tracing::warn!(reason = %first, "Correios refused the token; refreshing it once.");
                self.drop_token().await;
                self.track_once(codes).await
            }
            other => other,
        }
    }

    /// One call (token included), its errors and its body redacted.
    async fn track_once(&self, codes: &[TrackingCode]) -> Result<Answered, FetchError> {
        self.redactor
            .answered(self.track_once_unredacted(codes).await)
    }

    async fn track_once_unredacted(&self, codes: &[TrackingCode]) -> Result<Answered, FetchError> {
        let token = self.token().await?;
        let mut query: Vec<(&str, &str)> = codes
            .iter()
            .map(|c| ("codigosObjetos", c.as_str()))
            .collect();
        query.push(("resultado", "T"));
        let qs: String = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .http
            .get(format!("{}?{qs}", self.url("/srorastro/v1/objetos")))
            .bearer_auth(token.expose_secret())
            .header("Accept-Language", "pt-BR")
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let text = match read_answer(resp, "tracking call", self.settings.max_body).await {
            Err(FetchError::Auth(reason)) | Err(FetchError::Malformed { body: reason, .. })
                if access_refusal(&reason).is_some() =>
            {
                return Err(FetchError::Auth(format!(
                    "tracking call answered {status}: {}",
                    access_refusal(&reason).unwrap_or_default()
                )));
            }
            // GTW-008 (the token is not valid here) comes with 401, 403 or 400: whatever the status, it is a
            // refused token, which `track_refreshing` refreshes once.
            Err(FetchError::Malformed { body, .. }) if body.contains("GTW-008") => {
                return Err(FetchError::Auth(format!(
                    "tracking call answered {status}: {}",
                    crate::snippet(&body)
                )));
            }
            other => other?,
        };
        let answers = self.parse_tracking(codes, &text)?;
        Ok(Answered {
            answers,
            body: text,
        })
    }

    /// Reads a tracking answer. Anything missing or of another shape than API Rastro's is
    /// [`FetchError::Malformed`] with the whole body.
    pub fn parse_tracking(
        &self,
        codes: &[TrackingCode],
        text: &str,
    ) -> Result<Answers, FetchError> {
        let malformed = |reason: String| FetchError::Malformed {
            reason,
            http_status: Some(200),
            body: text.to_owned(),
        };
        let answer: TrackingAnswer =
            serde_json::from_str(text).map_err(|e| malformed(format!("tracking answer: {e}")))?;
        let mut out = HashMap::new();
        let mut unreadable = Vec::new();
        for raw in answer.objetos {
            let obj: Objeto = serde_json::from_value(raw.clone())
                .map_err(|e| malformed(format!("tracking answer object: {e}")))?;
            let Ok(code) = TrackingCode::parse(&obj.cod_objeto) else {
                return Err(malformed(format!(
                    "unexpected codObjeto {:?}",
                    obj.cod_objeto
                )));
            };
            let result = match (obj.eventos, obj.mensagem) {
                // A message with an empty `eventos` is the message's answer.
                (Some(eventos), Some(message)) if eventos.is_empty() => per_object(message),
                (Some(eventos), _) => {
                    // An event we cannot read makes its object unrecognised (that code's problem), unless all or
                    // most objects of the answer are so (`unreadable_events`).
                    let events: Result<Vec<CarrierEvent>, String> = eventos
                        .into_iter()
                        .map(|raw_ev| self.event(raw_ev))
                        .collect();
                    match events {
                        Ok(events) => ObjectResult::Found {
                            events,
                            estimated_delivery: obj
                                .dt_prevista
                                .as_deref()
                                .and_then(|d| parse_local(d, None, self.settings.time_zone)),
                        },
                        Err(e) => {
                            let message =
                                tracking_domain::text::clean(&e, tracking_domain::text::LONG);
                            unreadable.push((code.clone(), message.clone()));
                            ObjectResult::Unrecognised { message }
                        }
                    }
                }
                (None, Some(message)) => per_object(message),
                (None, None) => ObjectResult::Unrecognised {
                    message: format!(
                        "an object with neither eventos nor mensagem (its fields: {})",
                        field_names(&raw)
                    ),
                },
            };
            out.insert(code, result);
        }
        if let Some(missing) = codes.iter().find(|c| !out.contains_key(*c)) {
            return Err(malformed(format!("the answer lacks {missing}")));
        }
        crate::unreadable_events(out.len(), &unreadable, text)?;
        Ok(out)
    }

    fn event(&self, raw: Value) -> Result<CarrierEvent, String> {
        let ev: Evento = serde_json::from_value(raw.clone()).map_err(|e| format!("event: {e}"))?;
        let occurred_at = parse_local(&ev.dt_hr_criado, None, self.settings.time_zone)
            .ok_or_else(|| format!("event {}: bad dtHrCriado {:?}", ev.codigo, ev.dt_hr_criado))?;
        let (unit, location) = match ev.unidade {
            Some(u) => {
                let loc = u.endereco.map(|e| Location {
                    city: e.cidade,
                    state: e.uf,
                });
                (u.nome.or(u.tipo), loc)
            }
            None => (None, None),
        };
        Ok(CarrierEvent {
            code: ev.codigo,
            kind: ev.tipo,
            occurred_at,
            description: ev.descricao,
            detail: ev.detalhe,
            location,
            unit,
            status: None,
            raw,
        }
        .cleaned())
    }
}

impl CarrierClient for CorreiosClient {
    fn carrier(&self) -> Carrier {
        Carrier::Correios
    }

    fn max_batch(&self) -> usize {
        self.settings.batch.clamp(1, MAX_BATCH)
    }

    fn track<'a>(&'a self, codes: &'a [TrackingCode]) -> TrackFuture<'a> {
        Box::pin(CorreiosClient::track(self, codes))
    }

    fn parse(&self, codes: &[TrackingCode], body: &str) -> Result<Answers, FetchError> {
        self.parse_tracking(codes, body)
            .map_err(|e| self.redactor.error(e))
    }
}

/// The `Authorization: Basic` credentials as sent, so an answer echoing them is redacted too.
fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Reads a Correios local time (`2026-03-27T14:40:30`, no offset) in `offset` when given (`-03:00`), else in `tz`.
/// The years a carrier time may fall in.
const PLAUSIBLE_YEARS: std::ops::RangeInclusive<i32> = 2000..=2200;

pub fn parse_local(s: &str, offset: Option<&str>, tz: Tz) -> Option<DateTime<FixedOffset>> {
    let naive = NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S"))
        .ok()?;
    // No parcel event or token expiry lies outside these years. Refusing others keeps the arithmetic on them
    // (a token's refresh time) from overflowing, and keeps out zones' historic offsets with seconds (Sao
    // Paulo's was -03:06:28 before 1914), which RFC 3339 cannot carry to the normalizer.
    if !(PLAUSIBLE_YEARS).contains(&chrono::Datelike::year(&naive)) {
        return None;
    }
    if let Some(off) =
        offset.and_then(|o| DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{o}")).ok())
    {
        return off.offset().from_local_datetime(&naive).single();
    }
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|d| d.fixed_offset())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_debug_shows_no_credential() {
        let settings = CorreiosSettings {
            base_url: "https://api.correios.com.br".into(),
            user: "empresa".into(),
            access_code: "codigo-de-acesso-0123456789".to_owned().into(),
            postage_card: Some("0067599079".into()),
            timeout: Duration::from_secs(30),
            time_zone: chrono_tz::America::Sao_Paulo,
            batch: 50,
            retry: CallRetry::default(),
            max_body: crate::DEFAULT_MAX_BODY_BYTES,
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("codigo-de-acesso-0123456789"), "{shown}");
        let basic = base64_basic("empresa", "codigo-de-acesso-0123456789");
        assert!(!shown.contains(&basic), "{shown}");
        assert!(shown.contains("api.correios.com.br"), "{shown}");
    }

    #[test]
    fn gtw_012_and_014_are_refusals_of_access_and_name_the_fix() {
        let body =
            r#"{"msgs":["GTW-012: Token sem permissão para esta API."],"causa":"Forbidden"}"#;
        let reason = access_refusal(body).unwrap();
        assert!(
            reason.starts_with("GTW-012: the token has no scope for API Rastro"),
            "{reason}"
        );
        assert!(
            reason.contains("Token sem permiss"),
            "the carrier's words: {reason}"
        );
        let reason =
            access_refusal(r#"{"msgs":["GTW-014: Autorização inválida para o cartão."]}"#).unwrap();
        assert!(
            reason.contains("postage card belongs to this user"),
            "{reason}"
        );
        assert!(
            access_refusal(r#"{"msgs":["GTW-008: Token não válido para este ambiente."]}"#)
                .is_none()
        );
        assert!(access_refusal("").is_none());
    }

    #[test]
    fn local_times_are_read_in_brazil_time() {
        let t = parse_local("2026-03-27T14:40:30", None, chrono_tz::America::Sao_Paulo).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-27T14:40:30-03:00");
        let t = parse_local(
            "2026-03-27T14:40:30",
            Some("-02:00"),
            chrono_tz::America::Sao_Paulo,
        )
        .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-27T14:40:30-02:00");
        // Brazil had summer time until 2019.
        let t = parse_local("2018-12-01T10:00:00", None, chrono_tz::America::Sao_Paulo).unwrap();
        assert_eq!(t.to_rfc3339(), "2018-12-01T10:00:00-02:00");
        assert!(parse_local("27/03/2026", None, chrono_tz::America::Sao_Paulo).is_none());
        // Found by fuzzing: times no parcel has (an overflow on the token's refresh time; Sao Paulo's local mean
        // time before 1914, an offset with seconds that RFC 3339 cannot carry).
        for far in [
            "-262143-01-01T00:01:00",
            "1013-03-30T23:59:59",
            "1999-12-31T23:59:59",
            "2201-01-01T00:00:00",
        ] {
            assert!(
                parse_local(far, None, chrono_tz::America::Sao_Paulo).is_none(),
                "{far}"
            );
            assert!(
                parse_local(far, Some("+00:00"), chrono_tz::America::Sao_Paulo).is_none(),
                "{far}"
            );
        }
    }
}
