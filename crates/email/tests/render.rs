//! Snapshot tests of the rendered emails: every notified status in every locale, compared exactly with
//! the files under `tests/snapshots/`. After a deliberate change, rewrite them with
//! `UPDATE_SNAPSHOTS=1 cargo test -p tracking-email` and read the diff before committing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::DateTime;
use std::path::PathBuf;
use tracking_domain::{
    Carrier, ChangeEvent, Customer, EmailAddress, Locale, Location, OrderId, Source, Status,
    StatusChange, TrackingCode,
};
use tracking_email::{LateEmail, RenderError, Renderer, TemplateSettings};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const NOTIFIED: [Status; 7] = [
    Status::Posted,
    Status::OutForDelivery,
    Status::DeliveryFailed,
    Status::AwaitingPickup,
    Status::Delivered,
    Status::Returning,
    Status::Exception,
];

/// The carrier's words for the event behind each status (Correios codes and texts).
fn carrier_event(status: Status) -> (&'static str, &'static str, &'static str) {
    match status {
        Status::Posted => ("PO", "01", "Objeto postado"),
        Status::OutForDelivery => ("OEC", "01", "Objeto saiu para entrega ao destinatário"),
        Status::DeliveryFailed => ("BDE", "20", "Carteiro não atendido"),
        Status::AwaitingPickup => (
            "LDI",
            "01",
            "Objeto aguardando retirada no endereço indicado",
        ),
        Status::Delivered => ("BDE", "01", "Objeto entregue ao destinatário"),
        Status::Returning => (
            "BDE",
            "04",
            "Objeto será devolvido por recusa do destinatário",
        ),
        Status::Exception => (
            "PAR",
            "10",
            "Objeto encaminhado para fiscalização aduaneira",
        ),
        Status::InTransit => ("RO", "01", "Objeto em transferência - por favor aguarde"),
        _ => ("XX", "00", "Evento"),
    }
}

/// The fixed change of the snapshots: Ana Souza's parcel DL746686536BR, last seen in Campinas/SP on
/// 27/03/2026 at 14:40 (Brasília time).
fn change(status: Status, locale: Locale) -> StatusChange {
    let code = TrackingCode::parse("DL746686536BR").unwrap();
    let (event_code, kind, description) = carrier_event(status);
    StatusChange {
        change_id: StatusChange::id_for(
            Carrier::Correios,
            &code,
            Status::Registered,
            status,
            "fixture",
        ),
        order_id: OrderId::parse("1385310000001-01").unwrap(),
        tracking_code: code,
        carrier: Carrier::Correios,
        status,
        previous_status: Status::InTransit,
        occurred_at: DateTime::parse_from_rfc3339("2026-03-27T14:40:30-03:00").unwrap(),
        source: Source::Carrier,
        event: ChangeEvent {
            code: event_code.into(),
            kind: Some(kind.into()),
            description: description.into(),
            location: Location {
                city: Some("CAMPINAS".into()),
                state: Some("SP".into()),
            },
        },
        reason: (status == Status::Exception).then(|| "customs".into()),
        customer: Customer {
            email: EmailAddress::parse("ana@example.com").unwrap(),
            name: Some("Ana Souza".into()),
            locale,
        },
        marketplace: None,
        invoice_number: None,
        estimated_delivery: Some(
            DateTime::parse_from_rfc3339("2026-04-02T23:59:59-03:00").unwrap(),
        ),
        store: Default::default(),
        order: None,
    }
}

/// A change with nothing optional: no name, no location, no estimate, no reason, a Jadlog parcel.
fn bare_change(status: Status, locale: Locale) -> StatusChange {
    let mut c = change(status, locale);
    c.carrier = Carrier::Jadlog;
    c.tracking_code = TrackingCode::parse("10084500001234").unwrap();
    c.customer.name = None;
    c.event.location = Location::default();
    c.event.description = String::new();
    c.estimated_delivery = None;
    c.reason = None;
    c
}

fn renderer() -> Renderer {
    Renderer::new(TemplateSettings::default()).unwrap()
}

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"))
}

/// A line diff (longest common subsequence): `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

/// Compares `actual` with the committed snapshot `name`; returns a description of the mismatch.
fn check_snapshot(name: &str, actual: &str) -> Option<String> {
    let path = snapshot_path(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return None;
    }
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => None,
        Ok(expected) => Some(format!(
            "snapshot {} differs (- expected, + actual):\n{}",
            path.display(),
            diff(&expected, actual)
        )),
        Err(e) => Some(format!("snapshot {} cannot be read: {e}", path.display())),
    }
}

fn assert_snapshots(cases: impl IntoIterator<Item = (String, StatusChange)>) -> TestResult {
    let renderer = renderer();
    let mut failures = Vec::new();
    for (name, change) in cases {
        let email = renderer
            .render(&change)?
            .ok_or_else(|| format!("{name}: no email rendered"))?;
        let actual = format!("Subject: {}\n\n{}", email.subject, email.text);
        failures.extend(check_snapshot(&name, &actual));
    }
    assert!(
        failures.is_empty(),
        "{}\n\n{} snapshot(s) differ. If the change is intended, rewrite them with \
         UPDATE_SNAPSHOTS=1 cargo test -p tracking-email and review the diff.",
        failures.join("\n"),
        failures.len()
    );
    Ok(())
}

#[test]
fn every_notified_status_in_every_locale_matches_its_snapshot() -> TestResult {
    assert_snapshots(NOTIFIED.into_iter().flat_map(|status| {
        Locale::ALL.into_iter().map(move |locale| {
            (
                format!("{status}.{}", locale.as_str()),
                change(status, locale),
            )
        })
    }))
}

#[test]
fn emails_without_optional_details_match_their_snapshots() -> TestResult {
    assert_snapshots(
        [
            Status::OutForDelivery,
            Status::AwaitingPickup,
            Status::Exception,
        ]
        .into_iter()
        .flat_map(|status| {
            Locale::ALL.into_iter().map(move |locale| {
                (
                    format!("bare.{status}.{}", locale.as_str()),
                    bare_change(status, locale),
                )
            })
        }),
    )
}

#[test]
fn statuses_without_customer_email_render_nothing() -> TestResult {
    let renderer = renderer();
    for status in Status::ALL {
        let rendered = renderer.render(&change(status, Locale::PtBr))?;
        assert_eq!(
            rendered.is_some(),
            status.notifies_customer_by_default(),
            "{status}"
        );
    }
    assert!(
        renderer
            .render(&change(Status::InTransit, Locale::En))?
            .is_none()
    );
    assert!(
        renderer
            .render(&change(Status::Registered, Locale::Es))?
            .is_none()
    );
    Ok(())
}

#[test]
fn html_carries_the_details_and_escapes_what_it_inserts() -> TestResult {
    let renderer = renderer();
    for status in NOTIFIED {
        for locale in Locale::ALL {
            let mut c = change(status, locale);
            c.customer.name = Some("<b>Ana</b> & Co".into());
            c.event.location.city = Some("<script>alert(1)</script>".into());
            let email = renderer.render(&c)?.unwrap();
            let html = &email.html;
            assert!(
                html.contains("DL746686536BR"),
                "{status} {locale:?}: no tracking code"
            );
            assert!(
                html.contains("href=\"https://rastreamento.correios.com.br/app/index.php?objeto=DL746686536BR\""),
                "{status} {locale:?}: no tracking link"
            );
            assert!(
                html.contains("&lt;b&gt;Ana&lt;&#x2f;b&gt; &amp; Co"),
                "{status} {locale:?}: name not escaped:\n{html}"
            );
            assert!(
                !html.contains("<b>Ana</b>"),
                "{status} {locale:?}: raw name in HTML"
            );
            assert!(
                !html.contains("<script>"),
                "{status} {locale:?}: raw location in HTML"
            );
            assert!(html.contains(&format!("<html lang=\"{}\">", locale.as_str())));
            // The text part is not HTML: it shows the name as given.
            assert!(email.text.contains("<b>Ana</b> & Co"));
        }
    }
    Ok(())
}

#[test]
fn times_follow_the_configured_time_zone_and_links_the_configured_pattern() -> TestResult {
    let settings = TemplateSettings {
        store_name: "Loja <Exemplo>".into(),
        tracking_urls: [(
            Carrier::Correios,
            "https://track.example/{code}?a=1&b=2".to_owned(),
        )]
        .into(),
        time_zone: chrono_tz::Europe::Lisbon,
        tracking_page: None,
    };
    let renderer = Renderer::new(settings)?;
    let email = renderer
        .render(&change(Status::Delivered, Locale::PtBr))?
        .unwrap();
    // 14:40 in São Paulo (-03:00) is 17:40 in Lisbon (UTC+00:00 in March before the 29th).
    assert!(
        email.text.contains("Data: 27/03/2026 17:40"),
        "{}",
        email.text
    );
    assert_eq!(email.subject, "Loja <Exemplo>: seu pedido foi entregue");
    assert!(
        email
            .text
            .contains("https://track.example/DL746686536BR?a=1&b=2")
    );
    assert!(
        email
            .html
            .contains("href=\"https://track.example/DL746686536BR?a=1&amp;b=2\""),
        "{}",
        email.html
    );
    assert!(email.html.contains("Loja &lt;Exemplo&gt;"));

    // A carrier without a pattern gets no link, but keeps its code.
    let jadlog = renderer
        .render(&bare_change(Status::Delivered, Locale::En))?
        .unwrap();
    assert!(!jadlog.text.contains("http"), "{}", jadlog.text);
    assert!(jadlog.text.contains("10084500001234"));
    Ok(())
}

#[test]
fn unknown_reasons_are_shown_as_given() -> TestResult {
    let mut c = change(Status::Exception, Locale::Es);
    c.reason = Some("damaged".into());
    let email = renderer().render(&c)?.unwrap();
    assert!(email.text.contains("Motivo: damaged"), "{}", email.text);
    assert!(
        email.text.contains("El transportista informó un problema"),
        "{}",
        email.text
    );
    Ok(())
}

#[test]
fn render_errors_name_the_template() {
    let err = RenderError::DateFormat {
        locale: "en",
        format: "%Q".into(),
    };
    assert_eq!(err.to_string(), "the en date format \"%Q\" is invalid");
}

#[test]
fn the_renderer_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Renderer>();
}

#[test]
fn with_a_tracking_page_every_email_links_the_order_page_instead_of_the_carrier() -> TestResult {
    let key = tracking_domain::PageKey::new("a-secret-for-the-render-tests-0123456789")?;
    let settings = TemplateSettings {
        tracking_page: Some(tracking_domain::PageLinks::new(
            "https://loja.example/rastreio/",
            key.clone(),
        )?),
        ..TemplateSettings::default()
    };
    let renderer = Renderer::new(settings)?;
    for status in NOTIFIED {
        for locale in Locale::ALL {
            // A Jadlog parcel without a carrier pattern gets the page link too.
            for c in [change(status, locale), bare_change(status, locale)] {
                let email = renderer.render(&c)?.unwrap();
                let href = email
                    .html
                    .split("<a href=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .ok_or("no button in the HTML part")?;
                let token = href
                    .strip_prefix("https://loja.example/rastreio/t/")
                    .ok_or_else(|| format!("{status} {locale:?}: the button goes to {href}"))?;
                assert_eq!(key.verify(token), Some(c.order_id.clone()));
                assert!(email.text.contains(href), "{}", email.text);
                assert!(!email.text.contains("correios.com.br"), "{}", email.text);
                assert!(!email.html.contains("correios.com.br"));
            }
        }
    }
    // Without the setting, the button is the carrier's link (as the snapshots show).
    let email = renderer_without_page()
        .render(&change(Status::Delivered, Locale::En))?
        .unwrap();
    assert!(email.html.contains(
        "<a href=\"https://rastreamento.correios.com.br/app/index.php?objeto=DL746686536BR\""
    ));
    Ok(())
}

fn renderer_without_page() -> Renderer {
    renderer()
}

#[test]
fn the_late_email_in_every_locale_matches_its_snapshot() -> TestResult {
    let renderer = renderer();
    let mut failures = Vec::new();
    for locale in Locale::ALL {
        let c = change(Status::InTransit, locale);
        let default_store = tracking_domain::StoreName::default();
        let email = renderer.render_late(&LateEmail {
            store: &default_store,
            order_id: &c.order_id,
            tracking_code: &c.tracking_code,
            carrier: c.carrier,
            status: Status::InTransit,
            customer: &c.customer,
            promised: DateTime::parse_from_rfc3339("2026-04-02T23:59:59-03:00")?,
        })?;
        // The promised date is in it, in the locale's format, and nothing about an event.
        let date = match locale {
            Locale::PtBr => "02/04/2026",
            Locale::Es => "02/04/2026",
            Locale::En => "Apr 2, 2026",
        };
        assert!(email.text.contains(date), "{locale:?}: {}", email.text);
        assert!(
            email.html.replace("&#x2f;", "/").contains(date),
            "{locale:?}"
        );
        let actual = format!("Subject: {}\n\n{}", email.subject, email.text);
        failures.extend(check_snapshot(
            &format!("late.{}", locale.as_str()),
            &actual,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
