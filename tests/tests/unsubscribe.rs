//! The one-click unsubscribe (RFC 8058) and the notification rules end to end: the real normalizer, email
//! publisher and `tracking-api` on the real RabbitMQ and PostgreSQL, emails caught by the SMTP simulator
//! (`tracking_sim::smtp`), the link used as a mailbox provider uses it (one `POST` with
//! `List-Unsubscribe=One-Click`).

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use tracking_domain::{OrderId, PageKey};
use tracking_sim::smtp::{Received, SmtpServer};
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, eventually, free_addr, request, s10,
};

const API_TOKEN: &str = "api-token-for-tests-0123456789abcdef";
const PAGE_SECRET: &str = "tracking-page-secret-for-tests-0123456789";
const UNSUBSCRIBE_SECRET: &str = "unsubscribe-secret-for-tests-0123456789";

fn smtp_settings(smtp: &SmtpServer) -> Vec<(&'static str, String)> {
    vec![
        ("SMTP_URL", smtp.url()),
        ("EMAIL_FROM", "Loja <noreply@loja.example>".into()),
        ("SMTP_TIMEOUT_MS", "2000".into()),
        ("EMAIL_RETRY_BASE_MS", "200".into()),
    ]
}

/// Publishes a carrier update (with the request the first time) for the normalizer.
async fn carrier_says(
    env: &TestEnv,
    code: &str,
    request: Option<&Value>,
    events: &[Value],
) -> anyhow::Result<()> {
    let update = carrier_update(code, request, events);
    env.amqp()
        .await?
        .publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
        .await
}

fn emails_to(smtp: &SmtpServer, address: &str) -> Vec<Received> {
    smtp.received()
        .into_iter()
        .filter(|r| r.to.iter().any(|t| t == address))
        .collect()
}

async fn wait_emails_to(
    smtp: &SmtpServer,
    address: &str,
    n: usize,
) -> anyhow::Result<Vec<Received>> {
    eventually(
        Duration::from_secs(30),
        &format!("{n} emails to {address}"),
        || async {
            let got = emails_to(smtp, address);
            Ok((got.len() >= n).then_some(got))
        },
    )
    .await
}

/// The email delivery records (`deliveries.detail`) of a parcel's changes to `status`.
async fn email_details(
    env: &TestEnv,
    code: &str,
    status: &str,
) -> anyhow::Result<Vec<Option<String>>> {
    Ok(sqlx::query_scalar(
        "SELECT d.detail FROM deliveries d JOIN status_changes c ON c.change_id = d.change_id \
         WHERE d.destination = 'email' AND c.payload->>'tracking_code' = $1 AND c.status = $2",
    )
    .bind(code)
    .bind(status)
    .fetch_all(&env.pool)
    .await?)
}

async fn opt_outs(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM email_opt_outs")
        .fetch_one(&env.pool)
        .await?)
}

/// The `<…>` URIs of a `List-Unsubscribe` value.
fn uris(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|u| {
            u.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_post_to_the_email_s_link_stops_that_address_s_emails_and_nothing_else()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let addr = free_addr();
    let base = format!("http://{addr}");
    let _api = Worker::started(
        &env,
        "tracking-api",
        &[
            ("HTTP_ADDR", addr.to_string()),
            ("API_TOKEN", API_TOKEN.into()),
            ("TRACKING_PAGE_SECRET", PAGE_SECRET.into()),
            ("UNSUBSCRIBE_SECRET", UNSUBSCRIBE_SECRET.into()),
        ],
    )
    .await?;
    let mut settings = smtp_settings(&smtp);
    settings.extend([
        ("TRACKING_PAGE_URL", base.clone()),
        ("TRACKING_PAGE_SECRET", PAGE_SECRET.into()),
        ("UNSUBSCRIBE_SECRET", UNSUBSCRIBE_SECRET.into()),
        ("UNSUBSCRIBE_MAILTO", "sair@loja.example".into()),
    ]);
    let publisher = Worker::started(&env, "email-publisher", &settings).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // Two customers' parcels are posted: each gets the "posted" email.
    let (ana, bia) = ("ana@example.com", "bia@example.com");
    let (code_a, code_b) = (s10("UA", 1), s10("UB", 2));
    let posted = correios_event("PO", "01", "2026-11-30T10:00:00-03:00");
    let out = correios_event("OEC", "01", "2026-12-01T08:00:00-03:00");
    let delivered = correios_event("BDE", "01", "2026-12-01T15:00:00-03:00");
    let req_a = request("U-1", &code_a, ana, "pt-BR", None);
    let req_b = request("U-2", &code_b, bia, "en", None);
    carrier_says(&env, &code_a, Some(&req_a), std::slice::from_ref(&posted)).await?;
    carrier_says(&env, &code_b, Some(&req_b), std::slice::from_ref(&posted)).await?;
    let first = wait_emails_to(&smtp, ana, 1).await?.remove(0);
    wait_emails_to(&smtp, bia, 1).await?;

    // The headers, as RFC 8058 wants them: one HTTPS-or-loopback link first, the mailto, and the Post field.
    let list = first.header("List-Unsubscribe").unwrap();
    let uris = uris(&list);
    assert_eq!(uris.len(), 2, "{list}");
    assert!(uris[0].starts_with(&format!("{base}/u/")), "{list}");
    assert_eq!(uris[1], "mailto:sair@loja.example?subject=unsubscribe");
    assert_eq!(
        first.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(
        !list.contains("ana"),
        "no readable address in the link: {list}"
    );
    let link = uris[0].clone();

    // A tampered link: 404, nothing recorded.
    let token = link.rsplit('/').next().unwrap().to_owned();
    let mut altered = token.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{base}/u/{}", String::from_utf8(altered)?);
    for url in [tampered.as_str(), &format!("{base}/u/junk")] {
        let resp = http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(opt_outs(&env).await?, 0, "a tampered link changes nothing");

    // GET shows the page with the button, in the browser's language, and changes nothing.
    let page = http
        .get(&link)
        .header("accept-language", "es-AR,es;q=0.9")
        .send()
        .await?;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await?;
    assert!(html.contains("<html lang=\"es\">"), "{html}");
    assert!(html.contains("<form method=\"post\">"), "{html}");
    assert_eq!(opt_outs(&env).await?, 0, "GET changes nothing");

    // One POST, as a mailbox provider makes it: unsubscribed at once. Again: the same.
    for _ in 0..2 {
        let resp = http
            .post(&link)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.text().await?.contains("/undo\""));
    }
    assert_eq!(opt_outs(&env).await?, 1);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT address_hash FROM email_opt_outs")
        .fetch_one(&env.pool)
        .await?;
    assert!(
        !String::from_utf8_lossy(&stored).contains("ana"),
        "the table holds no readable address"
    );

    // Both parcels go out for delivery: Bia gets her email, Ana's is recorded as skipped and not sent.
    carrier_says(&env, &code_a, None, &[posted.clone(), out.clone()]).await?;
    carrier_says(&env, &code_b, None, &[posted.clone(), out.clone()]).await?;
    wait_emails_to(&smtp, bia, 2).await?;
    eventually(
        Duration::from_secs(30),
        "Ana's email recorded as skipped",
        || async {
            let details = email_details(&env, &code_a, "out_for_delivery").await?;
            Ok((details == vec![Some("skipped: unsubscribed".to_owned())]).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        emails_to(&smtp, ana).len(),
        1,
        "no email after the unsubscribe"
    );
    let metrics = publisher.metrics().await?;
    assert!(
        metrics.contains("emails_skipped_total{reason=\"unsubscribed\"} 1"),
        "{metrics}"
    );

    // The tracking page still works.
    let page_token = PageKey::new(PAGE_SECRET)?.token(&OrderId::parse("U-1").unwrap());
    let page = http.get(format!("{base}/t/{page_token}")).send().await?;
    assert_eq!(page.status(), StatusCode::OK);

    // The undo: the emails come again.
    let resp = http.post(format!("{link}/undo")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(opt_outs(&env).await?, 0);
    carrier_says(&env, &code_a, None, &[posted, out, delivered]).await?;
    let emails = wait_emails_to(&smtp, ana, 2).await?;
    assert!(emails[1].header("List-Unsubscribe").is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parcel_first_seen_delivered_sends_no_delivered_email_unless_asked() -> anyhow::Result<()>
{
    let env = TestEnv::ready().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let mut publisher = Worker::started(&env, "email-publisher", &smtp_settings(&smtp)).await?;
    let posted = correios_event("PO", "01", "2026-11-30T10:00:00-03:00");
    let delivered = correios_event("BDE", "01", "2026-12-01T15:00:00-03:00");

    // Our first news of this parcel is its delivery: the customer has it in hand.
    let (first_seen, followed) = (s10("FS", 1), s10("FF", 2));
    let (carla, davi) = ("carla@example.com", "davi@example.com");
    carrier_says(
        &env,
        &first_seen,
        Some(&request("F-1", &first_seen, carla, "pt-BR", None)),
        &[posted.clone(), delivered.clone()],
    )
    .await?;
    // A parcel followed on its way gets its "posted" and "delivered" emails.
    carrier_says(
        &env,
        &followed,
        Some(&request("F-2", &followed, davi, "pt-BR", None)),
        std::slice::from_ref(&posted),
    )
    .await?;
    wait_emails_to(&smtp, davi, 1).await?;
    carrier_says(&env, &followed, None, &[posted.clone(), delivered.clone()]).await?;
    wait_emails_to(&smtp, davi, 2).await?;
    eventually(
        Duration::from_secs(30),
        "the first-seen delivery handled",
        || async {
            let m = publisher.metrics().await?;
            Ok(
                m.contains("emails_total{result=\"delivered_when_first_seen\"} 1")
                    .then_some(()),
            )
        },
    )
    .await?;
    let recorded: String = sqlx::query_scalar(
        "SELECT previous_status FROM status_changes WHERE payload->>'tracking_code' = $1 AND status = 'delivered'",
    )
    .bind(&first_seen)
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(recorded, "registered", "one change, straight to delivered");
    assert!(
        emails_to(&smtp, carla).is_empty(),
        "no email for a parcel first seen delivered"
    );

    // EMAIL_DELIVERED_WHEN_FIRST_SEEN=true asks for it.
    publisher.terminate()?;
    let mut settings = smtp_settings(&smtp);
    settings.push(("EMAIL_DELIVERED_WHEN_FIRST_SEEN", "true".into()));
    let _publisher = Worker::started(&env, "email-publisher", &settings).await?;
    let asked = s10("FA", 3);
    let eva = "eva@example.com";
    carrier_says(
        &env,
        &asked,
        Some(&request("F-3", &asked, eva, "pt-BR", None)),
        &[posted, delivered],
    )
    .await?;
    let emails = wait_emails_to(&smtp, eva, 1).await?;
    assert_eq!(emails.len(), 1);
    Ok(())
}
