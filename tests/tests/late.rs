//! Late and stalled parcels on the real RabbitMQ, PostgreSQL and an SMTP server on 127.0.0.1 (`tracking_sim::smtp`), with the real scheduler,
//! email publisher, tracking-api and trackctl: the scheduler's scan marks parcels whose promised date passed, and
//! those without carrier news; a late parcel's customer gets one "your parcel is late" email in their language,
//! however often (and by however many schedulers) it is scanned; `LATE_EMAILS=false` sends none; a delivered parcel
//! is never late; trackctl lists them with filters, and the API and the tracking page show it.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use tracking_domain::{OrderId, PageKey};
use tracking_sim::smtp::{Received, SmtpServer};
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, eventually, free_addr, s10, target_dir,
    wait_finished, wait_ticks_after_now,
};

/// A shipment as the test stores it.
struct Row<'a> {
    carrier: &'a str,
    code: String,
    status: &'a str,
    locale: &'a str,
    /// Hours since the carrier's promised date (negative: still ahead); none without an estimate.
    promised_hours_ago: Option<i64>,
    /// Hours since the last carrier news.
    news_hours_ago: i64,
}

fn row<'a>(code: String, status: &'a str, locale: &'a str, promised: Option<i64>) -> Row<'a> {
    Row {
        carrier: "correios",
        code,
        status,
        locale,
        promised_hours_ago: promised,
        news_hours_ago: 1,
    }
}

/// Stores the shipments (order `order-{code}`, customer `{code}@example.com`), none due for a poll.
async fn insert(env: &TestEnv, rows: &[Row<'_>]) -> anyhow::Result<()> {
    for r in rows {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO shipments (carrier, tracking_code, status, estimated_delivery, last_news_at, next_poll_at) \
             VALUES ($1, $2, $3, now() - make_interval(hours => $4::int), now() - make_interval(hours => $5::int), \
                 now() + interval '1 day') RETURNING id",
        )
        .bind(r.carrier)
        .bind(&r.code)
        .bind(r.status)
        .bind(r.promised_hours_ago.map(|h| h as i32))
        .bind(r.news_hours_ago as i32)
        .fetch_one(&env.pool)
        .await?;
        let order = tracking_tests::Order {
            order_id: format!("order-{}", r.code),
            email: format!("{}@example.com", r.code.to_lowercase()),
            name: Some("Ana Souza".into()),
            locale: r.locale.into(),
            marketplace: None,
        };
        tracking_tests::add_order(&env.pool, id, &order).await?;
    }
    Ok(())
}

async fn late_since(
    env: &TestEnv,
    code: &str,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    Ok(
        sqlx::query_scalar("SELECT late_since FROM shipments WHERE tracking_code = $1")
            .bind(code)
            .fetch_one(&env.pool)
            .await?,
    )
}

/// Waits until every recorded late notice is marked published (after its publish was confirmed), and returns
/// how many there are.
async fn published_notices(env: &TestEnv) -> anyhow::Result<i64> {
    eventually(
        Duration::from_secs(20),
        "every notice published",
        || async {
            let (all, unpublished): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM late_notices",
            )
            .fetch_one(&env.pool)
            .await?;
            Ok((unpublished == 0).then_some(all))
        },
    )
    .await
}

async fn notices(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM late_notices")
        .fetch_one(&env.pool)
        .await?)
}

/// A scheduler that scans for late parcels every 200 ms.
async fn scheduler(env: &TestEnv, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    let mut settings = vec![
        ("SCHEDULER_TICK_MS", "100".to_owned()),
        ("LATE_SCAN_INTERVAL_MS", "200".to_owned()),
    ];
    settings.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    Worker::started(env, "scheduler", &settings).await
}

async fn email_publisher(env: &TestEnv, smtp: &SmtpServer) -> anyhow::Result<Worker> {
    Worker::started(
        env,
        "email-publisher",
        &[
            ("SMTP_URL", smtp.url()),
            ("EMAIL_FROM", "rastreio@loja.example".to_owned()),
        ],
    )
    .await
}

/// A header as the reader sees it: RFC 2047 encoded words (`=?utf-8?b?…?=`, `=?utf-8?q?…?=`) decoded.
fn decoded(value: &str) -> String {
    use base64::Engine;
    let mut out = String::new();
    let mut last_encoded = false;
    for word in value.split_whitespace() {
        let parts: Vec<&str> = word.split('?').collect();
        let text = match parts.as_slice() {
            ["=", _charset, enc, text, "="] if enc.eq_ignore_ascii_case("b") => {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
            }
            ["=", _charset, enc, text, "="] if enc.eq_ignore_ascii_case("q") => {
                let mut bytes = Vec::new();
                let mut chars = text.bytes();
                while let Some(c) = chars.next() {
                    match c {
                        b'_' => bytes.push(b' '),
                        b'=' => {
                            let hex: Vec<u8> = chars.by_ref().take(2).collect();
                            let h = std::str::from_utf8(&hex).ok();
                            bytes.extend(h.and_then(|h| u8::from_str_radix(h, 16).ok()));
                        }
                        c => bytes.push(c),
                    }
                }
                String::from_utf8(bytes).ok()
            }
            _ => None,
        };
        // Whitespace between two encoded words is not part of the text.
        let encoded = text.is_some();
        if !out.is_empty() && (!encoded || !last_encoded) {
            out.push(' ');
        }
        out.push_str(text.as_deref().unwrap_or(word));
        last_encoded = encoded;
    }
    out
}

/// The subjects of the emails to a parcel's customer.
fn subjects_to(emails: &[Received], code: &str) -> Vec<String> {
    let to = format!("{}@example.com", code.to_ascii_lowercase());
    emails
        .iter()
        .filter(|e| e.to.iter().any(|t| t.trim_matches(['<', '>']) == to))
        .map(|e| decoded(&e.header("Subject").unwrap_or_default()))
        .collect()
}

/// The value of a metric line `name{labels} value` on a /metrics page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_parcel_gets_one_late_email_in_its_locale_through_rescans_restarts_and_two_schedulers()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let (pt, es, en) = (s10("LA", 1), s10("LA", 2), s10("LA", 3));
    let (delivered, ahead, in_grace, pickup) =
        (s10("LA", 4), s10("LA", 5), s10("LA", 6), s10("LA", 7));
    insert(
        &env,
        &[
            row(pt.clone(), "in_transit", "pt-BR", Some(48)),
            row(es.clone(), "out_for_delivery", "es", Some(30)),
            row(en.clone(), "posted", "en", Some(100)),
            // Delivered after its promised date: never late.
            row(delivered.clone(), "delivered", "en", Some(48)),
            // The promise is still ahead, or passed less than the grace (24 h) ago.
            row(ahead.clone(), "in_transit", "en", Some(-48)),
            row(in_grace.clone(), "in_transit", "en", Some(2)),
            // Waiting at a pickup point: the customer's turn, not late.
            row(pickup.clone(), "awaiting_pickup", "en", Some(48)),
        ],
    )
    .await?;
    // Two schedulers scan the same shipments at once.
    let first = scheduler(&env, &[]).await?;
    let second = scheduler(&env, &[]).await?;
    let email = email_publisher(&env, &smtp).await?;

    eventually(Duration::from_secs(30), "three late emails", || async {
        Ok((smtp.received_count() >= 3).then_some(()))
    })
    .await?;
    // Many more scans by both schedulers, then every notice they published handled: nothing more.
    wait_ticks_after_now(&first, Duration::from_secs(20)).await?;
    wait_ticks_after_now(&second, Duration::from_secs(20)).await?;
    let amqp = env.amqp().await?;
    wait_finished(
        &amqp,
        &email,
        "email.order-status",
        published_notices(&env).await? as u64,
        Duration::from_secs(20),
    )
    .await?;
    let emails = smtp.received();
    assert_eq!(emails.len(), 3, "{emails:#?}");
    let subject_to = |code: &str| subjects_to(&emails, code);
    assert_eq!(subject_to(&pt), ["Our store: seu pedido está atrasado"]);
    assert_eq!(subject_to(&es), ["Our store: tu pedido está retrasado"]);
    assert_eq!(subject_to(&en), ["Our store: your order is late"]);
    let en_email = emails
        .iter()
        .find(|e| e.to.iter().any(|t| t.contains(&en.to_ascii_lowercase())))
        .unwrap();
    assert!(en_email.data.contains(&en), "{}", en_email.data);
    // One Message-ID per notice: a second send of the same notice would carry the same one.
    let ids: std::collections::HashSet<String> = emails
        .iter()
        .filter_map(|e| e.header("Message-ID"))
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(notices(&env).await?, 3);
    // Notices go to the email queue only: the marketplace publisher's queue never holds one.
    assert_eq!(
        env.amqp().await?.count("marketplace.order-status").await?,
        0
    );
    for quiet in [&delivered, &ahead, &in_grace, &pickup] {
        assert_eq!(late_since(&env, quiet).await?, None, "{quiet} is not late");
    }
    assert!(late_since(&env, &pt).await?.is_some());

    // The gauges, per carrier: seven open shipments, three late.
    let page = first.metrics().await?;
    assert_eq!(
        metric(&page, "shipments_late{carrier=\"correios\"}"),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, "shipments_open{carrier=\"correios\"}"),
        Some(7.0)
    );
    assert_eq!(
        metric(&page, "shipments_late{carrier=\"jadlog\"}"),
        Some(0.0)
    );

    // Restarted schedulers scan again: still one email per parcel.
    drop(first);
    drop(second);
    let again = scheduler(&env, &[]).await?;
    wait_ticks_after_now(&again, Duration::from_secs(20)).await?;
    wait_finished(
        &amqp,
        &email,
        "email.order-status",
        published_notices(&env).await? as u64,
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(smtp.received_count(), 3);
    drop(again);

    // With no scheduler running, the carrier delivers a late parcel: the normalizer lifts the mark at once (and the
    // customer gets the delivered email, nothing more).
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let amqp = env.amqp().await?;
    let update = carrier_update(
        &pt,
        None,
        &[correios_event(
            "BDE",
            "01",
            &chrono::Utc::now().to_rfc3339(),
        )],
    );
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
        .await?;
    eventually(
        Duration::from_secs(20),
        "the parcel delivered, no longer late",
        || async {
            let (status, late): (String, Option<chrono::DateTime<chrono::Utc>>) =
                sqlx::query_as("SELECT status, late_since FROM shipments WHERE tracking_code = $1")
                    .bind(&pt)
                    .fetch_one(&env.pool)
                    .await?;
            Ok((status == "delivered" && late.is_none()).then_some(()))
        },
    )
    .await?;
    eventually(Duration::from_secs(20), "the delivered email", || async {
        Ok((smtp.received_count() == 4).then_some(()))
    })
    .await?;
    assert_eq!(subjects_to(&smtp.received(), &pt).len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_late_emails_off_a_late_parcel_is_marked_and_nobody_is_emailed() -> anyhow::Result<()>
{
    let env = TestEnv::ready().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let (code, before) = (s10("LB", 1), s10("LB", 2));
    insert(
        &env,
        &[
            row(code.clone(), "in_transit", "pt-BR", Some(48)),
            row(before.clone(), "in_transit", "en", Some(48)),
        ],
    )
    .await?;
    // A notice recorded while late emails were on, not yet published when they were turned off.
    sqlx::query("UPDATE shipments SET late_since = estimated_delivery WHERE tracking_code = $1")
        .bind(&before)
        .execute(&env.pool)
        .await?;
    sqlx::query(
        "INSERT INTO late_notices (shipment_id, notice_id, promised_at) \
         SELECT id, gen_random_uuid(), estimated_delivery FROM shipments WHERE tracking_code = $1",
    )
    .bind(&before)
    .execute(&env.pool)
    .await?;
    let scheduler = scheduler(&env, &[("LATE_EMAILS", "false".to_owned())]).await?;
    let _email = email_publisher(&env, &smtp).await?;
    eventually(
        Duration::from_secs(20),
        "the parcel marked late",
        || async { Ok(late_since(&env, &code).await?.is_some().then_some(())) },
    )
    .await?;
    wait_ticks_after_now(&scheduler, Duration::from_secs(20)).await?;
    assert_eq!(notices(&env).await?, 1, "only the one recorded before");
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM late_notices WHERE published_at IS NOT NULL")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(published, 0);
    assert_eq!(smtp.received_count(), 0);

    // A notice nobody recorded (forged, or erased since) is parked, and nobody is emailed.
    let amqp = env.amqp().await?;
    let forged = serde_json::json!({"kind": "late_notice", "notice_id": uuid::Uuid::new_v4()});
    amqp.publish("email.order-status", &serde_json::to_vec(&forged)?)
        .await?;
    eventually(
        Duration::from_secs(20),
        "the forged notice parked",
        || async { Ok((amqp.count("email.order-status.dead").await? == 1).then_some(())) },
    )
    .await?;
    assert_eq!(smtp.received_count(), 0);
    env.expect_parked("email.order-status.dead", 1);
    Ok(())
}

fn trackctl(env: &TestEnv, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(target_dir().join("debug/trackctl"))
        .args(args)
        .envs(env.worker_env())
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

const TOKEN: &str = "api-token-for-tests-0123456789-abcdef";
const PAGE_SECRET: &str = "tracking-page-secret-for-tests-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_stalled_parcels_are_listed_with_filters_shown_and_served() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let (late_recent, late_old, stalled, fine) =
        (s10("LC", 1), s10("LC", 2), s10("LC", 3), s10("LC", 4));
    let jadlog = "10084500001234".to_owned();
    insert(
        &env,
        &[
            row(late_recent.clone(), "in_transit", "en", Some(30)),
            row(late_old.clone(), "delivery_failed", "en", Some(200)),
            Row {
                carrier: "jadlog",
                ..row(jadlog.clone(), "in_transit", "es", Some(100))
            },
            // No carrier news for 200 h (CARRIER_STALE_AFTER_HOURS is 120 by default), no promise.
            Row {
                news_hours_ago: 200,
                ..row(stalled.clone(), "in_transit", "pt-BR", None)
            },
            row(fine.clone(), "in_transit", "en", Some(-24)),
        ],
    )
    .await?;
    let _scheduler = scheduler(&env, &[("LATE_EMAILS", "false".to_owned())]).await?;
    eventually(
        Duration::from_secs(20),
        "three late, one stalled",
        || async {
            let (late, stalled): (i64, i64) =
                sqlx::query_as("SELECT count(late_since), count(stalled_since) FROM shipments")
                    .fetch_one(&env.pool)
                    .await?;
            Ok((late == 3 && stalled == 1).then_some(()))
        },
    )
    .await?;

    let lines = |out: &str, code: &str| out.lines().filter(|l| l.contains(code)).count();
    let (ok, all) = trackctl(&env, &["shipments", "late"])?;
    assert!(ok, "{all}");
    for code in [&late_recent, &late_old, &jadlog] {
        assert_eq!(lines(&all, code), 1, "{all}");
    }
    assert_eq!(lines(&all, &stalled) + lines(&all, &fine), 0, "{all}");
    assert!(all.contains("3 late shipment(s)."), "{all}");
    // The longest-waiting first.
    assert!(
        all.find(&late_old).unwrap() < all.find(&late_recent).unwrap(),
        "{all}"
    );

    let (ok, jad) = trackctl(&env, &["shipments", "late", "--carrier", "jadlog"])?;
    assert!(ok, "{jad}");
    assert_eq!(lines(&jad, &jadlog), 1, "{jad}");
    assert_eq!(
        lines(&jad, &late_recent) + lines(&jad, &late_old),
        0,
        "{jad}"
    );

    // Promised within the last 2 days: only the recent one.
    let (ok, recent) = trackctl(&env, &["shipments", "late", "--since", "2d"])?;
    assert!(ok, "{recent}");
    assert_eq!(lines(&recent, &late_recent), 1, "{recent}");
    assert_eq!(
        lines(&recent, &late_old) + lines(&recent, &jadlog),
        0,
        "{recent}"
    );
    let (ok, none) = trackctl(
        &env,
        &[
            "shipments",
            "late",
            "--carrier",
            "correios",
            "--since",
            "2099-01-01",
        ],
    )?;
    assert!(ok && none.contains("No late shipments."), "{none}");

    let (ok, quiet) = trackctl(&env, &["shipments", "late", "--stalled"])?;
    assert!(ok, "{quiet}");
    assert_eq!(lines(&quiet, &stalled), 1, "{quiet}");
    assert!(quiet.contains("1 stalled shipment(s)."), "{quiet}");

    let (ok, bad) = trackctl(&env, &["shipments", "late", "--carrier", "dhl"])?;
    assert!(!ok && bad.contains("unknown carrier"), "{bad}");
    let (ok, bad) = trackctl(&env, &["shipments", "late", "--since", "yesterday"])?;
    assert!(!ok && bad.contains("--since"), "{bad}");

    let (ok, show) = trackctl(&env, &["shipment", "show", &late_recent])?;
    assert!(ok && show.contains("LATE: promised by"), "{show}");
    assert!(show.contains("status in_transit"), "{show}");
    let (ok, show) = trackctl(&env, &["shipment", "show", &stalled])?;
    assert!(
        ok && show.contains("STALLED: no carrier event since"),
        "{show}"
    );
    assert!(!show.contains("LATE"), "{show}");

    // The API: a mark beside the status, which stays in_transit.
    let addr = free_addr();
    let _api = Worker::started(
        &env,
        "tracking-api",
        &[
            ("HTTP_ADDR", addr.to_string()),
            ("API_TOKEN", TOKEN.to_owned()),
            ("TRACKING_PAGE_SECRET", PAGE_SECRET.to_owned()),
        ],
    )
    .await?;
    let http = reqwest::Client::new();
    let tracking = |order: String| {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(format!("http://{addr}/v1/orders/{order}/tracking"))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(v["shipments"][0].clone())
        }
    };
    let s = tracking(format!("order-{late_recent}")).await?;
    assert_eq!(s["status"], "in_transit", "{s}");
    assert_eq!(s["late"], true, "{s}");
    assert_eq!(s["late_since"], s["estimated_delivery"], "{s}");
    assert_eq!(s["stalled"], false, "{s}");
    let s = tracking(format!("order-{stalled}")).await?;
    assert_eq!(
        (s["late"].clone(), s["stalled"].clone()),
        (Value::Bool(false), Value::Bool(true)),
        "{s}"
    );
    assert!(s["stalled_since"].is_string(), "{s}");
    let s = tracking(format!("order-{fine}")).await?;
    assert_eq!(
        (s["late"].clone(), s["stalled"].clone()),
        (Value::Bool(false), Value::Bool(false)),
        "{s}"
    );
    assert!(s["late_since"].is_null(), "{s}");

    // The customer's page says it in the customer's language.
    let page = |order: String, lang: &'static str| {
        let http = http.clone();
        async move {
            let token = PageKey::new(PAGE_SECRET)
                .unwrap()
                .token(&OrderId::parse(&order).unwrap());
            let html = http
                .get(format!("http://{addr}/t/{token}?lang={lang}"))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            anyhow::Ok(html)
        }
    };
    let html = page(format!("order-{late_recent}"), "en").await?;
    assert!(
        html.contains("<p class=\"notice late\">Late: delivery was expected by"),
        "{html}"
    );
    let html = page(format!("order-{jadlog}"), "es").await?;
    assert!(
        html.contains("<p class=\"notice late\">Retrasado: la entrega estaba prevista para el"),
        "{html}"
    );
    let html = page(format!("order-{fine}"), "en").await?;
    assert!(!html.contains("class=\"notice"), "{html}");
    Ok(())
}
