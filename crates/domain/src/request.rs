//! The tracking request (docs/features.md, "Requests"; crates/api/openapi.json), validated field by field so that every wrong field is named at once.

use crate::code::{Carrier, TrackingCode};
use crate::store::StoreName;
use crate::text;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// The store's order id: 1 to 100 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct OrderId(String);

impl TryFrom<String> for OrderId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<OrderId> for String {
    fn from(id: OrderId) -> String {
        id.0
    }
}

impl OrderId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) {
            return Err("must be 1 to 100 printable characters".into());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address in the shape SMTP accepts: `local@domain.tld`, no spaces, at most 254 characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct EmailAddress(String);

impl TryFrom<String> for EmailAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

impl EmailAddress {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let valid = s.len() <= 254
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
            && match s.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }
                None => false,
            };
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("{s:?} is not an email address"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// For logs: `a***@example.com`.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
            None => "***".into(),
        }
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.masked())
    }
}

/// The customer's language for emails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Locale {
    #[default]
    #[serde(rename = "pt-BR")]
    PtBr,
    #[serde(rename = "es")]
    Es,
    #[serde(rename = "en")]
    En,
}

impl Locale {
    pub const ALL: [Locale; 3] = [Locale::PtBr, Locale::Es, Locale::En];
    pub fn as_str(self) -> &'static str {
        match self {
            Locale::PtBr => "pt-BR",
            Locale::Es => "es",
            Locale::En => "en",
        }
    }
    pub fn parse(s: &str) -> Result<Self, String> {
        Locale::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of pt-BR, es, en"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub email: EmailAddress,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text::serde_checked::short_opt"
    )]
    pub name: Option<String>,
    #[serde(default)]
    pub locale: Locale,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketplaceRef {
    #[serde(deserialize_with = "text::serde_checked::short")]
    pub name: String,
    #[serde(deserialize_with = "text::serde_checked::short")]
    pub order_id: String,
}

/// A valid tracking request. Build it with [`TrackingRequest::parse`] (from bytes) or
/// [`TrackingRequest::from_value`]; serializes back to the contract's JSON shape. Deserializing it (inside a
/// carrier update, say) runs the same [`TrackingRequest::from_value`]: no path skips the validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct TrackingRequest {
    pub order_id: OrderId,
    pub tracking_code: TrackingCode,
    pub carrier: Carrier,
    pub customer: Customer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketplace: Option<MarketplaceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_number: Option<String>,
    /// The store of the stores file the order belongs to ([`StoreName::DEFAULT`] when the request names none).
    #[serde(default)]
    pub store: StoreName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Why a request was refused: not JSON, or the list of wrong fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("invalid fields: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Fields(Vec<FieldError>),
}

impl InvalidRequest {
    pub fn details(&self) -> Vec<FieldError> {
        match self {
            InvalidRequest::NotJson(m) => vec![FieldError {
                field: "$".into(),
                message: m.clone(),
            }],
            InvalidRequest::Fields(f) => f.clone(),
        }
    }
}

struct Fields<'a> {
    errors: Vec<FieldError>,
    root: &'a Value,
}

impl<'a> Fields<'a> {
    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn get(&self, path: &str) -> Option<&'a Value> {
        let mut v = self.root;
        for part in path.split('.') {
            v = v.get(part)?;
        }
        (!v.is_null()).then_some(v)
    }

    /// A text field given by people: a string without control characters, at most `max` characters, trimmed;
    /// `None` when absent or empty (an error when `required`) or wrong (always an error).
    fn text(&mut self, path: &str, required: bool, max: usize) -> Option<&'a str> {
        let s = self.string(path, required)?;
        if let Err(m) = text::check(s, max) {
            self.err(path, m);
            return None;
        }
        let s = s.trim();
        if s.is_empty() {
            if required {
                self.err(path, "must not be empty");
            }
            return None;
        }
        Some(s)
    }

    /// A string field: `None` when absent (an error when `required`), or when not a string (always an error).
    fn string(&mut self, path: &str, required: bool) -> Option<&'a str> {
        match self.get(path) {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                self.err(path, "must be a string");
                None
            }
            None => {
                if required {
                    self.err(path, "is required");
                }
                None
            }
        }
    }
}

impl TryFrom<Value> for TrackingRequest {
    type Error = InvalidRequest;
    fn try_from(value: Value) -> Result<Self, InvalidRequest> {
        Self::from_value(&value)
    }
}

impl TrackingRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, InvalidRequest> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| InvalidRequest::NotJson(e.to_string()))?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Self, InvalidRequest> {
        if !value.is_object() {
            return Err(InvalidRequest::Fields(vec![FieldError {
                field: "$".into(),
                message: "must be a JSON object".into(),
            }]));
        }
        let mut f = Fields {
            errors: Vec::new(),
            root: value,
        };

        let order_id = f
            .string("order_id", true)
            .and_then(|s| match OrderId::parse(s) {
                Ok(v) => Some(v),
                Err(m) => {
                    f.err("order_id", m);
                    None
                }
            });
        let carrier_named = f
            .string("carrier", false)
            .and_then(|s| match s.parse::<Carrier>() {
                Ok(c) => Some(c),
                Err(m) => {
                    f.err("carrier", m);
                    None
                }
            });
        let code = f
            .string("tracking_code", true)
            .and_then(|s| match TrackingCode::parse(s) {
                Ok(c) => Some(c),
                Err(e) => {
                    f.err("tracking_code", e.to_string());
                    None
                }
            });
        let carrier = match (&code, carrier_named) {
            (Some(code), Some(carrier)) => match code.validate_for(carrier) {
                Ok(()) => Some(carrier),
                Err(e) => {
                    f.err("tracking_code", e.to_string());
                    None
                }
            },
            (Some(code), None) if f.get("carrier").is_none() => match code.detect_carrier() {
                Some(c) => Some(c),
                None => {
                    f.err(
                        "carrier",
                        format!("cannot be detected from tracking code {code} (not a valid Correios S10 code); name the carrier"),
                    );
                    None
                }
            },
            _ => None,
        };
        if f.get("customer").is_some_and(|c| !c.is_object()) {
            f.err("customer", "must be an object");
        }
        let email = f
            .string("customer.email", true)
            .and_then(|s| match EmailAddress::parse(s) {
                Ok(e) => Some(e),
                Err(m) => {
                    f.err("customer.email", m);
                    None
                }
            });
        let name = f
            .text("customer.name", false, text::SHORT)
            .map(str::to_owned);
        let locale = match f.string("customer.locale", false) {
            Some(s) => Locale::parse(s).unwrap_or_else(|m| {
                f.err("customer.locale", m);
                Locale::default()
            }),
            None => Locale::default(),
        };
        let marketplace = match f.get("marketplace") {
            None => None,
            Some(Value::Object(_)) => {
                let name = f.text("marketplace.name", true, text::SHORT);
                let mp_order = f.text("marketplace.order_id", true, text::SHORT);
                match (name, mp_order) {
                    (Some(n), Some(o)) => Some(MarketplaceRef {
                        name: n.to_owned(),
                        order_id: o.to_owned(),
                    }),
                    _ => None,
                }
            }
            Some(_) => {
                f.err("marketplace", "must be an object");
                None
            }
        };
        let invoice_number = f
            .text("invoice_number", false, text::SHORT)
            .map(str::to_owned);
        let store = match f.string("store", false) {
            Some(s) => StoreName::parse(s).unwrap_or_else(|m| {
                f.err("store", m);
                StoreName::default()
            }),
            None => StoreName::default(),
        };

        match (order_id, code, carrier, email) {
            (Some(order_id), Some(tracking_code), Some(carrier), Some(email))
                if f.errors.is_empty() =>
            {
                Ok(Self {
                    order_id,
                    tracking_code,
                    carrier,
                    customer: Customer {
                        email,
                        name,
                        locale,
                    },
                    marketplace,
                    invoice_number,
                    store,
                })
            }
            _ => Err(InvalidRequest::Fields(f.errors)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full() -> Value {
        json!({
            "order_id": "1385310000001-01",
            "tracking_code": "DL746686536BR",
            "carrier": "correios",
            "customer": { "email": "ana@example.com", "name": "Ana Souza", "locale": "pt-BR" },
            "marketplace": { "name": "acme", "order_id": "ACME-991" },
            "invoice_number": "00012345",
            "something_new": 1
        })
    }

    #[test]
    fn a_request_names_its_store_or_gets_the_default_one() {
        let req = TrackingRequest::from_value(&full()).unwrap();
        assert!(req.store.is_default());
        let mut v = full();
        v["store"] = json!("loja-a");
        let req = TrackingRequest::from_value(&v).unwrap();
        assert_eq!(req.store.as_str(), "loja-a");
        let again = TrackingRequest::parse(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(again.store.as_str(), "loja-a");
        v["store"] = json!("Loja A");
        let err = TrackingRequest::from_value(&v).unwrap_err();
        assert_eq!(err.details()[0].field, "store");
    }

    #[test]
    fn the_contract_example_parses_and_round_trips() {
        let req = TrackingRequest::from_value(&full()).unwrap();
        assert_eq!(req.carrier, Carrier::Correios);
        assert_eq!(req.customer.locale, Locale::PtBr);
        assert_eq!(req.marketplace.as_ref().unwrap().name, "acme");
        let again = TrackingRequest::parse(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(again, req);
    }

    #[test]
    fn carrier_is_detected_and_locale_defaults() {
        let req = TrackingRequest::from_value(&json!({
            "order_id": "1", "tracking_code": "pg747937788br", "customer": {"email": "a@b.co"}
        }))
        .unwrap();
        assert_eq!(req.carrier, Carrier::Correios);
        assert_eq!(req.tracking_code.as_str(), "PG747937788BR");
        assert_eq!(req.customer.locale, Locale::PtBr);
        assert!(req.marketplace.is_none());
    }

    #[test]
    fn every_wrong_field_is_named() {
        let err = TrackingRequest::from_value(&json!({
            "tracking_code": "AA123456789BR",
            "customer": {"email": "not-an-email", "locale": "fr"},
            "marketplace": {"name": "acme"}
        }))
        .unwrap_err();
        let fields: Vec<_> = err.details().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "order_id",
                "carrier",
                "customer.email",
                "customer.locale",
                "marketplace.order_id"
            ]
        );
    }

    #[test]
    fn missing_email_and_bad_json_are_refused() {
        let err = TrackingRequest::from_value(
            &json!({"order_id": "1", "tracking_code": "DL746686536BR"}),
        )
        .unwrap_err();
        assert_eq!(err.details()[0].field, "customer.email");
        assert!(matches!(
            TrackingRequest::parse(b"{not json"),
            Err(InvalidRequest::NotJson(_))
        ));
        assert!(TrackingRequest::parse(b"[1,2]").is_err());
    }

    #[test]
    fn a_jadlog_request_must_name_its_carrier_and_fit_its_format() {
        let ok = json!({"order_id": "1", "tracking_code": "10084500001234", "carrier": "jadlog", "customer": {"email": "a@b.co"}});
        assert_eq!(
            TrackingRequest::from_value(&ok).unwrap().carrier,
            Carrier::Jadlog
        );
        let unnamed = json!({"order_id": "1", "tracking_code": "10084500001234", "customer": {"email": "a@b.co"}});
        assert_eq!(
            TrackingRequest::from_value(&unnamed).unwrap_err().details()[0].field,
            "carrier"
        );
    }

    #[test]
    fn emails_are_masked_for_logs() {
        assert_eq!(
            EmailAddress::parse("ana@example.com").unwrap().masked(),
            "a***@example.com"
        );
        for bad in ["", "a@", "@b.co", "a b@c.de", "a@b", "a@@b.co"] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
