//! One adapter per marketplace kind, behind [`Adapter`]: each turns a status change into the HTTP calls its
//! marketplace expects (or into nothing, when the marketplace has no use for that status). Adapters only plan;
//! [`crate::Relay`] sends, and the worker records each call once.

use crate::signature;
use chrono::{DateTime, FixedOffset};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tracking_domain::{Status, StatusChange};

/// How often a call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// Once per status change (the usual case).
    PerChange,
    /// Once per shipment, whatever its changes (Mercado Livre's tracking number).
    PerShipment,
}

/// One HTTP call. Its `Debug` shows the values of headers that carry credentials (and secret-looking URL
/// parameters) as `[redacted]`.
#[derive(Clone)]
pub struct Call {
    /// A short name for logs and idempotency records: `webhook`, `tracking`, `tracking_number`, `notification`.
    pub step: &'static str,
    pub once: Once,
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Call {
    /// The credentials this call carries (the values of its secret headers, and a bearer without its scheme):
    /// what an error about it must never show.
    pub fn secrets(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            if is_secret_header(name) {
                out.push(value.as_str());
                if let Some((_, credential)) = value.split_once(' ') {
                    out.push(credential);
                }
            }
        }
        out
    }
}

/// Headers whose values are credentials: `Authorization`, `X-Signature`, VTEX's `X-VTEX-API-AppKey` and
/// `X-VTEX-API-AppToken`, and any other whose name says so.
fn is_secret_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-signature") || tracking_redact::is_secret_key(name)
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret_header(name) {
                    tracking_redact::REDACTED
                } else {
                    value.as_str()
                };
                (*name, shown)
            })
            .collect();
        f.debug_struct("Call")
            .field("step", &self.step)
            .field("once", &self.once)
            .field("method", &self.method)
            .field("url", &tracking_redact::redact(&self.url, &[]))
            .field("headers", &headers)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What an adapter makes of a change.
#[derive(Debug)]
pub enum Plan {
    /// The calls to make, in order.
    Calls(Vec<Call>),
    /// Nothing to send for this change, and why (recorded as done).
    Skip(String),
}

/// A change this marketplace cannot take as it is (missing data): parked with the reason.
pub type Refusal = String;

pub trait Adapter: Send + Sync {
    /// The calls for `change`; `body` is the change's JSON as published on `order.status`.
    fn plan(&self, change: &StatusChange, body: &[u8]) -> Result<Plan, Refusal>;
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// A path segment from data (order ids, invoice numbers): percent-encoded so it cannot change the path.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn marketplace_order(change: &StatusChange, kind: &str) -> Result<String, Refusal> {
    change
        .marketplace
        .as_ref()
        .map(|m| m.order_id.clone())
        .ok_or_else(|| format!("a {kind} relay needs the order's marketplace.order_id"))
}

/// `kind = "webhook"`: the contract's signed webhook, every change.
#[derive(Debug, Clone, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub secret: SecretString,
}

impl Adapter for Webhook {
    fn plan(&self, change: &StatusChange, body: &[u8]) -> Result<Plan, Refusal> {
        let t = chrono::Utc::now().timestamp();
        Ok(Plan::Calls(vec![Call {
            step: "webhook",
            once: Once::PerChange,
            method: reqwest::Method::POST,
            url: self.url.clone(),
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("Idempotency-Key", change.change_id.to_string()),
                (
                    "X-Signature",
                    signature(self.secret.expose_secret(), t, body),
                ),
            ],
            body: body.to_vec(),
        }]))
    }
}

/// `kind = "vtex"`: the OMS tracking update of the order's invoice, one event per change (VTEX's event dates are
/// day-only, so it cannot tell a repeated event; each is sent once). `isDelivered: true` ends the order's delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct Vtex {
    pub url: String,
    /// Secret too: with the token it is the credential (and `Debug` must not show it).
    pub app_key: SecretString,
    pub app_token: SecretString,
}

/// VTEX's formats: `yyyy-mm-dd hh:mm` and `yyyy-mm-dd`, in the event's own offset.
fn vtex_minute(at: &DateTime<FixedOffset>) -> String {
    at.format("%Y-%m-%d %H:%M").to_string()
}

impl Adapter for Vtex {
    fn plan(&self, change: &StatusChange, _body: &[u8]) -> Result<Plan, Refusal> {
        if matches!(change.status, Status::Registered | Status::Expired) {
            return Ok(Plan::Skip(format!(
                "VTEX gets carrier events; {} is not one",
                change.status
            )));
        }
        let order = marketplace_order(change, "vtex")?;
        let invoice = change.invoice_number.as_deref().ok_or_else(|| {
            "a vtex relay needs the order's invoice_number (VTEX tracks invoices)".to_owned()
        })?;
        let delivered = change.status == Status::Delivered;
        // `deliveredDate` is required and nullable in VTEX's schema (Orders API, UpdateTrackingStatusRequest:
        // required isDelivered, deliveredDate, events; deliveredDate nullable; as mirrored at
        // raw.githubusercontent.com/api-evangelist/vtex/refs/heads/main/json-schema/vtex-updatetrackingstatusrequest-schema.json):
        // null until delivered, never left out.
        let delivered_date = delivered.then(|| vtex_minute(&change.occurred_at));
        let payload = json!({
            "isDelivered": delivered,
            "deliveredDate": delivered_date,
            "events": [{
                "city": change.event.location.city.clone().unwrap_or_default(),
                "state": change.event.location.state.clone().unwrap_or_default(),
                "description": change.event.description.chars().take(5000).collect::<String>(),
                "date": change.occurred_at.format("%Y-%m-%d").to_string(),
            }],
        });
        Ok(Plan::Calls(vec![Call {
            step: "tracking",
            once: Once::PerChange,
            method: reqwest::Method::PUT,
            url: join(
                &self.url,
                &format!(
                    "/api/oms/pvt/orders/{}/invoice/{}/tracking",
                    segment(&order),
                    segment(invoice)
                ),
            ),
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("Accept", "application/json".into()),
                ("X-VTEX-API-AppKey", self.app_key.expose_secret().to_owned()),
                (
                    "X-VTEX-API-AppToken",
                    self.app_token.expose_secret().to_owned(),
                ),
            ],
            body: payload.to_string().into_bytes(),
        }]))
    }
}

/// `kind = "mercadolivre"` (self-managed shipping): the tracking number once per shipment, then a seller
/// notification per change that Mercado Livre has a status for. The request's `marketplace.order_id` is the
/// Mercado Livre shipment id.
#[derive(Debug, Clone, Deserialize)]
pub struct MercadoLivre {
    pub url: String,
    pub access_token: SecretString,
    /// Sent with the tracking number when set.
    #[serde(default)]
    pub service_id: Option<i64>,
    /// What a seller notification carries (`notifications = "status"` or `"with_tracking"`).
    #[serde(default)]
    pub notifications: MeliNotifications,
    /// The parcel's public tracking page, `{tracking_code}` standing for the code (for example
    /// `https://rastreamento.correios.com.br/app/index.php?objetos={tracking_code}`): required by
    /// `notifications = "with_tracking"`.
    #[serde(default)]
    pub tracking_url: Option<String>,
}

/// The seller notification's shape. Mercado Livre's ME1 page documents two: the first sends `status` and
/// `substatus` alone (the tracking number having been set by `PUT /shipments/{id}`); the current one
/// (developers.mercadolibre.com.ar/en_us/me1-order-states, updated 2023-04-13) also wants `tracking_number` and
/// `tracking_url` together, and a `payload` with `service_id`, a `comment` and the event's `date`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeliNotifications {
    /// `{"status", "substatus"}`.
    #[default]
    Status,
    /// `{"status", "substatus", "tracking_number", "tracking_url", "payload": {"service_id", "comment", "date"}}`.
    WithTracking,
}

impl MercadoLivre {
    /// Refuses settings that could only fail later: `with_tracking` without a `tracking_url` naming the code.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.notifications, self.tracking_url.as_deref()) {
            (MeliNotifications::WithTracking, None) => Err(
                "notifications = \"with_tracking\" needs tracking_url (with {tracking_code} in it)"
                    .into(),
            ),
            (_, Some(url))
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || !url.contains("{tracking_code}") =>
            {
                Err("tracking_url must be an http(s) URL with {tracking_code} in it".into())
            }
            _ => Ok(()),
        }
    }
}

/// Mercado Livre's (status, substatus) for a change, or `None` when it has none.
/// `not_delivered`/`returning_to_sender` is final there: only for a parcel truly going back (`returning`, or
/// `returned` when `returning` was never seen). Mercado Livre tracks the order's shipment, not each box: a parcel
/// of an order with several says `delivered` only when the order is (its last parcel), before that `shipped`.
pub fn meli_status(change: &StatusChange) -> Option<(&'static str, Option<&'static str>)> {
    match change.status {
        Status::Posted | Status::InTransit => Some(("shipped", None)),
        Status::OutForDelivery => Some(("shipped", Some("out_for_delivery"))),
        Status::DeliveryFailed => Some(("shipped", Some("receiver_absent"))),
        Status::Delivered if change.order.is_some_and(|o| !o.is_delivered()) => {
            Some(("shipped", None))
        }
        Status::Delivered => Some(("delivered", None)),
        Status::Returning => Some(("not_delivered", Some("returning_to_sender"))),
        Status::Returned if change.previous_status != Status::Returning => {
            Some(("not_delivered", Some("returning_to_sender")))
        }
        Status::Returned
        | Status::AwaitingPickup
        | Status::Exception
        | Status::Registered
        | Status::Expired => None,
    }
}

impl MercadoLivre {
    fn notification(
        &self,
        change: &StatusChange,
        status: &str,
        substatus: Option<&str>,
    ) -> Result<serde_json::Value, Refusal> {
        let mut body = json!({ "status": status, "substatus": substatus });
        if self.notifications == MeliNotifications::WithTracking {
            let template = self
                .tracking_url
                .as_deref()
                .ok_or_else(|| "notifications = \"with_tracking\" needs tracking_url".to_owned())?;
            body["tracking_number"] = change.tracking_code.as_str().into();
            body["tracking_url"] = template
                .replace("{tracking_code}", &segment(change.tracking_code.as_str()))
                .into();
            let mut payload = json!({
                "comment": change.event.description.chars().take(500).collect::<String>(),
                "date": change.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            if let Some(id) = self.service_id {
                payload["service_id"] = id.into();
            }
            body["payload"] = payload;
        }
        Ok(body)
    }
}

impl Adapter for MercadoLivre {
    fn plan(&self, change: &StatusChange, _body: &[u8]) -> Result<Plan, Refusal> {
        let Some((status, substatus)) = meli_status(change) else {
            return Ok(Plan::Skip(format!(
                "Mercado Livre has no status for {} after {}",
                change.status, change.previous_status
            )));
        };
        let shipment = segment(&marketplace_order(change, "mercadolivre")?);
        let headers = vec![
            ("Content-Type", "application/json".into()),
            (
                "Authorization",
                format!("Bearer {}", self.access_token.expose_secret()),
            ),
        ];
        let mut tracking = json!({ "tracking_number": change.tracking_code.as_str() });
        if let Some(id) = self.service_id {
            tracking["service_id"] = id.into();
        }
        Ok(Plan::Calls(vec![
            Call {
                step: "tracking_number",
                once: Once::PerShipment,
                method: reqwest::Method::PUT,
                url: join(&self.url, &format!("/shipments/{shipment}")),
                headers: headers.clone(),
                body: tracking.to_string().into_bytes(),
            },
            Call {
                step: "notification",
                once: Once::PerChange,
                method: reqwest::Method::POST,
                url: join(
                    &self.url,
                    &format!("/shipments/{shipment}/seller_notifications"),
                ),
                headers,
                body: self
                    .notification(change, status, substatus)?
                    .to_string()
                    .into_bytes(),
            },
        ]))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn change(status: Status, previous: Status) -> StatusChange {
        serde_json::from_value(json!({
            "change_id": "0b4a6f3e-8d2c-5b1a-9e7f-1c2d3e4f5a6b", "order_id": "1001", "tracking_code": "DL746686536BR",
            "carrier": "correios", "status": status.as_str(), "previous_status": previous.as_str(),
            "occurred_at": "2026-03-27T14:40:30-03:00", "source": "carrier",
            "event": {"code": "BDE", "type": "01", "description": "Objeto entregue ao destinatário",
                      "location": {"city": "CAMPINAS", "state": "SP"}},
            "customer": {"email": "ana@example.com", "locale": "pt-BR"},
            "marketplace": {"name": "m", "order_id": "SLR-55/1"},
            "invoice_number": "NF 123"
        }))
        .unwrap()
    }

    fn calls(plan: Plan) -> Vec<Call> {
        match plan {
            Plan::Calls(c) => c,
            Plan::Skip(why) => panic!("skipped: {why}"),
        }
    }

    #[test]
    fn vtex_sends_the_event_once_and_delivery_with_its_minute() {
        let v = Vtex {
            url: "https://loja.vtex.example/".into(),
            app_key: "key".to_owned().into(),
            app_token: "token".to_owned().into(),
        };
        let c = calls(
            v.plan(&change(Status::Delivered, Status::OutForDelivery), b"{}")
                .unwrap(),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].method, reqwest::Method::PUT);
        assert_eq!(
            c[0].url,
            "https://loja.vtex.example/api/oms/pvt/orders/SLR-55%2F1/invoice/NF%20123/tracking"
        );
        let body: Value = serde_json::from_slice(&c[0].body).unwrap();
        assert_eq!(
            body,
            json!({"isDelivered": true, "deliveredDate": "2026-03-27 14:40",
                   "events": [{"city": "CAMPINAS", "state": "SP", "description": "Objeto entregue ao destinatário", "date": "2026-03-27"}]})
        );
        let c = calls(
            v.plan(&change(Status::InTransit, Status::Posted), b"{}")
                .unwrap(),
        );
        let body: Value = serde_json::from_slice(&c[0].body).unwrap();
        assert_eq!(body["isDelivered"], false);
        assert_eq!(body.get("deliveredDate"), Some(&Value::Null));
        let mut no_invoice = change(Status::InTransit, Status::Posted);
        no_invoice.invoice_number = None;
        assert!(
            v.plan(&no_invoice, b"{}")
                .unwrap_err()
                .contains("invoice_number")
        );
    }

    #[test]
    fn mercado_livre_hears_delivered_only_when_every_parcel_of_the_order_is() {
        let mut c = change(Status::Delivered, Status::OutForDelivery);
        c.order = Some(tracking_domain::OrderProgress::of(&[
            Status::Delivered,
            Status::InTransit,
        ]));
        assert_eq!(meli_status(&c), Some(("shipped", None)));
        c.order = Some(tracking_domain::OrderProgress::of(&[
            Status::Delivered,
            Status::Delivered,
        ]));
        assert_eq!(meli_status(&c), Some(("delivered", None)));
    }

    #[test]
    fn mercado_livre_maps_statuses_and_only_a_real_return_is_returning_to_sender() {
        let m = |s, p| meli_status(&change(s, p));
        assert_eq!(
            m(Status::Posted, Status::Registered),
            Some(("shipped", None))
        );
        assert_eq!(
            m(Status::OutForDelivery, Status::InTransit),
            Some(("shipped", Some("out_for_delivery")))
        );
        assert_eq!(
            m(Status::DeliveryFailed, Status::OutForDelivery),
            Some(("shipped", Some("receiver_absent")))
        );
        assert_eq!(
            m(Status::Delivered, Status::OutForDelivery),
            Some(("delivered", None))
        );
        assert_eq!(
            m(Status::Returning, Status::DeliveryFailed),
            Some(("not_delivered", Some("returning_to_sender")))
        );
        assert_eq!(m(Status::Returned, Status::Returning), None);
        assert_eq!(
            m(Status::Returned, Status::InTransit),
            Some(("not_delivered", Some("returning_to_sender")))
        );
        assert_eq!(m(Status::Exception, Status::InTransit), None);
        assert_eq!(m(Status::AwaitingPickup, Status::InTransit), None);
    }
}
