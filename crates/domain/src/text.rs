//! Text that crosses our boundary: what we refuse and what we clean.
//!
//! - Text that people give us (a customer's name, a marketplace reference, an invoice number, a manual event's
//!   words) is *refused* when it holds a control character (NUL among them: PostgreSQL cannot store it) or is too
//!   long, with a message naming what is wrong: [`check`]. The same check runs at the API, on every queue message
//!   and on every row read back, through the serde adapters below, so no path skips it.
//! - Text that carriers give us is *cleaned*, never refused: a carrier's answer cannot be corrected by anyone we
//!   can tell, and refusing it would freeze the parcel. [`clean`] turns line breaks and tabs into spaces, drops the
//!   other control characters and caps the length; [`clean_json`] does that to every string of a kept raw event.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Names, references and codes given by people or other systems: a customer's name, a marketplace's name and
/// order reference, an invoice number, an event code.
pub const SHORT: usize = 200;
/// Sentences: an event's description or detail, a status reason, a carrier's per-object message.
pub const LONG: usize = 1000;

/// Why a piece of text was refused.
pub fn check(s: &str, max_chars: usize) -> Result<(), String> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "must not contain control characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    if s.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    Ok(())
}

/// A carrier's text made storable and bounded: line breaks and tabs become spaces, other control characters are
/// dropped, the result is trimmed and cut at `max_chars` characters.
pub fn clean(s: &str, max_chars: usize) -> String {
    let cleaned: String = s
        .chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .take(max_chars.saturating_mul(2))
        .collect();
    let capped: String = cleaned.trim().chars().take(max_chars).collect();
    capped.trim_end().to_owned()
}

/// Cleans every string (and every object key) of a carrier's raw JSON in place with [`clean`] at [`LONG`], so a
/// kept raw event can always be stored (`jsonb` refuses NUL too).
pub fn clean_json(v: &mut Value) {
    match v {
        Value::String(s) if s.chars().any(char::is_control) || s.chars().count() > LONG => {
            *s = clean(s, LONG);
        }
        Value::Array(items) => items.iter_mut().for_each(clean_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.chars().any(char::is_control)) {
                let entries = std::mem::take(map);
                for (k, mut value) in entries {
                    clean_json(&mut value);
                    map.insert(clean(&k, SHORT), value);
                }
            } else {
                map.values_mut().for_each(clean_json);
            }
        }
        _ => {}
    }
}

/// Serde adapters: the same [`check`] for fields that arrive in queue messages and stored JSON.
pub mod serde_checked {
    use super::*;

    fn checked<'de, D: Deserializer<'de>>(d: D, max: usize) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        check(&s, max).map_err(serde::de::Error::custom)?;
        Ok(s)
    }

    fn checked_opt<'de, D: Deserializer<'de>>(
        d: D,
        max: usize,
    ) -> Result<Option<String>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        if let Some(s) = &s {
            check(s, max).map_err(serde::de::Error::custom)?;
        }
        Ok(s)
    }

    pub fn short<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        checked(d, SHORT)
    }
    pub fn long<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        checked(d, LONG)
    }
    pub fn short_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        checked_opt(d, SHORT)
    }
    pub fn long_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        checked_opt(d, LONG)
    }
}

/// Serde adapters: the same [`clean`] for carrier text, wherever a carrier event is read (the fetcher's
/// message, a replayed kept answer, a manual event's location).
pub mod serde_cleaned {
    use super::*;

    pub fn short<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(clean(&String::deserialize(d)?, SHORT))
    }
    pub fn long<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(clean(&String::deserialize(d)?, LONG))
    }
    pub fn short_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(|s| clean(&s, SHORT)))
    }
    pub fn long_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(|s| clean(&s, LONG)))
    }
    pub fn json<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let mut v = Value::deserialize(d)?;
        clean_json(&mut v);
        Ok(v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Any Unicode scalar value, control characters and NUL often.
    fn arbitrary_text(len: usize) -> String {
        (0..len)
            .map(|_| match fastrand::u8(0..4) {
                0 => char::from(fastrand::u8(0..0x20)),
                1 => '\u{7f}',
                _ => loop {
                    if let Some(c) = char::from_u32(fastrand::u32(0..=0x10FFFF)) {
                        break c;
                    }
                },
            })
            .collect()
    }

    #[test]
    fn cleaned_text_always_passes_the_check_and_keeps_what_is_printable() {
        fastrand::seed(7);
        for _ in 0..20_000 {
            let s = arbitrary_text(fastrand::usize(0..300));
            let max = fastrand::usize(1..250);
            let c = clean(&s, max);
            assert!(check(&c, max).is_ok(), "{c:?}");
            assert!(!c.contains('\0'));
            // Nothing printable is lost below the cap.
            let printable: String = s
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .to_owned();
            if s.chars().count() <= max && !s.chars().any(|c| c.is_control()) {
                assert_eq!(c, printable);
            }
            assert_eq!(clean(&c, max), c, "cleaning is idempotent");
        }
    }

    #[test]
    fn the_check_refuses_every_control_character_and_names_it() {
        fastrand::seed(11);
        for _ in 0..20_000 {
            let s = arbitrary_text(fastrand::usize(0..50));
            let has_control = s.chars().any(char::is_control);
            assert_eq!(check(&s, 1000).is_err(), has_control, "{s:?}");
        }
        assert_eq!(
            check("Ana\u{0}Souza", 200).unwrap_err(),
            "must not contain control characters (found U+0000)"
        );
        assert!(check(&"a".repeat(201), 200).is_err());
        assert!(check("Ana Souza — São Paulo 📦", 200).is_ok());
    }

    #[test]
    fn raw_json_is_cleaned_at_every_depth() {
        fastrand::seed(13);
        for _ in 0..2_000 {
            let mut v = serde_json::json!({
                "descricao": arbitrary_text(40),
                "unidade": {"endereco": {"cidade": arbitrary_text(20)}, "lista": [arbitrary_text(5), 1, null]},
                arbitrary_text(6): arbitrary_text(3),
            });
            clean_json(&mut v);
            let text = serde_json::to_string(&v).unwrap();
            assert!(!text.contains("\\u0000"), "{text}");
            fn all_clean(v: &Value) -> bool {
                match v {
                    Value::String(s) => check(s, LONG).is_ok(),
                    Value::Array(a) => a.iter().all(all_clean),
                    Value::Object(m) => m
                        .iter()
                        .all(|(k, v)| check(k, SHORT).is_ok() && all_clean(v)),
                    _ => true,
                }
            }
            assert!(all_clean(&v), "{text}");
        }
    }
}
