//! `tracking-api` end to end: the real binary over HTTP (reqwest), with the real normalizer, email publisher and
//! marketplace publisher behind it, on the real RabbitMQ and PostgreSQL, an SMTP server and a marketplace receiver.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tracking_sim::marketplace::Receiver;
use tracking_sim::smtp::SmtpServer;
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, eventually, free_addr, marketplaces_file,
    request, s10, wait_changes_published, wait_finished,
};

const TOKEN: &str = "api-token-for-tests-0123456789-abcdef";
const SECRET: &str = "webhook-secret-for-tests-0123";

async fn env() -> anyhow::Result<TestEnv> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    Ok(env)
}

async fn start(env: &TestEnv, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    let mut w = Worker::spawn(env, name, extra)?;
    w.wait_healthy(Duration::from_secs(60)).await?;
    Ok(w)
}

struct Api {
    worker: Worker,
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn start(env: &TestEnv, extra: &[(&str, String)]) -> anyhow::Result<Api> {
        let addr = free_addr();
        let mut settings = vec![
            ("HTTP_ADDR", addr.to_string()),
            ("API_TOKEN", TOKEN.to_owned()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let worker = start(env, "tracking-api", &settings).await?;
        // The address it listens on: another than `addr` when that port was taken before it could bind it.
        let base = format!("http://{}", worker.http_addr()?);
        Ok(Api {
            worker,
            base,
            http: reqwest::Client::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await?;
        Ok((resp.status(), resp.json().await?))
    }

    /// A POST with a raw body and content type.
    async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        Ok((resp.status(), resp.json().await?))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        Ok((resp.status(), resp.json().await?))
    }
}

/// Registers a shipment the way the fetcher would after a poll where the carrier had no events yet (SRO-020).
async fn register(env: &TestEnv, req: &Value, code: &str) -> anyhow::Result<()> {
    let amqp = env.amqp().await?;
    let mut update = carrier_update(code, Some(req), &[]);
    update["carrier_message"] =
        "SRO-020: Objeto não encontrado na base de dados dos Correios".into();
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
        .await?;
    eventually(
        Duration::from_secs(20),
        "the shipment registered",
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM shipments WHERE tracking_code = $1")
                    .bind(code)
                    .fetch_one(&env.pool)
                    .await?;
            Ok((n == 1).then_some(()))
        },
    )
    .await
}

async fn status_of(env: &TestEnv, code: &str) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT status FROM shipments WHERE tracking_code = $1")
            .bind(code)
            .fetch_one(&env.pool)
            .await?,
    )
}

fn fields(body: &Value) -> Vec<String> {
    body["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_delivery_confirmation_sends_one_email_and_one_marketplace_call()
-> anyhow::Result<()> {
    let env = env().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let file = marketplaces_file(&env, "acme", &receiver.url(), SECRET)?
        .display()
        .to_string();
    let normalizer = start(&env, "normalizer", &[]).await?;
    let email = start(
        &env,
        "email-publisher",
        &[
            ("SMTP_URL", smtp.url()),
            ("EMAIL_FROM", "Loja <noreply@loja.example>".into()),
            ("MARKETPLACES_FILE", file.clone()),
        ],
    )
    .await?;
    let market = start(
        &env,
        "marketplace-publisher",
        &[("MARKETPLACES_FILE", file)],
    )
    .await?;
    let api = Api::start(&env, &[]).await?;

    let code = s10("MC", 1);
    let req = request("MC-1", &code, "ana@example.com", "pt-BR", Some("acme"));
    register(&env, &req, &code).await?;
    assert_eq!(status_of(&env, &code).await?, "registered");

    let confirmation = json!({"delivered_at": "2025-11-24T16:05:00-03:00", "note": "Cliente confirmou por telefone"});
    let (status, body) = api
        .post("/v1/orders/MC-1/delivery-confirmation", &confirmation)
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(
        body["shipments"],
        json!([{"carrier": "correios", "tracking_code": code}])
    );
    eventually(
        Duration::from_secs(30),
        "one email and one marketplace call",
        || async {
            Ok((!smtp.received().is_empty() && !receiver.calls().is_empty()).then_some(()))
        },
    )
    .await?;
    // The same confirmation again (support clicked twice): stored once, nothing new.
    let (status, _) = api
        .post("/v1/orders/MC-1/delivery-confirmation", &confirmation)
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A late carrier event, older than the confirmation: delivered does not flip back.
    let amqp = env.amqp().await?;
    let late = carrier_update(
        &code,
        None,
        &[correios_event("OEC", "01", "2025-11-24T09:00:00-03:00")],
    );
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&late)?)
        .await?;
    eventually(Duration::from_secs(20), "the late event stored", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
            .fetch_one(&env.pool)
            .await?;
        Ok((n == 2).then_some(()))
    })
    .await?;
    // Settled: the normalizer handled the registration, what the API queued and the late event; every change
    // was published and each publisher handled each once. Nothing is left to make a second email or call.
    let queued = api.worker.metric("api_published_total").await? as u64;
    let within = Duration::from_secs(30);
    wait_finished(
        &amqp,
        &normalizer,
        "normalizer.carrier-events",
        2 + queued,
        within,
    )
    .await?;
    let changes = wait_changes_published(&env.pool, within).await? as u64;
    wait_finished(&amqp, &email, "email.order-status", changes, within).await?;
    wait_finished(&amqp, &market, "marketplace.order-status", changes, within).await?;

    assert_eq!(status_of(&env, &code).await?, "delivered");
    let calls = receiver.calls();
    assert_eq!(calls.len(), 1, "one marketplace call");
    let change = calls[0].json.clone().unwrap();
    assert_eq!(change["status"], "delivered");
    assert_eq!(change["previous_status"], "registered");
    assert_eq!(change["source"], "manual");
    assert_eq!(change["occurred_at"], "2025-11-24T16:05:00-03:00");
    assert_eq!(change["event"]["code"], "MANUAL");
    assert_eq!(
        change["event"]["description"],
        "Cliente confirmou por telefone"
    );
    assert_eq!(change["marketplace"]["order_id"], "MP-MC-1");
    assert!(calls[0].signature_valid);
    let emails = smtp.received();
    assert_eq!(emails.len(), 1, "one email");
    assert_eq!(emails[0].to, vec!["ana@example.com".to_owned()]);
    assert_eq!(
        emails[0].header("Message-ID"),
        Some(format!(
            "<{}@loja.example>",
            change["change_id"].as_str().unwrap()
        ))
    );
    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM status_changes")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(changes, 1);
    assert_eq!(amqp.count("normalizer.carrier-events.dead").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_publish_nothing() -> anyhow::Result<()> {
    let env = env().await?;
    let file = marketplaces_file(&env, "acme", "http://127.0.0.1:9/hook", SECRET)?
        .display()
        .to_string();
    let api = Api::start(
        &env,
        &[
            ("API_BODY_LIMIT_BYTES", "2048".into()),
            ("MARKETPLACES_FILE", file),
        ],
    )
    .await?;
    let amqp = env.amqp().await?;
    let code = s10("BR", 1);
    let path = "/v1/tracking-requests";

    let (status, body) = api
        .post(
            path,
            &json!({"order_id": "B-1", "tracking_code": code, "customer": {"locale": "fr"}}),
        )
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["customer.email", "customer.locale"]);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("customer.email: is required") && error.contains("customer.locale"),
        "{error}"
    );

    let (status, body) = api
        .post(
            path,
            &json!({"order_id": "B-1", "tracking_code": "AA123456789BR", "customer": {"email": "a@b.co"}}),
        )
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["carrier"], "{body}");

    let (status, body) = api
        .post_raw(path, "application/json", b"{\"order_id\": ".to_vec())
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let (status, body) = api.post_raw(path, "application/json", Vec::new()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("empty"), "{body}");

    let valid = serde_json::to_vec(&request("B-2", &code, "ana@example.com", "en", None))?;
    let (status, body) = api.post_raw(path, "text/plain", valid.clone()).await?;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("application/json"),
        "{body}"
    );

    let mut big = request("B-3", &code, "ana@example.com", "en", None);
    big["customer"]["name"] = "x".repeat(4096).into();
    let (status, body) = api
        .post_raw(path, "application/json", serde_json::to_vec(&big)?)
        .await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("2048 bytes"),
        "{body}"
    );

    let (status, body) = api.post(path, &json!([1, 2])).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["$"]);

    // Manual events and confirmations.
    let events = format!("/v1/shipments/{code}/events");
    let (status, body) = api
        .post(
            &events,
            &json!({"status": "lost", "occurred_at": "2025-11-24T16:05:00", "location": "Campinas"}),
        )
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["status", "occurred_at", "location"]);
    assert!(
        body["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("out_for_delivery"),
        "the message lists the statuses: {body}"
    );
    let (status, body) = api
        .post(
            &events,
            &json!({"status": "out_for_delivery", "occurred_at": "2025-11-24T16:05:00-03:00"}),
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&code), "{body}");
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let (status, body) = api
        .post(
            "/v1/orders/B-9/delivery-confirmation",
            &json!({"delivered_at": future, "note": 7}),
        )
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["delivered_at", "note"]);
    let (status, body) = api
        .post(
            "/v1/orders/B-9/delivery-confirmation",
            &json!({"delivered_at": "2025-11-24T16:05:00-03:00"}),
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["details"], json!([]));

    // Nothing of the above reached a queue.
    assert_eq!(amqp.count("tracking.requests").await?, 0);
    assert_eq!(amqp.count("normalizer.carrier-events").await?, 0);

    // A good request is queued, normalized (carrier detected, code upper case).
    let mut good = request(
        "B-4",
        &code.to_lowercase(),
        "ana@example.com",
        "en",
        Some("acme"),
    );
    good["something_new"] = 1.into();
    let (status, body) = api.post(path, &good).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body,
        json!({"status": "queued", "order_id": "B-4", "tracking_code": code, "carrier": "correios"})
    );
    let queued = amqp.drain("tracking.requests").await?;
    assert_eq!(queued.len(), 1);
    let sent: Value = serde_json::from_slice(&queued[0].body)?;
    assert_eq!(sent["tracking_code"], code.as_str());
    assert_eq!(sent["carrier"], "correios");
    assert_eq!(sent["customer"]["locale"], "en");
    assert_eq!(sent["marketplace"]["order_id"], "MP-B-4");
    assert!(sent.get("something_new").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_request_naming_an_unknown_marketplace_gets_422_and_publishes_nothing()
-> anyhow::Result<()> {
    let env = env().await?;
    let amqp = env.amqp().await?;
    let file = marketplaces_file(&env, "acme", "http://127.0.0.1:9/hook", SECRET)?
        .display()
        .to_string();
    let api = Api::start(&env, &[("MARKETPLACES_FILE", file.clone())]).await?;
    let path = "/v1/tracking-requests";
    let code = s10("UM", 1);

    let (status, body) = api
        .post(
            path,
            &request("UM-1", &code, "ana@example.com", "en", Some("nope")),
        )
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["marketplace.name"], "{body}");
    let message = body["details"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("\"nope\"") && message.contains("acme"),
        "{message}"
    );
    // With another wrong field, both are named at once.
    let mut both = request("UM-1", &code, "ana@example.com", "en", Some("nope"));
    both["customer"]["email"] = Value::Null;
    let (status, body) = api.post(path, &both).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        fields(&body),
        ["customer.email", "marketplace.name"],
        "{body}"
    );
    assert_eq!(amqp.count("tracking.requests").await?, 0);
    // The configured one is queued.
    let (status, body) = api
        .post(
            path,
            &request("UM-1", &code, "ana@example.com", "en", Some("acme")),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(amqp.drain("tracking.requests").await?.len(), 1);
    // The file's secret is in no log line.
    assert!(!api.worker.log_text().contains(SECRET));
    drop(api);

    // Without MARKETPLACES_FILE nothing could relay to a marketplace: naming one is refused, not naming one is fine.
    let bare = Api::start(&env, &[]).await?;
    let (status, body) = bare
        .post(
            path,
            &request("UM-2", &code, "ana@example.com", "en", Some("acme")),
        )
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["marketplace.name"], "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("MARKETPLACES_FILE"),
        "{body}"
    );
    let (status, body) = bare
        .post(path, &request("UM-2", &code, "ana@example.com", "en", None))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(amqp.drain("tracking.requests").await?.len(), 1);

    // A file that does not parse stops it at start (exit code 2), naming the setting but not quoting the secret.
    let broken = env.log_dir().join("broken-marketplaces.toml");
    std::fs::write(
        &broken,
        format!("[[marketplace]]\nname = \"acme\"\nkind = \"webhook\"\nsecret = \"{SECRET}\" x\n"),
    )?;
    let (code, out) = Worker::run_to_exit(
        &env,
        "tracking-api",
        &[
            ("API_TOKEN", TOKEN.into()),
            ("HTTP_ADDR", free_addr().to_string()),
            ("MARKETPLACES_FILE", broken.display().to_string()),
        ],
    )?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("MARKETPLACES_FILE"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_text_fields_get_422_naming_the_field_and_publish_nothing()
-> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(&env, &[]).await?;
    let amqp = env.amqp().await?;
    let code = s10("CC", 1);
    // A registered shipment, so that an accepted event would be published.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO shipments (carrier, tracking_code) VALUES ('correios', $1) RETURNING id",
    )
    .bind(&code)
    .fetch_one(&env.pool)
    .await?;
    tracking_tests::add_order(
        &env.pool,
        id,
        &tracking_tests::Order::new("CC-1", "ana@example.com"),
    )
    .await?;
    let events = format!("/v1/shipments/{code}/events");
    let at = "2025-11-24T16:05:00-03:00";
    for (body, field) in [
        (
            json!({"status": "out_for_delivery", "occurred_at": at, "description": "Saiu\u{0}"}),
            "description",
        ),
        (
            json!({"status": "out_for_delivery", "occurred_at": at, "location": {"city": "Campinas\u{0}", "state": "SP"}}),
            "location.city",
        ),
        (
            json!({"status": "out_for_delivery", "occurred_at": at, "location": {"city": "Campinas", "state": "S\nP"}}),
            "location.state",
        ),
        // Not read, but it would travel in the event's raw JSON to PostgreSQL.
        (
            json!({"status": "out_for_delivery", "occurred_at": at, "ticket": "T-1\u{0}"}),
            "ticket",
        ),
    ] {
        let (status, answer) = api.post(&events, &body).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(fields(&answer), [field], "{answer}");
    }
    for (body, field) in [
        (json!({"delivered_at": at, "note": "ok\u{0}"}), "note"),
        (json!({"delivered_at": at, "note": "ok\u{1b}[2J"}), "note"),
        (json!({"delivered_at": at, "by": "\u{0}"}), "by"),
    ] {
        let (status, answer) = api
            .post("/v1/orders/CC-1/delivery-confirmation", &body)
            .await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(fields(&answer), [field], "{answer}");
    }
    assert_eq!(amqp.count("normalizer.carrier-events").await?, 0);

    // The customer's name too (validated by TrackingRequest::from_value).
    let mut req = request("CC-1", &code, "ana@example.com", "pt-BR", None);
    req["customer"]["name"] = "Ana\u{0}Souza".into();
    let (status, answer) = api.post("/v1/tracking-requests", &req).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(fields(&answer), ["customer.name"], "{answer}");
    assert_eq!(amqp.count("tracking.requests").await?, 0);

    // Line breaks in a description are text; the event is published.
    let (status, answer) = api
        .post(
            &events,
            &json!({"status": "out_for_delivery", "occurred_at": at, "description": "Saiu\npara entrega"}),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(amqp.count("normalizer.carrier-events").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_token_get_401_and_the_openapi_document_covers_every_route()
-> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(&env, &[]).await?;
    let amqp = env.amqp().await?;
    let served = tracking_api::routes();
    let concrete = |path: &str| {
        path.replace("{tracking_code}", &s10("AU", 1))
            .replace("{order_id}", "AU-1")
            .replace("{email}", "a@b.co")
    };
    let body = json!({"order_id": "AU-1", "tracking_code": s10("AU", 1), "customer": {"email": "a@b.co"},
                      "status": "delivered", "occurred_at": "2025-11-24T16:05:00-03:00", "delivered_at": "2025-11-24T16:05:00-03:00"});
    for (method, path) in served.iter().filter(|(_, p)| p.starts_with("/v1/")) {
        let url = api.url(&concrete(path));
        let build = || match *method {
            "get" => api.http.get(&url),
            "delete" => api.http.delete(&url),
            _ => api.http.post(&url).json(&body),
        };
        for (what, req) in [
            ("no token", build()),
            ("wrong token", build().bearer_auth("not-the-token")),
            ("a prefix of the token", build().bearer_auth(&TOKEN[..10])),
            ("basic auth", build().basic_auth("admin", Some(TOKEN))),
        ] {
            let resp = req.send().await?;
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {path}"
            );
            assert!(
                resp.headers()
                    .get("www-authenticate")
                    .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
                "{what}"
            );
            let err: Value = resp.json().await?;
            assert!(
                err["error"].is_string() && err["details"].is_array(),
                "{err}"
            );
        }
    }
    assert_eq!(amqp.count("tracking.requests").await?, 0);
    assert_eq!(amqp.count("normalizer.carrier-events").await?, 0);

    // The document needs no token, and describes every route the router serves.
    let resp = api.http.get(api.url("/openapi.json")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await?;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(served.len(), 12, "{served:?}");
    for (method, path) in &served {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in openapi.json");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
        if path.starts_with("/v1/") {
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} does not document 401"
            );
        }
        if *method == "post" && path.starts_with("/u/") {
            // The unsubscribe link takes any body, unread (RFC 8058): only an unknown token is refused.
            assert!(
                op["requestBody"].is_object() && op["responses"]["404"].is_object(),
                "{method} {path} lacks its body or its 404"
            );
        } else if *method == "post" {
            assert!(
                op["requestBody"].is_object()
                    && ["400", "408", "413", "415", "422"]
                        .iter()
                        .all(|s| op["responses"][s].is_object()),
                "{method} {path} lacks its body or errors"
            );
        }
    }
    // And every documented route is served (with the token: an answer, not "no route").
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = api.url(&concrete(path));
            let req = match method.as_str() {
                "get" => api.http.get(&url),
                "post" => api.http.post(&url).json(&json!({})),
                "delete" => api.http.delete(&url),
                other => panic!("unexpected method {other} for {path}"),
            };
            let resp = req.bearer_auth(TOKEN).send().await?;
            let status = resp.status();
            // The tracking page answers HTML (its own 404 page here); the fallback's "no route" is JSON.
            let answer: Value = serde_json::from_str(&resp.text().await?).unwrap_or(Value::Null);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !answer["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("no route")),
                "{method} {path} is documented but not served: {answer}"
            );
        }
    }
    let (status, answer) = api.get("/v1/nothing-here").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["error"].as_str().unwrap().starts_with("no route"));
    let resp = api
        .http
        .delete(api.url("/v1/tracking-requests"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    // The empty bodies above were refused: still nothing published.
    assert_eq!(amqp.count("tracking.requests").await?, 0);
    assert_eq!(amqp.count("normalizer.carrier-events").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_tracking_returns_the_history_with_the_carriers_offsets() -> anyhow::Result<()> {
    let env = env().await?;
    let _normalizer = start(&env, "normalizer", &[]).await?;
    let api = Api::start(&env, &[]).await?;
    let amqp = env.amqp().await?;
    let code = s10("HI", 1);
    let other = s10("HI", 2);
    let req = request("HI-1", &code, "ana@example.com", "pt-BR", None);
    let update = carrier_update(
        &code,
        Some(&req),
        &[
            // Newest first, as Correios sends them: the history is by carrier time.
            correios_event("RO", "01", "2025-11-21T08:00:00-03:00"),
            correios_event("PO", "01", "2025-11-20T10:00:00-03:00"),
        ],
    );
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
        .await?;
    register(
        &env,
        &request("HI-1", &other, "ana@example.com", "pt-BR", None),
        &other,
    )
    .await?;
    eventually(Duration::from_secs(20), "in transit", || async {
        Ok((status_of(&env, &code).await? == "in_transit").then_some(()))
    })
    .await?;
    let manual = json!({"status": "out_for_delivery", "occurred_at": "2025-11-22T07:30:00-02:00",
                        "description": "Saiu para entrega", "location": {"city": "Campinas", "state": "SP"}});
    let (status, body) = api
        .post(
            &format!("/v1/shipments/{}/events", code.to_lowercase()),
            &manual,
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["event"]["status"], "out_for_delivery");
    eventually(Duration::from_secs(20), "out for delivery", || async {
        Ok((status_of(&env, &code).await? == "out_for_delivery").then_some(()))
    })
    .await?;

    let (status, body) = api.get("/v1/orders/HI-1/tracking").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order_id"], "HI-1");
    let shipments = body["shipments"].as_array().unwrap();
    assert_eq!(shipments.len(), 2);
    let s = shipments
        .iter()
        .find(|s| s["tracking_code"] == code.as_str())
        .unwrap();
    assert_eq!(s["carrier"], "correios");
    assert_eq!(s["status"], "out_for_delivery");
    assert!(s.get("status_reason").is_some() && s.get("estimated_delivery").is_some());
    let events = s["events"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["code"].as_str().unwrap(),
                e["occurred_at"].as_str().unwrap(),
                e["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("PO", "2025-11-20T10:00:00-03:00", "carrier"),
            ("RO", "2025-11-21T08:00:00-03:00", "carrier"),
            ("MANUAL", "2025-11-22T07:30:00-02:00", "manual"),
        ]
    );
    assert_eq!(events[1]["status"], "in_transit");
    assert_eq!(
        events[1]["location"],
        json!({"city": "CAMPINAS", "state": "SP"})
    );
    assert_eq!(events[2]["description"], "Saiu para entrega");
    assert_eq!(
        events[2]["location"],
        json!({"city": "Campinas", "state": "SP"})
    );
    let changes: Vec<(&str, &str, &str)> = s["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["previous_status"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("registered", "in_transit", "carrier"),
            ("in_transit", "out_for_delivery", "manual")
        ]
    );
    assert_eq!(s["changes"][1]["occurred_at"], "2025-11-22T07:30:00-02:00");
    assert_eq!(s["changes"][1]["event"]["code"], "MANUAL");
    let registered = shipments
        .iter()
        .find(|s| s["tracking_code"] == other.as_str())
        .unwrap();
    assert_eq!(registered["status"], "registered");
    assert_eq!(registered["events"], json!([]));
    assert!(
        registered["carrier_message"]
            .as_str()
            .unwrap()
            .starts_with("SRO-020")
    );

    let (status, body) = api.get("/v1/orders/NO-SUCH-ORDER/tracking").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("NO-SUCH-ORDER"));

    // Confirming the order's delivery confirms each of its shipments.
    let (status, body) = api
        .post(
            "/v1/orders/HI-1/delivery-confirmation",
            &json!({"delivered_at": "2025-11-23T11:00:00-03:00"}),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["shipments"].as_array().unwrap().len(), 2, "{body}");
    eventually(Duration::from_secs(20), "both delivered", || async {
        Ok((status_of(&env, &code).await? == "delivered"
            && status_of(&env, &other).await? == "delivered")
            .then_some(()))
    })
    .await?;
    let (_, body) = api.get("/v1/orders/HI-1/tracking").await?;
    for s in body["shipments"].as_array().unwrap() {
        let last = s["events"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["description"], tracking_api::CONFIRMATION_DESCRIPTION);
        assert_eq!(last["occurred_at"], "2025-11-23T11:00:00-03:00");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriers_health_reads_the_fetchers_reports() -> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(&env, &[]).await?;
    let (status, body) = api.get("/v1/carriers/health").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"carriers": {"correios": {"state": "unknown"}, "jadlog": {"state": "unknown"}}})
    );
    sqlx::query(
        "INSERT INTO carrier_health (carrier, state, reason, counters, updated_at) \
         VALUES ('correios', 'broken', 'authentication: 401 Unauthorized', '{\"auth_failures\": 3, \"calls\": 40}', '2025-11-24T18:00:00Z')",
    )
    .execute(&env.pool)
    .await?;
    let (status, body) = api.get("/v1/carriers/health").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["carriers"]["correios"],
        json!({"state": "broken", "reason": "authentication: 401 Unauthorized",
               "updated_at": "2025-11-24T18:00:00Z", "counters": {"auth_failures": 3, "calls": 40}})
    );
    assert_eq!(body["carriers"]["jadlog"], json!({"state": "unknown"}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_refuses_to_start_without_a_long_token_reports_a_missing_broker_and_stops_on_sigterm()
-> anyhow::Result<()> {
    let env = env().await?;
    let (code, out) = Worker::run_to_exit(&env, "tracking-api", &[])?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("API_TOKEN"), "{out}");
    // A placeholder or any token under 32 characters is refused too, without being printed.
    for short in ["REPLACE_ME", "this-token-has-31-characters-xx"] {
        let (code, out) =
            Worker::run_to_exit(&env, "tracking-api", &[("API_TOKEN", short.into())])?;
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains("API_TOKEN") && out.contains("at least 32 characters"),
            "{out}"
        );
        assert!(!out.contains(short), "the token is printed: {out}");
    }
    let (code, out) = Worker::run_to_exit(
        &env,
        "tracking-api",
        &[
            ("API_TOKEN", TOKEN.into()),
            ("HTTP_ADDR", "not-an-address".into()),
        ],
    )?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("HTTP_ADDR"), "{out}");

    // RabbitMQ unreachable: /health says so, and a request is refused with 503, not lost silently.
    let addr = free_addr();
    let broker_down = Worker::spawn(
        &env,
        "tracking-api",
        &[
            ("HTTP_ADDR", addr.to_string()),
            ("API_TOKEN", TOKEN.into()),
            ("AMQP_URL", format!("amqp://guest:guest@{}/", free_addr())),
        ],
    )?;
    let (status, health) = eventually(Duration::from_secs(20), "/health", || async {
        Ok(broker_down
            .health()
            .await
            .ok()
            .filter(|(_, h)| h["components"]["postgres"] == "up"))
    })
    .await?;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["components"]["rabbitmq"], "down", "{health}");
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/tracking-requests"))
        .bearer_auth(TOKEN)
        .json(&request(
            "S-1",
            &s10("SD", 1),
            "ana@example.com",
            "en",
            None,
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot queue the tracking request"),
        "{body}"
    );
    drop(broker_down);

    let mut api = Api::start(&env, &[]).await?;
    let (status, health) = api.worker.health().await?;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    let exit = api.worker.terminate()?;
    assert!(exit.success(), "{exit:?}\n{}", api.worker.log_text());
    Ok(())
}
