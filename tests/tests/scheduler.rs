//! The scheduler binary on the real RabbitMQ and PostgreSQL: expiry, the final poll, slower polling of quiet
//! parcels, and several schedulers never polling one shipment twice.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;
use tracking_tests::{TestEnv, Worker, eventually, s10, wait_ticks_after_now};

const REQUESTS: &str = "tracking.requests";

/// Inserts shipments: (code, status, seconds since the last news).
async fn insert(env: &TestEnv, rows: &[(String, &str, i64)]) -> anyhow::Result<()> {
    let codes: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let statuses: Vec<String> = rows.iter().map(|r| r.1.to_owned()).collect();
    let quiet: Vec<i64> = rows.iter().map(|r| r.2).collect();
    sqlx::query(
        "INSERT INTO shipments (carrier, tracking_code, status, last_news_at, next_poll_at) \
         SELECT 'correios', c, s, now() - make_interval(secs => q), now() - interval '1 minute' \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(c, s, q)",
    )
    .bind(&codes)
    .bind(&statuses)
    .bind(&quiet)
    .execute(&env.pool)
    .await?;
    tracking_tests::add_orders_by_code(&env.pool, "ana@example.com").await?;
    Ok(())
}

async fn start(env: &TestEnv, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    let mut w = Worker::spawn(env, "scheduler", extra)?;
    w.wait_healthy(Duration::from_secs(60)).await?;
    Ok(w)
}

type Row = (String, DateTime<Utc>, Option<DateTime<Utc>>);

async fn shipment(env: &TestEnv, code: &str) -> anyhow::Result<Row> {
    Ok(sqlx::query_as(
        "SELECT status, next_poll_at, finished_at FROM shipments WHERE tracking_code = $1",
    )
    .bind(code)
    .fetch_one(&env.pool)
    .await?)
}

fn hours_from_now(at: DateTime<Utc>) -> f64 {
    (at - Utc::now()).num_seconds() as f64 / 3600.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_shipments_expire_finished_ones_get_one_last_poll_and_quiet_ones_slow_down()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let day = 86_400;
    let (lost, delivered, quiet, lively) = (s10("QA", 1), s10("QA", 2), s10("QA", 3), s10("QA", 4));
    insert(
        &env,
        &[
            (lost.clone(), "in_transit", 40 * day),
            (delivered.clone(), "delivered", 2 * day),
            (quiet.clone(), "in_transit", 10 * day),
            (lively.clone(), "in_transit", 60),
        ],
    )
    .await?;
    let scheduler = start(&env, &[("SCHEDULER_TICK_MS", "100".into())]).await?;
    let amqp = env.amqp().await?;
    eventually(
        Duration::from_secs(20),
        "three polls and one expiry",
        || async {
            let expired = shipment(&env, &lost).await?.0 == "expired";
            Ok((expired && amqp.count(REQUESTS).await? == 3).then_some(()))
        },
    )
    .await?;

    // Expired: status, a change in the outbox for the relay, polling stopped, told to operators.
    let (status, _, finished) = shipment(&env, &lost).await?;
    assert_eq!(status, "expired");
    assert!(finished.is_some());
    let change: (String, String, bool, serde_json::Value) = sqlx::query_as(
        "SELECT previous_status, status, published_at IS NULL, payload FROM status_changes",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(
        (change.0.as_str(), change.1.as_str(), change.2),
        ("in_transit", "expired", true)
    );
    assert_eq!(change.3["tracking_code"], lost.as_str());
    assert!(scheduler.log_text().contains("Shipment expired"));
    assert!(
        scheduler
            .metrics()
            .await?
            .contains("shipments_expired_total{carrier=\"correios\"} 1")
    );

    // Delivered: polled once more, then finished.
    assert!(shipment(&env, &delivered).await?.2.is_some());
    // Quiet for 10 days: next poll after the 24 h maximum, not the 4 h interval (±10 % jitter).
    let h = hours_from_now(shipment(&env, &quiet).await?.1);
    assert!((21.5..=26.5).contains(&h), "{h}");
    let h = hours_from_now(shipment(&env, &lively).await?.1);
    assert!((3.5..=4.5).contains(&h), "{h}");

    // Nothing is polled twice: a second of further scans later, the queue holds what the scheduler counted.
    wait_ticks_after_now(&scheduler, Duration::from_secs(20)).await?;
    assert_eq!(
        scheduler.metric("scheduled_polls_total").await?,
        f64::from(amqp.count(REQUESTS).await?)
    );
    let taken = amqp.drain(REQUESTS).await?;
    let polled: HashSet<String> = taken
        .iter()
        .map(|t| {
            let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
            v["tracking_code"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(taken.len(), 3);
    assert_eq!(polled, HashSet::from([delivered, quiet, lively]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_never_poll_one_shipment_twice() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    const N: u32 = 3000;
    let rows: Vec<(String, &str, i64)> = (0..N).map(|n| (s10("TS", n), "in_transit", 60)).collect();
    insert(&env, &rows).await?;
    let fast = [
        ("SCHEDULER_TICK_MS", "10".to_owned()),
        ("SCHEDULER_BATCH", "25".to_owned()),
    ];
    let a = start(&env, &fast).await?;
    let b = start(&env, &fast).await?;
    let amqp = env.amqp().await?;
    eventually(Duration::from_secs(60), "every shipment polled", || async {
        Ok((amqp.count(REQUESTS).await? >= N).then_some(()))
    })
    .await?;
    // A second of further scans by both, then the queue holds what they counted.
    wait_ticks_after_now(&a, Duration::from_secs(20)).await?;
    wait_ticks_after_now(&b, Duration::from_secs(20)).await?;
    assert_eq!(
        a.metric("scheduled_polls_total").await? + b.metric("scheduled_polls_total").await?,
        f64::from(amqp.count(REQUESTS).await?)
    );
    let taken = amqp.drain(REQUESTS).await?;
    let codes: HashSet<String> = taken
        .iter()
        .map(|t| {
            let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
            v["tracking_code"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(codes.len(), N as usize);
    assert_eq!(taken.len(), N as usize, "no shipment polled twice");
    // Both took part.
    for w in [&a, &b] {
        let m = w.metrics().await?;
        let polled = m
            .lines()
            .find_map(|l| l.strip_prefix("scheduled_polls_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(polled > 0.0 && polled < f64::from(N), "{polled}");
    }
    Ok(())
}
