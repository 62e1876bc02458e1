//! The customer's tracking page (`GET /t/{token}`) end to end: the real `tracking-api`, normalizer and email
//! publisher on the real RabbitMQ and PostgreSQL, and the page opened in a real browser (Debian's `chromium`,
//! headless, driven by its own command line: `--dump-dom` for what it rendered, `--screenshot` at 360 px wide).
//! Screenshots go to `target/test-logs/<test>/`.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracking_domain::{OrderId, PageKey};
use tracking_tests::{
    Maildev, TestEnv, Worker, carrier_update, correios_event, eventually, free_addr, request, s10,
    status_change, target_dir,
};

const TOKEN: &str = "api-token-for-tests-0123456789-abcdef";
const PAGE_SECRET: &str = "tracking-page-secret-for-tests-0123456789";

fn key() -> PageKey {
    PageKey::new(PAGE_SECRET).unwrap()
}

fn token(order_id: &str) -> String {
    key().token(&OrderId::parse(order_id).unwrap())
}

/// `target/test-logs/<test>/`, emptied.
fn output_dir(test: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("test-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

struct Api {
    _worker: Worker,
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn start(env: &TestEnv, extra: &[(&str, String)]) -> anyhow::Result<Api> {
        let addr = free_addr();
        let mut settings = vec![
            ("HTTP_ADDR", addr.to_string()),
            ("API_TOKEN", TOKEN.to_owned()),
            // These tests open the page more often than a customer would: the rate limit has its own test.
            ("TRACKING_PAGE_BURST", "1000".to_owned()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let worker = Worker::started(env, "tracking-api", &settings).await?;
        // The address it listens on: another than `addr` when that port was taken before it could bind it.
        let base = format!("http://{}", worker.http_addr()?);
        Ok(Api {
            _worker: worker,
            base,
            http: reqwest::Client::new(),
        })
    }

    /// The same, with a client whose connections come from `from` (a 127.0.0.0/8 address).
    fn from(&self, from: &str) -> anyhow::Result<Api2> {
        Ok(Api2 {
            base: self.base.clone(),
            http: reqwest::Client::builder()
                .local_address(from.parse::<std::net::IpAddr>()?)
                .build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<StatusCode> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await?;
        Ok(resp.status())
    }

    /// A page as a browser without a token asks for it: status, headers, body.
    async fn page(
        &self,
        path: &str,
        accept_language: Option<&str>,
    ) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap, String)> {
        let mut req = self.http.get(self.url(path));
        if let Some(lang) = accept_language {
            req = req.header("accept-language", lang);
        }
        let resp = req.send().await?;
        Ok((resp.status(), resp.headers().clone(), resp.text().await?))
    }
}

/// A client of a running [`Api`] from another address.
struct Api2 {
    base: String,
    http: reqwest::Client,
}

impl Api2 {
    async fn status(&self, path: &str) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap)> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        Ok((resp.status(), resp.headers().clone()))
    }
}

/// Debian's Chromium, headless, with a fresh profile per run.
struct Chromium {
    dir: PathBuf,
}

impl Chromium {
    fn new(dir: &Path) -> anyhow::Result<Chromium> {
        let found = std::process::Command::new("chromium")
            .arg("--version")
            .output();
        if !found.is_ok_and(|o| o.status.success()) {
            anyhow::bail!("chromium is missing: run `make setup` (it installs Debian's chromium)");
        }
        Ok(Chromium {
            dir: dir.to_owned(),
        })
    }

    async fn run(&self, args: &[String], url: &str) -> anyhow::Result<String> {
        let profile = tempdir(&self.dir)?;
        let mut cmd = tokio::process::Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output()).await??;
        let _ = std::fs::remove_dir_all(&profile);
        if !out.status.success() {
            anyhow::bail!(
                "chromium failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The DOM as the browser built it.
    async fn dom(&self, url: &str) -> anyhow::Result<String> {
        self.run(&["--dump-dom".into()], url).await
    }

    /// A 360 × 800 screenshot (a small phone), saved as `name`.png in the test's output directory.
    async fn screenshot(&self, url: &str, name: &str) -> anyhow::Result<PathBuf> {
        let file = self.dir.join(format!("{name}.png"));
        self.run(
            &[
                format!("--screenshot={}", file.display()),
                "--window-size=360,800".into(),
            ],
            url,
        )
        .await?;
        let png = std::fs::read(&file)?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        Ok(file)
    }
}

fn tempdir(parent: &Path) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!("profile-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The text of an HTML fragment: tags out, entities in, whitespace collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Between `start` and the next `end` (both excluded).
fn between<'a>(html: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = html.find(start)? + start.len();
    let to = html[from..].find(end)? + from;
    Some(&html[from..to])
}

/// Each timeline entry's text, as the page lists them (newest first), for the `n`-th shipment.
fn timeline(dom: &str) -> Vec<String> {
    between(dom, "<ol class=\"timeline\">", "</ol>")
        .unwrap_or_default()
        .split("<li")
        .skip(1)
        .map(|item| text(&format!("<li{item}")))
        .collect()
}

/// The body without its style sheet (which is the same on every page).
fn visible(dom: &str) -> String {
    let body = dom.split("<body").nth(1).unwrap_or(dom);
    text(body)
}

fn email_like(text: &str) -> Option<String> {
    let re = regex::Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").unwrap();
    re.find(text).map(|m| m.as_str().to_owned())
}

fn described(code: &str, kind: &str, at: &str, description: &str) -> Value {
    let mut e = correios_event(code, kind, at);
    e["description"] = description.into();
    e
}

async fn status_of(env: &TestEnv, code: &str) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT status FROM shipments WHERE tracking_code = $1")
            .bind(code)
            .fetch_one(&env.pool)
            .await?,
    )
}

async fn wait_status(env: &TestEnv, code: &str, status: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(30), status, || async {
        Ok((status_of(env, code).await.ok().as_deref() == Some(status)).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_order_and_a_manual_confirmation_render_in_a_real_browser() -> anyhow::Result<()>
{
    let out = output_dir("a_delivered_order_and_a_manual_confirmation_render_in_a_real_browser")?;
    let browser = Chromium::new(&out)?;
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let api = Api::start(&env, &[("TRACKING_PAGE_SECRET", PAGE_SECRET.into())]).await?;
    let amqp = env.amqp().await?;

    // PG-1: delivered by the carrier. The delivery is reported in UTC (17:40Z is 14:40 in São Paulo).
    let delivered = s10("PD", 1);
    let req = request("PG-1", &delivered, "ana@example.com", "pt-BR", Some("acme"));
    let update = carrier_update(
        &delivered,
        Some(&req),
        &[
            described(
                "BDE",
                "01",
                "2026-03-27T17:40:00+00:00",
                "Objeto entregue ao destinatário",
            ),
            described(
                "OEC",
                "01",
                "2026-03-27T08:10:00-03:00",
                "Objeto saiu para entrega ao destinatário",
            ),
            described(
                "RO",
                "01",
                "2026-03-25T19:02:00-03:00",
                "Objeto em transferência - por favor aguarde",
            ),
            described("PO", "01", "2026-03-24T11:30:00-03:00", "Objeto postado"),
        ],
    );
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
        .await?;

    // PG-2: posted and on its way, then confirmed delivered by support.
    let confirmed = s10("PM", 2);
    let mut req = request("PG-2", &confirmed, "bruno@example.com", "es", None);
    req["customer"]["name"] = "Bruno Díaz".into();
    let mut update = carrier_update(
        &confirmed,
        Some(&req),
        &[
            described("PO", "01", "2026-03-24T10:00:00-03:00", "Objeto postado"),
            described(
                "RO",
                "01",
                "2026-03-25T16:20:00-03:00",
                "Objeto em transferência - por favor aguarde",
            ),
        ],
    );
    update["estimated_delivery"] = "2026-03-30T23:59:59-03:00".into();
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
        .await?;
    wait_status(&env, &delivered, "delivered").await?;
    wait_status(&env, &confirmed, "in_transit").await?;

    // While on its way, the carrier's estimate is on the page.
    let url2 = api.url(&format!("/t/{}", token("PG-2")));
    let dom = browser.dom(&format!("{url2}?lang=en")).await?;
    let page = visible(&dom);
    assert!(page.contains("Current status In transit"), "{page}");
    assert!(page.contains("Estimated delivery Mar 30, 2026"), "{page}");
    browser
        .screenshot(&format!("{url2}?lang=en"), "PG-2-in-transit-en")
        .await?;

    let status = api
        .post(
            "/v1/orders/PG-2/delivery-confirmation",
            &json!({"delivered_at": "2026-03-28T10:15:00-03:00", "note": "Cliente confirmou por telefone"}),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_status(&env, &confirmed, "delivered").await?;

    let url1 = api.url(&format!("/t/{}", token("PG-1")));
    let cases = [
        (
            "pt-BR",
            "Pedido PG-1",
            "Olá, Ana!",
            "Situação atual Entregue",
            [
                "27/03/2026 14:40 Entregue Objeto entregue ao destinatário CAMPINAS/SP",
                "27/03/2026 08:10 Saiu para entrega Objeto saiu para entrega ao destinatário CAMPINAS/SP",
                "25/03/2026 19:02 Em trânsito Objeto em transferência - por favor aguarde CAMPINAS/SP",
                "24/03/2026 11:30 Postado Objeto postado CAMPINAS/SP",
            ],
            "28/03/2026 10:15 Entregue Cliente confirmou por telefone Confirmado pela nossa equipe",
        ),
        (
            "es",
            "Pedido PG-1",
            "¡Hola, Ana!",
            "Estado actual Entregado",
            [
                "27/03/2026 14:40 Entregado Objeto entregue ao destinatário CAMPINAS/SP",
                "27/03/2026 08:10 En reparto Objeto saiu para entrega ao destinatário CAMPINAS/SP",
                "25/03/2026 19:02 En tránsito Objeto em transferência - por favor aguarde CAMPINAS/SP",
                "24/03/2026 11:30 Enviado Objeto postado CAMPINAS/SP",
            ],
            "28/03/2026 10:15 Entregado Cliente confirmou por telefone Confirmado por nuestro equipo",
        ),
        (
            "en",
            "Order PG-1",
            "Hi Ana,",
            "Current status Delivered",
            [
                "Mar 27, 2026, 2:40 PM Delivered Objeto entregue ao destinatário CAMPINAS/SP",
                "Mar 27, 2026, 8:10 AM Out for delivery Objeto saiu para entrega ao destinatário CAMPINAS/SP",
                "Mar 25, 2026, 7:02 PM In transit Objeto em transferência - por favor aguarde CAMPINAS/SP",
                "Mar 24, 2026, 11:30 AM Shipped Objeto postado CAMPINAS/SP",
            ],
            "Mar 28, 2026, 10:15 AM Delivered Cliente confirmou por telefone Confirmed by our team",
        ),
    ];
    for (lang, heading, greeting, current, expected, manual) in cases {
        // The delivered order: its whole timeline, newest first, in São Paulo time, nothing marked manual.
        let url = format!("{url1}?lang={lang}");
        let dom = browser.dom(&url).await?;
        assert!(dom.contains(&format!("<html lang=\"{lang}\">")), "{lang}");
        assert!(!dom.contains("<script"), "{lang}: a script");
        let page = visible(&dom);
        assert!(
            page.contains(heading) && page.contains(greeting),
            "{lang}: {page}"
        );
        assert!(page.contains(current), "{lang}: {page}");
        assert_eq!(timeline(&dom), expected, "{lang}");
        assert!(!page.contains("Souza"), "{lang}: more than the first name");
        assert_eq!(email_like(&page), None, "{lang}: an email address");
        assert!(
            !page.contains("MP-PG-1") && !page.contains("00012345"),
            "{lang}: order data"
        );
        assert!(
            dom.contains(&format!(
                "href=\"https://rastreamento.correios.com.br/app/index.php?objeto={delivered}\""
            )),
            "{lang}: the carrier's link"
        );
        browser
            .screenshot(&url, &format!("PG-1-delivered-{lang}"))
            .await?;

        // The confirmed order: support's confirmation on top, marked as such; the carrier's events are not.
        let url = format!("{url2}?lang={lang}");
        let dom = browser.dom(&url).await?;
        let items = timeline(&dom);
        assert_eq!(items.len(), 3, "{lang}: {items:?}");
        assert_eq!(items[0], manual, "{lang}");
        let marker = manual
            .rsplit(" Cliente confirmou por telefone ")
            .next()
            .unwrap();
        assert!(
            items[1..].iter().all(|i| !i.contains(marker)),
            "{lang}: {items:?}"
        );
        assert!(dom.contains("<li class=\"event manual\">"), "{lang}");
        let page = visible(&dom);
        assert!(
            !page.contains("Díaz") && email_like(&page).is_none(),
            "{lang}: {page}"
        );
        // Delivered: the estimate is no longer shown.
        assert!(
            !page.contains("30/03/2026") && !page.contains("Mar 30"),
            "{lang}: {page}"
        );
        browser
            .screenshot(&url, &format!("PG-2-confirmed-{lang}"))
            .await?;
    }

    // Without ?lang=: the browser's language, else the customer's (es for PG-2, pt-BR for PG-1).
    let (_, _, html) = api.page(&format!("/t/{}", token("PG-2")), None).await?;
    assert!(html.contains("<html lang=\"es\">"));
    let (_, _, html) = api.page(&format!("/t/{}", token("PG-1")), None).await?;
    assert!(html.contains("<html lang=\"pt-BR\">"));
    let (_, _, html) = api
        .page(
            &format!("/t/{}", token("PG-2")),
            Some("fr-FR,fr;q=0.9,en;q=0.8"),
        )
        .await?;
    assert!(html.contains("<html lang=\"en\">"));
    let (_, _, html) = api
        .page(&format!("/t/{}?lang=pt-BR", token("PG-2")), Some("en"))
        .await?;
    assert!(html.contains("<html lang=\"pt-BR\">"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_token_and_an_unknown_order_get_the_same_404_and_the_page_holds_no_email()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let api = Api::start(&env, &[("TRACKING_PAGE_SECRET", PAGE_SECRET.into())]).await?;
    let code = s10("PT", 3);
    let mut change = status_change(
        "PT-1",
        &code,
        "out_for_delivery",
        "in_transit",
        "ana.souza@example.com",
        Some(("acme", "MP-77")),
    );
    change["customer"]["name"] = "Ana Maria Souza".into();
    env.record_change(&change).await?;
    sqlx::query("UPDATE orders SET customer_name = 'Ana Maria Souza', invoice_number = 'NF-991' WHERE id IN \
        (SELECT order_ref FROM order_parcels op JOIN shipments s ON s.id = op.shipment_id WHERE s.tracking_code = $1)")
        .bind(&code)
        .execute(&env.pool)
        .await?;
    sqlx::query("UPDATE shipments SET status = 'out_for_delivery' WHERE tracking_code = $1")
        .bind(&code)
        .execute(&env.pool)
        .await?;

    // The real page: no bearer token needed, fresh on every visit, no script, no referrer.
    let good = token("PT-1");
    let (status, headers, html) = api.page(&format!("/t/{good}"), Some("en")).await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let header = |h: &reqwest::header::HeaderMap, name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&headers, "cache-control"), "no-cache, private");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
    let csp = header(&headers, "content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(html.contains("Hi Ana,") && html.contains("Out for delivery"));
    assert_eq!(
        email_like(&text(&html)),
        None,
        "an email address on the page"
    );
    for private in ["ana.souza", "Maria", "Souza", "MP-77", "NF-991", "acme"] {
        assert!(!html.contains(private), "{private} on the page");
    }

    // Every way of being wrong gets the same page: one flipped character, another order behind the same tag,
    // an order that does not exist (signed with the right key), another key, junk, nothing.
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped)?;
    let other_key = PageKey::new("another-secret-of-at-least-32-characters")?
        .token(&OrderId::parse("PT-1").unwrap());
    let unknown = token("NO-SUCH-ORDER");
    let (expected_status, _, expected) = api.page(&format!("/t/{unknown}"), Some("en")).await?;
    assert_eq!(expected_status, StatusCode::NOT_FOUND);
    assert!(expected.contains("Page not found"), "{expected}");
    for wrong in [
        flipped.as_str(),
        &other_key,
        &good[..good.len() - 2],
        "PT-1",
        "%00",
        "A",
    ] {
        let (status, headers, html) = api.page(&format!("/t/{wrong}"), Some("en")).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{wrong}");
        assert_eq!(html, expected, "{wrong}: not the same page");
        assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&headers, "cache-control"), "no-cache, private");
    }
    let (_, _, pt) = api.page(&format!("/t/{flipped}"), None).await?;
    assert!(pt.contains("<html lang=\"pt-BR\">") && pt.contains("Página não encontrada"));
    assert!(!pt.contains("PT-1"));

    // The same page again when the page is off (no secret), even for a token that would verify.
    let off = Api::start(&env, &[]).await?;
    let (status, _, html) = off.page(&format!("/t/{good}"), Some("en")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(html, expected);
    Ok(())
}

/// The link of the email's main button (HTML part), and the text part.
fn button_and_text(email: &Value) -> (String, String) {
    let html = email["html"].as_str().unwrap_or_default();
    let href = between(html, "<a href=\"", "\"")
        .unwrap_or_default()
        .replace("&amp;", "&");
    (href, email["text"].as_str().unwrap_or_default().to_owned())
}

async fn wait_emails(maildev: &Maildev, n: usize) -> anyhow::Result<Vec<Value>> {
    eventually(Duration::from_secs(30), "the emails", || async {
        let emails = maildev.emails().await?;
        Ok((emails.len() >= n).then_some(emails))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_email_button_opens_the_page_when_tracking_page_url_is_set_and_the_carrier_otherwise()
-> anyhow::Result<()> {
    let out = output_dir(
        "the_email_button_opens_the_page_when_tracking_page_url_is_set_and_the_carrier_otherwise",
    )?;
    let env = TestEnv::ready().await?;
    let maildev = Maildev::start().await?;
    let smtp = vec![
        ("SMTP_URL", maildev.smtp_url()),
        ("EMAIL_FROM", "Loja <noreply@loja.example>".into()),
    ];
    let amqp = env.amqp().await?;
    let code = s10("PE", 4);

    // Without TRACKING_PAGE_URL: the carrier's page, as before.
    let mut plain = Worker::started(&env, "email-publisher", &smtp).await?;
    let first = status_change(
        "PE-1",
        &code,
        "out_for_delivery",
        "in_transit",
        "ana@example.com",
        None,
    );
    env.record_change(&first).await?;
    amqp.publish("email.order-status", &serde_json::to_vec(&first)?)
        .await?;
    let emails = wait_emails(&maildev, 1).await?;
    let (href, text) = button_and_text(&emails[0]);
    assert_eq!(
        href,
        format!("https://rastreamento.correios.com.br/app/index.php?objeto={code}")
    );
    assert!(text.contains(&href), "{text}");
    plain.terminate()?;

    // TRACKING_PAGE_URL needs the secret, of at least 32 characters.
    for (extra, named) in [
        (
            vec![("TRACKING_PAGE_URL", "https://t.example".to_owned())],
            "TRACKING_PAGE_SECRET",
        ),
        (
            vec![
                ("TRACKING_PAGE_URL", "https://t.example".to_owned()),
                ("TRACKING_PAGE_SECRET", "too-short".to_owned()),
            ],
            "TRACKING_PAGE_SECRET",
        ),
        (
            vec![
                ("TRACKING_PAGE_URL", "t.example/no-scheme".to_owned()),
                ("TRACKING_PAGE_SECRET", PAGE_SECRET.to_owned()),
            ],
            "TRACKING_PAGE_URL",
        ),
    ] {
        let mut settings = smtp.clone();
        settings.extend(extra);
        let (status, output) = Worker::run_to_exit(&env, "email-publisher", &settings)?;
        assert_eq!(status, 2, "{output}");
        assert!(output.contains(named), "{output}");
        assert!(!output.contains(PAGE_SECRET), "the secret in the output");
    }

    // With it: the button opens the order's page, served by tracking-api under the same secret.
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let api = Api::start(&env, &[("TRACKING_PAGE_SECRET", PAGE_SECRET.into())]).await?;
    let mut settings = smtp.clone();
    settings.push(("TRACKING_PAGE_URL", format!("{}/", api.base)));
    settings.push(("TRACKING_PAGE_SECRET", PAGE_SECRET.into()));
    let _paged = Worker::started(&env, "email-publisher", &settings).await?;
    let second = status_change(
        "PE-1",
        &code,
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        None,
    );
    env.record_change(&second).await?;
    sqlx::query("UPDATE shipments SET status = 'delivered' WHERE tracking_code = $1")
        .bind(&code)
        .execute(&env.pool)
        .await?;
    sqlx::query("UPDATE orders SET customer_name = 'Ana Souza' WHERE id IN \
        (SELECT order_ref FROM order_parcels op JOIN shipments s ON s.id = op.shipment_id WHERE s.tracking_code = $1)")
        .bind(&code)
        .execute(&env.pool)
        .await?;
    amqp.publish("email.order-status", &serde_json::to_vec(&second)?)
        .await?;
    let emails = wait_emails(&maildev, 2).await?;
    let email = emails
        .iter()
        .find(|e| {
            e["subject"]
                .as_str()
                .unwrap_or_default()
                .contains("entregue")
        })
        .unwrap();
    let (href, text) = button_and_text(email);
    assert_eq!(href, format!("{}/t/{}", api.base, token("PE-1")));
    assert!(text.contains(&href), "{text}");
    assert!(!text.contains("rastreamento.correios"), "{text}");

    // Followed in a browser, the link shows the order, in the browser's language (headless Chromium asks for
    // en-US).
    let browser = Chromium::new(&out)?;
    let dom = browser.dom(&href).await?;
    assert!(dom.contains("<html lang=\"en\">"));
    let page = visible(&dom);
    assert!(
        page.contains("Order PE-1")
            && page.contains("Hi Ana,")
            && page.contains("Current status Delivered"),
        "{page}"
    );
    browser.screenshot(&href, "from-the-email").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_answers_429_to_a_client_beyond_its_rate_and_serves_the_others()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let api = Api::start(
        &env,
        &[
            ("TRACKING_PAGE_SECRET", PAGE_SECRET.into()),
            ("TRACKING_PAGE_BURST", "3".into()),
            ("TRACKING_PAGE_RATE_PER_MINUTE", "1".into()),
        ],
    )
    .await?;
    let flooder = api.from("127.0.0.1")?;
    let unknown = format!("/t/{}", token("NO-SUCH-ORDER"));
    for n in 1..=3 {
        let (status, _) = flooder.status(&unknown).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "page {n} of the burst");
    }
    // Beyond the burst: 429 with the "try again" page, wrong token or right one, before anything is read.
    for path in [unknown.clone(), "/t/junk".into()] {
        let resp = flooder
            .http
            .get(api.url(&path))
            .header("accept-language", "en")
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = resp.headers()["retry-after"].to_str()?.parse()?;
        assert!((1..=60).contains(&retry), "Retry-After: {retry}");
        assert_eq!(resp.headers()["cache-control"], "no-cache, private");
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        let html = resp.text().await?;
        assert!(html.contains("Tracking unavailable"), "{html}");
    }
    // Another client (another loopback address) is not affected, and the /v1 API has no such limit.
    let other = api.from("127.0.0.2")?;
    let (status, _) = other.status(&unknown).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = flooder.status("/openapi.json").await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parcel_with_a_long_history_shows_its_newest_events_and_says_there_are_more()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let api = Api::start(
        &env,
        &[
            ("TRACKING_PAGE_SECRET", PAGE_SECRET.into()),
            ("TRACKING_PAGE_MAX_EVENTS", "5".into()),
        ],
    )
    .await?;
    let mut ids = Vec::new();
    for n in 1..=2 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO shipments (carrier, tracking_code) VALUES ('correios', $1) RETURNING id",
        )
        .bind(s10("LG", n))
        .fetch_one(&env.pool)
        .await?;
        tracking_tests::add_order(
            &env.pool,
            id,
            &tracking_tests::Order::new("LONG-1", "ana@example.com"),
        )
        .await?;
        ids.push(id);
    }
    // 20,000 events an hour apart on the first (inserted newest first), 3 on the second.
    for (id, count) in [(ids[0], 20_000), (ids[1], 3)] {
        sqlx::query(
            "INSERT INTO tracking_events (shipment_id, fingerprint, source, code, description, occurred_at) \
             SELECT $1, $1 || '-fp-' || n, 'carrier', 'E' || n, 'event number ' || n || '.', \
                    TIMESTAMPTZ '2024-01-01T10:00:00Z' + make_interval(hours => n) \
             FROM generate_series($2::int, 1, -1) AS n",
        )
        .bind(id)
        .bind(count)
        .execute(&env.pool)
        .await?;
    }
    let (status, _, html) = api
        .page(&format!("/t/{}", token("LONG-1")), Some("en"))
        .await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (long, short) = html
        .split_once(&s10("LG", 2))
        .ok_or_else(|| anyhow::anyhow!("the second shipment is missing: {html}"))?;
    let events = |part: &str| {
        part.split("<p class=\"says\">")
            .skip(1)
            .filter_map(|p| p.split('<').next())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        events(long),
        (19_996..=20_000)
            .rev()
            .map(|n| format!("event number {n}."))
            .collect::<Vec<_>>(),
        "the newest five, newest first"
    );
    assert_eq!(long.matches("Older events are not shown here.").count(), 1);
    assert_eq!(events(short).len(), 3);
    assert!(!short.contains("Older events are not shown here."));
    Ok(())
}
