//! Request bodies: time to arrive (408), content type, size and JSON syntax first (415, 413, 400), then each field
//! (422, naming every wrong field at once, like `TrackingRequest::from_value`). Text is refused with control
//! characters in it (NUL breaks PostgreSQL's text and `jsonb`; the others only hide things from people), in the
//! fields read and in the fields passed on untouched in the event's `raw`.

use crate::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value};
use tracking_domain::{FieldError, Location, Status};

/// How far ahead of our clock a time given by hand may be (clock skew), before it counts as a mistake:
/// an event from the future would decide the shipment's status until the carrier's time passed it.
pub const FUTURE_TOLERANCE_MINUTES: i64 = 15;
/// The longest description or note kept.
pub const MAX_TEXT_CHARS: usize = 500;
/// The longest city or state kept.
pub const MAX_PLACE_CHARS: usize = 100;

/// The request's body as it arrived within `API_BODY_TIMEOUT_MS` (still to be checked by [`json_object`]); a
/// client slower than that gets 408 and the connection is closed.
pub struct Body(pub Result<Bytes, BytesRejection>);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let deadline = state.inner.body_timeout;
        match tokio::time::timeout(deadline, Bytes::from_request(req, state)).await {
            Ok(read) => Ok(Self(read)),
            Err(_) => {
                tracing::warn!(
                    timeout_ms = deadline.as_millis() as u64,
                    "A request body did not arrive in time."
                );
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within {} ms (API_BODY_TIMEOUT_MS)",
                        deadline.as_millis()
                    ),
                ))
            }
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body as a JSON object: 415 unless it is declared JSON, 413 above the limit, 400 unless it parses,
/// 422 unless it is an object.
pub fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    if !is_json(headers) {
        let got = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "none".to_owned(), |v| format!("{v:?}"));
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the body must be JSON with Content-Type: application/json (got {got})"),
        ));
    }
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {limit} bytes (API_BODY_LIMIT_BYTES)"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {}", rejection.body_text()),
            )
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body is empty; expected a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
        .with_detail(serde_json::json!({ "field": "$", "message": e.to_string() }))
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::fields(
            "the body must be a JSON object",
            &[FieldError {
                field: "$".into(),
                message: "must be a JSON object".into(),
            }],
        )),
    }
}

/// Collects field errors while reading an object.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    pub errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Self {
            map,
            errors: Vec::new(),
        }
    }

    pub fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn value(&self, path: &str) -> Option<&'a Value> {
        let mut parts = path.split('.');
        let mut v = self.map.get(parts.next()?)?;
        for part in parts {
            v = v.get(part)?;
        }
        (!v.is_null()).then_some(v)
    }

    /// A one-line string field, trimmed; `None` when absent or empty (an error when `required`) or not a string.
    pub fn text(&mut self, path: &str, required: bool, max_chars: usize) -> Option<String> {
        self.string(path, required, max_chars, Lines::One)
    }

    /// Like [`Fields::text`], and the text may span lines (`\n`).
    pub fn paragraph(&mut self, path: &str, required: bool, max_chars: usize) -> Option<String> {
        self.string(path, required, max_chars, Lines::Many)
    }

    fn string(
        &mut self,
        path: &str,
        required: bool,
        max_chars: usize,
        lines: Lines,
    ) -> Option<String> {
        match self.value(path) {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                let s = s.trim();
                if s.chars().count() > max_chars {
                    self.err(path, format!("must be at most {max_chars} characters"));
                    None
                } else if s
                    .chars()
                    .any(|c| c.is_control() && !(lines == Lines::Many && c == '\n'))
                {
                    self.err(
                        path,
                        match lines {
                            Lines::One => {
                                "must not hold control characters (NUL, line breaks, ...)"
                            }
                            Lines::Many => {
                                "must not hold control characters other than line breaks (\\n)"
                            }
                        },
                    );
                    None
                } else {
                    Some(s.to_owned())
                }
            }
            Some(Value::String(_)) | None => {
                if required {
                    self.err(path, "is required");
                }
                None
            }
            Some(_) => {
                self.err(path, "must be a string");
                None
            }
        }
    }

    /// Every string in the object outside the fields read (they go on in the event's `raw`), keys included, that
    /// holds a control character other than tab and line breaks; fields already found wrong are not named twice.
    pub fn hidden_controls(&mut self) {
        let mut found = Vec::new();
        walk(&Value::Object(self.map.clone()), "", &mut found);
        for field in found {
            if !self.errors.iter().any(|e| e.field == field) {
                self.err(&field, "must not hold control characters (NUL, ...)");
            }
        }
    }

    /// An RFC 3339 time with its offset, not in the future (beyond clock skew).
    pub fn time(&mut self, path: &str, now: DateTime<Utc>) -> Option<DateTime<FixedOffset>> {
        let s = self.text(path, true, 64)?;
        match DateTime::parse_from_rfc3339(&s) {
            Ok(t)
                if t.with_timezone(&Utc)
                    > now + chrono::Duration::minutes(FUTURE_TOLERANCE_MINUTES) =>
            {
                self.err(path, format!("{s:?} is in the future"));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                self.err(
                    path,
                    format!("{s:?} is not an RFC 3339 time with offset, e.g. 2026-03-27T14:40:30-03:00 ({e})"),
                );
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    One,
    Many,
}

fn hidden(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// The path of every string under `value` (and every key) that holds a [`hidden`] control character.
fn walk(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::String(s) if hidden(s) => found.push(path.to_owned()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let shown: String = key.escape_debug().collect();
                let at = if path.is_empty() {
                    shown
                } else {
                    format!("{path}.{shown}")
                };
                if hidden(key) {
                    found.push(at);
                } else {
                    walk(item, &at, found);
                }
            }
        }
        _ => {}
    }
}

/// `POST /v1/shipments/{tracking_code}/events`.
#[derive(Debug, Clone)]
pub struct ManualEvent {
    pub status: Status,
    pub occurred_at: DateTime<FixedOffset>,
    pub description: Option<String>,
    pub location: Option<Location>,
}

impl ManualEvent {
    pub fn from_map(map: &Map<String, Value>, now: DateTime<Utc>) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::new(map);
        let status = f.text("status", true, 64).and_then(|s| {
            let allowed = || {
                Status::ALL
                    .into_iter()
                    .filter(|s| s.settable_by_hand())
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match s.parse::<Status>() {
                Ok(st) if st.settable_by_hand() => Some(st),
                Ok(st) => {
                    f.err(
                        "status",
                        format!("{st} is not set by hand (one of: {})", allowed()),
                    );
                    None
                }
                Err(_) => {
                    f.err(
                        "status",
                        format!("{s:?} is not a status (one of: {})", allowed()),
                    );
                    None
                }
            }
        });
        let occurred_at = f.time("occurred_at", now);
        let description = f.paragraph("description", false, MAX_TEXT_CHARS);
        let location = match map.get("location") {
            None | Some(Value::Null) => None,
            Some(Value::Object(_)) => {
                let city = f.text("location.city", false, MAX_PLACE_CHARS);
                let state = f.text("location.state", false, MAX_PLACE_CHARS);
                (city.is_some() || state.is_some()).then_some(Location { city, state })
            }
            Some(_) => {
                f.err("location", "must be an object with city and state");
                None
            }
        };
        f.hidden_controls();
        match (status, occurred_at) {
            (Some(status), Some(occurred_at)) if f.errors.is_empty() => Ok(Self {
                status,
                occurred_at,
                description,
                location,
            }),
            _ => Err(f.errors),
        }
    }
}

/// `POST /v1/orders/{order_id}/delivery-confirmation`.
#[derive(Debug, Clone)]
pub struct DeliveryConfirmation {
    pub delivered_at: DateTime<FixedOffset>,
    pub note: Option<String>,
}

impl DeliveryConfirmation {
    pub fn from_map(map: &Map<String, Value>, now: DateTime<Utc>) -> Result<Self, Vec<FieldError>> {
        let mut f = Fields::new(map);
        let delivered_at = f.time("delivered_at", now);
        let note = f.paragraph("note", false, MAX_TEXT_CHARS);
        f.hidden_controls();
        match delivered_at {
            Some(delivered_at) if f.errors.is_empty() => Ok(Self { delivered_at, note }),
            _ => Err(f.errors),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_manual_event_is_read_with_its_offset() {
        let now = Utc::now();
        let e = ManualEvent::from_map(
            &map(json!({"status": "out_for_delivery", "occurred_at": "2026-03-27T14:40:30-03:00",
                        "description": " Saiu para entrega ", "location": {"city": "Campinas", "state": "SP"}, "extra": 1})),
            now,
        )
        .unwrap();
        assert_eq!(e.status, Status::OutForDelivery);
        assert_eq!(e.occurred_at.offset().local_minus_utc(), -3 * 3600);
        assert_eq!(e.description.as_deref(), Some("Saiu para entrega"));
        assert_eq!(e.location.unwrap().state.as_deref(), Some("SP"));
    }

    #[test]
    fn every_wrong_field_of_a_manual_event_is_named() {
        let now = Utc::now();
        let err = ManualEvent::from_map(
            &map(json!({"status": "lost", "occurred_at": "yesterday", "description": 5, "location": "Campinas"})),
            now,
        )
        .unwrap_err();
        assert_eq!(
            fields(err),
            ["status", "occurred_at", "description", "location"]
        );
        let err = ManualEvent::from_map(&map(json!({})), now).unwrap_err();
        assert_eq!(fields(err), ["status", "occurred_at"]);
        let err = ManualEvent::from_map(
            &map(json!({"status": "expired", "occurred_at": "2026-03-27T14:40:30Z"})),
            now,
        )
        .unwrap_err();
        assert!(err[0].message.contains("not set by hand"), "{err:?}");
        // No offset: not RFC 3339.
        let err = ManualEvent::from_map(
            &map(json!({"status": "delivered", "occurred_at": "2026-03-27T14:40:30"})),
            now,
        )
        .unwrap_err();
        assert_eq!(fields(err), ["occurred_at"]);
    }

    #[test]
    fn times_in_the_future_are_refused_beyond_clock_skew() {
        let now = Utc::now();
        let at = |d: chrono::Duration| (now + d).to_rfc3339();
        let soon = DeliveryConfirmation::from_map(
            &map(json!({"delivered_at": at(chrono::Duration::minutes(5))})),
            now,
        );
        assert!(soon.is_ok());
        let later = DeliveryConfirmation::from_map(
            &map(json!({"delivered_at": at(chrono::Duration::hours(2)), "note": "ok"})),
            now,
        )
        .unwrap_err();
        assert!(later[0].message.contains("in the future"), "{later:?}");
        let long_note = DeliveryConfirmation::from_map(
            &map(json!({"delivered_at": at(chrono::Duration::zero()), "note": "x".repeat(MAX_TEXT_CHARS + 1)})),
            now,
        )
        .unwrap_err();
        assert_eq!(fields(long_note), ["note"]);
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field_naming_it() {
        let now = Utc::now();
        let at = "2026-03-27T14:40:30-03:00";
        let err = ManualEvent::from_map(
            &map(
                json!({"status": "delivered", "occurred_at": at, "description": "Entregue\u{0}",
                        "location": {"city": "Campi\nnas", "state": "S\u{7}P"}}),
            ),
            now,
        )
        .unwrap_err();
        assert_eq!(
            fields(err),
            ["description", "location.city", "location.state"]
        );
        // Fields nobody reads still travel in `raw`: a NUL there is refused too, keys included.
        let err = ManualEvent::from_map(
            &map(json!({"status": "delivered", "occurred_at": at, "ticket": {"ref": ["ok", "a\u{0}b"]}, "x\u{0}": 1})),
            now,
        )
        .unwrap_err();
        assert_eq!(fields(err), ["ticket.ref[1]", "x\\0"]);
        let err = DeliveryConfirmation::from_map(
            &map(json!({"delivered_at": at, "note": "ok\u{1b}[31m", "by": "\u{0}"})),
            now,
        )
        .unwrap_err();
        assert_eq!(fields(err), ["note", "by"]);
        // Line breaks (and tabs, in fields nobody reads) are text.
        let ok = DeliveryConfirmation::from_map(
            &map(json!({"delivered_at": at, "note": "Cliente confirmou\npor telefone", "by": "a\tb\r\n"})),
            now,
        )
        .unwrap();
        assert_eq!(ok.note.as_deref(), Some("Cliente confirmou\npor telefone"));
    }

    #[test]
    fn content_types_that_declare_json_are_accepted() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
