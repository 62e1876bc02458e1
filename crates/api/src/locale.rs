//! Which language the tracking page speaks: the `?lang=` the page's own switch links carry, else the browser's
//! `Accept-Language`, else the language stored with the customer's shipment (the one their emails are in).

use tracking_domain::Locale;

/// The `lang` query parameter, when it names one of our locales exactly (`pt-BR`, `es`, `en`).
pub fn from_query(query: Option<&str>) -> Option<Locale> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "lang")
        .and_then(|(_, value)| Locale::parse(value).ok())
}

/// The browser's most preferred language that we speak, by quality (`q=`), the first listed among equals.
/// Any Portuguese is `pt-BR`, any Spanish `es`, any English `en`; `*` and `q=0` choose nothing.
pub fn from_accept_language(header: Option<&str>) -> Option<Locale> {
    let mut best: Option<(u16, Locale)> = None;
    for item in header?.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or_default().trim();
        let quality = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .map_or(Some(1000), quality);
        let (Some(q), Some(locale)) = (quality, ours(tag)) else {
            continue;
        };
        if q > 0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, locale));
        }
    }
    best.map(|(_, locale)| locale)
}

/// A `q` value in thousandths (`0` to `1000`), or `None` when it cannot be read.
fn quality(value: &str) -> Option<u16> {
    let q: f32 = value.trim().parse().ok()?;
    (0.0..=1.0)
        .contains(&q)
        .then(|| (q * 1000.0).round() as u16)
}

fn ours(tag: &str) -> Option<Locale> {
    let primary = tag.split(['-', '_']).next()?.to_ascii_lowercase();
    match primary.as_str() {
        "pt" => Some(Locale::PtBr),
        "es" => Some(Locale::Es),
        "en" => Some(Locale::En),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_link_names_a_locale_exactly() {
        assert_eq!(from_query(Some("lang=es")), Some(Locale::Es));
        assert_eq!(from_query(Some("x=1&lang=pt-BR")), Some(Locale::PtBr));
        assert_eq!(from_query(Some("lang=fr")), None);
        assert_eq!(from_query(Some("language=en")), None);
        assert_eq!(from_query(None), None);
    }

    #[test]
    fn the_browser_s_best_language_we_speak_wins() {
        let pick = |h: &str| from_accept_language(Some(h));
        assert_eq!(pick("es-AR,es;q=0.9,en;q=0.8"), Some(Locale::Es));
        assert_eq!(
            pick("fr-FR,fr;q=0.9,en-US;q=0.8,pt;q=0.5"),
            Some(Locale::En)
        );
        assert_eq!(pick("en;q=0.5, pt-PT;q=0.7"), Some(Locale::PtBr));
        assert_eq!(pick("EN-us"), Some(Locale::En));
        assert_eq!(pick("pt;q=0, es;q=0.1"), Some(Locale::Es));
        assert_eq!(pick("de, *"), None);
        assert_eq!(pick("en;q=abc"), None);
        assert_eq!(pick(""), None);
        assert_eq!(from_accept_language(None), None);
    }
}
