//! End to end: the real worker binaries, on the real RabbitMQ and PostgreSQL, with a real SMTP server (maildev),
//! the Correios simulator and a marketplace receiver (real HTTP servers on 127.0.0.1).

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_tests::{
    Maildev, TestEnv, Worker, correios_env, eventually, journey, request, wait_changes_published,
    wait_finished,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parcel_travels_from_posted_to_delivered_with_one_email_and_one_call_per_change()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let workers = journey::posted_to_delivered(&env).await?;
    journey::stop_cleanly(workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_parked_with_a_reason_and_good_ones_still_flow() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let good = "PG747937788BR";
    sim.script(good, Script::Journey(Journey::delivered()));
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let _fetcher = Worker::started(&env, "fetcher", &correios_env(&sim)).await?;
    let amqp = env.amqp().await?;

    let no_email = serde_json::json!({"order_id": "2", "tracking_code": "DL746686536BR", "customer": {"name": "Ana"}});
    let bad_code = request("3", "AA123456789BR", "ana@example.com", "pt-BR", None);
    amqp.publish("tracking.requests", b"{not json").await?;
    amqp.publish("tracking.requests", &serde_json::to_vec(&no_email)?)
        .await?;
    amqp.publish("tracking.requests", &serde_json::to_vec(&bad_code)?)
        .await?;
    amqp.publish(
        "tracking.requests",
        &serde_json::to_vec(&request("4", good, "bia@example.com", "en", None))?,
    )
    .await?;

    eventually(
        Duration::from_secs(30),
        "the good request to be stored",
        || async {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM shipments WHERE tracking_code = $1")
                    .bind(good)
                    .fetch_optional(&env.pool)
                    .await?;
            Ok(status.filter(|s| s == "posted"))
        },
    )
    .await?;
    let parked = eventually(Duration::from_secs(10), "three parked requests", || async {
        Ok((amqp.count("tracking.requests.dead").await? == 3).then_some(()))
    })
    .await
    .and(amqp.drain("tracking.requests.dead").await)?;
    // The fetcher handles several deliveries at once, so they are parked in no fixed order: match by body.
    let reason_of = |needle: &str| -> String {
        let m = parked
            .iter()
            .find(|m| String::from_utf8_lossy(&m.body).contains(needle));
        m.and_then(|m| m.header("x-park-reason"))
            .unwrap_or_else(|| panic!("no parked message with {needle}"))
    };
    assert!(reason_of("{not json").contains("not valid JSON"));
    assert!(reason_of("\"order_id\":\"2\"").contains("customer.email: is required"));
    let bad_code = reason_of("AA123456789BR");
    assert!(
        bad_code.contains("not a valid Correios S10 code"),
        "{bad_code}"
    );
    // The original message is kept whole, for replay.
    assert!(parked.iter().any(|m| m.body == b"{not json"));
    assert!(
        parked
            .iter()
            .all(|m| m.header("x-attempts").as_deref() == Some("1"))
    );
    assert!(
        parked
            .iter()
            .all(|m| m.header("x-original-queue").as_deref() == Some("tracking.requests"))
    );
    let shipments: i64 = sqlx::query_scalar("SELECT count(*) FROM shipments")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(shipments, 1, "nothing was registered for the bad requests");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_published_twice_sends_one_email() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let code = "SW091892778BR";
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(code, Script::Journey(Journey::delivered().all_at_once()));
    let maildev = Maildev::start().await?;
    let normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let fetcher = Worker::started(&env, "fetcher", &correios_env(&sim)).await?;
    let email = Worker::started(
        &env,
        "email-publisher",
        &[
            ("SMTP_URL", maildev.smtp_url()),
            ("EMAIL_FROM", "rastreio@loja.example".to_owned()),
            // The parcel's first news is its delivery, which emails nobody by default: this test is about
            // sending its one email once.
            ("EMAIL_DELIVERED_WHEN_FIRST_SEEN", "true".to_owned()),
        ],
    )
    .await?;
    let amqp = env.amqp().await?;
    let body = serde_json::to_vec(&request("5", code, "caio@example.com", "pt-BR", None))?;
    amqp.publish("tracking.requests", &body).await?;
    amqp.publish("tracking.requests", &body).await?;

    eventually(
        Duration::from_secs(30),
        "both requests polled and one email",
        || async {
            // Both requests usually share one batch, where the code is asked once.
            Ok((sim.polls(code) >= 1 && !maildev.emails().await?.is_empty()).then_some(()))
        },
    )
    .await?;
    // Everything settled: both requests and both updates handled, the change published and its email sent;
    // nothing is left to send a second one.
    wait_finished(
        &amqp,
        &fetcher,
        "tracking.requests",
        2,
        Duration::from_secs(30),
    )
    .await?;
    wait_finished(
        &amqp,
        &normalizer,
        "normalizer.carrier-events",
        2,
        Duration::from_secs(30),
    )
    .await?;
    let changes = wait_changes_published(&env.pool, Duration::from_secs(30)).await?;
    wait_finished(
        &amqp,
        &email,
        "email.order-status",
        changes as u64,
        Duration::from_secs(30),
    )
    .await?;
    let emails = maildev.emails().await?;
    assert_eq!(emails.len(), 1, "{emails:#?}");
    assert!(emails[0]["subject"].as_str().unwrap().contains("entregue"));
    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM status_changes")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(changes, 1, "registered → delivered, once");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(events, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_refuse_bad_configuration_with_a_message_naming_the_setting() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let (code, out) = Worker::run_to_exit(
        &env,
        "email-publisher",
        &[("EMAIL_FROM", "a@b.co".to_owned())],
    )?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("SMTP_URL"), "{out}");
    let (code, out) = Worker::run_to_exit(
        &env,
        "scheduler",
        &[("POLL_INTERVAL_SECS", "soon".to_owned())],
    )?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("POLL_INTERVAL_SECS"), "{out}");
    let (code, out) = Worker::run_to_exit(&env, "fetcher", &[("LOG_FORMAT", "xml".to_owned())])?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("LOG_FORMAT"), "{out}");
    let (code, out) = Worker::run_to_exit(
        &env,
        "normalizer",
        &[
            ("AMQP_URL", "amqp://guest:hunter2@127.0.0.1:1/x".to_owned()),
            ("PREFETCH", "0".to_owned()),
        ],
    )?;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("PREFETCH") && !out.contains("hunter2"),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_unavailable_while_a_dependency_is_missing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // The database of this test has no schema: the scheduler waits for it and says so.
    let scheduler = Worker::spawn(&env, "scheduler", &[])?;
    let (code, body) = eventually(Duration::from_secs(20), "/health to answer", || async {
        Ok(scheduler.health().await.ok())
    })
    .await?;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["components"]["postgres"], "down", "{body}");
    // Once the schema is there, it is healthy.
    env.migrate().await?;
    eventually(Duration::from_secs(20), "/health to turn ok", || async {
        Ok(scheduler.health().await.ok().filter(|(c, _)| *c == 200))
    })
    .await?;
    // A fetcher without Correios credentials is healthy (restarting would not help) but says Correios is broken.
    let mut fetcher = Worker::spawn(&env, "fetcher", &[])?;
    let health = fetcher.wait_healthy(Duration::from_secs(20)).await?;
    assert_eq!(
        health["carriers"]["correios"]["state"], "broken",
        "{health}"
    );
    let metrics = fetcher.metrics().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("carrier_state{")
            && l.contains("correios")
            && l.contains("broken")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_messages_and_refused_credentials_are_handled_as_the_carrier_notes_say()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let (not_yet, invalid) = ("JT124720455BR", "DU713842539BR");
    sim.script(not_yet, Script::NotFound);
    sim.script(invalid, Script::Invalid);
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let mut fetcher = Worker::started(&env, "fetcher", &correios_env(&sim)).await?;
    let amqp = env.amqp().await?;
    for (order, code) in [("11", not_yet), ("12", invalid)] {
        let body = serde_json::to_vec(&request(order, code, "ana@example.com", "pt-BR", None))?;
        amqp.publish("tracking.requests", &body).await?;
    }
    // SRO-020: known to us, not yet to Correios: registered, and polled again later.
    let status = eventually(
        Duration::from_secs(20),
        "the SRO-020 shipment to be registered",
        || async {
            let row: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT status, carrier_message FROM shipments WHERE tracking_code = $1",
            )
            .bind(not_yet)
            .fetch_optional(&env.pool)
            .await?;
            Ok(row)
        },
    )
    .await?;
    assert_eq!(status.0, "registered");
    assert!(status.1.unwrap_or_default().starts_with("SRO-020"));
    // SRO-019: the carrier refuses the code: parked with its message, nothing registered.
    let parked = eventually(
        Duration::from_secs(20),
        "the SRO-019 request to be parked",
        || async { Ok((amqp.count("tracking.requests.dead").await? == 1).then_some(())) },
    )
    .await
    .and(amqp.drain("tracking.requests.dead").await)?;
    let reason = parked[0].header("x-park-reason").unwrap();
    assert!(
        reason.contains(invalid) && reason.contains("SRO-019"),
        "{reason}"
    );

    // Refused credentials: the fetcher stays up, says Correios is broken, and holds the request for retry.
    drop(fetcher);
    let mut wrong = correios_env(&sim);
    wrong.retain(|(k, _)| *k != "CORREIOS_ACCESS_CODE");
    wrong.push(("CORREIOS_ACCESS_CODE", "wrong-code".into()));
    fetcher = Worker::started(&env, "fetcher", &wrong).await?;
    let body = serde_json::to_vec(&request(
        "13",
        "SW091892778BR",
        "ana@example.com",
        "pt-BR",
        None,
    ))?;
    amqp.publish("tracking.requests", &body).await?;
    let health = eventually(
        Duration::from_secs(20),
        "Correios to be reported broken",
        || async {
            let (code, h) = fetcher.health().await?;
            Ok((code == 200 && h["carriers"]["correios"]["state"] == "broken").then_some(h))
        },
    )
    .await?;
    let why = health["carriers"]["correios"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("authentication"), "{health}");
    assert!(
        fetcher.log_text().contains("BROKEN"),
        "an error line for the operator"
    );
    assert_eq!(
        amqp.count("tracking.requests.dead").await?,
        0,
        "nothing is parked: it waits for the fix"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_on_every_work_queue_are_parked_with_a_reason() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let maildev = Maildev::start().await?;
    let _normalizer = Worker::started(&env, "normalizer", &[]).await?;
    let email_env = [
        ("SMTP_URL", maildev.smtp_url()),
        ("EMAIL_FROM", "rastreio@loja.example".to_owned()),
    ];
    let _email = Worker::started(&env, "email-publisher", &email_env).await?;
    let _marketplace = Worker::started(&env, "marketplace-publisher", &[]).await?;
    let amqp = env.amqp().await?;
    // An update for a shipment nobody registered, and a change naming a marketplace nobody configured.
    let orphan = serde_json::json!({
        "carrier": "correios", "tracking_code": "DL746686536BR", "source": "manual",
        "fetched_at": "2026-03-27T18:00:00Z", "events": []
    });
    let change = serde_json::json!({
        "change_id": "6f1c1b3e-8a55-5b9a-9f55-1f5d2f0c9a11", "order_id": "1", "tracking_code": "PG747937788BR",
        "carrier": "correios", "status": "in_transit", "previous_status": "posted",
        "occurred_at": "2026-03-27T14:40:30-03:00", "source": "carrier",
        "event": {"code": "RO", "type": "01", "description": "Objeto em trânsito", "location": {}},
        "customer": {"email": "ana@example.com", "locale": "pt-BR"},
        "marketplace": {"name": "nobody", "order_id": "X-1"}
    });
    for queue in [
        "normalizer.carrier-events",
        "email.order-status",
        "marketplace.order-status",
    ] {
        amqp.publish(queue, b"\x00not json").await?;
    }
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&orphan)?)
        .await?;
    // Recorded, as the normalizer would have: the publishers send only recorded changes.
    env.record_change(&change).await?;
    amqp.publish("marketplace.order-status", &serde_json::to_vec(&change)?)
        .await?;
    // The in-transit change itself is fine for email (not notified): acked, nothing sent, nothing parked.
    amqp.publish("email.order-status", &serde_json::to_vec(&change)?)
        .await?;

    for (queue, expected) in [
        (
            "normalizer.carrier-events",
            vec![
                "not a carrier update",
                "no shipment correios DL746686536BR is registered",
            ],
        ),
        ("email.order-status", vec!["not a status change"]),
        (
            "marketplace.order-status",
            vec![
                "not a status change",
                "marketplace \"nobody\" is not configured",
            ],
        ),
    ] {
        let dead = format!("{queue}.dead");
        let n = expected.len() as u32;
        eventually(
            Duration::from_secs(20),
            &format!("{n} parked in {dead}"),
            || async { Ok((amqp.count(&dead).await? == n).then_some(())) },
        )
        .await?;
        let reasons: Vec<String> = amqp
            .drain(&dead)
            .await?
            .iter()
            .map(|m| m.header("x-park-reason").unwrap_or_default())
            .collect();
        for want in expected {
            assert!(
                reasons.iter().any(|r| r.contains(want)),
                "{dead}: {reasons:?} lacks {want:?}"
            );
        }
    }
    assert!(maildev.emails().await?.is_empty());
    for queue in [
        "normalizer.carrier-events",
        "email.order-status",
        "marketplace.order-status",
    ] {
        assert_eq!(amqp.count(queue).await?, 0, "{queue} drained");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_relay_publishes_a_change_that_was_recorded_but_not_published()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    // What a normalizer that died between its commit and its publish leaves behind.
    let change_id = uuid::Uuid::new_v4();
    let payload = serde_json::json!({
        "change_id": change_id, "order_id": "77", "tracking_code": "DL746686536BR", "carrier": "correios",
        "status": "delivered", "previous_status": "out_for_delivery", "occurred_at": "2026-03-27T14:40:30-03:00",
        "source": "carrier", "event": {"code": "BDE", "type": "01", "description": "Objeto entregue", "location": {}},
        "customer": {"email": "ana@example.com", "locale": "pt-BR"}
    });
    sqlx::query(
        "INSERT INTO shipments (carrier, tracking_code) VALUES ('correios', 'DL746686536BR')",
    )
    .execute(&env.pool)
    .await?;
    tracking_tests::add_order(
        &env.pool,
        1,
        &tracking_tests::Order::new("77", "ana@example.com"),
    )
    .await?;
    sqlx::query(
        "INSERT INTO status_changes (change_id, shipment_id, status, previous_status, occurred_at, payload, created_at) \
         VALUES ($1, 1, 'delivered', 'out_for_delivery', now(), $2, now() - interval '1 minute')",
    )
    .bind(change_id)
    .bind(&payload)
    .execute(&env.pool)
    .await?;
    let normalizer =
        Worker::started(&env, "normalizer", &[("OUTBOX_INTERVAL_MS", "200".into())]).await?;
    let amqp = env.amqp().await?;
    // The relay marks the change published in its transaction, committed after the publishes' confirms.
    eventually(
        Duration::from_secs(20),
        "the change on both publishers' queues and marked published",
        || async {
            let published: bool = sqlx::query_scalar(
                "SELECT published_at IS NOT NULL FROM status_changes WHERE change_id = $1",
            )
            .bind(change_id)
            .fetch_one(&env.pool)
            .await?;
            Ok((published
                && amqp.count("email.order-status").await? == 1
                && amqp.count("marketplace.order-status").await? == 1)
                .then_some(()))
        },
    )
    .await?;
    let taken = amqp.drain("email.order-status").await?;
    let body: serde_json::Value = serde_json::from_slice(&taken[0].body)?;
    assert_eq!(body, payload, "published exactly as recorded");
    // Marked once, published once: the relay counts a change after its transaction committed the mark.
    eventually(Duration::from_secs(20), "the relay's count", || async {
        Ok((normalizer.metric("outbox_relayed_total").await? >= 1.0).then_some(()))
    })
    .await?;
    assert_eq!(normalizer.metric("outbox_relayed_total").await?, 1.0);
    assert_eq!(amqp.count("marketplace.order-status").await?, 1);
    Ok(())
}
