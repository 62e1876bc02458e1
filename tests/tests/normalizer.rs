//! The normalizer's guarantees, with the real binary on the real RabbitMQ and PostgreSQL: a crash between commit
//! and publish loses and duplicates nothing; normalizers racing on one shipment record each change once.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, eventually, request, s10,
    wait_changes_published, wait_finished, wait_finished_by,
};

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

    let normalizer = start(
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
    // Redelivery and relay settled (the update handled, every change marked published: no relay pass can take
    // it again); then: one change, published once, to each publisher's queue.
    wait_finished(&amqp, &normalizer, QUEUE, 1, Duration::from_secs(30)).await?;
    wait_changes_published(&env.pool, Duration::from_secs(30)).await?;
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
    let workers = [
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

    // Changes are published (and marked so) after their batch's commit: those are waited for too.
    eventually(Duration::from_secs(60), "every poll handled", || async {
        let status: String = sqlx::query_scalar("SELECT status FROM shipments")
            .fetch_one(&env.pool)
            .await?;
        let recorded = changes(&env).await?;
        Ok((status == "delivered"
            && amqp.count(QUEUE).await? == 0
            && recorded.iter().all(|c| c.3)
            && amqp.count("email.order-status").await? as usize == recorded.len()
            && amqp.count("marketplace.order-status").await? as usize == recorded.len())
        .then_some(()))
    })
    .await?;
    // Every update handled once (the registering one and each poll), every change published: nothing left to
    // make a duplicate.
    wait_finished_by(
        &amqp,
        &workers.iter().collect::<Vec<_>>(),
        QUEUE,
        1 + polls.len() as u64,
        Duration::from_secs(30),
    )
    .await?;
    wait_changes_published(&env.pool, Duration::from_secs(30)).await?;

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

/// Publishes `bodies` while no normalizer runs, then starts one whose batches take them all at once.
async fn one_batch(env: &TestEnv, bodies: &[Vec<u8>]) -> anyhow::Result<Worker> {
    let amqp = env.amqp().await?;
    for b in bodies {
        amqp.publish(QUEUE, b).await?;
    }
    start(
        env,
        &[
            ("NORMALIZER_BATCH", "64".into()),
            // Long enough for every waiting message to join the first batch on a loaded machine.
            ("NORMALIZER_LINGER_MS", "500".into()),
        ],
    )
    .await
}

/// `consumer_batches_total` and `messages_total` of the normalizer's queue.
async fn batches_and_messages(w: &Worker) -> anyhow::Result<(f64, f64)> {
    let text = w.metrics().await?;
    let sum = |prefix: &str| {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(QUEUE))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    Ok((sum("consumer_batches_total{"), sum("messages_total{")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_in_a_batch_is_parked_and_the_others_are_stored() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    // Data this database refuses (SQLSTATE 23514, as a constraint or an encoding error would be refused): the
    // whole batch's statement fails until the normalizer finds the one message that carries it.
    sqlx::query(
        "ALTER TABLE tracking_events ADD CONSTRAINT refuse_poison CHECK (code <> 'POISON')",
    )
    .execute(&env.pool)
    .await?;
    let mut bodies = Vec::new();
    let mut good = Vec::new();
    for n in 0..10u32 {
        let code = s10("PB", n);
        let req = request(&format!("P-{n}"), &code, "ana@example.com", "pt-BR", None);
        let mut events = vec![correios_event("PO", "01", "2026-11-20T10:00:00-03:00")];
        if n == 3 {
            events.push(correios_event("POISON", "01", "2026-11-21T10:00:00-03:00"));
        } else {
            good.push(code.clone());
        }
        bodies.push(serde_json::to_vec(&carrier_update(
            &code,
            Some(&req),
            &events,
        ))?);
        if n == 6 {
            bodies.push(b"{\"carrier\": \"correios\", not json".to_vec());
        }
    }
    let normalizer = one_batch(&env, &bodies).await?;
    let amqp = env.amqp().await?;
    eventually(Duration::from_secs(30), "every message settled", || async {
        Ok((amqp.count(QUEUE).await? == 0
            && amqp.count(&format!("{QUEUE}.dead")).await? == 2
            && batches_and_messages(&normalizer).await?.1 == bodies.len() as f64)
            .then_some(()))
    })
    .await?;
    // 11 messages waiting when the normalizer starts: one batch (two on a slow start); the split into halves
    // happens inside the handler.
    let (batches, messages) = batches_and_messages(&normalizer).await?;
    assert_eq!(messages, 11.0);
    assert!(batches <= 2.0, "{batches} batches for 11 messages");
    assert!(
        normalizer.log_text().contains("applying it in halves"),
        "the refused batch was not split"
    );
    let mut stored: Vec<String> =
        sqlx::query_scalar("SELECT tracking_code FROM shipments ORDER BY tracking_code")
            .fetch_all(&env.pool)
            .await?;
    stored.sort();
    good.sort();
    assert_eq!(stored, good, "the poison's shipment alone is missing");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(events, 9);
    eventually(
        Duration::from_secs(20),
        "nine changes published",
        || async {
            let c = changes(&env).await?;
            Ok((c.len() == 9 && c.iter().all(|c| c.3)).then_some(()))
        },
    )
    .await?;
    let mut reasons = amqp
        .drain(&format!("{QUEUE}.dead"))
        .await?
        .iter()
        .map(|t| t.header("x-park-reason").unwrap_or_default())
        .collect::<Vec<_>>();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("not a carrier update"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("refused") && reasons[1].contains("refuse_poison"),
        "{reasons:?}"
    );
    assert_eq!(amqp.count("email.order-status").await?, 9);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_updates_of_one_shipment_in_one_batch_keep_their_order_and_dedupe() -> anyhow::Result<()>
{
    let env = TestEnv::ready().await?;
    let code = s10("TB", 1);
    let req = request("T-1", &code, "ana@example.com", "pt-BR", None);
    let history = [
        correios_event("PO", "01", "2026-11-20T10:00:00-03:00"),
        correios_event("RO", "01", "2026-11-21T09:00:00-03:00"),
        correios_event("OEC", "01", "2026-11-23T08:00:00-03:00"),
    ];
    // Three polls, the second one twice (a redelivery): each poll returns the whole history so far.
    let polls = [
        carrier_update(&code, Some(&req), &history[..1]),
        carrier_update(&code, None, &history[..2]),
        carrier_update(&code, None, &history[..2]),
        carrier_update(&code, None, &history[..3]),
    ];
    let bodies: Vec<Vec<u8>> = polls
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let normalizer = one_batch(&env, &bodies).await?;
    let amqp = env.amqp().await?;
    eventually(Duration::from_secs(30), "every poll handled", || async {
        Ok(
            (amqp.count(QUEUE).await? == 0 && batches_and_messages(&normalizer).await?.1 == 4.0)
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(
        batches_and_messages(&normalizer).await?.0,
        1.0,
        "not one batch"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(events, 3, "each event stored once");
    // One change per poll that brought news, in the order of the polls, as if they had come one by one.
    let recorded: Vec<(String, String)> =
        sqlx::query_as("SELECT previous_status, status FROM status_changes ORDER BY seq")
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(
        recorded,
        [
            ("registered".to_owned(), "posted".to_owned()),
            ("posted".to_owned(), "in_transit".to_owned()),
            ("in_transit".to_owned(), "out_for_delivery".to_owned()),
        ]
    );
    let status: String = sqlx::query_scalar("SELECT status FROM shipments")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(status, "out_for_delivery");
    eventually(
        Duration::from_secs(20),
        "three changes published",
        || async {
            let c = changes(&env).await?;
            Ok((c.len() == 3 && c.iter().all(|c| c.3)).then_some(()))
        },
    )
    .await?;
    let mut published: Vec<String> = amqp
        .drain("email.order-status")
        .await?
        .iter()
        .map(|t| {
            serde_json::from_slice::<serde_json::Value>(&t.body).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    published.sort();
    assert_eq!(published, ["in_transit", "out_for_delivery", "posted"]);
    for (dead, n) in amqp.dead_counts().await? {
        assert_eq!(n, 0, "{dead}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_years_ahead_decides_nothing_and_the_real_ones_after_it_still_do()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let amqp = env.amqp().await?;
    let normalizer = start(&env, &[]).await?;
    let code = s10("FD", 1);
    let req = request("F-1", &code, "ana@example.com", "pt-BR", None);
    let posted = correios_event("PO", "01", "2026-11-20T10:00:00-03:00");
    // A carrier's typo: an in-transit event dated 2099.
    let typo = correios_event("RO", "01", "2099-11-21T09:00:00-03:00");
    let out = correios_event("OEC", "01", "2026-11-23T08:00:00-03:00");
    // One poll after the other, as the scheduler makes them: the second only once the first is recorded.
    for (update, events) in [
        (
            carrier_update(&code, Some(&req), &[posted.clone(), typo.clone()]),
            2,
        ),
        (carrier_update(&code, None, &[posted, typo, out]), 3),
    ] {
        amqp.publish(QUEUE, &serde_json::to_vec(&update)?).await?;
        eventually(Duration::from_secs(20), "the poll stored", || async {
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
                .fetch_one(&env.pool)
                .await?;
            Ok((stored == events).then_some(()))
        })
        .await?;
    }
    eventually(
        Duration::from_secs(20),
        "out for delivery recorded",
        || async {
            let recorded: Vec<(String, String)> =
                sqlx::query_as("SELECT previous_status, status FROM status_changes ORDER BY seq")
                    .fetch_all(&env.pool)
                    .await?;
            Ok((recorded.len() == 2).then_some(recorded))
        },
    )
    .await
    .map(|recorded| {
        assert_eq!(
            recorded,
            [
                ("registered".to_owned(), "posted".to_owned()),
                ("posted".to_owned(), "out_for_delivery".to_owned()),
            ],
            "the 2099 event decided nothing; the real one after it did"
        )
    })?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(stored, 3, "the future-dated event is kept");
    eventually(Duration::from_secs(20), "counted", || async {
        let m = normalizer.metrics().await?;
        Ok(m.lines()
            .any(|l| l.starts_with("events_future_dated_total{carrier=\"correios\"} 1"))
            .then_some(()))
    })
    .await?;
    eventually(Duration::from_secs(20), "emailed", || async {
        Ok((amqp.count("email.order-status").await? == 2).then_some(()))
    })
    .await?;
    Ok(())
}
