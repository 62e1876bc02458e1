//! Secrets out of everything a client keeps or says: kept answer bodies, error reasons, log lines. The carrier
//! clients (`tracking-carriers`) and the marketplace relay (`tracking-marketplaces`) both redact through here.
//!
//! A carrier answer can hold a secret in any shape: a token endpoint answer whose `expiraEm` we cannot read still
//! carries its `token`, a gateway error may echo our bearer, a proxy may answer with an HTML page quoting the
//! `Authorization` header. So redaction does not trust the shape:
//!
//! 1. a JSON body has the value of every key that names a secret ([`is_secret_key`]) replaced by
//!    [`REDACTED`], at any depth;
//! 2. then any text (JSON or not, truncated, an error message) has JWT-looking strings (`eyJ….….…`),
//!    `key: value` / `key=value` pairs whose key names a secret, and every secret the client knows (its access
//!    code, tokens it received) replaced by [`REDACTED`].
//!
//! [`Redactor`] holds the secrets one client knows; [`redact`] is the function every body and reason goes
//! through; [`storable`] makes the result safe for a PostgreSQL `text` column (no NUL, no control characters,
//! bounded length).

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Mutex;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The longest kept answer body, in bytes: longer ones are cut (a kept answer is for an operator and a replay,
/// and no tracking answer of 50 codes comes near it). Bounded so that storing a body can never fail or bloat.
pub const KEPT_BODY_MAX_BYTES: usize = 2 * 1024 * 1024;

/// The longest error reason, in bytes (reasons hold a snippet of the answer, not the answer).
pub const REASON_MAX_BYTES: usize = 4 * 1024;

/// Known secrets shorter than this are not searched for in text: replacing every "abc" would garble answers
/// without protecting anything worth the name.
const MIN_KNOWN_SECRET: usize = 4;

/// Tokens remembered besides the fixed secrets (the current one and a few before it).
const RECENT_SECRETS: usize = 8;

/// Parts of key names that mark their value as a secret, compared lowercase with `_` and `-` removed.
const SECRET_KEY_PARTS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "senha",
    "secret",
    "authorization",
    "codigoacesso",
    "accesscode",
    "appkey",
    "apikey",
    "credential",
    "cookie",
];

/// Whether a key (JSON field, header, `key=value` name) names a secret: `token`, `access_token`,
/// `accessToken`, `refresh_token`, `password`, `senha`, `secret`, `Authorization`, `codigoAcesso`,
/// `access_code`, `app_key`, `X-VTEX-API-AppToken`, `apiKey`, … (case-insensitive, ignoring `_` and `-`).
pub fn is_secret_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_KEY_PARTS.iter().any(|p| norm.contains(p))
}

/// Redacts `text` (see the module doc): JSON keys naming secrets, JWT-looking strings, `key=value` pairs naming
/// secrets, and every one of `known`. The result is otherwise the same text (a JSON body is re-serialized).
pub fn redact(text: &str, known: &[&str]) -> String {
    let trimmed = text.trim_start();
    let mut out = if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && let Ok(mut value) = serde_json::from_str::<Value>(text)
    {
        redact_json(&mut value);
        value.to_string()
    } else {
        text.to_owned()
    };
    for secret in known {
        if secret.len() >= MIN_KNOWN_SECRET && out.contains(secret) {
            out = out.replace(secret, REDACTED);
        }
    }
    let out = redact_jwts(&out);
    redact_pairs(&out)
}

/// Replaces, at any depth, the value of every key that names a secret.
pub fn redact_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_json(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Replaces `eyJ…` strings of three base64url segments joined by dots (a JWT; the last may be empty).
fn redact_jwts(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(pos) = text[i..].find("eyJ") {
        let start = i + pos;
        if start > 0 && is_b64url(b[start - 1]) {
            i = start + 3;
            continue;
        }
        let mut end = start;
        let mut dots = 0;
        while end < b.len() {
            if is_b64url(b[end]) {
                end += 1;
            } else if b[end] == b'.' && dots < 2 {
                dots += 1;
                end += 1;
            } else {
                break;
            }
        }
        if dots == 2 {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
        i = end.max(start + 3);
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces the value of `key: value`, `key=value`, `"key": "value"` where the key names a secret (also a
/// value cut short by the end of the text). `Bearer x` / `Basic x` values lose both words.
fn redact_pairs(text: &str) -> String {
    let b = text.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if !is_ident(b[i]) || (i > 0 && is_ident(b[i - 1])) {
            i += 1;
            continue;
        }
        // A key: a run of identifier characters, maybe closed by a quote.
        let key_start = i;
        let mut j = i;
        while j < b.len() && is_ident(b[j]) {
            j += 1;
        }
        let key = &text[key_start..j];
        if !is_secret_key(key) {
            i = j;
            continue;
        }
        let mut k = j;
        if k < b.len() && (b[k] == b'"' || b[k] == b'\'') {
            k += 1;
        }
        while k < b.len() && b[k] == b' ' {
            k += 1;
        }
        if k >= b.len() || (b[k] != b':' && b[k] != b'=') {
            i = j;
            continue;
        }
        k += 1;
        while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
            k += 1;
        }
        let (value_start, value_end) = if text[k..].starts_with(REDACTED) {
            (k, k + REDACTED.len())
        } else if k < b.len() && (b[k] == b'"' || b[k] == b'\'') {
            let quote = b[k];
            let mut e = k + 1;
            while e < b.len() && b[e] != quote {
                e += if b[e] == b'\\' { 2 } else { 1 };
            }
            (k + 1, e.min(b.len()))
        } else {
            let word_end = |from: usize| {
                let mut e = from;
                while e < b.len()
                    && !matches!(
                        b[e],
                        b' ' | b'\t' | b'\r' | b'\n' | b',' | b'&' | b';' | b'}' | b')' | b']'
                    )
                {
                    e += 1;
                }
                e
            };
            let mut e = word_end(k);
            let word = &text[k..e];
            if (word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("basic"))
                && e < b.len()
                && b[e] == b' '
            {
                e = word_end(e + 1);
            }
            (k, e)
        };
        if value_end > value_start && &text[value_start..value_end] != REDACTED {
            out.push_str(&text[copied..value_start]);
            out.push_str(REDACTED);
            copied = value_end;
        }
        i = value_end.max(j);
    }
    out.push_str(&text[copied..]);
    out
}

/// Makes text storable in a PostgreSQL `text` column and bounded: NUL and other control characters (except
/// `\n`, `\r`, `\t`) become `\u{FFFD}`, and text longer than `max` bytes is cut on a character boundary with a
/// note of how much was left out.
pub fn storable(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out: String = text[..cut]
        .chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    if cut < text.len() {
        out.push_str(&format!(" …[cut: {} more bytes]", text.len() - cut));
    }
    out
}

/// The secrets one client knows, and the redaction of everything it returns. Fixed secrets (an access code, a
/// static token) stay for the client's life; tokens it receives are remembered, the last few of them.
#[derive(Default)]
pub struct Redactor {
    fixed: Vec<SecretString>,
    recent: Mutex<VecDeque<SecretString>>,
}

impl Redactor {
    /// A redactor that knows these secrets for good.
    pub fn new(fixed: impl IntoIterator<Item = SecretString>) -> Self {
        Self {
            fixed: fixed.into_iter().collect(),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Remembers a secret received at run time (a token).
    pub fn remember(&self, secret: &str) {
        if secret.len() < MIN_KNOWN_SECRET {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.iter().any(|s| s.expose_secret() == secret) {
            return;
        }
        if recent.len() >= RECENT_SECRETS {
            recent.pop_front();
        }
        recent.push_back(SecretString::from(secret.to_owned()));
    }

    /// `text` with every secret this redactor knows, and every secret-shaped value, replaced ([`redact`]).
    pub fn redact(&self, text: &str) -> String {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let known: Vec<&str> = self
            .fixed
            .iter()
            .chain(recent.iter())
            .map(|s| s.expose_secret())
            .collect();
        redact(text, &known)
    }

    /// A reason or log text: redacted, storable, at most [`REASON_MAX_BYTES`].
    pub fn reason(&self, text: &str) -> String {
        storable(&self.redact(text), REASON_MAX_BYTES)
    }

    /// An answer body to keep: redacted, storable, at most [`KEPT_BODY_MAX_BYTES`].
    pub fn body(&self, text: &str) -> String {
        storable(&self.redact(text), KEPT_BODY_MAX_BYTES)
    }
}

/// An answer body to keep when no client is at hand (the fetcher, before it stores what a client returned):
/// [`redact`] without known secrets, then [`storable`] at [`KEPT_BODY_MAX_BYTES`].
pub fn keepable(text: &str) -> String {
    storable(&redact(text, &[]), KEPT_BODY_MAX_BYTES)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzUxMiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ24tX2E";

    #[test]
    fn secret_keys_are_recognised_whatever_their_case_or_separators() {
        for k in [
            "token",
            "Token",
            "access_token",
            "accessToken",
            "refresh_token",
            "password",
            "senha",
            "client_secret",
            "Authorization",
            "codigoAcesso",
            "access_code",
            "app_key",
            "X-VTEX-API-AppToken",
            "apiKey",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["expiraEm", "codObjeto", "descricao", "emissao", "cnpj"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn json_values_of_secret_keys_are_redacted_at_any_depth() {
        let body = r#"{"expiraEm": 1774000000, "dados": [{"auth": {"accessToken": "opaque-123456", "refresh_token": {"v": "x"}}}], "Senha": "s3nh4!", "codObjeto": "DL746686536BR"}"#;
        let out = redact(body, &[]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["dados"][0]["auth"]["accessToken"], REDACTED);
        assert_eq!(v["dados"][0]["auth"]["refresh_token"], REDACTED);
        assert_eq!(v["Senha"], REDACTED);
        assert_eq!(v["codObjeto"], "DL746686536BR");
        assert_eq!(v["expiraEm"], 1774000000);
        assert!(!out.contains("opaque-123456") && !out.contains("s3nh4"));
    }

    #[test]
    fn jwts_known_secrets_and_pairs_are_redacted_in_any_text() {
        let text = format!(
            "<html>token expired: {JWT}</html> retry with senha=hunter22&x=1; Authorization: Bearer opaque-abc123 and the code sim-code"
        );
        let out = redact(&text, &["sim-code"]);
        assert!(!out.contains(JWT), "{out}");
        assert!(!out.contains("hunter22"), "{out}");
        assert!(!out.contains("opaque-abc123"), "{out}");
        assert!(!out.contains("sim-code"), "{out}");
        assert!(
            out.contains("x=1") && out.contains("token expired"),
            "{out}"
        );
        // Broken JSON: a value cut short by the end of the text.
        let cut = r#"{"expiraEm": "amanhã", "token": "opaque-987654"#;
        let out = redact(cut, &[]);
        assert!(!out.contains("opaque-987654"), "{out}");
        let cut = r#"{"token": "opaque-98765"#;
        assert!(!redact(cut, &[]).contains("opaque"));
        // Prose that merely mentions a token is left alone.
        let prose = "GTW-008: Token não válido para este ambiente.";
        assert_eq!(redact(prose, &[]), prose);
        // Idempotent.
        let once = redact(&text, &["sim-code"]);
        assert_eq!(redact(&once, &["sim-code"]), once);
    }

    #[test]
    fn a_jwt_inside_a_longer_word_or_with_one_dot_is_not_a_jwt() {
        assert_eq!(redact("xeyJabc.def.ghi", &[]), "xeyJabc.def.ghi");
        assert_eq!(redact("eyJabc.def", &[]), "eyJabc.def");
        assert_eq!(redact(&format!("[{JWT}]"), &[]), "[[redacted]]");
    }

    #[test]
    fn storable_text_has_no_nul_nor_control_characters_and_is_bounded() {
        let s = storable("a\0b\u{1b}c\nd\te\r", 100);
        assert_eq!(s, "a\u{FFFD}b\u{FFFD}c\nd\te\r");
        let long = "é".repeat(100);
        let s = storable(&long, 11);
        assert!(s.starts_with("ééééé …[cut: 190 more bytes]"), "{s}");
    }
}
