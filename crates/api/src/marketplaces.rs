//! Which marketplaces a tracking request may name (`MARKETPLACES_FILE`, docs/settings.md).
//!
//! A request naming a marketplace nobody configured would be queued, then parked by the marketplace publisher
//! much later, where the caller never sees it: the API refuses it at once with 422 instead. The API relays
//! nothing itself, so it keeps only the names: none of the file's secrets stay in its memory, its logs or its
//! `Debug` output. Without `MARKETPLACES_FILE` no marketplace is configured, so any request naming one is refused.

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::Path;
use tracking_domain::FieldError;
use tracking_marketplaces::Marketplaces;
use tracking_runtime::settings::{self, SettingsError};

/// The field a tracking request names its marketplace in.
pub const FIELD: &str = "marketplace.name";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownMarketplaces {
    names: BTreeSet<String>,
}

impl KnownMarketplaces {
    /// From `MARKETPLACES_FILE` (none configured when it is unset); a file that cannot be read or parsed is a
    /// settings error naming the variable.
    pub fn from_env() -> Result<Self, SettingsError> {
        match settings::var("MARKETPLACES_FILE") {
            Some(path) => Self::load(Path::new(path.trim())),
            None => Ok(Self::default()),
        }
    }

    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let loaded = Marketplaces::load(path)
            .map_err(|e| SettingsError::new("MARKETPLACES_FILE", without_source(&e.to_string())))?;
        Ok(Self::new(loaded.iter().map(|m| m.name.clone())))
    }

    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            names: names.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The error for a request body whose `marketplace.name` is a name nobody configured; `None` when it names a
    /// configured one or none at all (a missing or malformed name is `TrackingRequest::from_value`'s to report).
    pub fn check(&self, body: &Map<String, Value>) -> Option<FieldError> {
        let name = body.get("marketplace")?.get("name")?.as_str()?.trim();
        if name.is_empty() || self.names.contains(name) {
            return None;
        }
        let message = if self.names.is_empty() {
            format!(
                "{name:?} is not a configured marketplace: none is configured (MARKETPLACES_FILE), so nothing could relay to it"
            )
        } else {
            format!(
                "{name:?} is not a configured marketplace (one of: {})",
                self.names.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        Some(FieldError {
            field: FIELD.into(),
            message,
        })
    }
}

/// A parse error without the lines of the file it quotes (TOML errors show the offending line, which may be a
/// secret's): only the location and the reason remain.
fn without_source(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            let quoted = line.trim_start_matches(|c: char| c.is_ascii_digit());
            !(line.starts_with('|')
                || (quoted.len() < line.len() && quoted.trim_start().starts_with('|')))
        })
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn only_configured_names_pass() {
        let known = KnownMarketplaces::new(["acme".to_owned(), "meli".to_owned()]);
        assert_eq!(
            known.check(&body(
                json!({"marketplace": {"name": " acme ", "order_id": "1"}})
            )),
            None
        );
        assert_eq!(known.check(&body(json!({"order_id": "1"}))), None);
        assert_eq!(
            known.check(&body(json!({"marketplace": {"name": 5}}))),
            None
        );
        let err = known
            .check(&body(
                json!({"marketplace": {"name": "Acme", "order_id": "1"}}),
            ))
            .unwrap();
        assert_eq!(err.field, "marketplace.name");
        assert!(err.message.contains("acme, meli"), "{}", err.message);
        let none = KnownMarketplaces::default()
            .check(&body(
                json!({"marketplace": {"name": "acme", "order_id": "1"}}),
            ))
            .unwrap();
        assert!(
            none.message.contains("MARKETPLACES_FILE"),
            "{}",
            none.message
        );
    }

    #[test]
    fn a_bad_file_is_named_without_quoting_its_secrets() {
        let dir = std::env::temp_dir().join(format!("api-mp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("marketplaces.toml");
        let secret = "s3cret-that-must-not-leak-0123";
        std::fs::write(
            &path,
            format!(
                "[[marketplace]]\nname = \"acme\"\nkind = \"webhook\"\nurl = \"http://x\"\nsecret = \"{secret}\" oops\n"
            ),
        )
        .unwrap();
        // The parser quotes the line, secret and all...
        let raw = Marketplaces::load(&path).unwrap_err().to_string();
        assert!(raw.contains(secret), "{raw}");
        // ...and the setting error does not.
        let err = KnownMarketplaces::load(&path).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.variable, "MARKETPLACES_FILE");
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("line 5"), "{text}");

        std::fs::write(
            &path,
            format!(
                "[[marketplace]]\nname = \"acme\"\nkind = \"webhook\"\nurl = \"http://x\"\nsecret = \"{secret}\"\n"
            ),
        )
        .unwrap();
        let known = KnownMarketplaces::load(&path).unwrap();
        assert_eq!(known, KnownMarketplaces::new(["acme".to_owned()]));
        assert!(!format!("{known:?}").contains(secret));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
