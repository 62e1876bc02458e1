//! Rendering a status change into a customer email: subject, plain text and HTML.

use crate::catalog::{Catalog, Labels, PageWords};
use chrono::{DateTime, FixedOffset};
use chrono_tz::Tz;
use minijinja::{Environment, UndefinedBehavior, Value, context};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use tracking_domain::{
    Carrier, Customer, Locale, OrderId, PageLinks, Status, StatusChange, TrackingCode,
};

/// The two layouts every email is poured into. The `.html` name turns on minijinja's HTML auto-escaping.
const LAYOUT_HTML: (&str, &str) = ("layout.html", include_str!("../templates/layout.html"));
const LAYOUT_TXT: (&str, &str) = ("layout.txt", include_str!("../templates/layout.txt"));
/// The customer's tracking page (and its error pages): the same engine, auto-escaped like the HTML email.
pub(crate) const PAGE_HTML: (&str, &str) = ("page.html", include_str!("../templates/page.html"));

/// One catalog per locale: the words of every email, and the date formats.
const CATALOGS: [(Locale, &str); 3] = [
    (Locale::PtBr, include_str!("../templates/pt-BR.toml")),
    (Locale::Es, include_str!("../templates/es.toml")),
    (Locale::En, include_str!("../templates/en.toml")),
];

/// What the store decides about its emails.
#[derive(Debug, Clone)]
pub struct TemplateSettings {
    /// The store's name, in subjects, greetings and signatures.
    pub store_name: String,
    /// The carrier's public tracking page, with `{code}` where the tracking code goes. A carrier without a
    /// pattern gets emails without a tracking link (the code is still in them).
    pub tracking_urls: HashMap<Carrier, String>,
    /// The customer's time zone: carrier times are shown in it (they arrive with whatever offset the
    /// carrier used).
    pub time_zone: Tz,
    /// `TRACKING_PAGE_URL` (with `TRACKING_PAGE_SECRET`): when set, every email's main link goes to the order's
    /// tracking page (`{TRACKING_PAGE_URL}/t/{token}`) instead of the carrier's page.
    pub tracking_page: Option<PageLinks>,
}

/// `STORE_NAME` when unset.
pub const DEFAULT_STORE_NAME: &str = "Our store";
/// `CORREIOS_TRACKING_URL` when unset.
pub const DEFAULT_CORREIOS_TRACKING_URL: &str =
    "https://rastreamento.correios.com.br/app/index.php?objeto={code}";
/// `JADLOG_TRACKING_URL` when unset.
pub const DEFAULT_JADLOG_TRACKING_URL: &str = "https://www.jadlog.com.br/tracking?cte={code}";
/// `CUSTOMER_TIME_ZONE` when unset (an IANA name; [`TemplateSettings::default`] holds the same zone).
pub const DEFAULT_CUSTOMER_TIME_ZONE: &str = "America/Sao_Paulo";

impl Default for TemplateSettings {
    fn default() -> Self {
        Self {
            store_name: DEFAULT_STORE_NAME.into(),
            tracking_urls: HashMap::from([
                (Carrier::Correios, DEFAULT_CORREIOS_TRACKING_URL.into()),
                (Carrier::Jadlog, DEFAULT_JADLOG_TRACKING_URL.into()),
            ]),
            time_zone: chrono_tz::America::Sao_Paulo,
            tracking_page: None,
        }
    }
}

/// The template part name of the late email (`[late]` in the catalogs).
const LATE: &str = "late";

/// What a "your parcel is late" email says: whose parcel, where it stands, and the promised date that passed.
#[derive(Debug, Clone)]
pub struct LateEmail<'a> {
    pub order_id: &'a OrderId,
    pub tracking_code: &'a TrackingCode,
    pub carrier: Carrier,
    /// Its status now (still on its way).
    pub status: Status,
    pub customer: &'a Customer,
    pub promised: DateTime<FixedOffset>,
    /// The order's store (its tracking page link names it).
    pub store: &'a tracking_domain::StoreName,
}

/// A rendered email, ready for [`crate::Mailer::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// One line, whitespace collapsed.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part; every value in it is escaped.
    pub html: String,
}

/// Why templates could not be loaded or an email could not be rendered. Loading errors happen at
/// start-up ([`Renderer::new`] renders every template once with sample data); a render error later
/// means a change carried something the templates cannot show, and retrying will not help.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the {locale} email catalog is invalid: {message}")]
    Catalog {
        locale: &'static str,
        message: String,
    },
    /// The template's error is in the message (and not a `source`, so that reports do not print it twice).
    #[error("template {name} failed: {error}")]
    Template {
        name: String,
        error: minijinja::Error,
    },
    #[error("the {locale} date format {format:?} is invalid")]
    DateFormat {
        locale: &'static str,
        format: String,
    },
}

/// The words and formats of one locale (the templates themselves live in the environment).
pub(crate) struct LocaleData {
    pub(crate) date_format: String,
    pub(crate) datetime_format: String,
    pub(crate) labels: Labels,
    reasons: HashMap<String, String>,
    /// Every status's name, for the tracking page.
    pub(crate) status_names: HashMap<Status, String>,
    pub(crate) page: PageWords,
}

/// Renders status changes into emails. Build it once at start-up: templates are parsed and checked there.
pub struct Renderer {
    pub(crate) env: Environment<'static>,
    pub(crate) settings: TemplateSettings,
    locales: HashMap<Locale, LocaleData>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Everything a template can use. Absent values are `none`, never undefined: templates run with strict
/// undefined checks, so a misspelt variable fails at start-up instead of leaving a blank in an email.
#[derive(Debug, Serialize)]
struct Fields<'a> {
    store: &'a str,
    locale: &'static str,
    name: Option<&'a str>,
    order_id: &'a str,
    tracking_code: &'a str,
    carrier: &'static str,
    carrier_name: &'static str,
    status: &'static str,
    place: Option<String>,
    /// When the change happened; none in a late notice (which is about a date that passed).
    occurred_at: Option<String>,
    estimated_delivery: Option<String>,
    carrier_says: Option<&'a str>,
    reason: Option<&'a str>,
    reason_text: Option<String>,
    tracking_url: Option<String>,
    /// For an order with several parcels: "2 of 3" (delivered of all).
    parcels: Option<String>,
    t: &'a Labels,
}

/// The statuses that email the customer, as the domain defines them.
fn notified_statuses() -> impl Iterator<Item = Status> {
    Status::ALL
        .into_iter()
        .filter(|s| s.notifies_customer_by_default())
}

fn template_name(locale: Locale, part: &str) -> String {
    format!("{}/{part}.txt", locale.as_str())
}

/// The carrier's name as customers know it.
pub(crate) fn carrier_name(carrier: Carrier) -> &'static str {
    match carrier {
        Carrier::Correios => "Correios",
        Carrier::Jadlog => "Jadlog",
    }
}

pub(crate) fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Escapes a value for a double-quoted HTML attribute.
pub(crate) fn escape_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn format_time(
    locale: Locale,
    at: &DateTime<FixedOffset>,
    tz: Tz,
    format: &str,
) -> Result<String, RenderError> {
    let mut out = String::new();
    // `write!` reports a bad pattern as an error; `to_string()` would panic on it.
    write!(out, "{}", at.with_timezone(&tz).format(format)).map_err(|_| {
        RenderError::DateFormat {
            locale: locale.as_str(),
            format: format.to_owned(),
        }
    })?;
    Ok(out)
}

impl Renderer {
    /// Parses the catalogs and layouts, compiles every template, and renders each one with sample data
    /// (with every optional value present, and with none) so that a broken template stops the worker at
    /// start-up rather than parking every email.
    pub fn new(settings: TemplateSettings) -> Result<Renderer, RenderError> {
        Self::with_catalogs(settings, CATALOGS)
    }

    fn with_catalogs(
        settings: TemplateSettings,
        catalogs: [(Locale, &str); 3],
    ) -> Result<Renderer, RenderError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in [LAYOUT_HTML, LAYOUT_TXT, PAGE_HTML] {
            env.add_template(name, source)
                .map_err(|error| RenderError::Template {
                    name: name.into(),
                    error,
                })?;
        }

        let mut locales = HashMap::new();
        for (locale, source) in catalogs {
            let catalog = Catalog::parse(source).map_err(|message| RenderError::Catalog {
                locale: locale.as_str(),
                message,
            })?;
            let mut templates = vec![
                ("greeting".to_owned(), catalog.common.greeting),
                ("signature".to_owned(), catalog.common.signature),
                ("footer".to_owned(), catalog.common.footer),
            ];
            for status in notified_statuses() {
                let texts =
                    catalog
                        .status
                        .get(status.as_str())
                        .ok_or_else(|| RenderError::Catalog {
                            locale: locale.as_str(),
                            message: format!(
                                "[status.{status}] is missing (customers are emailed about it)"
                            ),
                        })?;
                templates.push((format!("{status}/subject"), texts.subject.clone()));
                templates.push((format!("{status}/body"), texts.body.clone()));
            }
            if let Some(extra) = catalog
                .status
                .keys()
                .find(|k| !notified_statuses().any(|s| s.as_str() == k.as_str()))
            {
                return Err(RenderError::Catalog {
                    locale: locale.as_str(),
                    message: format!(
                        "[status.{extra}] is not a status customers are emailed about (a typo?)"
                    ),
                });
            }
            templates.push(("late/subject".to_owned(), catalog.late.subject.clone()));
            templates.push(("late/body".to_owned(), catalog.late.body.clone()));
            for (part, source) in templates {
                let name = template_name(locale, &part);
                env.add_template_owned(name.clone(), source)
                    .map_err(|error| RenderError::Template { name, error })?;
            }
            let status_names = status_names(locale, catalog.status_names)?;
            locales.insert(
                locale,
                LocaleData {
                    date_format: catalog.date_format,
                    datetime_format: catalog.datetime_format,
                    labels: catalog.labels,
                    reasons: catalog.reasons,
                    status_names,
                    page: catalog.page,
                },
            );
        }

        let renderer = Renderer {
            env,
            settings,
            locales,
        };
        renderer.self_check()?;
        Ok(renderer)
    }

    /// Renders the email for a change, or `Ok(None)` when customers are not emailed about its status
    /// (registered, in_transit, returned, expired: see [`Status::notifies_customer_by_default`]).
    pub fn render(&self, change: &StatusChange) -> Result<Option<RenderedEmail>, RenderError> {
        if !change.status.notifies_customer_by_default() {
            return Ok(None);
        }
        let locale = change.customer.locale;
        let data = self.locale(locale)?;
        let place = {
            let city = non_empty(change.event.location.city.as_deref());
            let state = non_empty(change.event.location.state.as_deref());
            match (city, state) {
                (Some(c), Some(s)) => Some(format!("{c}/{s}")),
                (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
                (None, None) => None,
            }
        };
        // The carrier's estimate helps while the parcel is still on its way; once it is out for delivery
        // (today), waiting for pickup, delivered or heading back, it would contradict the email.
        let estimated_delivery = match (change.status, &change.estimated_delivery) {
            (Status::Posted | Status::DeliveryFailed | Status::Exception, Some(at)) => Some(
                format_time(locale, at, self.settings.time_zone, &data.date_format)?,
            ),
            _ => None,
        };
        let reason = non_empty(change.reason.as_deref());
        let fields = Fields {
            store: &self.settings.store_name,
            locale: locale.as_str(),
            name: non_empty(change.customer.name.as_deref()),
            order_id: change.order_id.as_str(),
            tracking_code: change.tracking_code.as_str(),
            carrier: change.carrier.as_str(),
            carrier_name: carrier_name(change.carrier),
            status: change.status.as_str(),
            place,
            occurred_at: Some(format_time(
                locale,
                &change.occurred_at,
                self.settings.time_zone,
                &data.datetime_format,
            )?),
            estimated_delivery,
            carrier_says: non_empty(Some(change.event.description.as_str())),
            reason,
            reason_text: reason
                .map(|r| data.reasons.get(r).cloned().unwrap_or_else(|| r.to_owned())),
            tracking_url: match &self.settings.tracking_page {
                Some(page) => Some(page.url_for(&change.store, &change.order_id)),
                None => self.carrier_url(change.carrier, change.tracking_code.as_str()),
            },
            parcels: change.order.filter(|o| o.parcels > 1).map(|o| {
                data.labels
                    .parcels_of
                    .replace("{delivered}", &o.delivered.to_string())
                    .replace("{parcels}", &o.parcels.to_string())
            }),
            t: &data.labels,
        };
        self.render_fields(locale, change.status.as_str(), &fields)
            .map(Some)
    }

    /// Renders the "your parcel is late" email: the parcel is still `status` and `promised` (the carrier's
    /// estimate) has passed. Templates `[late]` of each locale's catalog.
    pub fn render_late(&self, late: &LateEmail<'_>) -> Result<RenderedEmail, RenderError> {
        let locale = late.customer.locale;
        let data = self.locale(locale)?;
        let fields = Fields {
            store: &self.settings.store_name,
            locale: locale.as_str(),
            name: non_empty(late.customer.name.as_deref()),
            order_id: late.order_id.as_str(),
            tracking_code: late.tracking_code.as_str(),
            carrier: late.carrier.as_str(),
            carrier_name: carrier_name(late.carrier),
            status: late.status.as_str(),
            place: None,
            occurred_at: None,
            estimated_delivery: Some(format_time(
                locale,
                &late.promised,
                self.settings.time_zone,
                &data.date_format,
            )?),
            carrier_says: None,
            reason: None,
            reason_text: None,
            tracking_url: match &self.settings.tracking_page {
                Some(page) => Some(page.url_for(late.store, late.order_id)),
                None => self.carrier_url(late.carrier, late.tracking_code.as_str()),
            },
            parcels: None,
            t: &data.labels,
        };
        self.render_fields(locale, LATE, &fields)
    }

    /// The carrier's own page for a parcel, when the carrier has a pattern.
    pub(crate) fn carrier_url(&self, carrier: Carrier, tracking_code: &str) -> Option<String> {
        self.settings
            .tracking_urls
            .get(&carrier)
            .map(|pattern| pattern.replace("{code}", tracking_code))
    }

    pub(crate) fn locale(&self, locale: Locale) -> Result<&LocaleData, RenderError> {
        self.locales
            .get(&locale)
            .ok_or_else(|| RenderError::Catalog {
                locale: locale.as_str(),
                message: "no catalog for this locale".into(),
            })
    }

    pub(crate) fn render_template(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|error| RenderError::Template {
                name: name.to_owned(),
                error,
            })
    }

    /// Renders the email `kind` (a status name, or `late`) with `fields`.
    fn render_fields(
        &self,
        locale: Locale,
        kind: &str,
        fields: &Fields<'_>,
    ) -> Result<RenderedEmail, RenderError> {
        let ctx = Value::from_serialize(fields);
        let part = |p: &str| self.render_template(&template_name(locale, p), &ctx);
        let subject = part(&format!("{kind}/subject"))?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let body = part(&format!("{kind}/body"))?.trim().to_owned();
        let greeting = part("greeting")?.trim().to_owned();
        let signature = part("signature")?.trim().to_owned();
        let footer = part("footer")?.trim().to_owned();

        let body_paragraphs: Vec<&str> = body
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let signature_lines: Vec<&str> = signature.lines().map(str::trim).collect();
        // minijinja's escaper also turns `/` into `&#x2f;`: valid, but links read better without it.
        let tracking_href = fields
            .tracking_url
            .as_deref()
            .map(|url| Value::from_safe_string(escape_attribute(url)));
        let layout_ctx = context! {
            subject => &subject,
            greeting => &greeting,
            body => &body,
            body_paragraphs => body_paragraphs,
            signature => &signature,
            signature_lines => signature_lines,
            footer => &footer,
            tracking_href => tracking_href,
            ..ctx.clone()
        };
        let mut text = self.render_template(LAYOUT_TXT.0, &layout_ctx)?;
        text.truncate(text.trim_end().len());
        text.push('\n');
        let html = self.render_template(LAYOUT_HTML.0, &layout_ctx)?;
        Ok(RenderedEmail {
            subject,
            text,
            html,
        })
    }

    /// Renders every template of every locale with sample data: all optional values present (for each
    /// reason the templates branch on, and one they do not know), then none of them.
    fn self_check(&self) -> Result<(), RenderError> {
        for locale in Locale::ALL {
            let data = self.locale(locale)?;
            for status in notified_statuses() {
                for reason in [
                    Some("customs"),
                    Some("blocked"),
                    Some("something new"),
                    None,
                ] {
                    let full = reason.is_some();
                    let fields = Fields {
                        store: &self.settings.store_name,
                        locale: locale.as_str(),
                        name: full.then_some("Ana"),
                        order_id: "1",
                        tracking_code: "AA123456785BR",
                        carrier: Carrier::Correios.as_str(),
                        carrier_name: carrier_name(Carrier::Correios),
                        status: status.as_str(),
                        place: full.then(|| "CAMPINAS/SP".to_owned()),
                        occurred_at: Some("-".into()),
                        estimated_delivery: full.then(|| "-".to_owned()),
                        carrier_says: full.then_some("-"),
                        reason,
                        reason_text: reason.map(str::to_owned),
                        tracking_url: full.then(|| "https://example.com/".to_owned()),
                        parcels: full.then(|| "2 / 3".to_owned()),
                        t: &data.labels,
                    };
                    self.render_fields(locale, status.as_str(), &fields)?;
                    if reason.is_none() || reason == Some("customs") {
                        let late = Fields {
                            occurred_at: None,
                            reason: None,
                            reason_text: None,
                            ..fields
                        };
                        self.render_fields(locale, LATE, &late)?;
                    }
                }
            }
            let sample = DateTime::<FixedOffset>::default();
            format_time(locale, &sample, self.settings.time_zone, &data.date_format)?;
            format_time(
                locale,
                &sample,
                self.settings.time_zone,
                &data.datetime_format,
            )?;
        }
        self.check_pages()
    }
}

/// The catalog's status names, one for every status and none for anything else.
fn status_names(
    locale: Locale,
    names: std::collections::BTreeMap<String, String>,
) -> Result<HashMap<Status, String>, RenderError> {
    let error = |message: String| RenderError::Catalog {
        locale: locale.as_str(),
        message,
    };
    let mut out = HashMap::new();
    for (key, name) in names {
        let status = key
            .parse::<Status>()
            .map_err(|_| error(format!("[status_names] {key} is not a status (a typo?)")))?;
        out.insert(status, name);
    }
    if let Some(missing) = Status::ALL.into_iter().find(|s| !out.contains_key(s)) {
        return Err(error(format!("[status_names] has no name for {missing}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_pt_br(catalog: &str) -> Result<Renderer, RenderError> {
        let mut catalogs = CATALOGS;
        catalogs[0].1 = catalog;
        Renderer::with_catalogs(TemplateSettings::default(), catalogs)
    }

    fn pt_br() -> String {
        CATALOGS[0].1.to_owned()
    }

    #[test]
    fn the_default_time_zone_is_the_named_one() {
        assert_eq!(
            DEFAULT_CUSTOMER_TIME_ZONE.parse::<chrono_tz::Tz>().ok(),
            Some(TemplateSettings::default().time_zone)
        );
    }

    #[test]
    fn the_embedded_catalogs_load() {
        assert!(Renderer::new(TemplateSettings::default()).is_ok());
    }

    #[test]
    fn a_misspelt_variable_stops_start_up() {
        let broken = pt_br().replace("Olá, {{ name }}!", "Olá, {{ nmae }}!");
        let err = with_pt_br(&broken).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
        assert!(
            matches!(&err, RenderError::Template { name, .. } if name == "pt-BR/greeting.txt"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_or_unknown_status_stops_start_up() {
        let missing = pt_br().replace("[status.returning]", "[status.returned]");
        let err = with_pt_br(&missing).unwrap_err().to_string();
        assert!(
            err.contains("pt-BR") && err.contains("[status.returning] is missing"),
            "{err}"
        );

        let extra = format!(
            "{}\n[status.in_transit]\nsubject = \"x\"\nbody = \"y\"\n",
            pt_br()
        );
        let err = with_pt_br(&extra).unwrap_err().to_string();
        assert!(err.contains("[status.in_transit] is not a status"), "{err}");
    }

    #[test]
    fn a_missing_label_or_a_bad_date_format_stops_start_up() {
        let err = with_pt_br(&pt_br().replace("carrier_says = ", "carrier_said = ")).unwrap_err();
        assert!(err.to_string().contains("carrier_said"), "{err}");
        let err =
            with_pt_br(&pt_br().replace("\"%d/%m/%Y %H:%M\"", "\"%d/%m/%Y %H:%Q\"")).unwrap_err();
        assert!(matches!(err, RenderError::DateFormat { .. }), "{err}");
    }

    #[test]
    fn every_locale_names_the_same_reasons() {
        let keys = |source: &str| {
            let mut k: Vec<String> = Catalog::parse(source)
                .unwrap()
                .reasons
                .into_keys()
                .collect();
            k.sort();
            k
        };
        for (locale, source) in CATALOGS {
            assert_eq!(keys(source), keys(CATALOGS[0].1), "{locale:?}");
        }
    }
}
