//! Far ends are bulkheads, and recovery goes at the speed of the lease (issue 18, points 3 and 7), against the
//! release-shaped worker binaries with the default delay tiers (1 s, 10 s, 60 s, 600 s), the default lease and
//! the default marketplace timeout:
//! - a marketplace that accepts connections and never answers holds at most its own `max_in_flight` of the
//!   publisher's slots, so a healthy marketplace's calls go through within seconds, and its own changes are
//!   waited out in the delay queues, not retried in process;
//! - a change leased by a worker that died is sent when the lease ends, not a delay tier later;
//! - a claim whose holder still works is extended (heartbeat), so a send longer than the lease is not taken over;
//! - an order's later change waiting behind an earlier one backs off, logs its wait once, and is relayed right
//!   after the earlier one.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use tracking_sim::marketplace::Receiver;
use tracking_sim::silent::SilentServer;
use tracking_sim::smtp::SmtpServer;
use tracking_tests::{TestEnv, Worker, eventually, s10, status_change};
use uuid::Uuid;

const SECRET: &str = "webhook-secret-for-tests-0123";
const EMAIL_QUEUE: &str = "email.order-status";
const MARKET_QUEUE: &str = "marketplace.order-status";
/// The default delay tiers, as production runs them (the tests' usual 200 ms and 1 s would hide the waits).
const DEFAULT_TIERS: &str = "1000,10000,60000,600000";

fn webhook(name: &str, url: &str) -> String {
    format!(
        "[[marketplace]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nrate_per_second = 1000\n\n"
    )
}

/// How many times `metric` with these labels was counted, from a `/metrics` text (0 when absent).
fn counted(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_marketplace_delays_a_healthy_ones_calls_by_at_most_a_few_seconds()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let stuck = SilentServer::start("127.0.0.1:0".parse()?).await?;
    let healthy = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let file = env.log_dir().join("marketplaces-hang.toml");
    std::fs::write(
        &file,
        format!(
            "{}{}",
            webhook("stuck", &stuck.url()),
            webhook("healthy", &healthy.url())
        ),
    )?;
    // Every setting at its default (PREFETCH 32, MARKETPLACE_TIMEOUT_MS 15 s, 2 in-process retries,
    // MARKETPLACE_MAX_IN_FLIGHT 8) but the delay tiers, which the test environment shortens.
    let publisher = Worker::started(
        &env,
        "marketplace-publisher",
        &[
            ("MARKETPLACES_FILE", file.display().to_string()),
            ("RETRY_DELAYS_MS", DEFAULT_TIERS.into()),
        ],
    )
    .await?;
    let amqp = env.amqp().await?;
    for n in 0..60 {
        let c = status_change(
            &format!("S-{n}"),
            &s10("SK", n),
            "delivered",
            "out_for_delivery",
            "ana@example.com",
            Some(("stuck", &format!("SO-{n}"))),
        );
        env.record_change(&c).await?;
        amqp.publish(MARKET_QUEUE, &serde_json::to_vec(&c)?).await?;
    }
    let mut healthy_changes = Vec::new();
    for n in 0..10 {
        let c = status_change(
            &format!("H-{n}"),
            &s10("HL", n),
            "delivered",
            "out_for_delivery",
            "ana@example.com",
            Some(("healthy", &format!("HO-{n}"))),
        );
        env.record_change(&c).await?;
        healthy_changes.push(c);
    }
    let published = Instant::now();
    for c in &healthy_changes {
        amqp.publish(MARKET_QUEUE, &serde_json::to_vec(c)?).await?;
    }
    eventually(
        Duration::from_secs(90),
        "the healthy marketplace's ten calls",
        || async { Ok((healthy.call_count() >= 10).then_some(())) },
    )
    .await?;
    let last = healthy.calls().iter().map(|c| c.received_at).max().unwrap();
    let delay = last.saturating_duration_since(published);
    println!(
        "figure: the healthy marketplace's last call came {:.2} s after its changes were published, beside 60 hanging ones",
        delay.as_secs_f64()
    );
    assert!(
        delay <= Duration::from_secs(5),
        "the healthy marketplace waited {delay:?} behind the hanging one"
    );
    // The hanging one holds no more connections than its bound.
    assert!(
        stuck.accepted() <= 8,
        "{} connections to the hanging marketplace",
        stuck.accepted()
    );
    let metrics = publisher.metrics().await?;
    assert!(
        counted(
            &metrics,
            "far_end_deferred_total{far_end=\"marketplace:stuck\",why=\"busy\"}"
        ) > 0.0,
        "the hanging marketplace's other changes were deferred: {metrics}"
    );
    assert_eq!(
        counted(
            &metrics,
            "far_end_deferred_total{far_end=\"marketplace:healthy\""
        ),
        0.0
    );

    // Once its calls time out (15 s), the hanging marketplace is failing: its tries are not made again in
    // process, and it still holds no more than its bound.
    eventually(
        Duration::from_secs(40),
        "the hanging marketplace failing",
        || async {
            let (_, health) = publisher.health().await?;
            Ok((health["far_ends"]["marketplace:stuck"]["state"] == "failing").then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = publisher.log_text();
    assert!(
        !log.contains("Retrying in process"),
        "a timed-out call was retried in process:\n{log}"
    );
    assert!(
        stuck.accepted() <= 16,
        "{} connections to the hanging marketplace in two rounds of its bound",
        stuck.accepted()
    );
    assert_eq!(healthy.call_count(), 10, "each healthy change once");
    Ok(())
}

/// Writes the claim of a worker that died holding `(destination, change_id)`: its lease ends in `lease`.
async fn dead_claim(
    env: &TestEnv,
    destination: &str,
    change_id: &str,
    lease: Duration,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO deliveries (destination, change_id, owner, lease_until) \
         VALUES ($1, $2::text::uuid, $3, now() + make_interval(secs => $4))",
    )
    .bind(destination)
    .bind(change_id)
    .bind(Uuid::new_v4())
    .bind(lease.as_secs_f64())
    .execute(&env.pool)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_leased_by_a_dead_worker_is_sent_when_the_lease_ends_not_a_tier_later()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let publisher = Worker::started(
        &env,
        "email-publisher",
        &[
            ("SMTP_URL", smtp.url()),
            ("EMAIL_FROM", "Loja <noreply@loja.example>".into()),
            ("RETRY_DELAYS_MS", DEFAULT_TIERS.into()),
        ],
    )
    .await?;
    let amqp = env.amqp().await?;
    let change = status_change(
        "DEAD-1",
        &s10("DL", 40),
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        None,
    );
    env.record_change(&change).await?;
    // A worker claimed it and died: its lease runs 15 s more (the default lease is 30 s, extended every 10 s).
    let lease = Duration::from_secs(15);
    dead_claim(&env, "email", change["change_id"].as_str().unwrap(), lease).await?;
    let leased_at = Instant::now();
    amqp.publish(EMAIL_QUEUE, &serde_json::to_vec(&change)?)
        .await?;
    let arrived = eventually(Duration::from_secs(90), "the email", || async {
        Ok(smtp.received().first().map(|r| r.at))
    })
    .await?;
    let after = arrived.saturating_duration_since(leased_at);
    println!(
        "figure: the email leased by a dead worker for {} s arrived {:.2} s after the lease was written",
        lease.as_secs(),
        after.as_secs_f64()
    );
    assert!(
        after >= lease - Duration::from_millis(500) && after <= lease + Duration::from_secs(3),
        "sent {after:?} after a lease of {lease:?}"
    );
    // Through the 10 s tier once, then in process for the rest: one return, not one a second.
    let metrics = publisher.metrics().await?;
    let waited = counted(
        &metrics,
        "messages_total{queue=\"email.order-status\",outcome=\"waited\"}",
    );
    assert!(waited <= 2.0, "waited {waited} times: {metrics}");
    tracking_tests::wait_finished(
        &amqp,
        &publisher,
        "email.order-status",
        1,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(smtp.received().len(), 1);
    Ok(())
}

/// The heartbeat: a claim whose holder is still sending is extended, so another worker finds it leased (not
/// expired) after the lease, and the holder's outcome is recorded as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_extended_while_its_holder_works() -> anyhow::Result<()> {
    use tracking_runtime::amqp::Outcome;
    use tracking_store::deliveries::{Claim, ClaimRequest, claim_many};
    use tracking_workers::deliver::{self, Attempt, Ledger, RetryPolicy, To};
    use tracking_workers::far_ends::FarEnds;

    let env = TestEnv::ready().await?;
    // Extended every second: two seconds of slack for a loaded machine.
    let lease = Duration::from_secs(3);
    let policy = RetryPolicy {
        in_process: 0,
        in_process_base: Duration::from_millis(10),
        in_process_max_wait: Duration::from_millis(10),
        queue_base: Duration::from_secs(1),
        queue_max: Duration::from_secs(10),
        retry_for: Duration::from_secs(3600),
        lease,
        lease_wait_in_process: Duration::from_secs(10),
        tiers: vec![Duration::from_secs(1), Duration::from_secs(10)],
        record_retry_for: Duration::from_secs(5),
    };
    let ledger = Ledger::start(
        env.pool.clone().into(),
        lease,
        FarEnds::new(tracking_runtime::ops::Health::new(&[])),
    );
    let id = Uuid::new_v4();
    let send = {
        let (ledger, policy) = (ledger.clone(), policy.clone());
        tokio::spawn(async move {
            let to = To {
                what: "test",
                bulkhead: None,
            };
            deliver::once(&ledger, "email", id, &policy, to, None, || async {
                // Nearly three leases long.
                tokio::time::sleep(Duration::from_secs(8)).await;
                Attempt::Done("<slow@loja>".into())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let other = ClaimRequest {
        destination: "email".into(),
        change_id: id,
        owner: Uuid::new_v4(),
    };
    let answer = claim_many(&env.pool, std::slice::from_ref(&other), lease).await?;
    assert!(
        matches!(answer[..], [Claim::Leased { .. }]),
        "6.5 s into a send under a 3 s lease, the claim is still held: {answer:?}"
    );
    let d = send.await?;
    assert_eq!((d.result, d.outcome), ("delivered", Outcome::Ack));
    let answer = claim_many(&env.pool, &[other], lease).await?;
    assert_eq!(answer, vec![Claim::Done]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_later_change_backs_off_logs_once_and_goes_right_after_the_earlier_one()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let file = env.log_dir().join("marketplaces-order.toml");
    std::fs::write(&file, webhook("acme", &receiver.url()))?;
    let publisher = Worker::started(
        &env,
        "marketplace-publisher",
        &[
            ("MARKETPLACES_FILE", file.display().to_string()),
            ("RETRY_DELAYS_MS", DEFAULT_TIERS.into()),
        ],
    )
    .await?;
    let amqp = env.amqp().await?;
    let code = s10("DL", 41);
    let earlier = status_change(
        "ORD-1",
        &code,
        "out_for_delivery",
        "in_transit",
        "ana@example.com",
        Some(("acme", "A-41")),
    );
    let later = status_change(
        "ORD-1",
        &code,
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        Some(("acme", "A-41")),
    );
    env.record_change(&earlier).await?;
    env.record_change(&later).await?;
    // The earlier change's relayer died holding it: 20 s of lease left.
    let lease = Duration::from_secs(20);
    dead_claim(
        &env,
        "marketplace:acme",
        earlier["change_id"].as_str().unwrap(),
        lease,
    )
    .await?;
    let leased_at = Instant::now();
    amqp.publish(MARKET_QUEUE, &serde_json::to_vec(&earlier)?)
        .await?;
    amqp.publish(MARKET_QUEUE, &serde_json::to_vec(&later)?)
        .await?;
    eventually(Duration::from_secs(90), "both calls", || async {
        Ok((receiver.call_count() >= 2).then_some(()))
    })
    .await?;
    let calls = receiver.calls();
    let statuses: Vec<&str> = calls
        .iter()
        .map(|c| c.json.as_ref().unwrap()["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["out_for_delivery", "delivered"], "in order");
    let first = calls[0].received_at.saturating_duration_since(leased_at);
    let gap = calls[1]
        .received_at
        .saturating_duration_since(calls[0].received_at);
    println!(
        "figure: earlier change relayed {:.2} s after a {} s dead lease was written; the later one {:.3} s after it",
        first.as_secs_f64(),
        lease.as_secs(),
        gap.as_secs_f64()
    );
    assert!(
        first <= lease + Duration::from_secs(3),
        "the earlier change went {first:?} after its lease was written"
    );
    assert!(
        gap <= Duration::from_secs(2),
        "the later change went {gap:?} after the earlier one"
    );
    let metrics = publisher.metrics().await?;
    let waits = counted(
        &metrics,
        "marketplace_calls_total{marketplace=\"acme\",result=\"waiting\"}",
    );
    // At 0, 1 and 11 s (1 s, then 2 and 4 s rounded up to the 10 s tier): a few, not one a second.
    assert!(
        (1.0..=4.0).contains(&waits),
        "the later change waited {waits} times in {first:?}"
    );
    let log = publisher.log_text();
    let logged = log.matches("is not relayed yet").count();
    assert_eq!(logged, 1, "its wait is logged once:\n{log}");
    tracking_tests::wait_finished(
        &amqp,
        &publisher,
        "marketplace.order-status",
        2,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(receiver.call_count(), 2, "each once");
    Ok(())
}
