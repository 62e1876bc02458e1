//! Several broker hosts (issue 21, point 1): the whole pipeline (the five workers and tracking-api, the release
//! of the same binaries as production) on a 3-node RabbitMQ cluster of the test's own, every worker given the three
//! nodes in `AMQP_URL`, while parcels keep arriving through tracking-api and each node is stopped in turn, always
//! the one every worker is connected to at the time (they all start on the first, and move to the next on each
//! loss). Nothing may be lost or doubled (emails by Message-ID, marketplace calls by Idempotency-Key, against the
//! status changes recorded), nothing parked, and no worker may stall longer than [`STALL_LIMIT`]: each worker's
//! `/health` is polled every 100 ms and the longest stretch it was not 200 is measured per stopped node, as is
//! the longest a tracking request took from its first POST to its 202.
//!
//! Run alone: `cargo test -p tracking-tests --test cluster -- --nocapture` prints the figures.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracking_domain::Status;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_sim::marketplace::Receiver;
use tracking_sim::smtp::SmtpServer;
use tracking_tests::journey::fast;
use tracking_tests::rabbit_cluster::RabbitCluster;
use tracking_tests::{
    EnvOptions, TestEnv, Worker, correios_env, eventually, free_addr, request, s10,
};

/// "A few seconds": a lost connection is opened again after 100-200 ms, on the next node, plus the time to
/// connect and declare the topology there on a loaded machine.
const STALL_LIMIT: Duration = Duration::from_secs(5);
/// How long each node stays down.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// Tracking requests posted per second while the nodes are stopped.
const PARCELS_PER_SECOND: u64 = 3;
const NODES: usize = 3;
const MARKETPLACE: &str = "acme";
const SECRET: &str = "cluster-webhook-secret-0123456789";
const API_TOKEN: &str = "cluster-api-token-0123456789abcdef";

/// Stretches during which a worker's `/health` did not answer 200.
#[derive(Default)]
struct Downtime {
    /// Per worker: (from, to) of each stretch; an open one has `to` = `None`.
    stretches: BTreeMap<&'static str, Vec<(Instant, Option<Instant>)>>,
}

impl Downtime {
    fn record(&mut self, worker: &'static str, healthy: bool, at: Instant) {
        let list = self.stretches.entry(worker).or_default();
        match (healthy, list.last_mut()) {
            (false, Some((_, None))) => {}
            (false, _) => list.push((at, None)),
            (true, Some((_, to @ None))) => *to = Some(at),
            (true, _) => {}
        }
    }

    /// The longest stretch of `worker` that overlaps `from..to` (an open one counts up to `now`).
    fn longest(&self, worker: &str, from: Instant, to: Instant, now: Instant) -> Duration {
        self.stretches
            .get(worker)
            .into_iter()
            .flatten()
            .filter(|(a, b)| *a <= to && b.unwrap_or(now) >= from)
            .map(|(a, b)| b.unwrap_or(now).saturating_duration_since(*a))
            .max()
            .unwrap_or_default()
    }
}

/// One stopped node, as it happened.
struct Round {
    node: usize,
    /// The workers' connections it held when it was stopped (all of them).
    held: usize,
    stop_began: Instant,
    started: Instant,
}

/// Which node holds the workers' connections (named `…-consume` and `…-publish`; not the test's own), counted
/// per node name.
fn worker_connections(
    cluster: &RabbitCluster,
    ask: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut by_node = BTreeMap::new();
    for (node, name) in cluster.connections(ask)? {
        if name.ends_with("-consume") || name.ends_with("-publish") {
            *by_node.entry(node).or_default() += 1;
        }
    }
    Ok(by_node)
}

fn message_id_change(value: &str) -> Option<uuid::Uuid> {
    let inner = value.trim().trim_start_matches('<').trim_end_matches('>');
    inner.split('@').next()?.parse().ok()
}

/// The longest time within `from..to` without an arrival (the window's ends count as arrivals): how long the
/// pipeline as a whole stood still.
fn longest_gap(arrivals: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut points: Vec<Instant> = arrivals
        .iter()
        .copied()
        .filter(|t| *t > from && *t < to)
        .collect();
    points.push(from);
    points.push(to);
    points.sort();
    points
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// (expected, lost, doubled) of one destination.
fn tally(
    expected: &HashSet<uuid::Uuid>,
    arrivals: &HashMap<uuid::Uuid, usize>,
) -> (usize, usize, usize) {
    let lost = expected
        .iter()
        .filter(|id| !arrivals.contains_key(id))
        .count();
    let doubled = arrivals.values().filter(|n| **n > 1).count();
    (expected.len(), lost, doubled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_loses_each_node_of_a_three_node_cluster_in_turn_without_a_stall_a_loss_or_a_double()
-> anyhow::Result<()> {
    let began = Instant::now();
    let parent = tracking_tests::target_dir()
        .join("test-logs")
        .join(format!("cluster-{}", uuid::Uuid::new_v4().simple()));
    let cluster = tokio::task::block_in_place(|| RabbitCluster::start(&parent, NODES))?;
    eprintln!(
        "cluster of {NODES} nodes up in {:.1} s: {:?}",
        began.elapsed().as_secs_f64(),
        cluster.names
    );
    let env = TestEnv::with(EnvOptions {
        amqp_url: Some(cluster.amqp_url()),
        ..EnvOptions::default()
    })
    .await?;
    env.migrate().await?;
    // Declared once the three nodes are joined: each quorum queue has a member on every node.
    env.amqp()
        .await?
        .declare(&[Duration::from_millis(200), Duration::from_secs(1)])
        .await?;

    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let marketplaces = env.log_dir().join("marketplaces.toml");
    std::fs::write(
        &marketplaces,
        format!(
            "[[marketplace]]\nname = \"{MARKETPLACE}\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nrate_per_second = 100000\n",
            receiver.url()
        ),
    )?;
    let marketplaces = marketplaces.display().to_string();
    let api_addr = free_addr();
    let mut fetcher_env = correios_env(&sim);
    fetcher_env.extend([
        ("CORREIOS_RATE_PER_SECOND", "100000".to_owned()),
        ("CORREIOS_BURST", "100000".to_owned()),
    ]);
    let email_env = vec![
        ("SMTP_URL", smtp.url()),
        (
            "EMAIL_FROM",
            "Loja Teste <rastreio@loja.example>".to_owned(),
        ),
        ("MARKETPLACES_FILE", marketplaces.clone()),
    ];
    let specs: [(&'static str, Vec<(&str, String)>); 6] = [
        // The normalizer first: it migrates (already done here) and owns the schema.
        ("normalizer", fast()),
        ("fetcher", fetcher_env),
        ("scheduler", fast()),
        ("email-publisher", email_env),
        (
            "marketplace-publisher",
            vec![("MARKETPLACES_FILE", marketplaces.clone())],
        ),
        (
            "tracking-api",
            vec![
                ("HTTP_ADDR", api_addr.to_string()),
                ("API_TOKEN", API_TOKEN.to_owned()),
                ("MARKETPLACES_FILE", marketplaces.clone()),
            ],
        ),
    ];
    let mut workers = Vec::new();
    for (name, extra) in &specs {
        workers.push(Worker::started(&env, name, extra).await?);
    }
    let names: Vec<&'static str> = specs.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "every worker healthy at {:.1} s",
        began.elapsed().as_secs_f64()
    );

    // Each worker's /health, every 100 ms.
    let downtime = Arc::new(Mutex::new(Downtime::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let downtime = downtime.clone();
        let stop = stop.clone();
        let targets: Vec<(&'static str, String)> = workers
            .iter()
            .zip(&names)
            .map(|(w, n)| (*n, format!("http://{}/health", w.metrics_addr)))
            .collect();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?;
            while !stop.load(Ordering::Relaxed) {
                let checks = targets.iter().map(|(name, url)| {
                    let http = http.clone();
                    async move {
                        let ok =
                            matches!(http.get(url).send().await, Ok(r) if r.status().is_success());
                        (*name, ok)
                    }
                });
                let results = futures_util::future::join_all(checks).await;
                let now = Instant::now();
                {
                    let mut d = downtime.lock().unwrap();
                    for (name, ok) in results {
                        d.record(name, ok, now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };

    // Tracking requests through tracking-api, PARCELS_PER_SECOND, each POSTed again (every 200 ms, for at most
    // 30 s) until it gets its 202: (parcels posted, refusals, the longest first POST to 202).
    let feeder = {
        let stop = stop.clone();
        let sim = sim.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let mut posted = 0u32;
            let mut refused = 0u32;
            let mut slowest = Duration::ZERO;
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PARCELS_PER_SECOND));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let code = s10("CL", posted);
                // No promised date: a parcel of this test is never late (a late notice is an email for no change).
                let mut journey = Journey::delivered();
                journey.dt_prevista = None;
                sim.script(&code, Script::Journey(journey));
                let req = request(
                    &format!("cluster-{posted}"),
                    &code,
                    &format!("c{posted}@example.com"),
                    ["pt-BR", "es", "en"][posted as usize % 3],
                    Some(MARKETPLACE),
                );
                let first = Instant::now();
                loop {
                    let resp = http
                        .post(format!("http://{api_addr}/v1/tracking-requests"))
                        .bearer_auth(API_TOKEN)
                        .json(&req)
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().as_u16() == 202 => break,
                        Ok(r) if r.status().as_u16() != 503 => {
                            anyhow::bail!("tracking-api answered {} to {req}", r.status())
                        }
                        _ if first.elapsed() > Duration::from_secs(30) => {
                            anyhow::bail!("tracking-api refused {req} for 30 s")
                        }
                        _ => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                slowest = slowest.max(first.elapsed());
                posted += 1;
            }
            anyhow::Ok((posted, refused, slowest))
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Each node in turn, always the one holding the workers' connections: they all start on the first node of
    // AMQP_URL and move to the next one on each loss (node 1, then 2, then 3).
    let mut rounds = Vec::new();
    for node in 0..NODES {
        let ask = (node + 1) % NODES;
        if node > 0 {
            // The node stopped before is back and its quorum queue members caught up.
            tokio::task::block_in_place(|| {
                cluster.wait_not_quorum_critical(node, Duration::from_secs(60))
            })?;
        }
        // Connections move at their next use (a publisher that was idle reconnects on its next publish).
        let by_node = eventually(
            Duration::from_secs(15),
            &format!("every worker connection on {}", cluster.names[node]),
            || async {
                let by_node = tokio::task::block_in_place(|| worker_connections(&cluster, ask))?;
                let held = by_node.get(&cluster.names[node]).copied().unwrap_or(0);
                let all: usize = by_node.values().sum();
                if held > 0 && held == all {
                    return Ok(Some(by_node));
                }
                anyhow::bail!(
                    "the workers' connections per node: {by_node:?}; all: {:?}",
                    tokio::task::block_in_place(|| cluster.connections(ask))?
                )
            },
        )
        .await?;
        let held = by_node.values().sum();
        eprintln!(
            "[{:6.1} s] stopping {} (the workers' node: {held} of their connections)",
            began.elapsed().as_secs_f64(),
            cluster.names[node]
        );
        let stop_began = Instant::now();
        tokio::task::block_in_place(|| cluster.stop(node))?;
        eprintln!(
            "[{:6.1} s] {} stopped after {:.1} s",
            began.elapsed().as_secs_f64(),
            cluster.names[node],
            stop_began.elapsed().as_secs_f64()
        );
        tokio::time::sleep(DOWN_FOR).await;
        tokio::task::block_in_place(|| cluster.start_node(node))?;
        eprintln!(
            "[{:6.1} s] {} answers again",
            began.elapsed().as_secs_f64(),
            cluster.names[node]
        );
        rounds.push(Round {
            node,
            held,
            stop_began,
            started: Instant::now(),
        });
    }
    // The workers went round: back on the first node.
    let by_node = tokio::task::block_in_place(|| worker_connections(&cluster, 1))?;
    eprintln!("after the rounds, the workers' connections per node: {by_node:?}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (posted, refused, slowest_post) = feeder.await??;
    let monitor_result = monitor.await?;
    monitor_result?;
    eprintln!(
        "[{:6.1} s] {posted} parcels posted; {refused} POSTs answered 503 and posted again; the longest from a first POST to its 202: {:.2} s",
        began.elapsed().as_secs_f64(),
        slowest_post.as_secs_f64()
    );

    // Drained: every parcel delivered and finished, every change published, every email and call done.
    eventually(
        Duration::from_secs(120),
        "every parcel delivered, every change published and relayed",
        || async {
            let (shipments, finished): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE status = 'delivered' AND finished_at IS NOT NULL) FROM shipments",
            )
            .fetch_one(&env.pool)
            .await?;
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM status_changes WHERE published_at IS NULL",
            )
            .fetch_one(&env.pool)
            .await?;
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM deliveries WHERE state NOT IN ('done', 'parked')",
            )
            .fetch_one(&env.pool)
            .await?;
            let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM status_changes")
                .fetch_all(&env.pool)
                .await?;
            let notified = statuses
                .iter()
                .filter(|s| s.parse::<Status>().is_ok_and(Status::notifies_customer_by_default))
                .count();
            Ok((shipments == i64::from(posted)
                && finished == shipments
                && unpublished == 0
                && open == 0
                && receiver.call_count() >= statuses.len()
                && smtp.received_count() >= notified)
                .then_some(()))
        },
    )
    .await?;
    // Time for a late duplicate to show (a redelivery after a lost ack).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let changes: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT change_id, status FROM status_changes")
            .fetch_all(&env.pool)
            .await?;
    let expected_calls: HashSet<uuid::Uuid> = changes.iter().map(|(id, _)| *id).collect();
    let expected_emails: HashSet<uuid::Uuid> = changes
        .iter()
        .filter(|(_, s)| {
            s.parse::<Status>()
                .is_ok_and(Status::notifies_customer_by_default)
        })
        .map(|(id, _)| *id)
        .collect();
    let mut emails: HashMap<uuid::Uuid, usize> = HashMap::new();
    let email_times: Vec<Instant> = smtp.received().iter().map(|r| r.at).collect();
    for r in smtp.received() {
        let id = r
            .header("Message-ID")
            .as_deref()
            .and_then(message_id_change)
            .ok_or_else(|| anyhow::anyhow!("an email without a change's Message-ID"))?;
        *emails.entry(id).or_default() += 1;
    }
    let mut calls: HashMap<uuid::Uuid, usize> = HashMap::new();
    for c in receiver.calls() {
        let id = c
            .idempotency_key
            .as_deref()
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("a call without a change's Idempotency-Key"))?;
        *calls.entry(id).or_default() += 1;
    }
    let (e_expected, e_lost, e_doubled) = tally(&expected_emails, &emails);
    let (c_expected, c_lost, c_doubled) = tally(&expected_calls, &calls);
    let e_unexpected = emails
        .keys()
        .filter(|id| !expected_emails.contains(id))
        .count();
    let c_unexpected = calls
        .keys()
        .filter(|id| !expected_calls.contains(id))
        .count();
    let dead = env.amqp().await?.dead_counts().await?;
    let parked: u32 = dead.iter().map(|(_, n)| n).sum();

    // The longest stall of each worker around each stopped node.
    let now = Instant::now();
    let d = downtime.lock().unwrap();
    let mut longest = Duration::ZERO;
    let mut longest_email_gap = Duration::ZERO;
    let mut table = String::new();
    for r in &rounds {
        let mut line = format!(
            "{} (held all {} worker connections):",
            cluster.names[r.node], r.held
        );
        let window_end = r.started + Duration::from_secs(3);
        for name in &names {
            let stall = d.longest(name, r.stop_began, window_end, now);
            longest = longest.max(stall);
            line.push_str(&format!(" {name} {:.1} s,", stall.as_secs_f64()));
        }
        let gap = longest_gap(&email_times, r.stop_began, window_end);
        longest_email_gap = longest_email_gap.max(gap);
        line.push_str(&format!(
            " longest without an email {:.1} s,",
            gap.as_secs_f64()
        ));
        table.push_str(line.trim_end_matches(','));
        table.push('\n');
    }
    drop(d);
    eprintln!("longest /health stall per worker, per stopped node:\n{table}");
    eprintln!(
        "cluster: nodes={NODES} parcels={posted} changes={} emails_expected={e_expected} lost_emails={e_lost} doubled_emails={e_doubled} calls_expected={c_expected} lost_calls={c_lost} doubled_calls={c_doubled} parked={parked} longest_stall_secs={:.1} longest_email_gap_secs={:.1} longest_post_secs={:.2} refused_posts={refused} wall_secs={:.0}",
        changes.len(),
        longest.as_secs_f64(),
        longest_email_gap.as_secs_f64(),
        slowest_post.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );

    assert!(posted >= 30, "only {posted} parcels were posted");
    assert_eq!(e_lost, 0, "emails lost");
    assert_eq!(c_lost, 0, "marketplace calls lost");
    assert_eq!(e_doubled, 0, "emails doubled");
    assert_eq!(c_doubled, 0, "marketplace calls doubled");
    assert_eq!(
        e_unexpected + c_unexpected,
        0,
        "emails or calls for no recorded change"
    );
    assert_eq!(parked, 0, "parked: {dead:?}");
    assert!(
        longest <= STALL_LIMIT,
        "a worker's /health was down {longest:?} (limit {STALL_LIMIT:?}):\n{table}"
    );
    assert!(
        slowest_post <= STALL_LIMIT,
        "a tracking request waited {slowest_post:?} for its 202"
    );
    for w in &mut workers {
        assert!(w.is_running(), "{} exited; log:\n{}", w.name, w.log_text());
    }
    // Stopped before the cluster (declared first, dropped last).
    drop(workers);
    Ok(())
}
