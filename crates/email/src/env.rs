//! The settings the emails and the tracking page share, from the environment: `email-publisher` and `tracking-api`
//! read them the same way, so the page and the emails name the same store, carrier links and time zone, and sign
//! the same page tokens.

use crate::TemplateSettings;
use crate::render::{
    DEFAULT_CORREIOS_TRACKING_URL, DEFAULT_CUSTOMER_TIME_ZONE, DEFAULT_JADLOG_TRACKING_URL,
    DEFAULT_STORE_NAME,
};
use crate::unsubscribe::Mailto;
use tracking_domain::{Carrier, PageKey, PageLinks, UnsubscribeKey, UnsubscribeLinks};
use tracking_settings::{self as settings, SettingsError};

/// `TRACKING_PAGE_SECRET`: the key of the tracking page's tokens, at least 32 characters; `None` when unset.
pub fn page_key() -> Result<Option<PageKey>, SettingsError> {
    const NAME: &str = "TRACKING_PAGE_SECRET";
    settings::var(NAME)
        .map(|secret| PageKey::new(&secret).map_err(|e| SettingsError::new(NAME, e.to_string())))
        .transpose()
}

/// `STORE_NAME`, `CORREIOS_TRACKING_URL`, `JADLOG_TRACKING_URL`, `CUSTOMER_TIME_ZONE`, and `TRACKING_PAGE_URL`
/// (which needs `TRACKING_PAGE_SECRET`).
pub fn template_settings() -> Result<TemplateSettings, SettingsError> {
    let mut templates = TemplateSettings {
        store_name: settings::var_or("STORE_NAME", DEFAULT_STORE_NAME),
        ..TemplateSettings::default()
    };
    for (carrier, name, url) in [
        (
            Carrier::Correios,
            "CORREIOS_TRACKING_URL",
            settings::var_or("CORREIOS_TRACKING_URL", DEFAULT_CORREIOS_TRACKING_URL),
        ),
        (
            Carrier::Jadlog,
            "JADLOG_TRACKING_URL",
            settings::var_or("JADLOG_TRACKING_URL", DEFAULT_JADLOG_TRACKING_URL),
        ),
    ] {
        if !url.contains("{code}") {
            return Err(SettingsError::new(name, "must contain {code}"));
        }
        templates.tracking_urls.insert(carrier, url);
    }
    templates.time_zone = settings::var_or("CUSTOMER_TIME_ZONE", DEFAULT_CUSTOMER_TIME_ZONE)
        .parse()
        .map_err(|e: chrono_tz::ParseError| {
            SettingsError::new("CUSTOMER_TIME_ZONE", e.to_string())
        })?;
    if let Some(url) = settings::var("TRACKING_PAGE_URL") {
        let key = page_key()?.ok_or_else(|| {
            SettingsError::new(
                "TRACKING_PAGE_SECRET",
                "is required when TRACKING_PAGE_URL is set (it signs the page links in emails)",
            )
        })?;
        templates.tracking_page = Some(
            PageLinks::new(&url, key).map_err(|e| SettingsError::new("TRACKING_PAGE_URL", e))?,
        );
    }
    Ok(templates)
}

/// `UNSUBSCRIBE_SECRET` (or `UNSUBSCRIBE_SECRET_FILE`): the key of the unsubscribe links and of the opt-outs'
/// address hashes, at least 32 characters; `None` when unset.
pub fn unsubscribe_key() -> Result<Option<UnsubscribeKey>, SettingsError> {
    const NAME: &str = "UNSUBSCRIBE_SECRET";
    settings::var(NAME)
        .map(|secret| {
            UnsubscribeKey::new(&secret).map_err(|e| SettingsError::new(NAME, e.to_string()))
        })
        .transpose()
}

/// `UNSUBSCRIBE_MAILTO`: the address listed as `mailto:` in `List-Unsubscribe`; `None` when unset.
pub fn unsubscribe_mailto() -> Result<Option<Mailto>, SettingsError> {
    settings::var("UNSUBSCRIBE_MAILTO")
        .map(|a| Mailto::parse(&a).map_err(|e| SettingsError::new("UNSUBSCRIBE_MAILTO", e)))
        .transpose()
}

/// The unsubscribe links of emails: `{TRACKING_PAGE_URL}/u/{token}` under `key`. `None` without
/// `TRACKING_PAGE_URL` (there is no public address for the link); an `http://` URL other than a loopback one
/// is refused: RFC 8058 asks for HTTPS.
pub fn unsubscribe_links(key: &UnsubscribeKey) -> Result<Option<UnsubscribeLinks>, SettingsError> {
    settings::var("TRACKING_PAGE_URL")
        .map(|url| {
            UnsubscribeLinks::new(&url, key.clone()).map_err(|e| {
                SettingsError::new(
                    "TRACKING_PAGE_URL",
                    format!("{e} (UNSUBSCRIBE_SECRET is set: the unsubscribe link lives there)"),
                )
            })
        })
        .transpose()
}
