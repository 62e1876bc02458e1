//! The customer's tracking page as the renderer draws it: what it shows, in which time zone and language, and
//! what it never shows. (`tests/tests/tracking_page.rs` drives the served page in a real browser.)
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use tracking_domain::{Carrier, Locale, OrderId, Status};
use tracking_email::{ErrorPage, OrderPage, PageEvent, PageShipment, Renderer, TemplateSettings};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn event(at: &str, status: Option<Status>, description: &str, manual: bool) -> PageEvent {
    PageEvent {
        occurred_at: DateTime::parse_from_rfc3339(at).unwrap(),
        status,
        description: description.into(),
        city: Some("CAMPINAS".into()),
        state: Some("SP".into()),
        manual,
    }
}

fn order() -> OrderPage {
    OrderPage {
        order_id: OrderId::parse("1385310000001-01").unwrap(),
        first_name: Some("Ana".into()),
        shipments: vec![
            PageShipment {
                carrier: Carrier::Correios,
                tracking_code: "DL746686536BR".into(),
                status: Status::Delivered,
                estimated_delivery: Some("2026-04-02T12:00:00Z".parse::<DateTime<Utc>>().unwrap()),
                late_since: None,
                stalled_since: None,
                events: vec![
                    event(
                        "2026-03-26T10:00:00-03:00",
                        Some(Status::Posted),
                        "Objeto postado",
                        false,
                    ),
                    // Carrier time in UTC: shown in the customer's zone (São Paulo, -03:00).
                    event(
                        "2026-03-27T17:40:00+00:00",
                        Some(Status::Delivered),
                        "Cliente <b>confirmou</b>",
                        true,
                    ),
                ],
                older_events: false,
            },
            PageShipment {
                carrier: Carrier::Jadlog,
                tracking_code: "10084500001234".into(),
                status: Status::InTransit,
                estimated_delivery: Some("2026-04-03T12:00:00Z".parse::<DateTime<Utc>>().unwrap()),
                late_since: None,
                stalled_since: None,
                events: vec![],
                older_events: false,
            },
        ],
    }
}

fn renderer() -> Renderer {
    Renderer::new(TemplateSettings::default()).unwrap()
}

#[test]
fn the_page_shows_statuses_the_timeline_in_the_customers_zone_and_marks_manual_events() -> TestResult
{
    let html = renderer().page(&order(), Locale::PtBr)?;
    assert!(html.contains("<html lang=\"pt-BR\">"));
    assert!(html.contains("Pedido 1385310000001-01"));
    assert!(html.contains("Olá, Ana!"));
    assert!(html.contains("<strong>Entregue</strong>"), "{html}");
    assert!(html.contains("<strong>Em trânsito</strong>"));
    // 17:40 UTC is 14:40 in São Paulo; newest first (minijinja escapes `/` as `&#x2f;`).
    let delivered = html
        .find("27&#x2f;03&#x2f;2026 14:40")
        .ok_or("no delivery time")?;
    let posted = html
        .find("26&#x2f;03&#x2f;2026 10:00")
        .ok_or("no posting time")?;
    assert!(delivered < posted, "newest first");
    assert!(html.contains("datetime=\"2026-03-27T14:40:00-03:00\""));
    assert_eq!(html.matches("Confirmado pela nossa equipe").count(), 1);
    assert!(
        html.contains("Cliente &lt;b&gt;confirmou&lt;&#x2f;b&gt;"),
        "escaped"
    );
    assert!(!html.contains("<b>confirmou"));
    // The estimate only while the parcel is on its way: the Jadlog one, not the delivered one.
    assert_eq!(html.matches("Previsão de entrega").count(), 1, "{html}");
    assert!(html.contains("03&#x2f;04&#x2f;2026"));
    // The carrier's page is a secondary link where the carrier has one.
    assert!(html.contains(
        "<a href=\"https://rastreamento.correios.com.br/app/index.php?objeto=DL746686536BR\" rel=\"noopener noreferrer\">Ver no site da transportadora (Correios)</a>"
    ));
    assert!(html.contains("href=\"https://www.jadlog.com.br/tracking?cte=10084500001234\""));
    assert!(html.contains("A transportadora ainda não informou nenhum evento."));
    assert!(!html.contains("<script"), "no script");
    assert!(html.contains("<a href=\"?lang=es\" hreflang=\"es\" lang=\"es\">Español</a>"));
    assert!(html.contains("hreflang=\"pt-BR\" lang=\"pt-BR\" aria-current=\"page\""));
    Ok(())
}

#[test]
fn every_locale_has_its_words_and_formats() -> TestResult {
    let r = renderer();
    let es = r.page(&order(), Locale::Es)?;
    assert!(es.contains("¡Hola, Ana!") && es.contains("<strong>Entregado</strong>"));
    assert!(es.contains("Confirmado por nuestro equipo"));
    let en = r.page(&order(), Locale::En)?;
    assert!(en.contains("Hi Ana,") && en.contains("<strong>Delivered</strong>"));
    assert!(en.contains("Mar 27, 2026, 2:40 PM"), "{en}");
    assert!(en.contains("Confirmed by our team"));
    let mut anonymous = order();
    anonymous.first_name = None;
    let en = r.page(&anonymous, Locale::En)?;
    assert!(
        en.contains("<p class=\"lead\">Follow your order&#x27;s delivery here.</p>"),
        "{en}"
    );
    Ok(())
}

#[test]
fn the_not_found_page_says_nothing_about_the_order() -> TestResult {
    let r = renderer();
    for locale in Locale::ALL {
        let html = r.error_page(ErrorPage::NotFound, locale)?;
        assert!(html.contains(&format!("<html lang=\"{}\">", locale.as_str())));
        assert!(!html.contains("DL746686536BR") && !html.contains("<script"));
    }
    assert!(
        r.error_page(ErrorPage::NotFound, Locale::En)?
            .contains("Page not found")
    );
    assert!(
        r.error_page(ErrorPage::Unavailable, Locale::Es)?
            .contains("Seguimiento no disponible")
    );
    Ok(())
}

#[test]
fn a_shipment_with_older_events_than_shown_says_so_in_every_locale() -> TestResult {
    let r = renderer();
    let mut page = order();
    for (locale, words) in [
        (
            Locale::PtBr,
            "Os eventos mais antigos não são mostrados aqui.",
        ),
        (Locale::Es, "Los eventos más antiguos no se muestran aquí."),
        (Locale::En, "Older events are not shown here."),
    ] {
        page.shipments[0].older_events = false;
        assert!(!r.page(&page, locale)?.contains(words), "{locale:?}");
        page.shipments[0].older_events = true;
        let html = r.page(&page, locale)?;
        let note = format!("<p class=\"more\">{words}</p>");
        assert_eq!(html.matches(&note).count(), 1, "{locale:?}: {html}");
        // Under the shipment's timeline, not the other shipment's.
        let at = html.find(&note).unwrap_or_default();
        assert!(html[..at].contains("DL746686536BR") && !html[..at].contains("10084500001234"));
    }
    Ok(())
}

#[test]
fn a_late_or_stalled_shipment_says_so_in_every_locale() -> TestResult {
    let r = renderer();
    let plain = r.page(&order(), Locale::En)?;
    assert!(!plain.contains("class=\"notice"), "{plain}");
    let mut late = order();
    late.shipments[1].late_since = Some("2026-04-03T12:00:00Z".parse::<DateTime<Utc>>()?);
    late.shipments[1].stalled_since = Some("2026-03-30T12:00:00Z".parse::<DateTime<Utc>>()?);
    for (locale, late_line, stalled_line) in [
        (
            Locale::PtBr,
            "Atrasado: a entrega estava prevista para 03/04/2026.",
            "Sem novidades da transportadora desde 30/03/2026.",
        ),
        (
            Locale::Es,
            "Retrasado: la entrega estaba prevista para el 03/04/2026.",
            "Sin novedades del transportista desde el 30/03/2026.",
        ),
        (
            Locale::En,
            "Late: delivery was expected by Apr 3, 2026.",
            "No news from the carrier since Mar 30, 2026.",
        ),
    ] {
        // minijinja escapes `/` too.
        let html = r.page(&late, locale)?.replace("&#x2f;", "/");
        assert!(
            html.contains(&format!("<p class=\"notice late\">{late_line}</p>")),
            "{html}"
        );
        assert!(
            html.contains(&format!("<p class=\"notice stalled\">{stalled_line}</p>")),
            "{html}"
        );
    }
    Ok(())
}
