//! The pipeline test's journey, shared by `tests/tests/pipeline.rs` and `tests/tests/tls.rs` (the same run over
//! TLS): the five workers, the Correios simulator, maildev and a marketplace receiver carry one parcel from posted
//! to delivered, with one email and one marketplace call per change, nothing parked.

use crate::{
    Maildev, TestEnv, Worker, correios_env, eventually, marketplaces_file, request,
    wait_changes_published, wait_finished,
};
use std::collections::HashSet;
use std::time::Duration;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_sim::marketplace::Receiver;

const SECRET: &str = "webhook-secret-for-tests-0123";

/// Polling fast enough for a journey to end within seconds.
pub fn fast() -> Vec<(&'static str, String)> {
    [
        ("POLL_INTERVAL_SECS", "1"),
        ("POLL_INTERVAL_NEAR_DELIVERY_SECS", "1"),
        ("FINAL_POLL_AFTER_SECS", "1"),
        ("SCHEDULER_TICK_MS", "200"),
    ]
    .iter()
    .map(|(k, v)| (*k, (*v).to_owned()))
    .collect()
}

/// Runs the journey and checks every outcome; returns the five workers, still running (in the order normalizer,
/// fetcher, scheduler, email-publisher, marketplace-publisher).
pub async fn posted_to_delivered(env: &TestEnv) -> anyhow::Result<Vec<Worker>> {
    let code = "DL746686536BR";
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(code, Script::Journey(Journey::delivered()));
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let maildev = Maildev::start().await?;
    let mp_file = marketplaces_file(env, "acme", &receiver.url(), SECRET)?
        .display()
        .to_string();

    // The normalizer owns the schema: it migrates the empty database before the others become healthy.
    let mut workers = vec![Worker::started(env, "normalizer", &fast()).await?];
    workers.push(Worker::started(env, "fetcher", &correios_env(&sim)).await?);
    workers.push(Worker::started(env, "scheduler", &fast()).await?);
    let (_, health) = workers[1].health().await?;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["carriers"]["correios"]["state"], "ok", "{health}");
    let email_env = [
        ("SMTP_URL", maildev.smtp_url()),
        (
            "EMAIL_FROM",
            "Loja Teste <rastreio@loja.example>".to_owned(),
        ),
        ("MARKETPLACES_FILE", mp_file.clone()),
        ("STORE_NAME", "Loja Teste".to_owned()),
    ];
    workers.push(Worker::started(env, "email-publisher", &email_env).await?);
    workers.push(
        Worker::started(
            env,
            "marketplace-publisher",
            &[("MARKETPLACES_FILE", mp_file)],
        )
        .await?,
    );

    let amqp = env.amqp().await?;
    let req = request(
        "1385310000001-01",
        code,
        "ana@example.com",
        "es",
        Some("acme"),
    );
    amqp.publish("tracking.requests", &serde_json::to_vec(&req)?)
        .await?;

    // Posted, then one more event per poll: in transit, out for delivery, delivered; then a final poll finishes it.
    eventually(
        Duration::from_secs(90),
        "the shipment to be delivered and finished",
        || async {
            let done: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
                "SELECT status, finished_at FROM shipments WHERE tracking_code = $1",
            )
            .bind(code)
            .fetch_optional(&env.pool)
            .await?;
            Ok(done.filter(|(s, f)| s == "delivered" && f.is_some()))
        },
    )
    .await?;
    // The final poll comes after the tick that finished the shipment, and changes are marked published after
    // their publish: both are waited for too.
    eventually(
        Duration::from_secs(30),
        "4 marketplace calls, 3 emails, 5 polls and every change marked published",
        || async {
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM status_changes WHERE published_at IS NULL",
            )
            .fetch_one(&env.pool)
            .await?;
            Ok((receiver.calls().len() >= 4
                && maildev.emails().await?.len() >= 3
                && sim.polls(code) >= 5
                && unpublished == 0)
                .then_some(()))
        },
    )
    .await?;
    // Settled, so that no duplicate can still come (a redelivery, a second poll of the full history): the
    // fetcher handled the request and every poll the scheduler sent, and each publisher each recorded change.
    let polls = workers[2].metric("scheduled_polls_total").await? as u64;
    let within = Duration::from_secs(30);
    wait_finished(&amqp, &workers[1], "tracking.requests", 1 + polls, within).await?;
    let changes = wait_changes_published(&env.pool, within).await? as u64;
    wait_finished(&amqp, &workers[3], "email.order-status", changes, within).await?;
    wait_finished(
        &amqp,
        &workers[4],
        "marketplace.order-status",
        changes,
        within,
    )
    .await?;
    assert!(
        sim.polls(code) >= 5,
        "posted, 3 more events, and the final poll: {} polls",
        sim.polls(code)
    );

    // PostgreSQL holds the whole history, once.
    let events: Vec<(String, String)> =
        sqlx::query_as("SELECT code, status FROM tracking_events ORDER BY occurred_at")
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(
        events,
        [
            ("PO", "posted"),
            ("RO", "in_transit"),
            ("OEC", "out_for_delivery"),
            ("BDE", "delivered")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let changes: Vec<(uuid::Uuid, String, String, bool)> = sqlx::query_as(
        "SELECT change_id, previous_status, status, published_at IS NOT NULL FROM status_changes ORDER BY occurred_at",
    )
    .fetch_all(&env.pool)
    .await?;
    let transitions: Vec<(&str, &str)> = changes
        .iter()
        .map(|(_, p, s, _)| (p.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        transitions,
        [
            ("registered", "posted"),
            ("posted", "in_transit"),
            ("in_transit", "out_for_delivery"),
            ("out_for_delivery", "delivered")
        ]
    );
    assert!(changes.iter().all(|c| c.3), "every change was published");

    // The marketplace got each change once, in order, signed.
    let calls = receiver.calls();
    let statuses: Vec<String> = calls
        .iter()
        .map(|c| {
            c.json.as_ref().unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses,
        ["posted", "in_transit", "out_for_delivery", "delivered"]
    );
    for (call, (change_id, ..)) in calls.iter().zip(&changes) {
        assert!(call.signature_valid, "bad signature on {}", call.body);
        assert_eq!(
            call.idempotency_key.as_deref(),
            Some(change_id.to_string().as_str())
        );
        assert_eq!(
            call.json.as_ref().unwrap()["change_id"],
            change_id.to_string()
        );
        assert_eq!(
            call.json.as_ref().unwrap()["marketplace"]["order_id"],
            "MP-1385310000001-01"
        );
    }

    // The customer got one email per notified status (not in_transit), in Spanish, carrying the tracking code.
    let emails = maildev.emails().await?;
    assert_eq!(emails.len(), 3, "{emails:#?}");
    let mut ids = HashSet::new();
    for (email, expected) in emails
        .iter()
        .zip(["fue enviado", "salió a reparto", "fue entregado"])
    {
        let subject = email["subject"].as_str().unwrap();
        assert!(
            subject.contains(expected),
            "subject {subject:?} should say {expected:?}"
        );
        assert!(subject.starts_with("Loja Teste"), "{subject}");
        assert!(email["text"].as_str().unwrap().contains(code));
        assert_eq!(email["envelope"]["to"][0]["address"], "ana@example.com");
        let message_id = email["headers"]["message-id"].as_str().unwrap().to_owned();
        assert!(message_id.ends_with("@loja.example>"), "{message_id}");
        ids.insert(message_id);
    }
    assert_eq!(ids.len(), 3, "one Message-ID per change");
    let notified: HashSet<String> = changes
        .iter()
        .filter(|c| c.2 != "in_transit")
        .map(|c| format!("<{}@loja.example>", c.0))
        .collect();
    assert_eq!(ids, notified, "Message-IDs derive from the change ids");

    for (queue, count) in amqp.dead_counts().await? {
        assert_eq!(count, 0, "{queue} should be empty");
    }
    Ok(workers)
}

/// SIGTERM stops every worker cleanly (exit code 0).
pub fn stop_cleanly(mut workers: Vec<Worker>) -> anyhow::Result<()> {
    for w in &mut workers {
        let status = w.terminate()?;
        anyhow::ensure!(
            status.success(),
            "{} exited with {status}; log:\n{}",
            w.name,
            w.log_text()
        );
    }
    Ok(())
}
