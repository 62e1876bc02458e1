//! The customer's tracking page (`GET /t/{token}` in `tracking-api`), rendered by the emails' [`Renderer`]: the same
//! engine, catalogs (`[status_names]` and `[page]` in `templates/<locale>.toml`), date formats and time zone, so the
//! page and the emails say the same things the same way.
//!
//! The page shows the order, each shipment's current status, the carrier's estimated delivery while it is still
//! useful, the timeline of events (newest first, in [`TemplateSettings::time_zone`], events entered by support
//! marked as such) and the carrier's own page as a secondary link. It holds no personal data beyond the
//! customer's first name. It needs no script: the language switch is plain links (`?lang=`), and its style is
//! [`PAGE_CSS`], inline (a `Content-Security-Policy` can allow exactly it by hash).
//!
//! [`TemplateSettings::time_zone`]: crate::TemplateSettings::time_zone

use crate::render::{
    PAGE_HTML, RenderError, Renderer, carrier_name, escape_attribute, format_time, non_empty,
};
use chrono::{DateTime, FixedOffset, Utc};
use minijinja::Value;
use serde::Serialize;
use tracking_domain::{Carrier, Locale, OrderId, Status};

/// The page's style sheet, inlined in a `<style>` element of every page.
pub const PAGE_CSS: &str = include_str!("../templates/page.css");

/// What the page shows of an order.
#[derive(Debug, Clone)]
pub struct OrderPage {
    pub order_id: OrderId,
    /// The customer's first name only (see [`first_name`]).
    pub first_name: Option<String>,
    pub shipments: Vec<PageShipment>,
}

#[derive(Debug, Clone)]
pub struct PageShipment {
    pub carrier: Carrier,
    pub tracking_code: String,
    pub status: Status,
    /// The carrier's estimate; shown while the parcel is still on its way.
    pub estimated_delivery: Option<DateTime<Utc>>,
    /// The promised date that passed without delivery, while the shipment is late.
    pub late_since: Option<DateTime<Utc>>,
    /// The last carrier news, while the shipment is stalled (no news for `CARRIER_STALE_AFTER_HOURS`).
    pub stalled_since: Option<DateTime<Utc>>,
    /// Oldest first (the page shows them newest first).
    pub events: Vec<PageEvent>,
    /// Whether the shipment has older events than `events` (the page says so under the timeline).
    pub older_events: bool,
}

#[derive(Debug, Clone)]
pub struct PageEvent {
    /// The carrier's time (shown in the customer's time zone).
    pub occurred_at: DateTime<FixedOffset>,
    /// The canonical status the event maps to, when it maps to one.
    pub status: Option<Status>,
    /// The carrier's words (or support's note, for a manual event).
    pub description: String,
    pub city: Option<String>,
    pub state: Option<String>,
    /// Entered by support (`source: manual`): marked as such on the page.
    pub manual: bool,
}

/// The pages shown instead of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPage {
    /// A wrong, altered or unknown token: the same page whatever the reason.
    NotFound,
    /// The database did not answer.
    Unavailable,
}

/// The first word of a customer's name: all the page shows of who the customer is.
pub fn first_name(full_name: Option<&str>) -> Option<String> {
    full_name?.split_whitespace().next().map(str::to_owned)
}

/// The language names of the switch, each in its own language.
fn language_name(locale: Locale) -> &'static str {
    match locale {
        Locale::PtBr => "Português",
        Locale::Es => "Español",
        Locale::En => "English",
    }
}

#[derive(Serialize)]
struct Language {
    code: &'static str,
    name: &'static str,
    current: bool,
}

#[derive(Serialize)]
struct ShipmentView {
    title: String,
    status: &'static str,
    status_name: String,
    tracking_code: String,
    carrier_name: &'static str,
    estimated_delivery: Option<String>,
    estimated_delivery_iso: Option<String>,
    /// "Late: delivery was expected by …", while it is late.
    late: Option<String>,
    /// "No news from the carrier since …", while it is stalled.
    stalled: Option<String>,
    carrier_url: Option<Value>,
    carrier_link: String,
    events: Vec<EventView>,
    older_events: bool,
}

#[derive(Serialize)]
struct EventView {
    at: String,
    iso: String,
    status_name: Option<String>,
    description: Option<String>,
    place: Option<String>,
    manual: bool,
}

fn place(city: Option<&str>, state: Option<&str>) -> Option<String> {
    match (non_empty(city), non_empty(state)) {
        (Some(c), Some(s)) => Some(format!("{c}/{s}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
        (None, None) => None,
    }
}

/// Whether the carrier's estimate still helps: not once the parcel arrived, is heading back or went quiet.
fn shows_estimate(status: Status) -> bool {
    !matches!(
        status,
        Status::Delivered | Status::Returning | Status::Returned | Status::Expired
    )
}

impl Renderer {
    /// The order's tracking page in `locale`, a complete HTML document.
    pub fn page(&self, page: &OrderPage, locale: Locale) -> Result<String, RenderError> {
        let data = self.locale(locale)?;
        let tz = self.settings.time_zone;
        let words = &data.page;
        let order = page.order_id.as_str();
        let total = page.shipments.len();
        let mut shipments = Vec::with_capacity(total);
        for (i, s) in page.shipments.iter().enumerate() {
            let mut events = Vec::with_capacity(s.events.len());
            for e in s.events.iter().rev() {
                events.push(EventView {
                    at: format_time(locale, &e.occurred_at, tz, &data.datetime_format)?,
                    iso: e.occurred_at.with_timezone(&tz).to_rfc3339(),
                    status_name: e.status.map(|st| data.status_names[&st].clone()),
                    description: non_empty(Some(&e.description)).map(str::to_owned),
                    place: place(e.city.as_deref(), e.state.as_deref()),
                    manual: e.manual,
                });
            }
            let estimate = s
                .estimated_delivery
                .filter(|_| shows_estimate(s.status))
                .map(|at| at.fixed_offset());
            let carrier_name = carrier_name(s.carrier);
            let sentence = |words: &str, at: Option<DateTime<Utc>>| {
                at.map(|at| {
                    format_time(locale, &at.fixed_offset(), tz, &data.date_format)
                        .map(|date| words.replace("{date}", &date))
                })
                .transpose()
            };
            shipments.push(ShipmentView {
                late: sentence(&words.late, s.late_since)?,
                stalled: sentence(&words.stalled, s.stalled_since)?,
                title: words
                    .package
                    .replace("{n}", &(i + 1).to_string())
                    .replace("{total}", &total.to_string()),
                status: s.status.as_str(),
                status_name: data.status_names[&s.status].clone(),
                tracking_code: s.tracking_code.clone(),
                carrier_name,
                estimated_delivery: estimate
                    .map(|at| format_time(locale, &at, tz, &data.date_format))
                    .transpose()?,
                estimated_delivery_iso: estimate
                    .map(|at| at.with_timezone(&tz).date_naive().to_string()),
                // minijinja's escaper also turns `/` into `&#x2f;`: valid, but links read better without it.
                carrier_url: self
                    .carrier_url(s.carrier, &s.tracking_code)
                    .map(|url| Value::from_safe_string(escape_attribute(&url))),
                carrier_link: words.carrier_link.replace("{carrier}", carrier_name),
                events,
                older_events: s.older_events,
            });
        }
        let greeting = match &page.first_name {
            Some(name) => words.greeting.replace("{name}", name),
            None => words.greeting_anonymous.clone(),
        };
        let ctx = minijinja::context! {
            kind => "order",
            title => words.title.replace("{order}", order),
            heading => words.heading.replace("{order}", order),
            greeting => greeting,
            shipments => shipments,
            times_in => words.times_in.replace("{zone}", self.settings.time_zone.name()),
            ..self.page_context(locale)?
        };
        self.render_template(PAGE_HTML.0, &ctx)
    }

    /// The page shown instead of an order, in `locale`.
    pub fn error_page(&self, which: ErrorPage, locale: Locale) -> Result<String, RenderError> {
        let words = &self.locale(locale)?.page;
        let (title, text) = match which {
            ErrorPage::NotFound => (&words.not_found_title, &words.not_found_text),
            ErrorPage::Unavailable => (&words.unavailable_title, &words.unavailable_text),
        };
        let ctx = minijinja::context! {
            kind => "error",
            title => title,
            heading => title,
            text => text,
            ..self.page_context(locale)?
        };
        self.render_template(PAGE_HTML.0, &ctx)
    }

    /// What every page has: the store, the language switch, the words and the style.
    fn page_context(&self, locale: Locale) -> Result<Value, RenderError> {
        let data = self.locale(locale)?;
        let languages: Vec<Language> = Locale::ALL
            .into_iter()
            .map(|l| Language {
                code: l.as_str(),
                name: language_name(l),
                current: l == locale,
            })
            .collect();
        Ok(minijinja::context! {
            locale => locale.as_str(),
            store => &self.settings.store_name,
            languages => languages,
            t => &data.page,
            labels => &data.labels,
            css => Value::from_safe_string(PAGE_CSS.to_owned()),
        })
    }

    /// Renders every page in every locale with sample data (every optional value present, then none), so that a
    /// broken page template stops start-up.
    pub(crate) fn check_pages(&self) -> Result<(), RenderError> {
        let at = DateTime::<FixedOffset>::default();
        let full = OrderPage {
            order_id: OrderId::parse("1").map_err(|message| RenderError::Catalog {
                locale: "any",
                message,
            })?,
            first_name: Some("Ana".into()),
            shipments: Status::ALL
                .into_iter()
                .map(|status| PageShipment {
                    carrier: Carrier::Correios,
                    tracking_code: "AA123456785BR".into(),
                    status,
                    estimated_delivery: Some(at.to_utc()),
                    late_since: Some(at.to_utc()),
                    stalled_since: Some(at.to_utc()),
                    events: vec![PageEvent {
                        occurred_at: at,
                        status: Some(status),
                        description: "-".into(),
                        city: Some("CAMPINAS".into()),
                        state: Some("SP".into()),
                        manual: true,
                    }],
                    older_events: true,
                })
                .collect(),
        };
        let mut bare = full.clone();
        bare.first_name = None;
        for s in &mut bare.shipments {
            s.carrier = Carrier::Jadlog;
            s.estimated_delivery = None;
            s.late_since = None;
            s.stalled_since = None;
            s.events.clear();
            s.older_events = false;
        }
        for locale in Locale::ALL {
            self.page(&full, locale)?;
            self.page(&bare, locale)?;
            self.error_page(ErrorPage::NotFound, locale)?;
            self.error_page(ErrorPage::Unavailable, locale)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_name_is_kept() {
        assert_eq!(first_name(Some("  Ana  Souza ")), Some("Ana".into()));
        assert_eq!(first_name(Some("Eva")), Some("Eva".into()));
        assert_eq!(first_name(Some("   ")), None);
        assert_eq!(first_name(None), None);
    }
}
