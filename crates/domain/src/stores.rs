//! The stores file (`STORES_FILE`, TOML, in the format of the public contract's "Stores file", kept outside this repository): each store a deployment serves, with its
//! sender, branding, notified statuses, marketplaces, API token and carrier accounts.
//!
//! [`Stores::parse`] is pure: it reads the text and refuses, naming the store and the key, anything that could not
//! work (a short or repeated API token, a store named twice, a marketplace the marketplaces file does not
//! configure, a status no email exists for, a colour or URL that is not one). Secrets (API tokens, access codes,
//! carrier tokens) are [`SecretString`]s: never in `Debug` output, logs or errors.
//!
//! Without a stores file a deployment has exactly one store, [`StoreName::DEFAULT`], whose settings are the global
//! ones (`CORREIOS_USER`, `EMAIL_FROM`, `TRACKING_PAGE_URL`, ...): [`Stores::single`]. With one, the file's stores
//! are served, and the default store (that of requests naming none) is the file's `default` store when it names
//! one, else the global settings as before. A store that leaves a setting out (say `correios`) uses the global
//! setting.

use crate::store::StoreName;
use crate::{Locale, Status};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The shortest store API token: 32 characters (about 190 bits from a random base64 string).
pub const MIN_API_TOKEN_CHARS: usize = 32;

/// The Correios account (contract) a store's calls are made with.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorreiosAccount {
    pub user: String,
    pub access_code: SecretString,
    /// When set, the token is requested for this postage card (Correios' default access for contracts).
    #[serde(default)]
    pub postage_card: Option<String>,
}

impl CorreiosAccount {
    /// The account's key: the user, and the postage card when there is one (each card is its own contract).
    /// Stores naming the same key share one request budget, one token and one health state.
    pub fn key(&self) -> String {
        match &self.postage_card {
            Some(card) => format!("correios:{}:{card}", self.user),
            None => format!("correios:{}", self.user),
        }
    }
}

impl fmt::Debug for CorreiosAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorreiosAccount")
            .field("user", &self.user)
            .field("postage_card", &self.postage_card)
            .finish_non_exhaustive()
    }
}

/// A store's Jadlog token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JadlogAccount {
    pub token: SecretString,
}

impl fmt::Debug for JadlogAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JadlogAccount { .. }")
    }
}

/// Colours and logo of a store's emails and tracking page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Brand {
    /// `#rgb` or `#rrggbb` (it goes into CSS, so nothing else is accepted).
    #[serde(default)]
    pub color: Option<String>,
    /// An `https://` URL.
    #[serde(default)]
    pub logo_url: Option<String>,
}

/// One store of the stores file. `None` means "the global setting".
#[derive(Debug, Clone)]
pub struct Store {
    pub name: StoreName,
    pub display_name: Option<String>,
    pub email_from: Option<String>,
    pub reply_to: Option<String>,
    pub locale: Option<Locale>,
    pub tracking_page_url: Option<String>,
    pub brand: Brand,
    /// The statuses whose changes email this store's customers (`None`: `EMAIL_STATUSES`).
    pub notify: Option<Vec<Status>>,
    /// Whether `notify` names `late` (the "your parcel is late" email); `None` with `notify`.
    pub notify_late: Option<bool>,
    pub marketplaces: Vec<String>,
    pub api_token: Option<SecretString>,
    pub correios: Option<CorreiosAccount>,
    pub jadlog: Option<JadlogAccount>,
}

impl Store {
    /// A store with every setting the global one.
    pub fn global(name: StoreName) -> Self {
        Self {
            name,
            display_name: None,
            email_from: None,
            reply_to: None,
            locale: None,
            tracking_page_url: None,
            brand: Brand::default(),
            notify: None,
            notify_late: None,
            marketplaces: Vec::new(),
            api_token: None,
            correios: None,
            jadlog: None,
        }
    }
}

/// What the file holds for one store, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email_from: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    tracking_page_url: Option<String>,
    #[serde(default)]
    brand: Option<Brand>,
    #[serde(default)]
    notify: Option<Vec<String>>,
    #[serde(default)]
    marketplaces: Vec<String>,
    #[serde(default)]
    api_token: Option<SecretString>,
    #[serde(default)]
    correios: Option<CorreiosAccount>,
    #[serde(default)]
    jadlog: Option<JadlogAccount>,
}

/// Why a stores file was refused: the store (when the fault is in one) and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{key}: {message}", .store.as_ref().map(|s| format!("store {s:?}, ")).unwrap_or_default())]
pub struct StoresError {
    pub store: Option<String>,
    pub key: String,
    pub message: String,
}

fn refuse(store: Option<&str>, key: &str, message: impl Into<String>) -> StoresError {
    StoresError {
        store: store.map(|s| crate::text::clean(s, 80)),
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The stores a deployment serves.
#[derive(Debug, Clone)]
pub struct Stores {
    stores: BTreeMap<StoreName, Store>,
    /// Whether a stores file was given (else the one default store of the global settings).
    from_file: bool,
}

impl Stores {
    /// One default store, every setting the global one: a deployment without a stores file.
    pub fn single() -> Self {
        let mut stores = BTreeMap::new();
        stores.insert(
            StoreName::default_store(),
            Store::global(StoreName::default_store()),
        );
        Self {
            stores,
            from_file: false,
        }
    }

    /// Reads a stores file. `marketplaces` are the names `MARKETPLACES_FILE` configures (`None`: no such file,
    /// so a store may name none).
    pub fn parse(text: &str, marketplaces: Option<&BTreeSet<String>>) -> Result<Self, StoresError> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| {
            refuse(
                None,
                "(file)",
                format!(
                    "not valid TOML: {}",
                    crate::text::clean(&e.to_string(), 300)
                ),
            )
        })?;
        if let Some(other) = doc.keys().find(|k| k.as_str() != "store") {
            return Err(refuse(
                None,
                &crate::text::clean(other, 80),
                "unknown key: the file holds [[store]] tables only",
            ));
        }
        let Some(list) = doc.get("store") else {
            return Err(refuse(None, "store", "the file names no [[store]]"));
        };
        let Some(list) = list.as_array() else {
            return Err(refuse(None, "store", "must be [[store]] tables"));
        };
        let mut stores = BTreeMap::new();
        let mut tokens: Vec<(StoreName, SecretString)> = Vec::new();
        let mut accounts: BTreeMap<String, (StoreName, CorreiosAccount)> = BTreeMap::new();
        for (n, value) in list.iter().enumerate() {
            let name_hint = value
                .get("name")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{}", n + 1), str::to_owned);
            check_shape(&name_hint, value)?;
            let raw: RawStore = value.clone().try_into().map_err(|e: toml::de::Error| {
                // Not reached after `check_shape`; the message is kept free of values all the same.
                refuse(Some(&name_hint), "(table)", without_values(e.message()))
            })?;
            let store = validate(raw, marketplaces)?;
            let name = store.name.clone();
            if stores.contains_key(&name) {
                return Err(refuse(
                    Some(name.as_str()),
                    "name",
                    "is given to two stores",
                ));
            }
            if let Some(token) = &store.api_token {
                if let Some((other, _)) = tokens
                    .iter()
                    .find(|(_, t)| t.expose_secret() == token.expose_secret())
                {
                    return Err(refuse(
                        Some(name.as_str()),
                        "api_token",
                        format!(
                            "is the same as store {:?}'s: each store needs its own",
                            other.as_str()
                        ),
                    ));
                }
                tokens.push((name.clone(), token.clone()));
            }
            if let Some(account) = &store.correios {
                let key = account.key();
                if let Some((other, known)) = accounts.get(&key) {
                    if known.access_code.expose_secret() != account.access_code.expose_secret() {
                        return Err(refuse(
                            Some(name.as_str()),
                            "correios.access_code",
                            format!(
                                "differs from store {:?}'s for the same Correios user and card: one account has one access code",
                                other.as_str()
                            ),
                        ));
                    }
                } else {
                    accounts.insert(key, (name.clone(), account.clone()));
                }
            }
            stores.insert(name, store);
        }
        stores
            .entry(StoreName::default_store())
            .or_insert_with(|| Store::global(StoreName::default_store()));
        Ok(Self {
            stores,
            from_file: true,
        })
    }

    pub fn get(&self, name: &StoreName) -> Option<&Store> {
        self.stores.get(name)
    }

    pub fn contains(&self, name: &StoreName) -> bool {
        self.stores.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Store> {
        self.stores.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &StoreName> {
        self.stores.keys()
    }

    pub fn from_file(&self) -> bool {
        self.from_file
    }

    /// The store whose API token `presented` is, compared in constant time with every store's token (so the
    /// time taken says nothing about which token came close).
    pub fn store_of_token(&self, presented: &str) -> Option<&StoreName> {
        let mut found = None;
        for store in self.stores.values() {
            if let Some(token) = &store.api_token
                && constant_time_eq(token.expose_secret().as_bytes(), presented.as_bytes())
            {
                found = Some(&store.name);
            }
        }
        found
    }
}

/// What TOML type each key of a store holds: `s` string, `a` array of strings, `t` table (with its keys).
const SHAPE: &[(&str, &str)] = &[
    ("name", "s"),
    ("display_name", "s"),
    ("email_from", "s"),
    ("reply_to", "s"),
    ("locale", "s"),
    ("tracking_page_url", "s"),
    ("brand", "t"),
    ("brand.color", "s"),
    ("brand.logo_url", "s"),
    ("notify", "a"),
    ("marketplaces", "a"),
    ("api_token", "s"),
    ("correios", "t"),
    ("correios.user", "s"),
    ("correios.access_code", "s"),
    ("correios.postage_card", "s"),
    ("jadlog", "t"),
    ("jadlog.token", "s"),
];

/// Refuses, naming the key, an unknown key or a value of the wrong type, without ever quoting the value (it may
/// be a secret).
fn check_shape(store: &str, value: &toml::Value) -> Result<(), StoresError> {
    fn walk(store: &str, prefix: &str, table: &toml::Table) -> Result<(), StoresError> {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let Some((_, kind)) = SHAPE.iter().find(|(name, _)| *name == key) else {
                return Err(refuse(
                    Some(store),
                    &crate::text::clean(&key, 80),
                    "unknown key",
                ));
            };
            let ok = match (*kind, v) {
                ("s", toml::Value::String(_)) => true,
                ("a", toml::Value::Array(items)) => items.iter().all(toml::Value::is_str),
                ("t", toml::Value::Table(inner)) => {
                    walk(store, &key, inner)?;
                    true
                }
                _ => false,
            };
            if !ok {
                let expected = match *kind {
                    "s" => "a string",
                    "a" => "a list of strings",
                    _ => "a table",
                };
                return Err(refuse(Some(store), &key, format!("must be {expected}")));
            }
        }
        Ok(())
    }
    let Some(table) = value.as_table() else {
        return Err(refuse(Some(store), "store", "must be a [[store]] table"));
    };
    if !table.contains_key("name") {
        return Err(refuse(Some(store), "name", "is required"));
    }
    for required in ["correios.user", "correios.access_code", "jadlog.token"] {
        let (outer, inner) = required.split_once('.').unwrap_or((required, ""));
        if let Some(t) = table.get(outer).and_then(toml::Value::as_table)
            && !t.contains_key(inner)
        {
            return Err(refuse(Some(store), required, "is required"));
        }
    }
    walk(store, "", table)
}

/// A serde message with its quoted values (`` `...` ``) left out.
fn without_values(message: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in message.chars() {
        if c == '`' {
            inside = !inside;
            if inside {
                out.push_str("(value)");
            }
        } else if !inside {
            out.push(c);
        }
    }
    crate::text::clean(&out, 300)
}

/// Equal, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(
    store: &str,
    key: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, StoresError> {
    let Some(v) = value else { return Ok(None) };
    let v = v.trim().to_owned();
    if v.is_empty() {
        return Err(refuse(
            Some(store),
            key,
            "is empty (leave it out for the global setting)",
        ));
    }
    if v.chars().count() > max {
        return Err(refuse(
            Some(store),
            key,
            format!("is longer than {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(refuse(Some(store), key, "holds a control character"));
    }
    Ok(Some(v))
}

fn url(
    store: &str,
    key: &str,
    value: Option<String>,
    https_only: bool,
) -> Result<Option<String>, StoresError> {
    let Some(v) = text(store, key, value, 300)? else {
        return Ok(None);
    };
    let ok = v
        .strip_prefix("https://")
        .or_else(|| (!https_only).then(|| v.strip_prefix("http://")).flatten());
    match ok {
        Some(rest) if !rest.is_empty() && !rest.contains(['"', '\'', '<', '>', ' ', '\\']) => {
            Ok(Some(v.trim_end_matches('/').to_owned()))
        }
        _ => Err(refuse(
            Some(store),
            key,
            if https_only {
                "must be an https:// URL"
            } else {
                "must be an http:// or https:// URL"
            },
        )),
    }
}

/// `#rgb` or `#rrggbb`.
fn color(store: &str, value: Option<String>) -> Result<Option<String>, StoresError> {
    let Some(v) = value else { return Ok(None) };
    let hex = v.strip_prefix('#').unwrap_or("");
    if (hex.len() == 3 || hex.len() == 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(v))
    } else {
        Err(refuse(
            Some(store),
            "brand.color",
            "must be #rgb or #rrggbb",
        ))
    }
}

fn address(store: &str, key: &str, value: Option<String>) -> Result<Option<String>, StoresError> {
    let Some(v) = text(store, key, value, 200)? else {
        return Ok(None);
    };
    // `Name <addr>` or `addr`: the address part must be one.
    let addr = match (v.rfind('<'), v.ends_with('>')) {
        (Some(open), true) => &v[open + 1..v.len() - 1],
        _ => v.as_str(),
    };
    crate::EmailAddress::parse(addr).map_err(|e| refuse(Some(store), key, e))?;
    Ok(Some(v))
}

fn validate(raw: RawStore, marketplaces: Option<&BTreeSet<String>>) -> Result<Store, StoresError> {
    let name = StoreName::parse(&raw.name).map_err(|e| refuse(Some(&raw.name), "name", e))?;
    let s = name.as_str();
    let locale = raw
        .locale
        .map(|l| Locale::parse(&l).map_err(|e| refuse(Some(s), "locale", e)))
        .transpose()?;
    let mut notify_late = None;
    let notify = match raw.notify {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            notify_late = Some(list.iter().any(|i| i == "late"));
            for item in list.into_iter().filter(|i| i != "late") {
                let status: Status = item.parse().map_err(|_| {
                    refuse(
                        Some(s),
                        "notify",
                        format!("{:?} is not a status", crate::text::clean(&item, 40)),
                    )
                })?;
                if !out.contains(&status) {
                    out.push(status);
                }
            }
            Some(out)
        }
    };
    for m in &raw.marketplaces {
        match marketplaces {
            None => {
                return Err(refuse(
                    Some(s),
                    "marketplaces",
                    format!("names {m:?} but MARKETPLACES_FILE is not set"),
                ));
            }
            Some(known) if !known.contains(m) => {
                return Err(refuse(
                    Some(s),
                    "marketplaces",
                    format!("names {m:?}, which MARKETPLACES_FILE does not configure"),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(t) = &raw.api_token {
        let t = t.expose_secret();
        if t.chars().count() < MIN_API_TOKEN_CHARS {
            return Err(refuse(
                Some(s),
                "api_token",
                format!("must be at least {MIN_API_TOKEN_CHARS} characters"),
            ));
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse(
                Some(s),
                "api_token",
                "holds a space or a control character",
            ));
        }
    }
    if let Some(c) = &raw.correios {
        if c.user.trim().is_empty() {
            return Err(refuse(Some(s), "correios.user", "is empty"));
        }
        if c.access_code.expose_secret().trim().is_empty() {
            return Err(refuse(Some(s), "correios.access_code", "is empty"));
        }
        if c.postage_card
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(refuse(
                Some(s),
                "correios.postage_card",
                "is empty (leave it out for none)",
            ));
        }
    }
    if let Some(j) = &raw.jadlog
        && j.token.expose_secret().trim().is_empty()
    {
        return Err(refuse(Some(s), "jadlog.token", "is empty"));
    }
    let brand = raw.brand.unwrap_or_default();
    let brand = Brand {
        color: color(s, brand.color)?,
        logo_url: url(s, "brand.logo_url", brand.logo_url, true)?,
    };
    Ok(Store {
        display_name: text(s, "display_name", raw.display_name, 100)?,
        email_from: address(s, "email_from", raw.email_from)?,
        reply_to: address(s, "reply_to", raw.reply_to)?,
        locale,
        tracking_page_url: url(s, "tracking_page_url", raw.tracking_page_url, false)?,
        brand,
        notify,
        notify_late,
        marketplaces: raw.marketplaces,
        api_token: raw.api_token,
        correios: raw.correios,
        jadlog: raw.jadlog,
        name,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN_A: &str = "token-of-loja-a-0123456789abcdef0123";
    const TOKEN_B: &str = "token-of-loja-b-0123456789abcdef0123";

    fn full() -> String {
        format!(
            r##"
[[store]]
name = "loja-a"
display_name = "Loja A"
email_from = "Loja A <rastreio@loja-a.example>"
reply_to = "atendimento@loja-a.example"
locale = "pt-BR"
tracking_page_url = "https://rastreio.loja-a.example/"
brand = {{ color = "#0a7", logo_url = "https://loja-a.example/logo.png" }}
notify = ["posted", "out_for_delivery", "delivery_failed", "awaiting_pickup", "delivered", "returning", "exception", "late"]
marketplaces = ["acme"]
api_token = "{TOKEN_A}"
correios = {{ user = "empresa-a", access_code = "secret-code-a", postage_card = "0067599079" }}
jadlog = {{ token = "jadlog-secret-a" }}

[[store]]
name = "loja-b"
api_token = "{TOKEN_B}"
correios = {{ user = "empresa-a", access_code = "secret-code-a", postage_card = "0067599079" }}
"##
        )
    }

    fn known() -> BTreeSet<String> {
        ["acme".to_owned()].into()
    }

    fn refused(text: &str) -> StoresError {
        Stores::parse(text, Some(&known())).unwrap_err()
    }

    fn with(extra: &str) -> String {
        format!("[[store]]\nname = \"loja-x\"\n{extra}\n")
    }

    #[test]
    fn the_contracts_example_reads_with_every_key() {
        let stores = Stores::parse(&full(), Some(&known())).unwrap();
        assert!(stores.from_file());
        let names: Vec<&str> = stores.names().map(StoreName::as_str).collect();
        assert_eq!(
            names,
            ["default", "loja-a", "loja-b"],
            "the default store is always there"
        );
        let a = stores.get(&StoreName::parse("loja-a").unwrap()).unwrap();
        assert_eq!(a.display_name.as_deref(), Some("Loja A"));
        assert_eq!(
            a.tracking_page_url.as_deref(),
            Some("https://rastreio.loja-a.example")
        );
        assert_eq!(a.brand.color.as_deref(), Some("#0a7"));
        assert_eq!(a.locale, Some(Locale::PtBr));
        assert_eq!(a.notify.as_ref().unwrap().len(), 7);
        assert_eq!(a.notify_late, Some(true));
        assert_eq!(
            a.correios.as_ref().unwrap().key(),
            "correios:empresa-a:0067599079"
        );
        let b = stores.get(&StoreName::parse("loja-b").unwrap()).unwrap();
        assert_eq!(
            b.correios.as_ref().unwrap().key(),
            a.correios.as_ref().unwrap().key(),
            "shared account"
        );
        assert_eq!(stores.store_of_token(TOKEN_B).unwrap().as_str(), "loja-b");
        assert!(
            stores
                .store_of_token("token-of-loja-b-0123456789abcdef012X")
                .is_none()
        );
        assert!(stores.store_of_token("").is_none());
    }

    #[test]
    fn no_secret_is_shown_by_debug_or_errors() {
        let stores = Stores::parse(&full(), Some(&known())).unwrap();
        let shown = format!("{stores:?}");
        for secret in [TOKEN_A, TOKEN_B, "secret-code-a", "jadlog-secret-a"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("empresa-a"), "{shown}");
        let e = refused(&with("api_token = \"short-secret-token\""));
        assert!(!e.to_string().contains("short-secret-token"), "{e}");
        let e = refused(&with("correios = { user = \"u\", access_code = 12345678 }"));
        assert!(!e.to_string().contains("12345678"), "{e}");
    }

    #[test]
    fn without_a_file_there_is_one_default_store_of_global_settings() {
        let stores = Stores::single();
        assert!(!stores.from_file());
        let names: Vec<&StoreName> = stores.names().collect();
        assert_eq!(names, [&StoreName::default_store()]);
        let d = stores.get(&StoreName::default_store()).unwrap();
        assert!(d.correios.is_none() && d.email_from.is_none() && d.api_token.is_none());
    }

    #[test]
    fn a_file_may_define_the_default_store() {
        let stores = Stores::parse(
            "[[store]]\nname = \"default\"\ndisplay_name = \"Main\"\n",
            None,
        )
        .unwrap();
        let d = stores.get(&StoreName::default_store()).unwrap();
        assert_eq!(d.display_name.as_deref(), Some("Main"));
    }

    #[test]
    fn each_refusal_names_the_store_and_the_key() {
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            ("not toml [", None, "(file)", "not valid TOML"),
            ("[[shop]]\nname = \"a\"\n", None, "shop", "unknown key"),
            ("", None, "store", "no [[store]]"),
            ("store = 3\n", None, "store", "[[store]] tables"),
            (
                "[[store]]\ndisplay_name = \"x\"\n",
                Some("#1"),
                "name",
                "required",
            ),
            (
                &with("colour = \"#fff\""),
                Some("loja-x"),
                "colour",
                "unknown key",
            ),
            (
                &with("brand = { colour = \"#fff\" }"),
                Some("loja-x"),
                "brand.colour",
                "unknown key",
            ),
            (
                &with("api_token = 12345678"),
                Some("loja-x"),
                "api_token",
                "must be a string",
            ),
            (
                &with("marketplaces = \"acme\""),
                Some("loja-x"),
                "marketplaces",
                "list of strings",
            ),
            (
                &with("correios = { user = \"u\" }"),
                Some("loja-x"),
                "correios.access_code",
                "required",
            ),
            (
                "[[store]]\nname = \"Loja X\"\n",
                Some("Loja X"),
                "name",
                "not a store name",
            ),
            (
                &format!("{}{}", with(""), with("")),
                Some("loja-x"),
                "name",
                "two stores",
            ),
            (
                &with("api_token = \"0123456789abcdef0123456789abcde\""),
                Some("loja-x"),
                "api_token",
                "at least 32",
            ),
            (
                &with("api_token = \"0123456789abcdef 0123456789abcdef\""),
                Some("loja-x"),
                "api_token",
                "space",
            ),
            (
                &format!(
                    "{}api_token = \"{TOKEN_A}\"\n[[store]]\nname = \"loja-y\"\napi_token = \"{TOKEN_A}\"\n",
                    with("")
                ),
                Some("loja-y"),
                "api_token",
                "same as store \"loja-x\"",
            ),
            (
                &with("marketplaces = [\"meli\"]"),
                Some("loja-x"),
                "marketplaces",
                "does not configure",
            ),
            (
                &with("notify = [\"delivered\", \"teleported\"]"),
                Some("loja-x"),
                "notify",
                "not a status",
            ),
            (&with("locale = \"fr\""), Some("loja-x"), "locale", ""),
            (
                &with("email_from = \"not an address\""),
                Some("loja-x"),
                "email_from",
                "",
            ),
            (
                &with("reply_to = \"\""),
                Some("loja-x"),
                "reply_to",
                "empty",
            ),
            (
                &with("tracking_page_url = \"ftp://x\""),
                Some("loja-x"),
                "tracking_page_url",
                "URL",
            ),
            (
                &with("brand = { color = \"red;}\" }"),
                Some("loja-x"),
                "brand.color",
                "#rgb",
            ),
            (
                &with("brand = { logo_url = \"http://x/l.png\" }"),
                Some("loja-x"),
                "brand.logo_url",
                "https",
            ),
            (
                &with("display_name = \"A\\u0000\""),
                Some("loja-x"),
                "display_name",
                "control",
            ),
            (
                &with("correios = { user = \" \", access_code = \"c\" }"),
                Some("loja-x"),
                "correios.user",
                "empty",
            ),
            (
                &with("correios = { user = \"u\", access_code = \"\" }"),
                Some("loja-x"),
                "correios.access_code",
                "empty",
            ),
            (
                &with("correios = { user = \"u\", access_code = \"c\", postage_card = \"\" }"),
                Some("loja-x"),
                "correios.postage_card",
                "empty",
            ),
            (
                &format!(
                    "{}correios = {{ user = \"u\", access_code = \"c1\" }}\n[[store]]\nname = \"loja-y\"\ncorreios = {{ user = \"u\", access_code = \"c2\" }}\n",
                    with("")
                ),
                Some("loja-y"),
                "correios.access_code",
                "one account has one access code",
            ),
            (
                &with("jadlog = { token = \"\" }"),
                Some("loja-x"),
                "jadlog.token",
                "empty",
            ),
        ];
        for (text, store, key, message) in cases {
            let e = refused(text);
            assert_eq!(e.store.as_deref(), *store, "{text}: {e}");
            assert_eq!(e.key, *key, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
        let e = Stores::parse(&with("marketplaces = [\"acme\"]"), None).unwrap_err();
        assert!(e.message.contains("MARKETPLACES_FILE is not set"), "{e}");
        assert_eq!(
            e.to_string(),
            "store \"loja-x\", marketplaces: names \"acme\" but MARKETPLACES_FILE is not set"
        );
    }
}
