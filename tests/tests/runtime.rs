//! The messaging runtime against the real RabbitMQ (an own vhost per test): outcomes, retries, parking, confirms,
//! reconnection; and the schema's migrations against the real PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracking_runtime::amqp::topology::{NORMALIZER_QUEUE, dead_queue};
use tracking_runtime::amqp::{
    AmqpSettings, Handler, Incoming, Outcome, Outgoing, PublishError, Publisher, run_consumer,
};
use tracking_runtime::ops::Health;
use tracking_tests::{TestEnv, eventually};

#[derive(Default, Clone)]
struct Scripted {
    seen: Arc<Mutex<Vec<(String, u32, Instant)>>>,
}

impl Handler for Scripted {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let body = String::from_utf8_lossy(&msg.body).into_owned();
        self.seen
            .lock()
            .unwrap()
            .push((body.clone(), msg.attempt, Instant::now()));
        match body.as_str() {
            "retry-once" if msg.attempt == 1 => Outcome::Retry {
                after: Duration::from_millis(300),
                reason: "not yet".into(),
            },
            "always-retry" => Outcome::Retry {
                after: Duration::from_millis(10),
                reason: "still down".into(),
            },
            "park" => Outcome::Park {
                reason: "bad input: park me".into(),
            },
            "panic" => panic!("boom"),
            _ => Outcome::Ack,
        }
    }
}

struct Running {
    handler: Scripted,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    health: Health,
}

async fn consume(env: &TestEnv, max_attempts: u32) -> anyhow::Result<Running> {
    let mut settings = AmqpSettings::with_url(&env.amqp_url);
    settings.retry_delays = vec![Duration::from_millis(300)];
    settings.max_attempts = max_attempts;
    let handler = Scripted::default();
    let shutdown = CancellationToken::new();
    let health = Health::new(&["rabbitmq"]);
    let publisher = Publisher::new(settings.clone(), "test");
    let task = tokio::spawn(run_consumer(
        settings,
        NORMALIZER_QUEUE,
        publisher,
        Arc::new(handler.clone()),
        health.clone(),
        shutdown.clone(),
    ));
    let h = health.clone();
    eventually(Duration::from_secs(10), "the consumer to connect", || {
        let ok = h.is_ok();
        async move { Ok(ok.then_some(())) }
    })
    .await?;
    Ok(Running {
        handler,
        shutdown,
        task,
        health,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_in_a_delay_queue_and_comes_back_with_its_attempt_count() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let run = consume(&env, 5).await?;
    let amqp = env.amqp().await?;
    amqp.publish(NORMALIZER_QUEUE, b"retry-once").await?;
    let seen = run.handler.seen.clone();
    eventually(Duration::from_secs(10), "the second attempt", || {
        let n = seen.lock().unwrap().len();
        async move { Ok((n >= 2).then_some(())) }
    })
    .await?;
    let seen = run.handler.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), [1, 2]);
    let waited = seen[1].2 - seen[0].2;
    assert!(
        waited >= Duration::from_millis(290),
        "came back after {waited:?}, before the 300 ms delay"
    );
    assert!(
        waited < Duration::from_secs(5),
        "came back after {waited:?}"
    );
    assert_eq!(amqp.count(NORMALIZER_QUEUE).await?, 0);
    assert_eq!(amqp.count(&dead_queue(NORMALIZER_QUEUE)).await?, 0);
    run.shutdown.cancel();
    run.task.await?;
    assert!(
        !run.health.is_ok(),
        "health reports the consumer gone after shutdown"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_messages_keep_their_body_reason_and_attempts_and_exhausted_retries_are_parked()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let run = consume(&env, 3).await?;
    let amqp = env.amqp().await?;
    amqp.publish(NORMALIZER_QUEUE, b"park").await?;
    amqp.publish(NORMALIZER_QUEUE, b"always-retry").await?;
    amqp.publish(NORMALIZER_QUEUE, b"panic").await?;
    amqp.publish(NORMALIZER_QUEUE, b"fine").await?;
    let dead = dead_queue(NORMALIZER_QUEUE);
    eventually(Duration::from_secs(15), "three parked messages", || async {
        Ok((amqp.count(&dead).await? == 3).then_some(()))
    })
    .await?;
    let mut parked = amqp.drain(&dead).await?;
    parked.sort_by_key(|m| m.body.clone());
    let summary: Vec<(String, String, String)> = parked
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.body).into_owned(),
                m.header("x-park-reason").unwrap(),
                m.header("x-attempts").unwrap(),
            )
        })
        .collect();
    assert_eq!(summary[0].0, "always-retry");
    assert_eq!(
        summary[0].1,
        "retries exhausted after 3 attempts: still down"
    );
    assert_eq!(summary[0].2, "3");
    assert_eq!(summary[1].0, "panic");
    assert!(
        summary[1].1.contains("handler panicked: boom"),
        "{summary:?}"
    );
    assert_eq!(
        summary[2],
        ("park".into(), "bad input: park me".into(), "1".into())
    );
    let seen = run.handler.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|s| s.0 == "always-retry").count(), 3);
    assert_eq!(
        seen.iter().filter(|s| s.0 == "fine").count(),
        1,
        "a good message is not held up"
    );
    run.shutdown.cancel();
    run.task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_an_error_not_a_success() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let publisher = Publisher::new(AmqpSettings::with_url(&env.amqp_url), "test");
    publisher.connect().await?;
    let err = publisher
        .publish(Outgoing::json("", "no-such-queue", b"{}"))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
    publisher
        .publish(Outgoing::json("", NORMALIZER_QUEUE, b"{}"))
        .await?;
    publisher
        .publish(Outgoing::json("order.status", "delivered", b"{}"))
        .await?;
    let amqp = env.amqp().await?;
    assert_eq!(amqp.count(NORMALIZER_QUEUE).await?, 1);
    assert_eq!(
        amqp.count("email.order-status").await?,
        1,
        "order.status routes every status to the email queue"
    );
    assert_eq!(
        amqp.count("marketplace.order-status").await?,
        1,
        "and to the marketplace queue"
    );
    let bad = Publisher::new(
        AmqpSettings::with_url("amqp://guest:guest@127.0.0.1:1/%2f"),
        "test",
    );
    assert!(matches!(bad.connect().await, Err(PublishError::Connect(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_reconnects_after_the_broker_drops_its_connections() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let run = consume(&env, 5).await?;
    let amqp = env.amqp().await?;
    amqp.publish(NORMALIZER_QUEUE, b"before").await?;
    let seen = run.handler.seen.clone();
    eventually(Duration::from_secs(10), "the first message", || {
        let n = seen.lock().unwrap().len();
        async move { Ok((n >= 1).then_some(())) }
    })
    .await?;
    let vhost = env.amqp_url.rsplit('/').next().unwrap().to_owned();
    let status = std::process::Command::new("rabbitmqctl")
        .stdout(std::process::Stdio::null())
        .args([
            "close_all_connections",
            "-p",
            &vhost,
            "test: broker goes away",
        ])
        .status()?;
    assert!(status.success());
    let h = run.health.clone();
    eventually(Duration::from_secs(10), "health to notice", || {
        let ok = h.is_ok();
        async move { Ok((!ok).then_some(())) }
    })
    .await?;
    let amqp = env.amqp().await?;
    amqp.publish(NORMALIZER_QUEUE, b"after").await?;
    eventually(
        Duration::from_secs(20),
        "the message after the reconnect",
        || {
            let has = seen.lock().unwrap().iter().any(|s| s.0 == "after");
            async move { Ok(has.then_some(())) }
        },
    )
    .await?;
    assert!(run.health.is_ok());
    run.shutdown.cancel();
    run.task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_to_an_empty_database_and_again_harmlessly() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    assert!(!tracking_store::schema_ready(&env.pool).await?);
    env.migrate().await?;
    env.migrate().await?;
    assert!(tracking_store::schema_ready(&env.pool).await?);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(
        tables,
        [
            "carrier_budget",
            "carrier_health",
            "carrier_responses",
            "deliveries",
            "shipments",
            "status_changes",
            "tracking_events"
        ]
    );
    // Events are unique by fingerprint.
    sqlx::query("INSERT INTO shipments (carrier, tracking_code, order_id, customer_email) VALUES ('correios', 'DL746686536BR', '1', 'a@b.co')")
        .execute(&env.pool)
        .await?;
    let insert = "INSERT INTO tracking_events (shipment_id, fingerprint, source, code, description, occurred_at) \
                  VALUES (1, 'fp', 'carrier', 'PO', 'x', now()) ON CONFLICT (fingerprint) DO NOTHING";
    assert_eq!(
        sqlx::query(insert)
            .execute(&env.pool)
            .await?
            .rows_affected(),
        1
    );
    assert_eq!(
        sqlx::query(insert)
            .execute(&env.pool)
            .await?
            .rows_affected(),
        0
    );
    Ok(())
}
