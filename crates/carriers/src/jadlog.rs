//! Jadlog tracking (the project's notes on it are kept outside this repository).
//!
//! - `POST {base}/embarcador/api/tracking/consultar` with `Authorization: Bearer {JADLOG_TOKEN}` (a static token
//!   issued by Jadlog) and `{"consulta": [{"codigo": "..."}, ...]}`, one entry per code.
//! - Each answer entry is matched by `codigo`; an entry with an error object (under `erro` or `error`) saying
//!   "Nenhum registro encontrado" or "não localizado" is a code Jadlog does not know yet (kept and polled, like
//!   Correios' SRO-020); another error refuses the code.
//! - Events (`data`, `status`, `unidade`) come oldest first, times without offset (read in `CARRIER_TIME_ZONE`);
//!   the status word is the event code the event table maps (`crates/domain/data/jadlog.toml`).

use crate::correios::parse_local;
use crate::redact::{RedactFetch, Redactor};
use crate::{
    Answered, Answers, Budget, CallRetry, CarrierClient, FetchError, ObjectResult, TrackFuture,
    read_answer, transport, with_retries,
};
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tracking_domain::{Carrier, CarrierEvent, TrackingCode};

/// The status word after which the object moves no more (delivered).
pub const FINAL_CODES: [&str; 1] = ["ENTREGUE"];

/// The budget account of the Jadlog token (one per deployment).
pub const ACCOUNT: &str = "jadlog";

#[derive(Clone)]
pub struct JadlogSettings {
    /// `JADLOG_BASE_URL` (default `https://www.jadlog.com.br`).
    pub base_url: String,
    /// `JADLOG_TOKEN`.
    pub token: SecretString,
    /// `JADLOG_TIMEOUT_MS`.
    pub timeout: Duration,
    /// `CARRIER_TIME_ZONE`.
    pub time_zone: Tz,
    /// `JADLOG_BATCH_SIZE` (default 50): codes per call.
    pub batch: usize,
    pub retry: CallRetry,
    /// `CARRIER_MAX_BODY_BYTES` (default [`crate::DEFAULT_MAX_BODY_BYTES`]): a longer answer is refused unread.
    pub max_body: usize,
}

impl std::fmt::Debug for JadlogSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JadlogSettings")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

pub struct JadlogClient {
    http: reqwest::Client,
    settings: JadlogSettings,
    budget: Option<Arc<dyn Budget>>,
    /// Knows the static token: every error passes through it.
    redactor: Redactor,
}

#[derive(Deserialize)]
struct Answer {
    consulta: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    codigo: String,
    previsao_entrega: Option<String>,
    tracking: Option<Tracking>,
    /// Jadlog answers `erro`; some of its endpoints and versions answer `error`.
    #[serde(alias = "error")]
    erro: Option<Erro>,
}

#[derive(Deserialize)]
struct Tracking {
    eventos: Vec<Value>,
}

#[derive(Deserialize)]
struct Erro {
    descricao: String,
}

#[derive(Deserialize)]
struct Evento {
    data: String,
    status: String,
    unidade: Option<String>,
}

/// Whether Jadlog's error means "not in our system yet": `Nenhum registro encontrado`, `Não localizado` or
/// `Nao localizado` (any case).
fn not_yet(descricao: &str) -> bool {
    let d = descricao.to_lowercase();
    d.contains("nenhum registro") || d.contains("não localizado") || d.contains("nao localizado")
}

impl JadlogClient {
    pub fn new(settings: JadlogSettings) -> Result<Self, reqwest::Error> {
        let http = crate::http_client(settings.timeout)?;
        let redactor = Redactor::new([settings.token.clone()]);
        Ok(Self {
            http,
            settings,
            budget: None,
            redactor,
        })
    }

    pub fn with_budget(mut self, budget: Arc<dyn Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    pub async fn track(&self, codes: &[TrackingCode]) -> Result<Answered, FetchError> {
        with_retries(
            Carrier::Jadlog,
            &self.settings.retry,
            self.budget.as_ref(),
            || self.track_once(codes),
        )
        .await
    }

    /// One call, its errors and its body redacted.
    async fn track_once(&self, codes: &[TrackingCode]) -> Result<Answered, FetchError> {
        self.redactor
            .answered(self.track_once_unredacted(codes).await)
    }

    async fn track_once_unredacted(&self, codes: &[TrackingCode]) -> Result<Answered, FetchError> {
        let body = json!({ "consulta": codes.iter().map(|c| json!({ "codigo": c.as_str() })).collect::<Vec<_>>() });
        let resp = self
            .http
            .post(format!(
                "{}/embarcador/api/tracking/consultar",
                self.settings.base_url.trim_end_matches('/')
            ))
            .bearer_auth(self.settings.token.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let text = read_answer(resp, "tracking call", self.settings.max_body).await?;
        let answers = self.parse_answer(codes, &text)?;
        Ok(Answered {
            answers,
            body: text,
        })
    }

    pub fn parse_answer(&self, codes: &[TrackingCode], text: &str) -> Result<Answers, FetchError> {
        let malformed = |reason: String| FetchError::Malformed {
            reason,
            http_status: Some(200),
            body: text.to_owned(),
        };
        let answer: Answer =
            serde_json::from_str(text).map_err(|e| malformed(format!("tracking answer: {e}")))?;
        let mut out = Answers::new();
        let mut unreadable = Vec::new();
        for raw in answer.consulta {
            let entry: Entry = serde_json::from_value(raw)
                .map_err(|e| malformed(format!("tracking answer entry: {e}")))?;
            let Some(code) = codes.iter().find(|c| c.as_str() == entry.codigo) else {
                return Err(malformed(format!("unexpected codigo {:?}", entry.codigo)));
            };
            let result = match (entry.tracking, entry.erro) {
                (Some(tracking), _) => {
                    let events: Result<Vec<CarrierEvent>, String> = tracking
                        .eventos
                        .into_iter()
                        .map(|raw_ev| self.event(raw_ev))
                        .collect();
                    let events = match events {
                        Ok(events) => events,
                        // That code's problem, unless all or most entries are so (`unreadable_events`).
                        Err(e) => {
                            let message =
                                tracking_domain::text::clean(&e, tracking_domain::text::LONG);
                            unreadable.push((code.clone(), message.clone()));
                            out.insert(code.clone(), ObjectResult::Unrecognised { message });
                            continue;
                        }
                    };
                    let estimated_delivery = entry
                        .previsao_entrega
                        .as_deref()
                        // The end of the promised day, read like every carrier time (years checked).
                        .and_then(|d| {
                            parse_local(
                                &format!("{} 23:59:59", d.trim()),
                                None,
                                self.settings.time_zone,
                            )
                        });
                    ObjectResult::Found {
                        events,
                        estimated_delivery,
                    }
                }
                (None, Some(erro)) if not_yet(&erro.descricao) => ObjectResult::NotYet {
                    message: erro.descricao,
                },
                (None, Some(erro)) => ObjectResult::Refused {
                    message: erro.descricao,
                },
                (None, None) => ObjectResult::Unrecognised {
                    message: "an entry with neither tracking nor erro".into(),
                },
            };
            out.insert(code.clone(), result);
        }
        if let Some(missing) = codes.iter().find(|c| !out.contains_key(*c)) {
            return Err(malformed(format!("the answer lacks {missing}")));
        }
        crate::unreadable_events(out.len(), &unreadable, text)?;
        Ok(out)
    }

    fn event(&self, raw: Value) -> Result<CarrierEvent, String> {
        let ev: Evento = serde_json::from_value(raw.clone()).map_err(|e| format!("event: {e}"))?;
        let occurred_at = parse_local(&ev.data, None, self.settings.time_zone)
            .ok_or_else(|| format!("event {}: bad data {:?}", ev.status, ev.data))?;
        Ok(CarrierEvent {
            code: ev.status.clone(),
            kind: None,
            occurred_at,
            description: ev.status,
            detail: None,
            location: None,
            unit: ev.unidade,
            status: None,
            raw,
        }
        .cleaned())
    }
}

impl CarrierClient for JadlogClient {
    fn carrier(&self) -> Carrier {
        Carrier::Jadlog
    }

    fn max_batch(&self) -> usize {
        self.settings.batch.max(1)
    }

    fn track<'a>(&'a self, codes: &'a [TrackingCode]) -> TrackFuture<'a> {
        Box::pin(JadlogClient::track(self, codes))
    }

    fn parse(&self, codes: &[TrackingCode], body: &str) -> Result<Answers, FetchError> {
        self.parse_answer(codes, body)
            .map_err(|e| self.redactor.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_debug_shows_no_token() {
        let settings = JadlogSettings {
            base_url: "https://www.jadlog.com.br".into(),
            token: "jadlog-static-token-0123456789".to_owned().into(),
            timeout: Duration::from_secs(30),
            time_zone: chrono_tz::America::Sao_Paulo,
            batch: 50,
            retry: CallRetry::default(),
            max_body: crate::DEFAULT_MAX_BODY_BYTES,
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("jadlog-static-token-0123456789"), "{shown}");
        assert!(shown.contains("www.jadlog.com.br"), "{shown}");
    }
}
