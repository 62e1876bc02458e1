//! The customer's rights end to end (issue 20, points 3 and 4; docs/privacy.md): access and erasure on request
//! through `tracking-api` and `trackctl`, and erasure by retention in the scheduler, with the real normalizer,
//! email publisher, scheduler and `tracking-api` on the real RabbitMQ and PostgreSQL, emails caught by the SMTP
//! simulator. "Nothing of it left" is checked by reading every text and JSON column of every table.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use tracking_domain::{EmailAddress, OrderId, PageKey, UnsubscribeKey};
use tracking_sim::smtp::SmtpServer;
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, eventually, free_addr, request, s10,
    target_dir,
};

const API_TOKEN: &str = "api-token-for-customer-rights-tests-0123456789";
const UNSUBSCRIBE_SECRET: &str = "unsubscribe-secret-for-tests-0123456789";
const PAGE_SECRET: &str = "tracking-page-secret-for-tests-0123456789";

/// The order's tracking page (as the customer sees it), in English.
async fn page(http: &reqwest::Client, base: &str, order_id: &str) -> anyhow::Result<String> {
    let token = PageKey::new(PAGE_SECRET)?.token(&OrderId::parse(order_id).unwrap());
    let resp = http.get(format!("{base}/t/{token}?lang=en")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    Ok(resp.text().await?)
}

/// A tracking request of `order_id` for `email`, with the customer's own name.
fn request_of(order_id: &str, code: &str, email: &str, name: &str) -> Value {
    let mut r = request(order_id, code, email, "pt-BR", None);
    r["customer"]["name"] = Value::from(name);
    r
}

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

async fn changes_of(env: &TestEnv, order_id: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM status_changes sc JOIN orders o ON o.id = sc.order_ref WHERE o.order_id = $1",
    )
    .bind(order_id)
    .fetch_one(&env.pool)
    .await?)
}

async fn wait_changes(env: &TestEnv, order_id: &str, n: i64) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(30),
        &format!("{n} changes of {order_id}"),
        || async { Ok((changes_of(env, order_id).await? >= n).then_some(())) },
    )
    .await
}

/// Every `(table.column, rows)` of the public schema whose text, JSON or bytes hold `needle` in any case.
async fn everywhere(env: &TestEnv, needle: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'bytea') \
         ORDER BY table_name, column_name",
    )
    .fetch_all(&env.pool)
    .await?;
    assert!(
        columns.iter().any(|c| c.0 == "orders"),
        "the scan sees the orders"
    );
    let mut found = Vec::new();
    for (table, column, kind) in columns {
        let expr = if kind == "bytea" {
            format!("encode(\"{column}\", 'escape')")
        } else {
            format!("\"{column}\"::text")
        };
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{table}\" WHERE strpos(lower({expr}), lower($1)) > 0"
        ))
        .bind(needle)
        .fetch_one(&env.pool)
        .await?;
        if n > 0 {
            found.push((format!("{table}.{column}"), n));
        }
    }
    Ok(found)
}

/// A kept carrier answer whose requests are these (as the fetcher keeps an unreadable answer).
async fn keep_carrier_answer(env: &TestEnv, requests: &[&Value]) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO carrier_responses (carrier, requests, http_status, body, error) \
         VALUES ('correios', $1, 200, '{}', 'unreadable')",
    )
    .bind(serde_json::to_value(requests)?)
    .execute(&env.pool)
    .await?;
    Ok(())
}

/// A failed marketplace delivery of the order's first change whose error quotes the address (as a far end's
/// answer may).
async fn failed_delivery_quoting(env: &TestEnv, order_id: &str, email: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO deliveries (destination, change_id, state, attempts, last_error) \
         SELECT 'marketplace:acme', sc.change_id, 'failed', 1, $2 FROM status_changes sc \
         JOIN orders o ON o.id = sc.order_ref WHERE o.order_id = $1 ORDER BY sc.seq LIMIT 1",
    )
    .bind(order_id)
    .bind(format!("422: customer <{email}> unknown"))
    .execute(&env.pool)
    .await?;
    Ok(())
}

fn emails_to(smtp: &SmtpServer, address: &str) -> usize {
    smtp.received()
        .into_iter()
        .filter(|r| r.to.iter().any(|t| t == address))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_on_request_leaves_nothing_of_the_address_and_its_queued_email_unsent()
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
            ("UNSUBSCRIBE_SECRET", UNSUBSCRIBE_SECRET.into()),
            ("TRACKING_PAGE_SECRET", PAGE_SECRET.into()),
        ],
    )
    .await?;
    let email_settings = [
        ("SMTP_URL", smtp.url()),
        ("EMAIL_FROM", "Loja <noreply@loja.example>".into()),
        ("SMTP_TIMEOUT_MS", "2000".into()),
        ("UNSUBSCRIBE_SECRET", UNSUBSCRIBE_SECRET.into()),
    ];
    let http = reqwest::Client::new();
    let (ana, bia) = ("ana.souza@example.com", "bia.lima@example.com");
    let (code_a, code_b) = (s10("RA", 1), s10("RB", 2));
    let req_a = request_of("R-1", &code_a, ana, "Ana Souza");
    let req_b = request_of("R-2", &code_b, bia, "Bia Lima");
    let posted = correios_event("PO", "01", "2026-11-30T10:00:00-03:00");
    let out = correios_event("OEC", "01", "2026-12-01T08:00:00-03:00");

    // Both parcels are posted and both customers get that email.
    let mut publisher = Worker::started(&env, "email-publisher", &email_settings).await?;
    carrier_says(&env, &code_a, Some(&req_a), std::slice::from_ref(&posted)).await?;
    carrier_says(&env, &code_b, Some(&req_b), std::slice::from_ref(&posted)).await?;
    eventually(Duration::from_secs(30), "the posted emails", || async {
        Ok((emails_to(&smtp, ana) == 1 && emails_to(&smtp, bia) == 1).then_some(()))
    })
    .await?;
    eventually(Duration::from_secs(10), "the emails recorded", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE destination = 'email' AND state = 'done'",
        )
        .fetch_one(&env.pool)
        .await?;
        Ok((done == 2).then_some(()))
    })
    .await?;
    publisher.terminate()?;

    // Ana's parcel goes out for delivery while the email publisher is away: that email waits in the queue.
    carrier_says(&env, &code_a, None, std::slice::from_ref(&out)).await?;
    wait_changes(&env, "R-1", 2).await?;

    // Access: her orders, parcels, changes and the email sent; any case of the address; an unknown address has
    // empty lists; a malformed one is refused; no token, no answer.
    let data: Value = http
        .get(format!("{base}/v1/customers/Ana.Souza@Example.com/data"))
        .bearer_auth(API_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let orders = data["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{data}");
    assert_eq!(orders[0]["order_id"], "R-1");
    assert_eq!(orders[0]["customer"]["name"], "Ana Souza");
    assert_eq!(orders[0]["parcels"][0]["tracking_code"], code_a.as_str());
    assert_eq!(orders[0]["status_changes"].as_array().unwrap().len(), 2);
    let emails = orders[0]["emails"].as_array().unwrap();
    assert_eq!(emails.len(), 1, "{data}");
    assert_eq!(emails[0]["status"], "posted");
    assert_eq!(emails[0]["state"], "done");
    let unknown: Value = http
        .get(format!("{base}/v1/customers/nobody@example.com/data"))
        .bearer_auth(API_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(unknown["orders"], serde_json::json!([]));
    assert_eq!(unknown["opt_outs"], serde_json::json!([]));
    let malformed = http
        .get(format!("{base}/v1/customers/not-an-address/data"))
        .bearer_auth(API_TOKEN)
        .send()
        .await?;
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let anonymous = http
        .delete(format!("{base}/v1/customers/{ana}"))
        .send()
        .await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Her data where it hides: a parked tracking request (and Bia's), a kept carrier answer naming both, an
    // error text quoting her address.
    let amqp = env.amqp().await?;
    amqp.publish("tracking.requests.dead", &serde_json::to_vec(&req_a)?)
        .await?;
    amqp.publish("tracking.requests.dead", &serde_json::to_vec(&req_b)?)
        .await?;
    keep_carrier_answer(&env, &[&req_a, &req_b]).await?;
    failed_delivery_quoting(&env, "R-1", ana).await?;
    assert!(!everywhere(&env, ana).await?.is_empty());
    let before = page(&http, &base, "R-1").await?;
    assert!(before.contains("Ana") && before.contains(code_a.as_str()));

    // Erasure.
    let resp = http
        .delete(format!("{base}/v1/customers/{ana}"))
        .bearer_auth(API_TOKEN)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let done: Value = resp.json().await?;
    assert_eq!(done["erased"]["orders"], 1, "{done}");
    assert_eq!(done["erased"]["status_changes"], 2, "{done}");
    assert_eq!(done["erased"]["carrier_responses"], 1, "{done}");
    assert_eq!(done["erased"]["deliveries"], 1, "{done}");
    assert_eq!(done["erased"]["parked_messages"], 1, "{done}");

    // Nothing of her is left in the database, Bia is untouched, the history stays.
    assert_eq!(everywhere(&env, ana).await?, vec![]);
    assert_eq!(everywhere(&env, "Ana Souza").await?, vec![]);
    assert!(
        everywhere(&env, bia)
            .await?
            .iter()
            .any(|(c, _)| c == "orders.customer_email")
    );
    let bia_name = everywhere(&env, "Bia Lima").await?;
    for column in [
        "orders.customer_name",
        "status_changes.payload",
        "carrier_responses.requests",
    ] {
        assert!(bia_name.iter().any(|(c, _)| c == column), "{bia_name:?}");
    }
    assert_eq!(changes_of(&env, "R-1").await?, 2, "the history stays");
    let tracking = http
        .get(format!("{base}/v1/orders/R-1/tracking"))
        .bearer_auth(API_TOKEN)
        .send()
        .await?;
    assert_eq!(tracking.status(), StatusCode::OK);
    let after = page(&http, &base, "R-1").await?;
    assert!(after.contains(code_a.as_str()), "the page shows the parcel");
    assert!(!after.contains("Ana"), "and no name: {after}");

    // Nor in the parked messages: Bia's request stays parked, Ana's is gone.
    let parked = amqp.drain("tracking.requests.dead").await?;
    assert_eq!(parked.len(), 1);
    assert!(String::from_utf8_lossy(&parked[0].body).contains(bia));
    for (queue, _) in amqp.dead_counts().await? {
        for m in amqp.drain(&queue).await? {
            assert!(!String::from_utf8_lossy(&m.body).contains(ana), "{queue}");
        }
    }

    // The audit: the access and the erasure, by the keyed hash, nothing readable of her.
    let hash = UnsubscribeKey::new(UNSUBSCRIBE_SECRET)
        .unwrap()
        .address_hash(&EmailAddress::parse(ana).unwrap());
    let audit = tracking_store::customers::audit_of(&env.pool, &hash).await?;
    assert_eq!(
        audit.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
        ["access", "erasure"]
    );
    assert!(audit.iter().all(|a| a.requested_by == "api"));
    assert_eq!(audit[1].counts["orders"], 1);
    assert_eq!(audit[1].counts["parked_messages"], 1);

    // Her queued "out for delivery" email is not sent: recorded as skipped. Bia's next email still goes.
    let _publisher = Worker::started(&env, "email-publisher", &email_settings).await?;
    carrier_says(&env, &code_b, None, std::slice::from_ref(&out)).await?;
    eventually(Duration::from_secs(30), "Bia's second email", || async {
        Ok((emails_to(&smtp, bia) == 2).then_some(()))
    })
    .await?;
    let skipped: Vec<Option<String>> = eventually(
        Duration::from_secs(30),
        "the erased customer's email recorded as skipped",
        || async {
            let d: Vec<Option<String>> = sqlx::query_scalar(
                "SELECT d.detail FROM deliveries d JOIN status_changes sc ON sc.change_id = d.change_id \
                 JOIN orders o ON o.id = sc.order_ref \
                 WHERE d.destination = 'email' AND o.order_id = 'R-1' AND sc.status = 'out_for_delivery'",
            )
            .fetch_all(&env.pool)
            .await?;
            Ok((!d.is_empty()).then_some(d))
        },
    )
    .await?;
    assert_eq!(skipped, vec![Some("skipped: erased".to_owned())]);
    assert_eq!(emails_to(&smtp, ana), 1, "only the email sent before");
    assert_eq!(emails_to(&smtp, tracking_store::customers::ERASED_EMAIL), 0);
    assert_eq!(
        amqp.dead_counts().await?.iter().map(|d| d.1).sum::<u32>(),
        0
    );
    assert_eq!(everywhere(&env, ana).await?, vec![]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_past_the_retention_window_keeps_no_name_or_email() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let delivered = correios_event("BDE", "01", "2026-12-01T15:00:00-03:00");
    let posted = correios_event("PO", "01", "2026-11-30T10:00:00-03:00");
    // Old: finished 200 days ago. Recent: finished 10 days ago. Open: on its way.
    let (old, recent, open) = (s10("TA", 1), s10("TB", 2), s10("TC", 3));
    let req_old = request_of("T-OLD", &old, "carla@example.com", "Carla Dias");
    let req_recent = request_of("T-RECENT", &recent, "dora@example.com", "Dora Reis");
    let req_open = request_of("T-OPEN", &open, "eva@example.com", "Eva Luz");
    carrier_says(&env, &old, Some(&req_old), std::slice::from_ref(&delivered)).await?;
    carrier_says(
        &env,
        &recent,
        Some(&req_recent),
        std::slice::from_ref(&delivered),
    )
    .await?;
    carrier_says(&env, &open, Some(&req_open), std::slice::from_ref(&posted)).await?;
    for order in ["T-OLD", "T-RECENT", "T-OPEN"] {
        wait_changes(&env, order, 1).await?;
    }
    for (code, days) in [(&old, 200), (&recent, 10)] {
        sqlx::query(
            "UPDATE shipments SET finished_at = now() - make_interval(days => $2) WHERE tracking_code = $1",
        )
        .bind(code)
        .bind(days)
        .execute(&env.pool)
        .await?;
    }
    keep_carrier_answer(&env, &[&req_old, &req_open]).await?;
    failed_delivery_quoting(&env, "T-OLD", "carla@example.com").await?;
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;

    // The scheduler's retention scan, every 200 ms, one order per batch, the default 180 days.
    let scheduler = Worker::started(
        &env,
        "scheduler",
        &[
            ("RETENTION_SCAN_INTERVAL_MS", "200".into()),
            ("RETENTION_BATCH", "1".into()),
        ],
    )
    .await?;
    eventually(Duration::from_secs(30), "the old order erased", || async {
        let erased: Option<bool> =
            sqlx::query_scalar("SELECT erased_at IS NOT NULL FROM orders WHERE order_id = 'T-OLD'")
                .fetch_optional(&env.pool)
                .await?;
        Ok((erased == Some(true)).then_some(()))
    })
    .await?;
    // A few more scans (a whole second of the scheduler's loop, which scans every 200 ms): the others stay.
    tracking_tests::wait_ticks_after_now(&scheduler, Duration::from_secs(20)).await?;
    let erased: Vec<String> = sqlx::query_scalar(
        "SELECT order_id FROM orders WHERE erased_at IS NOT NULL ORDER BY order_id",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(erased, ["T-OLD"]);

    assert_eq!(everywhere(&env, "carla@example.com").await?, vec![]);
    assert_eq!(everywhere(&env, "Carla Dias").await?, vec![]);
    for other in ["dora@example.com", "eva@example.com", "Eva Luz"] {
        assert!(!everywhere(&env, other).await?.is_empty(), "{other} stays");
    }
    // The order, its history and counts stay.
    assert_eq!(changes_of(&env, "T-OLD").await?, 1);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(after, history);
    let metrics = scheduler.metrics().await?;
    let erased_orders = metrics
        .lines()
        .find(|l| {
            l.starts_with("personal_data_erased_total{")
                && l.contains("reason=\"retention\"")
                && l.contains("table=\"orders\"")
        })
        .unwrap_or_default()
        .to_owned();
    assert!(erased_orders.ends_with(" 1"), "{metrics}");

    // trackctl erases on request too, and says what it did.
    let out = Command::new(target_dir().join("debug/trackctl"))
        .args(["customer", "erase", "EVA@example.com"])
        .envs(env.worker_env())
        .env("USER", "maria")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 order(s)"), "{text}");
    assert_eq!(everywhere(&env, "eva@example.com").await?, vec![]);
    assert_eq!(everywhere(&env, "Eva Luz").await?, vec![]);
    let by: Vec<String> =
        sqlx::query_scalar("SELECT requested_by FROM customer_requests WHERE kind = 'erasure'")
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(by, ["trackctl:maria"]);
    assert!(!everywhere(&env, "dora@example.com").await?.is_empty());
    Ok(())
}
