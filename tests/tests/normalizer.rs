//! The normalizer's guarantees, with the real binary on the real RabbitMQ and PostgreSQL: a crash between commit
//! and publish loses and duplicates nothing; normalizers racing on one shipment record each change once.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;
use tracking_tests::{TestEnv, Worker, carrier_update, correios_event, eventually, request, s10};

const QUEUE: &str = "normalizer.carrier-events";

async fn start(env: &TestEnv, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    let mut w = Worker::spawn(env, "normalizer", extra)?;
    w.wait_healthy(Duration::from_secs(60)).await?;
    Ok(w)
}

async fn changes(env: &TestEnv) -> anyhow::Result<Vec<(uuid::Uuid, String, String, bool)>> {
    Ok(sqlx::query_as(
        "SELECT change_id, previous_status, status, published_at IS NOT NULL FROM status_changes ORDER BY created_at",
    )
    .fetch_all(&env.pool)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normalizer_killed_between_commit_and_publish_loses_and_duplicates_nothing()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let amqp = env.amqp().await?;
    let code = s10("DL", 1001);
    let req = request("K-1", &code, "ana@example.com", "pt-BR", None);
    let update = carrier_update(
        &code,
        Some(&req),
        &[
            correios_event("PO", "01", "2026-11-20T10:00:00-03:00"),
            correios_event("RO", "01", "2026-11-21T09:00:00-03:00"),
        ],
    );

    let mut doomed = start(&env, &[("FAILPOINT_CRASH_AFTER_COMMIT", "true".into())]).await?;
    amqp.publish(QUEUE, &serde_json::to_vec(&update)?).await?;
    let exit = doomed.wait_exit(Duration::from_secs(30)).await?;
    assert!(!exit.success(), "the failpoint aborts: {exit}");

    // Committed, not published.
    let recorded = changes(&env).await?;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (
            recorded[0].1.as_str(),
            recorded[0].2.as_str(),
            recorded[0].3
        ),
        ("registered", "in_transit", false)
    );
    assert_eq!(amqp.count("email.order-status").await?, 0);
    assert_eq!(amqp.count("marketplace.order-status").await?, 0);
    // The update was never acked: the broker gives it to the next normalizer.
    eventually(
        Duration::from_secs(15),
        "the update back in its queue",
        || async { Ok((amqp.count(QUEUE).await? == 1).then_some(())) },
    )
    .await?;

    let _normalizer = start(
        &env,
        &[
            ("OUTBOX_INTERVAL_MS", "200".into()),
            ("OUTBOX_GRACE_MS", "500".into()),
        ],
    )
    .await?;
    eventually(Duration::from_secs(30), "the change published", || async {
        let c = changes(&env).await?;
        Ok((c.len() == 1 && c[0].3 && amqp.count(QUEUE).await? == 0).then_some(()))
    })
    .await?;
    // Redelivery and relay settle; then: one change, published once, to each publisher's queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(changes(&env).await?.len(), 1);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(events, 2, "the redelivered update added no event");
    assert_eq!(amqp.count("marketplace.order-status").await?, 1);
    let taken = amqp.drain("email.order-status").await?;
    assert_eq!(taken.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&taken[0].body)?;
    assert_eq!(body["change_id"], recorded[0].0.to_string());
    assert_eq!(body["status"], "in_transit");
    for (dead, n) in amqp.dead_counts().await? {
        assert_eq!(n, 0, "{dead}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalizers_racing_on_one_shipment_record_each_change_once() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let amqp = env.amqp().await?;
    let small = [("PREFETCH", "8".to_owned())];
    let _workers = [
        start(&env, &small).await?,
        start(&env, &small).await?,
        start(&env, &small).await?,
    ];
    let code = s10("DL", 2002);
    let req = request("R-1", &code, "ana@example.com", "pt-BR", None);
    amqp.publish(
        QUEUE,
        &serde_json::to_vec(&carrier_update(&code, Some(&req), &[]))?,
    )
    .await?;
    eventually(
        Duration::from_secs(20),
        "the shipment registered",
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM shipments")
                .fetch_one(&env.pool)
                .await?;
            Ok((n == 1).then_some(()))
        },
    )
    .await?;

    // Hold the shipment's row so that every normalizer's handlers pile up on it, then let them all go at once.
    let mut blocker = env.pool.begin().await?;
    sqlx::query("SELECT id FROM shipments WHERE tracking_code = $1 FOR UPDATE")
        .bind(&code)
        .execute(&mut *blocker)
        .await?;
    let history = [
        correios_event("PO", "01", "2026-11-20T10:00:00-03:00"),
        correios_event("RO", "01", "2026-11-21T09:00:00-03:00"),
        correios_event("RO", "01", "2026-11-22T09:00:00-03:00"),
        correios_event("OEC", "01", "2026-11-23T08:00:00-03:00"),
        correios_event("BDE", "01", "2026-11-23T15:00:00-03:00"),
    ];
    // Every poll returns the whole history so far; each poll arrives four times, in no useful order.
    let mut polls = Vec::new();
    for copy in 0..4 {
        for k in 1..=history.len() {
            let k = if copy % 2 == 0 {
                k
            } else {
                history.len() + 1 - k
            };
            polls.push(carrier_update(&code, None, &history[..k]));
        }
    }
    for p in &polls {
        amqp.publish(QUEUE, &serde_json::to_vec(p)?).await?;
    }
    eventually(
        Duration::from_secs(30),
        "handlers waiting on the shipment's lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&env.pool)
            .await?;
            Ok((waiting >= 6).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.commit().await?;

    eventually(Duration::from_secs(60), "every poll handled", || async {
        let status: String = sqlx::query_scalar("SELECT status FROM shipments")
            .fetch_one(&env.pool)
            .await?;
        Ok((status == "delivered" && amqp.count(QUEUE).await? == 0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(events, 5, "each event stored once");
    // The recorded changes form one path from registered to delivered: no status was left twice.
    let recorded = changes(&env).await?;
    let mut next: HashMap<&str, &str> = HashMap::new();
    for (_, from, to, published) in &recorded {
        assert!(published, "{recorded:?}");
        assert!(
            next.insert(from.as_str(), to.as_str()).is_none(),
            "two changes left {from}: {recorded:?}"
        );
    }
    let mut at = "registered";
    let mut steps = 0;
    while let Some(to) = next.get(at) {
        at = to;
        steps += 1;
    }
    assert_eq!((at, steps), ("delivered", recorded.len()), "{recorded:?}");
    // Each change published once.
    assert_eq!(
        amqp.count("email.order-status").await? as usize,
        recorded.len()
    );
    assert_eq!(
        amqp.count("marketplace.order-status").await? as usize,
        recorded.len()
    );
    Ok(())
}
