//! Marketplaces: the `MARKETPLACES_FILE` configuration and the adapters that relay status changes.
//!
//! - `webhook`: `POST {url}` with the status change as JSON, `Idempotency-Key: {change_id}` and
//!   `X-Signature: t={unix seconds},v1={hex HMAC-SHA256 over "{t}.{body}"}`.
//! - `vtex`: `PUT {url}/api/oms/pvt/orders/{orderId}/invoice/{invoiceNumber}/tracking` with the change's event.
//! - `mercadolivre`: `PUT {url}/shipments/{id}` (tracking number, once per shipment), then
//!   `POST {url}/shipments/{id}/seller_notifications` with the mapped status and substatus.
//!
//! Each kind is an [`adapters::Adapter`] that plans the calls; [`Relay::send`] makes one and decides its outcome,
//! once for all kinds: 2xx is done; 408, 429 (with `Retry-After`), 5xx and transport errors are retried; any other
//! answer is refused with its status and body.

pub mod adapters;

use adapters::{Adapter, Call, MercadoLivre, Vtex, Webhook};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::Sha256;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    Webhook(Webhook),
    Vtex(Vtex),
    Mercadolivre(MercadoLivre),
}

impl Kind {
    pub fn adapter(&self) -> &dyn Adapter {
        match self {
            Kind::Webhook(a) => a,
            Kind::Vtex(a) => a,
            Kind::Mercadolivre(a) => a,
        }
    }

    fn url(&self) -> &str {
        match self {
            Kind::Webhook(a) => &a.url,
            Kind::Vtex(a) => &a.url,
            Kind::Mercadolivre(a) => &a.url,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Marketplace {
    pub name: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// Whether we email the customers of this marketplace's orders (VTEX and Mercado Livre may email them themselves).
    #[serde(default = "yes")]
    pub email_customers: bool,
    /// Calls per second to this marketplace from one publisher process (default 10).
    #[serde(default = "ten")]
    pub rate_per_second: f64,
}

fn yes() -> bool {
    true
}

fn ten() -> f64 {
    10.0
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    marketplace: Vec<Marketplace>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("MARKETPLACES_FILE {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Default)]
pub struct Marketplaces {
    by_name: HashMap<String, Marketplace>,
}

impl Marketplaces {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        Self::parse(&text).map_err(invalid)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_name = HashMap::new();
        for m in file.marketplace {
            if m.name.trim().is_empty() {
                return Err("a marketplace has an empty name".into());
            }
            if let Kind::Webhook(w) = &m.kind
                && w.secret.expose_secret().len() < 16
            {
                return Err(format!(
                    "marketplace {:?}: the webhook secret must be at least 16 characters",
                    m.name
                ));
            }
            if !(m.rate_per_second.is_finite() && m.rate_per_second > 0.0) {
                return Err(format!(
                    "marketplace {:?}: rate_per_second must be a positive number",
                    m.name
                ));
            }
            let url = m.kind.url();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "marketplace {:?}: url must start with http:// or https://",
                    m.name
                ));
            }
            if by_name.insert(m.name.clone(), m.clone()).is_some() {
                return Err(format!("marketplace {:?} is configured twice", m.name));
            }
        }
        Ok(Self { by_name })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Marketplace> {
        self.by_name.values()
    }

    pub fn get(&self, name: &str) -> Option<&Marketplace> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Why a relay did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("temporary failure: {reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    #[error("refused: {reason}")]
    Refused { reason: String },
}

/// `t={t},v1={hex HMAC-SHA256 over "{t}.{body}"}`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub struct Relay {
    http: reqwest::Client,
}

impl Relay {
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("tracking-pipeline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// Makes one planned call. `Ok` carries a short record of the answer.
    pub async fn send(&self, call: &Call) -> Result<String, RelayError> {
        let mut req = self
            .http
            .request(call.method.clone(), &call.url)
            .body(call.body.clone());
        for (name, value) in &call.headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.map_err(|e| RelayError::Retry {
            reason: format!("{} {}: {e}", call.method, call.url),
            after: None,
        })?;
        classify(resp).await
    }
}

/// Paces calls to one marketplace: at most `rate` per second from this process, spaced evenly.
#[derive(Debug)]
pub struct Pace {
    every: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    pub fn new(rate_per_second: f64) -> Self {
        Self {
            every: Duration::from_secs_f64(1.0 / rate_per_second),
            next: Mutex::new(None),
        }
    }

    /// Waits for this call's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.every);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

async fn classify(resp: reqwest::Response) -> Result<String, RelayError> {
    let status = resp.status();
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(1000)
        .collect();
    let code = status.as_u16();
    if status.is_success() {
        Ok(format!("{code}"))
    } else if code == 408 || code == 429 || status.is_server_error() {
        Err(RelayError::Retry {
            reason: format!("answered {code}: {body}"),
            after,
        })
    } else {
        Err(RelayError::Refused {
            reason: format!("answered {code}: {body}"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_file_parses() {
        let m = Marketplaces::parse(
            r#"
[[marketplace]]
name = "acme"
kind = "webhook"
url = "https://hooks.acme.example/tracking"
secret = "0123456789abcdef0123"
rate_per_second = 5

[[marketplace]]
name = "minha-loja-vtex"
kind = "vtex"
url = "https://minhaloja.vtexcommercestable.com.br"
app_key = "k"
app_token = "t"
email_customers = false

[[marketplace]]
name = "meli"
kind = "mercadolivre"
url = "https://api.mercadolibre.com"
access_token = "x"
"#,
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert!(m.get("acme").unwrap().email_customers);
        assert!(!m.get("minha-loja-vtex").unwrap().email_customers);
        assert!(matches!(m.get("meli").unwrap().kind, Kind::Mercadolivre(_)));
        assert!(!format!("{:?}", m.get("acme")).contains("0123456789abcdef0123"));
    }

    #[test]
    fn bad_files_name_the_problem() {
        assert!(
            Marketplaces::parse("[[marketplace]]\nname='a'\nkind='fax'\nurl='http://x'").is_err()
        );
        let short = "[[marketplace]]\nname='a'\nkind='webhook'\nurl='http://x'\nsecret='short'";
        assert!(
            Marketplaces::parse(short)
                .unwrap_err()
                .contains("at least 16")
        );
        let twice = "[[marketplace]]\nname='a'\nkind='webhook'\nurl='http://x'\nsecret='0123456789abcdef'\n".repeat(2);
        assert!(Marketplaces::parse(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // HMAC-SHA256(key="0123456789abcdef", "1700000000.{}") computed independently with Python's hmac module.
        assert_eq!(
            signature("0123456789abcdef", 1_700_000_000, b"{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }
}
