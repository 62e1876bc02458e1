//! Carrier clients. Each turns a carrier's API into [`ObjectResult`]s of parsed-but-untouched events, and every
//! failure into a [`FetchError`] that says whether to retry, alarm or park. Both implement [`CarrierClient`].
//!
//! - [`correios`]: API Rastro (token lifecycle, batched tracking calls, per-object messages, Brazil's time).
//! - [`jadlog`]: Jadlog's tracking query (static token, batched by code).
//!
//! - [`redact`]: secrets out of every kept answer, error reason and log line.
//!
//! Every answer is read up to the configured size (`CARRIER_MAX_BODY_BYTES`) and refused beyond it
//! ([`read_limited`]); redirects are followed only on the same host and scheme ([`http_client`]).
//!
//! Adding a carrier is a module here implementing [`CarrierClient`], a variant of `tracking_domain::Carrier`
//! and an event table in `crates/domain/data/`.

pub mod correios;
pub mod jadlog;
pub mod redact;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracking_domain::{Carrier, CarrierEvent, TrackingCode};

/// The carrier every deployment is expected to configure (a Correios S10 code is detected without a `carrier`
/// field): without its credentials it is listed as `broken` in the fetcher's health, and its requests are held.
/// Other carriers are listed once configured.
pub const PRIMARY: Carrier = Carrier::Correios;

/// The settings that hold `carrier`'s credentials, as operators must be told when they are missing.
pub fn credential_settings(carrier: Carrier) -> &'static str {
    match carrier {
        Carrier::Correios => "CORREIOS_USER and CORREIOS_ACCESS_CODE",
        Carrier::Jadlog => "JADLOG_TOKEN",
    }
}

/// Whether `code` is one of `carrier`'s codes after which a parcel moves no more (delivered, returned): a code
/// whose history holds one is finished, not stale, however old its newest event.
pub fn is_final_code(carrier: Carrier, code: &str) -> bool {
    match carrier {
        Carrier::Correios => correios::FINAL_CODES.contains(&code),
        Carrier::Jadlog => jadlog::FINAL_CODES.contains(&code),
    }
}

/// What the carrier said about one tracking code.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectResult {
    /// The carrier knows the object: its events (possibly none yet) and delivery estimate.
    Found {
        events: Vec<CarrierEvent>,
        estimated_delivery: Option<chrono::DateTime<chrono::FixedOffset>>,
    },
    /// Not in the carrier's system yet (Correios SRO-020: normal for hours after the label is issued). Keep polling.
    NotYet { message: String },
    /// The carrier refuses this code for good (Correios SRO-019 invalid). Park the request.
    Refused { message: String },
    /// The code is real but this account may not track it (Correios SRO-009: the label was bought under another
    /// contract, as with labels from third-party shipping platforms). The shipment is recorded as not trackable
    /// with this account, with an operator-facing reason ([`not_trackable_reason`]).
    NotTrackable { message: String },
    /// A per-object answer we do not recognise (an unknown message, an object with neither events nor message).
    /// It concerns this object alone: it is kept and polled again, counted and logged, and never fails the call
    /// for the other codes.
    Unrecognised { message: String },
}

/// The operator-facing reason a shipment is not trackable with our account, when `message` (a carrier's
/// per-object message as carried in a carrier update) says so: Correios `SRO-009`, "object not in our contract".
pub fn not_trackable_reason(carrier: Carrier, message: &str) -> Option<String> {
    match carrier {
        Carrier::Correios if message.trim_start().starts_with("SRO-009") => Some(format!(
            "{carrier} does not let this account track it ({}): the label was bought under another contract, \
             typically through a third-party shipping platform; track it with the account that bought the label",
            message.trim()
        )),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Connection failures, 429, 5xx: try again later.
    #[error("carrier temporarily unavailable: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// No answer within the configured timeout: try again later.
    #[error("carrier did not answer in time: {0}")]
    Timeout(String),
    /// The credentials were refused: an operator must act. Retrying soon would only hammer the carrier.
    #[error("carrier refused our credentials: {0}")]
    Auth(String),
    /// The answer does not have the shape we know: the carrier changed its API (or broke). `body` is the whole
    /// answer, kept so it can be replayed once the parser is fixed.
    #[error("carrier answer not understood: {reason}")]
    Malformed {
        reason: String,
        http_status: Option<u16>,
        body: String,
    },
    /// The answer reads, but most of its objects do not have the shape we know ([`judge_shape`]): the carrier
    /// changed its answers for everyone, which is the integration breaking, not those codes' problem. `body` is
    /// the whole answer, kept for replay as a [`FetchError::Malformed`] one is.
    #[error("carrier answer shape changed: {reason}")]
    Schema { reason: String, body: String },
}

impl FetchError {
    /// A short label for metrics and health counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Transient { .. } => "http_error",
            FetchError::Timeout(_) => "timeout",
            FetchError::Auth(_) => "auth",
            FetchError::Malformed { .. } => "unreadable",
            FetchError::Schema { .. } => "schema",
        }
    }
}

/// An answer is judged by its objects together: when at least this many of them are unrecognised ...
pub const SCHEMA_MIN_OBJECTS: usize = 3;

/// ... and they are more than half of the answer's objects, the answer's shape changed ([`FetchError::Schema`]).
/// Fewer, or a minority, concern their own codes alone ([`ObjectResult::Unrecognised`]). The fetcher applies the
/// same rule over a carrier's recent calls (`CARRIER_HEALTH_WINDOW_SECS`), so that small calls are judged too.
pub fn shape_changed(objects: usize, unrecognised: usize) -> bool {
    unrecognised >= SCHEMA_MIN_OBJECTS && unrecognised * 2 > objects
}

/// Up to three distinct messages of `answers`' unrecognised objects, for an operator's reason.
pub fn unrecognised_sample<'a>(answers: impl IntoIterator<Item = &'a ObjectResult>) -> String {
    let mut sample: Vec<&str> = Vec::new();
    for a in answers {
        if let ObjectResult::Unrecognised { message } = a
            && !sample.contains(&message.as_str())
        {
            sample.push(message);
            if sample.len() == 3 {
                break;
            }
        }
    }
    sample
        .iter()
        .map(|m| snippet(m))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Objects whose events could not be read (`(code, why)`, in the answer's order) among an answer's `objects`:
/// when they are all of them, or most ([`shape_changed`]), our reading of the answer's structure failed, which is
/// [`FetchError::Schema`] for the whole call (a single-object answer included: nothing in it reads). Fewer are
/// their own codes' problem ([`ObjectResult::Unrecognised`]).
pub fn unreadable_events(
    objects: usize,
    failures: &[(TrackingCode, String)],
    body: &str,
) -> Result<(), FetchError> {
    let n = failures.len();
    if n == 0 || !(n == objects || shape_changed(objects, n)) {
        return Ok(());
    }
    let (code, why) = &failures[0];
    Err(FetchError::Schema {
        reason: format!(
            "{n} of the answer's {objects} objects have events that cannot be read, e.g. {code}: {}",
            snippet(why)
        ),
        body: body.to_owned(),
    })
}

/// A kept answer read again (`trackctl carriers replay`): still [`FetchError::Schema`] while most of its objects,
/// or all of them, are unrecognised by today's parser; else its answers.
pub fn judge_shape(answers: Answers, body: &str) -> Result<Answers, FetchError> {
    let unrecognised = answers
        .values()
        .filter(|a| matches!(a, ObjectResult::Unrecognised { .. }))
        .count();
    let objects = answers.len();
    if unrecognised == 0 || !(unrecognised == objects || shape_changed(objects, unrecognised)) {
        return Ok(answers);
    }
    Err(FetchError::Schema {
        reason: format!(
            "{unrecognised} of the answer's {objects} objects are not recognised, e.g. {}",
            unrecognised_sample(answers.values())
        ),
        body: body.to_owned(),
    })
}

/// The answers of one call: every code asked is in it, or the call is an error.
pub type Answers = HashMap<TrackingCode, ObjectResult>;

/// What one tracking call answered: each code's result, and the body they were read from, which the fetcher keeps
/// for replay when it judges the answer's shape changed over the carrier's recent calls. Reads as its [`Answers`].
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub answers: Answers,
    pub body: String,
}

impl std::ops::Deref for Answered {
    type Target = Answers;
    fn deref(&self) -> &Answers {
        &self.answers
    }
}

pub type TrackFuture<'a> = Pin<Box<dyn Future<Output = Result<Answered, FetchError>> + Send + 'a>>;

/// A request budget that a client spends before each call to the carrier (the fetcher's is a token bucket shared
/// by every fetcher through PostgreSQL).
pub trait Budget: Send + Sync {
    fn spend(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// One carrier's tracking API.
pub trait CarrierClient: Send + Sync {
    fn carrier(&self) -> Carrier;
    /// The most codes one call may ask for.
    fn max_batch(&self) -> usize;
    /// Tracks up to [`CarrierClient::max_batch`] codes in one call (plus bounded retries of transient failures).
    fn track<'a>(&'a self, codes: &'a [TrackingCode]) -> TrackFuture<'a>;
    /// Reads an answer body kept from an earlier call (after the parser was fixed).
    fn parse(&self, codes: &[TrackingCode], body: &str) -> Result<Answers, FetchError>;
}

/// Bounded retries of transient failures and timeouts inside one `track`: `retries` more tries, from `base`
/// doubling (with jitter), never sooner than a `Retry-After` and never waiting more than `max_wait`.
#[derive(Debug, Clone)]
pub struct CallRetry {
    pub retries: usize,
    pub base: Duration,
    pub max_wait: Duration,
}

impl Default for CallRetry {
    fn default() -> Self {
        Self {
            retries: 2,
            base: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
        }
    }
}

/// Runs `call` with [`CallRetry`] (backon's exponential backoff), spending `budget` before every try.
pub async fn with_retries<F, Fut>(
    carrier: Carrier,
    retry: &CallRetry,
    budget: Option<&Arc<dyn Budget>>,
    mut call: F,
) -> Result<Answered, FetchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Answered, FetchError>>,
{
    use backon::BackoffBuilder;
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(retry.base)
        .with_max_delay(retry.max_wait)
        .with_max_times(retry.retries)
        .with_jitter()
        .build();
    loop {
        if let Some(b) = budget {
            b.spend().await;
        }
        let result = call().await;
        let after = match &result {
            Err(FetchError::Transient { retry_after, .. }) => *retry_after,
            Err(FetchError::Timeout(_)) => None,
            _ => return result,
        };
        let Some(delay) = delays.next() else {
            return result;
        };
        let wait = after.map_or(delay, |a| a.max(delay));
        if wait > retry.max_wait {
            return result;
        }
        if let Err(e) = &result {
            tracing::info!(%carrier, error = %e, wait_ms = wait.as_millis() as u64, "Carrier call failed; retrying.");
        }
        tokio::time::sleep(wait).await;
    }
}

/// The default of `CARRIER_MAX_BODY_BYTES`: 8 MiB, far above a tracking answer of 50 codes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The most redirects a carrier call follows (each on the same host and scheme).
const MAX_REDIRECTS: usize = 3;

/// The HTTP client of a carrier: the whole call bounded by `timeout`, connecting within at most 10 s of it.
///
/// Redirects are followed only to the same scheme, host and port as the call, at most three: a redirect elsewhere
/// would carry our credentials (a token request's Basic auth, a tracking call's bearer) to a host nobody configured.
/// Such a redirect is not followed; the 3xx comes back as the answer and [`read_answer`] refuses it.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let next = attempt.url();
        if attempt.previous().len() > MAX_REDIRECTS
            || next.scheme() != first.scheme()
            || next.host_str() != first.host_str()
            || next.port_or_known_default() != first.port_or_known_default()
        {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(same_origin)
        .user_agent(concat!("tracking-pipeline/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Reads a body up to `max` bytes, chunk by chunk: a longer answer (announced by `Content-Length` or found while
/// reading a chunked one) is refused as a [`FetchError::Transient`] (counted as an HTTP error) without being read
/// further, so a hostile or broken answer never costs more than `max` bytes of memory. Invalid UTF-8 is replaced.
pub async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<String, FetchError> {
    let too_large = |size: String| FetchError::Transient {
        reason: format!(
            "{what} answer is larger than {max} bytes (CARRIER_MAX_BODY_BYTES): {size}; refused"
        ),
        retry_after: None,
    };
    if let Some(len) = resp.content_length()
        && len > max as u64
    {
        return Err(too_large(format!("Content-Length {len}")));
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if buf.len() + chunk.len() > max {
            return Err(too_large(format!(
                "more than {} bytes arrived",
                buf.len() + chunk.len()
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Seconds from a `Retry-After` header (the HTTP-date form is not used by the carriers we know).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A transport failure: a timeout, or a transient error.
pub fn transport(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout(e.to_string());
    }
    let what = if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    FetchError::Transient {
        reason: format!("{what}: {e}"),
        retry_after: None,
    }
}

/// 408, 429 and 5xx are transient.
pub fn transient(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> Option<FetchError> {
    (status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status.is_server_error())
    .then(|| FetchError::Transient {
        reason: format!("answered {status}: {}", snippet(body)),
        retry_after,
    })
}

/// Reads a call's answer (at most `max` bytes, see [`read_limited`]): 401/403 are [`FetchError::Auth`],
/// 408/429/5xx [`FetchError::Transient`] (with any `Retry-After`), another non-2xx [`FetchError::Malformed`] with
/// the whole body; a 2xx gives the body.
///
/// A 3xx here is a redirect [`http_client`] did not follow (to another host, or too many): the configured base URL
/// is wrong or the carrier moved, which only an operator can settle, so it is [`FetchError::Malformed`] (the
/// carrier turns broken) with the `Location` in the reason.
pub async fn read_answer(
    resp: reqwest::Response,
    what: &str,
    max: usize,
) -> Result<String, FetchError> {
    let status = resp.status();
    let after = retry_after(resp.headers());
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let text = read_limited(resp, max, what).await?;
    if status.is_redirection() {
        return Err(FetchError::Malformed {
            reason: format!(
                "{what} answered {status} redirecting to {}: redirects to another host are not followed (check the carrier's base URL)",
                location.as_deref().unwrap_or("nowhere (no Location)")
            ),
            http_status: Some(status.as_u16()),
            body: text,
        });
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(FetchError::Auth(format!(
            "{what} answered {status}: {}",
            snippet(&text)
        )));
    }
    if let Some(e) = transient(status, after, &text) {
        return Err(e);
    }
    if !status.is_success() {
        return Err(FetchError::Malformed {
            reason: format!("{what} answered {status}: {}", snippet(&text)),
            http_status: Some(status.as_u16()),
            body: text,
        });
    }
    Ok(text)
}

/// The start of a body, for messages and logs.
pub fn snippet(body: &str) -> String {
    body.chars().take(300).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod shape_tests {
    use super::*;

    fn answers(found: usize, odd: &[&str]) -> Answers {
        let mut out = Answers::new();
        for n in 0..found + odd.len() {
            let digits = format!("{n:08}");
            let check = tracking_domain::code::s10_check_digit(digits.as_bytes()).unwrap();
            let code = TrackingCode::parse(&format!("DL{digits}{check}BR")).unwrap();
            let result = if n >= found {
                ObjectResult::Unrecognised {
                    message: odd[n - found].to_owned(),
                }
            } else {
                ObjectResult::Found {
                    events: Vec::new(),
                    estimated_delivery: None,
                }
            };
            out.insert(code, result);
        }
        out
    }

    #[test]
    fn a_few_odd_objects_are_their_codes_problem_and_most_of_an_answer_is_a_changed_shape() {
        assert!(!shape_changed(1, 1), "one odd object alone");
        assert!(!shape_changed(2, 2));
        assert!(!shape_changed(50, 3), "a minority");
        assert!(!shape_changed(6, 3), "half is not most");
        assert!(shape_changed(5, 3));
        assert!(shape_changed(50, 50));
    }

    #[test]
    fn a_replayed_answer_is_still_unreadable_while_most_or_all_of_it_is_unrecognised() {
        assert!(judge_shape(answers(49, &["SRO-042"]), "{}").is_ok());
        assert!(judge_shape(answers(3, &[]), "{}").is_ok());
        let Err(FetchError::Schema { reason, body }) = judge_shape(
            answers(0, &["event: missing field `dtHrCriado`"]),
            "{\"x\":1}",
        ) else {
            panic!("one object, unrecognised");
        };
        assert!(reason.contains("dtHrCriado"), "{reason}");
        assert_eq!(body, "{\"x\":1}");
        let Err(FetchError::Schema { reason, .. }) = judge_shape(answers(1, &["a", "b", "a"]), "")
        else {
            panic!("most");
        };
        assert!(reason.starts_with("3 of the answer's 4"), "{reason}");
        let (_, sample) = reason.split_once("e.g. ").unwrap();
        let mut sample: Vec<&str> = sample.split("; ").collect();
        sample.sort_unstable();
        assert_eq!(sample, ["a", "b"], "distinct messages: {reason}");
    }
}
