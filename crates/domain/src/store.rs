//! Stores: which shop an order belongs to. A deployment serves one or more stores (the stores file); without a
//! stores file it serves exactly one, named [`StoreName::DEFAULT`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// A store's name as tracking requests and the stores file give it: 1 to 64 characters of lower-case ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or digit (it appears in metrics labels, logs and
/// URLs, so it is kept to what needs no escaping).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct StoreName(String);

impl StoreName {
    /// The name of the one store of a deployment without a stores file, and of requests that name none.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{:?} is not a store name (1 to 64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit)",
                crate::text::clean(s, 80)
            ))
        }
    }

    pub fn default_store() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for StoreName {
    fn default() -> Self {
        Self::default_store()
    }
}

impl TryFrom<String> for StoreName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<StoreName> for String {
    fn from(s: StoreName) -> String {
        s.0
    }
}

impl fmt::Display for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn store_names_are_plain_and_bounded() {
        for good in ["default", "loja-a", "l0ja_b.br", "9"] {
            assert_eq!(StoreName::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "Loja", "-a", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(StoreName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(StoreName::default().is_default());
        let back: StoreName = serde_json::from_str("\"loja-a\"").unwrap();
        assert_eq!(back.as_str(), "loja-a");
        assert!(serde_json::from_str::<StoreName>("\"Loja A\"").is_err());
    }
}
