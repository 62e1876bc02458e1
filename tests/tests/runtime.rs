//! The messaging runtime against the real RabbitMQ (an own vhost per test): outcomes, retries, parking, confirms,
//! reconnection; and the schema's migrations against the real PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracking_app::topology::{NORMALIZER_QUEUE, dead_queue};
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
            "carrier_account_health",
            "carrier_budget",
            "carrier_health",
            "carrier_responses",
            "customer_requests",
            "deliveries",
            "email_opt_outs",
            "late_notices",
            "order_parcels",
            "orders",
            "shipments",
            "status_changes",
            "tracking_events"
        ]
    );
    // Events are unique by fingerprint within their shipment.
    sqlx::query(
        "INSERT INTO shipments (carrier, tracking_code) VALUES ('correios', 'DL746686536BR')",
    )
    .execute(&env.pool)
    .await?;
    let insert = "INSERT INTO tracking_events (shipment_id, fingerprint, source, code, description, occurred_at) \
                  VALUES (1, 'fp', 'carrier', 'PO', 'x', now()) ON CONFLICT (shipment_id, fingerprint) DO NOTHING";
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

/// A handler that asks for a retry on the first attempt and records each delivery's attempt and redelivered flag.
#[derive(Default, Clone)]
struct RetryOnce {
    seen: Arc<Mutex<Vec<(u32, bool)>>>,
}

impl Handler for RetryOnce {
    async fn handle(&self, msg: Incoming) -> Outcome {
        self.seen
            .lock()
            .unwrap()
            .push((msg.attempt, msg.redelivered));
        if msg.attempt == 1 {
            Outcome::Retry {
                after: Duration::from_millis(300),
                reason: "not yet".into(),
            }
        } else {
            Outcome::Ack
        }
    }
}

/// Issue 18.6: a memory alarm on a RabbitMQ node of the test's own (never the shared one). tracking-api answers 503
/// at once with Retry-After and says `blocked` on `/health`, a consumer holds the message whose retry copy the
/// broker refuses (no return to the queue, no attempt spent), and both resume when the alarm clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_is_a_reported_outage_that_nothing_hangs_on() -> anyhow::Result<()> {
    use tracking_app::topology::TRACKING_REQUESTS;
    use tracking_tests::rabbit_node::RabbitNode;
    use tracking_tests::{EnvOptions, Worker, free_addr, request};

    let parent = tracking_tests::target_dir()
        .join("test-logs")
        .join(format!("blocked-{}", uuid::Uuid::new_v4().simple()));
    let node = tokio::task::block_in_place(|| RabbitNode::start(&parent))?;
    let env = TestEnv::with(EnvOptions {
        amqp_url: Some(node.amqp_url.clone()),
        ..EnvOptions::default()
    })
    .await?;
    env.migrate().await?;
    let delays = [Duration::from_millis(200), Duration::from_secs(1)];
    let amqp = env.amqp().await?;
    amqp.declare(&delays).await?;

    let addr = free_addr();
    let token = "api-token-for-tests-0123456789-abcdef";
    let mut api = Worker::spawn(
        &env,
        "tracking-api",
        &[
            ("HTTP_ADDR", addr.to_string()),
            ("API_TOKEN", token.to_owned()),
        ],
    )?;
    api.wait_healthy(Duration::from_secs(60)).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let post = |order: &'static str| {
        let http = http.clone();
        async move {
            let started = Instant::now();
            let resp = http
                .post(format!("http://{addr}/v1/tracking-requests"))
                .bearer_auth(token)
                .json(&request(
                    order,
                    "DL746686536BR",
                    "ana@example.com",
                    "pt-BR",
                    None,
                ))
                .send()
                .await?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            let body: serde_json::Value = resp.json().await?;
            anyhow::Ok((status, retry_after, body, started.elapsed()))
        }
    };
    let (status, ..) = post("before-alarm").await?;
    assert_eq!(status, 202);
    // For the consumer below: a message that asks for a retry, queued before the alarm.
    amqp.publish(NORMALIZER_QUEUE, b"retry-once").await?;

    tokio::task::block_in_place(|| node.memory_alarm(true))?;
    let (status, retry_after, body, took) = post("during-alarm-1").await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("30"));
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("broker blocked: "), "{error}");
    assert!(
        took < Duration::from_secs(5),
        "the first publish after the alarm answered after {took:?}"
    );
    eprintln!("first POST during the alarm: 503 after {took:?}");
    let (status, _, _, took) = post("during-alarm-2").await?;
    assert_eq!(status, 503);
    assert!(
        took < Duration::from_secs(1),
        "a publish on a blocked connection answered after {took:?}"
    );
    eprintln!("second POST during the alarm: 503 after {took:?}");
    let (code, health) = api.health().await?;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["components"]["rabbitmq"], "blocked", "{health}");
    assert!(
        health["errors"]["rabbitmq"]
            .as_str()
            .unwrap()
            .starts_with("broker blocked: "),
        "{health}"
    );
    let live = reqwest::get(format!("http://{}/health/live", api.metrics_addr)).await?;
    assert_eq!(
        live.status().as_u16(),
        200,
        "liveness does not follow the broker"
    );
    let metrics = api.metrics().await?;
    assert!(
        metrics.contains("amqp_publisher_blocked{connection=\"tracking-api-publish\"} 1")
            && metrics.contains("health_component_up{component=\"rabbitmq\"} 0"),
        "{metrics}"
    );

    // A consumer whose retry copy the broker refuses: it holds the delivery, nothing goes back to the queue.
    let mut settings = env.amqp_settings.clone();
    settings.retry_delays = vec![Duration::from_millis(300)];
    settings.unavailable_max_delay = Duration::from_millis(500);
    let handler = RetryOnce::default();
    let health = Health::new(&["rabbitmq"]);
    let publisher = Publisher::new(settings.clone(), "test");
    publisher.report_to(health.clone(), "rabbitmq");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_consumer(
        settings,
        NORMALIZER_QUEUE,
        publisher,
        Arc::new(handler.clone()),
        health.clone(),
        shutdown.clone(),
    ));
    let h = health.clone();
    eventually(
        Duration::from_secs(15),
        "the consumer to see the block",
        || {
            let blocked = h.is_blocked("rabbitmq");
            async move { Ok(blocked.then_some(())) }
        },
    )
    .await?;
    assert!(!health.is_ok());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        *handler.seen.lock().unwrap(),
        [(1, false)],
        "the held delivery was not handed back and delivered again"
    );

    tokio::task::block_in_place(|| node.memory_alarm(false))?;
    let cleared = Instant::now();
    api.wait_healthy(Duration::from_secs(15)).await?;
    eprintln!(
        "tracking-api healthy {:?} after the alarm cleared",
        cleared.elapsed()
    );
    let (status, _, body, took) = post("after-alarm").await?;
    assert_eq!(status, 202, "{body}");
    eprintln!("POST after the alarm: 202 after {took:?}");
    let seen = handler.seen.clone();
    eventually(Duration::from_secs(15), "the second attempt", || {
        let n = seen.lock().unwrap().len();
        async move { Ok((n >= 2).then_some(())) }
    })
    .await?;
    assert_eq!(
        *handler.seen.lock().unwrap(),
        [(1, false), (2, false)],
        "one attempt spent, through the delay queue, never returned to the queue"
    );
    assert!(health.is_ok(), "{:?}", health.report());
    shutdown.cancel();
    task.await?;

    let amqp = env.amqp().await?;
    let queued: Vec<String> = amqp
        .drain(TRACKING_REQUESTS)
        .await?
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.body).unwrap()["order_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    eprintln!("queued on tracking.requests: {queued:?}");
    assert!(queued.contains(&"before-alarm".to_owned()), "{queued:?}");
    assert!(queued.contains(&"after-alarm".to_owned()), "{queued:?}");
    assert!(
        !queued.contains(&"during-alarm-2".to_owned()),
        "a publish refused at once is not sent later: {queued:?}"
    );
    drop(api);
    Ok(())
}

/// Issue 18.9: liveness follows the process, not its dependencies. With PostgreSQL unreachable `/health` is 503
/// (readiness) while `/health/live` stays 200, so the liveness probe restarts nothing during a database outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_stays_up_while_a_dependency_is_down() -> anyhow::Result<()> {
    use tracking_tests::{Worker, free_addr};

    let env = TestEnv::new().await?;
    let nowhere = format!("postgres://postgres@{}/nothing", free_addr());
    let api = Worker::spawn(
        &env,
        "tracking-api",
        &[
            ("HTTP_ADDR", free_addr().to_string()),
            (
                "API_TOKEN",
                "api-token-for-tests-0123456789-abcdef".to_owned(),
            ),
            ("DATABASE_URL", nowhere),
        ],
    )?;
    let health = eventually(
        Duration::from_secs(30),
        "/health to report postgres down",
        || async {
            let Ok((code, body)) = api.health().await else {
                return Ok(None);
            };
            Ok((code == 503 && body["components"]["postgres"] == "down").then_some(body))
        },
    )
    .await?;
    let live = reqwest::get(format!("http://{}/health/live", api.metrics_addr)).await?;
    assert_eq!(live.status().as_u16(), 200, "{health}");
    let body: serde_json::Value = live.json().await?;
    assert_eq!(body["status"], "alive");
    Ok(())
}

/// Issue 18.6, the fetcher: its carrier update refused by a blocked broker holds the tracking request (no attempt,
/// no return to the queue) and asks the carrier nothing more until the block lifts; then the update goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_holds_the_fetchers_request_without_calling_the_carrier_again()
-> anyhow::Result<()> {
    use tracking_app::topology::TRACKING_REQUESTS;
    use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
    use tracking_tests::rabbit_node::RabbitNode;
    use tracking_tests::{EnvOptions, Worker, correios_env, request};

    let parent = tracking_tests::target_dir()
        .join("test-logs")
        .join(format!("blocked-{}", uuid::Uuid::new_v4().simple()));
    let node = tokio::task::block_in_place(|| RabbitNode::start(&parent))?;
    let env = TestEnv::with(EnvOptions {
        amqp_url: Some(node.amqp_url.clone()),
        ..EnvOptions::default()
    })
    .await?;
    env.migrate().await?;
    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_millis(200), Duration::from_secs(1)])
        .await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let code = "DL746686536BR";
    sim.script(code, Script::Journey(Journey::delivered().all_at_once()));
    let body = serde_json::to_vec(&request(
        "blocked-fetch",
        code,
        "ana@example.com",
        "pt-BR",
        None,
    ))?;
    amqp.publish(TRACKING_REQUESTS, &body).await?;

    tokio::task::block_in_place(|| node.memory_alarm(true))?;
    let mut settings = correios_env(&sim);
    settings.push(("FETCH_LINGER_MS", "0".into()));
    settings.push(("UNAVAILABLE_RETRY_MAX_MS", "500".into()));
    // Not waited healthy: it takes the request at once and is blocked before /health could say 200.
    let fetcher = Worker::spawn(&env, "fetcher", &settings)?;
    let health = eventually(
        Duration::from_secs(20),
        "the fetcher to report the block",
        || async {
            let (code, body) = fetcher.health().await?;
            Ok((code == 503 && body["components"]["rabbitmq"] == "blocked").then_some(body))
        },
    )
    .await?;
    eprintln!("fetcher /health while blocked: {health}");
    let calls = sim.tracking_calls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls, 1, "one carrier call before the block was known");
    assert_eq!(
        sim.tracking_calls(),
        calls,
        "no carrier call while the broker blocks"
    );
    let metrics = fetcher.metrics().await?;
    assert!(
        !metrics.contains("messages_total{queue=\"tracking.requests\""),
        "nothing settled (no retry, no park) while blocked: {metrics}"
    );

    tokio::task::block_in_place(|| node.memory_alarm(false))?;
    eventually(Duration::from_secs(20), "the carrier update", || async {
        Ok((amqp.count(NORMALIZER_QUEUE).await? >= 1).then_some(()))
    })
    .await?;
    let metrics = eventually(Duration::from_secs(10), "the request acked", || async {
        let m = fetcher.metrics().await?;
        Ok(
            m.contains("messages_total{queue=\"tracking.requests\",outcome=\"acked\"} 1")
                .then_some(m),
        )
    })
    .await?;
    assert!(
        !metrics.contains("outcome=\"retried\"") && !metrics.contains("outcome=\"parked\""),
        "{metrics}"
    );
    let updates = amqp.count(NORMALIZER_QUEUE).await?;
    eprintln!(
        "after the alarm: {} carrier calls, {updates} carrier update(s) queued",
        sim.tracking_calls()
    );
    assert_eq!(amqp.count(TRACKING_REQUESTS).await?, 0);
    Ok(())
}
