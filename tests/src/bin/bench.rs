//! Benchmarks against the real RabbitMQ and PostgreSQL (own vhost and database, dropped at the end), with the release
//! binaries. `make bench` runs them all; docs/BENCHMARKS.md records the figures.
//!
//! - `bench normalizer [SHIPMENTS]`: carrier updates per second through the normalizer (dedupe, rules, outbox, publish)
//!   beside the same RabbitMQ hop into a consumer that only parses and acks.
//! - `bench scheduler [ROWS]`: the scheduler's due-scan with ROWS active shipments in the table.
//! - `bench publishers [CHANGES]`: the time to drain CHANGES status changes to an SMTP server and to a webhook.
//! - `bench latency [RATE] [SECONDS]`: from a carrier update published to the normalizer's queue to the customer's
//!   email accepted by the SMTP server, at RATE updates per second.
//! - `bench fetcher [CODES]`: codes per second through the fetcher against the Correios simulator, with batches of
//!   50 and of 1, and carrier calls per code.
//! - `bench pipeline [PARCELS]`: the whole pipeline beside the null pipeline, with CPU per parcel and memory
//!   ([`pipeline`]).

#[path = "bench/pipeline.rs"]
mod pipeline;
#[path = "bench/procstat.rs"]
mod procstat;

use procstat::CpuSpan;

use anyhow::{Context, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracking_app::topology::NORMALIZER_QUEUE;
use tracking_domain::CarrierUpdate;
use tracking_runtime::amqp::{AmqpSettings, Handler, Incoming, Outcome, Publisher, run_consumer};
use tracking_runtime::ops::Health;
use tracking_sim::marketplace::Receiver;
use tracking_sim::smtp::SmtpServer;
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, request, s10, status_change,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracking_app::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |default: usize| -> anyhow::Result<usize> {
        args.get(1)
            .map(|s| s.parse().context("the size must be a number"))
            .transpose()
            .map(|n| n.unwrap_or(default))
    };
    match args.first().map(String::as_str) {
        Some("normalizer") => normalizer(count(2000)?).await,
        Some("scheduler") => scheduler(count(1_000_000)?).await,
        Some("publishers") => publishers(count(1000)?).await,
        Some("fetcher") => fetcher(count(2000)?).await,
        Some("pipeline") => pipeline::pipeline(count(3000)?).await,
        Some("latency") => {
            let seconds = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20u64);
            latency(count(200)?, seconds).await
        }
        _ => bail!(
            "usage: bench normalizer [SHIPMENTS] | bench scheduler [ROWS] | bench publishers [CHANGES] | bench fetcher [CODES] | bench latency [RATE] [SECONDS] | bench pipeline [PARCELS]"
        ),
    }
}

/// A process's peak resident memory (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    procstat::memory_mb(pid, "VmHWM")
}

/// A marketplaces file naming one webhook marketplace, `acme`, at `receiver`, its pacing lifted (100,000 calls per
/// second instead of the default 10): a benchmark measures the workers, not the pacing.
fn unpaced_marketplace(
    env: &TestEnv,
    receiver: &Receiver,
    secret: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let file = env.log_dir().join("bench-marketplaces.toml");
    std::fs::write(
        &file,
        format!(
            "[[marketplace]]\nname = \"acme\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{secret}\"\nrate_per_second = 100000\n",
            receiver.url()
        ),
    )?;
    Ok(file)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores, {model}")
}

/// The history a parcel shows over five polls; poll k returns the first k events (as Correios does: all of them).
fn history() -> Vec<serde_json::Value> {
    vec![
        correios_event("PO", "01", "2026-11-20T10:00:00-03:00"),
        correios_event("RO", "01", "2026-11-21T09:00:00-03:00"),
        correios_event("RO", "01", "2026-11-22T09:00:00-03:00"),
        correios_event("OEC", "01", "2026-11-23T08:00:00-03:00"),
        correios_event("BDE", "01", "2026-11-23T15:00:00-03:00"),
    ]
}

/// Every poll of every shipment, poll by poll (so each shipment's polls arrive in order).
fn polls(shipments: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let history = history();
    let mut out = Vec::with_capacity(shipments * history.len());
    for k in 1..=history.len() {
        for n in 0..shipments {
            let code = s10("BN", n as u32);
            let req = request(
                &format!("bench-{n}"),
                &code,
                "ana@example.com",
                "pt-BR",
                None,
            );
            out.push(serde_json::to_vec(&carrier_update(
                &code,
                Some(&req),
                &history[..k],
            ))?);
        }
    }
    Ok(out)
}

struct ParseAndAck {
    done: AtomicUsize,
}

impl Handler for ParseAndAck {
    async fn handle(&self, msg: Incoming) -> Outcome {
        let outcome = match serde_json::from_slice::<CarrierUpdate>(&msg.body) {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::Park {
                reason: e.to_string(),
            },
        };
        self.done.fetch_add(1, Ordering::Relaxed);
        outcome
    }
}

async fn publish_all(env: &TestEnv, bodies: &[Vec<u8>]) -> anyhow::Result<()> {
    let amqp = env.amqp().await?;
    for b in bodies {
        amqp.publish(NORMALIZER_QUEUE, b).await?;
    }
    Ok(())
}

async fn wait_for(
    what: &str,
    within: Duration,
    every: Duration,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if done().await? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {within:?}");
        }
        tokio::time::sleep(every).await;
    }
}

async fn normalizer(shipments: usize) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_secs(1)]).await?;
    let bodies = polls(shipments)?;
    let messages = bodies.len();
    let events_in: usize = (1..=history().len()).sum::<usize>() * shipments;
    println!(
        "# normalizer: {shipments} shipments x 5 polls = {messages} carrier updates, {events_in} events in them \
              ({} new); the hop with PREFETCH 32, the normalizer with NORMALIZER_BATCH {} (64 unless set), 2 batches in flight; {}",
        shipments * history().len(),
        std::env::var("NORMALIZER_BATCH").unwrap_or_else(|_| "64".into()),
        machine()
    );

    // The hop alone: the same queue, the same consumer runtime, a handler that parses and acks.
    publish_all(&env, &bodies).await?;
    let settings = AmqpSettings::with_url(&env.amqp_url);
    let handler = Arc::new(ParseAndAck {
        done: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(run_consumer(
        settings.clone(),
        NORMALIZER_QUEUE,
        Publisher::new(settings, "bench"),
        handler.clone(),
        Health::new(&["rabbitmq"]),
        shutdown.clone(),
    ));
    let ended = wait_for(
        "the hop alone",
        Duration::from_secs(600),
        Duration::from_millis(10),
        async || Ok(handler.done.load(Ordering::Relaxed) >= messages),
    )
    .await?;
    shutdown.cancel();
    let _ = task.await;
    let hop = ended - started;

    // The normalizer: the same messages, now stored, deduplicated, decided and published.
    publish_all(&env, &bodies).await?;
    let mut worker = Worker::spawn(&env, "normalizer", &[("RUST_LOG", "warn".into())])?;
    worker.wait_healthy(Duration::from_secs(60)).await?;
    // Where the CPU goes meanwhile: the normalizer, PostgreSQL's backends of this database, RabbitMQ.
    let beams = procstat::pids_named("beam.smp");
    let (mut postgres, mut rabbit, mut own) =
        (CpuSpan::default(), CpuSpan::default(), CpuSpan::default());
    postgres.sample(&pipeline::our_backends(&env).await?, false);
    rabbit.sample(&beams, false);
    own.sample(&[worker.pid()], false);
    let started = Instant::now();
    let metrics_url = format!("http://{}/metrics", worker.metrics_addr);
    // Polled every 100 ms: the figure is rounded up by at most that (and the polling costs the normalizer little CPU).
    let ended = wait_for(
        "the normalizer",
        Duration::from_secs(1800),
        Duration::from_millis(100),
        async || {
            let text = reqwest::get(&metrics_url).await?.text().await?;
            let handled: f64 = text
                .lines()
                .filter(|l| l.starts_with("messages_total{") && l.contains(NORMALIZER_QUEUE))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            Ok(handled as usize >= messages)
        },
    )
    .await?;
    let work = ended - started;
    // Backends opened during the run count from their start.
    postgres.sample(&pipeline::our_backends(&env).await?, true);
    rabbit.sample(&beams, false);
    own.sample(&[worker.pid()], false);
    let rss = peak_rss_mb(worker.pid());
    worker.terminate()?;

    let (events, changes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tracking_events), (SELECT count(*) FROM status_changes WHERE published_at IS NOT NULL)",
    )
    .fetch_one(&env.pool)
    .await?;
    if events as usize != shipments * history().len() || changes as usize != shipments * 4 {
        bail!("unexpected result: {events} events stored, {changes} changes published");
    }
    let rate = |d: Duration, n: usize| n as f64 / d.as_secs_f64();
    println!("| path | time | updates/s | events/s (as received) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| RabbitMQ hop, parse and ack | {:.2} s | {:.0} | {:.0} |",
        hop.as_secs_f64(),
        rate(hop, messages),
        rate(hop, events_in)
    );
    println!(
        "| normalizer (PostgreSQL, dedupe, outbox, publish) | {:.2} s | {:.0} | {:.0} |",
        work.as_secs_f64(),
        rate(work, messages),
        rate(work, events_in)
    );
    println!(
        "normalizer / hop throughput: {:.2}  ({events} events stored, {changes} status changes published)",
        rate(work, messages) / rate(hop, messages)
    );
    let ticks = procstat::ticks_per_second();
    let per_update = |t: u64| t as f64 * 1000.0 / ticks / messages as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = (postgres.ticks() + rabbit.ticks() + own.ticks()) as f64
        / ticks
        / (work.as_secs_f64() * cores);
    println!(
        "CPU ms per update while the normalizer drained: PostgreSQL {:.3}, normalizer {:.3}, RabbitMQ {:.3}; \
         together {:.0} % of the machine's {cores} cores over the run",
        per_update(postgres.ticks()),
        per_update(own.ticks()),
        per_update(rabbit.ticks()),
        busy * 100.0
    );
    println!("normalizer peak resident memory: {rss:.1} MB");
    Ok(())
}

/// The number of the carrier update an email answers: its recipient is `c{n}@example.com`.
fn update_number(r: &tracking_sim::smtp::Received) -> Option<usize> {
    r.to.first()?
        .strip_prefix('c')?
        .split('@')
        .next()?
        .parse()
        .ok()
}

/// Where each email's time went, from the clock times PostgreSQL recorded (the normalizer's transaction start in
/// `status_changes.created_at`, the claim in `deliveries.created_at`, the record in `completed_at`) and the SMTP
/// server's: publish → the normalizer's transaction; → the claim (commit, publish with confirm, delivery to the
/// email publisher, its trust check); → the SMTP server's acceptance (rendering, the SMTP conversation); and beside
/// them, the normalizer's transaction → its change marked published (`published_at`: the commit, the confirm, and
/// up to the marker's 20 ms). Printed for every email and for the slowest 1 %, so that the tail's stage shows.
async fn stages(
    env: &TestEnv,
    sent_at: &[chrono::DateTime<chrono::Utc>],
    smtp: &SmtpServer,
) -> anyhow::Result<()> {
    use chrono::{DateTime, Utc};
    /// An email's order id, its normalizer's transaction start, its change's `published_at`, its claim.
    type Traced = (String, DateTime<Utc>, Option<DateTime<Utc>>, DateTime<Utc>);
    let rows: Vec<Traced> = sqlx::query_as(
        "SELECT o.order_id, sc.created_at, sc.published_at, d.created_at FROM status_changes sc \
         JOIN orders o ON o.id = sc.order_ref \
         JOIN deliveries d ON d.change_id = sc.change_id AND d.destination = 'email'",
    )
    .fetch_all(&env.pool)
    .await?;
    let accepted: std::collections::HashMap<usize, DateTime<Utc>> = smtp
        .received()
        .iter()
        .filter_map(|r| Some((update_number(r)?, DateTime::<Utc>::from(r.at_wall))))
        .collect();
    let ms = |a: DateTime<Utc>, b: DateTime<Utc>| {
        (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
    };
    // (total, to the normalizer, to the claim, to acceptance, and from the normalizer to marked published), per email.
    let mut each: Vec<[f64; 5]> = rows
        .iter()
        .filter_map(|(order, normalized, published, claimed)| {
            let n: usize = order.strip_prefix("lat-")?.parse().ok()?;
            let (sent, done) = (*sent_at.get(n)?, *accepted.get(&n)?);
            Some([
                ms(sent, done),
                ms(sent, *normalized),
                ms(*normalized, *claimed),
                ms(*claimed, done),
                ms(*normalized, (*published)?),
            ])
        })
        .collect();
    if each.is_empty() {
        bail!("no email could be traced through the database");
    }
    each.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mean =
        |rows: &[[f64; 5]], i: usize| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64;
    let slowest = &each[each.len() - each.len().div_ceil(100)..];
    println!(
        "| emails | publish → normalizer's transaction | → claimed by the email publisher | → accepted by SMTP | total | \
         beside: normalizer's transaction → marked published (commit, confirm, the marker's 20 ms) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, rows) in [("all, mean", &each[..]), ("slowest 1 %, mean", slowest)] {
        println!(
            "| {name} ({}) | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            rows.len(),
            mean(rows, 1),
            mean(rows, 2),
            mean(rows, 3),
            mean(rows, 0),
            mean(rows, 4)
        );
    }
    Ok(())
}

async fn scheduler(rows: usize) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    println!(
        "# scheduler due-scan: {rows} active shipments, 1 % of them due; {}",
        machine()
    );
    let started = Instant::now();
    // Codes need not be valid here: the scan reads rows, it does not parse them.
    sqlx::query(
        "INSERT INTO shipments (carrier, tracking_code, status, next_poll_at, last_news_at) \
         SELECT 'correios', 'SC' || lpad(i::text, 9, '0') || 'BR', 'in_transit', \
                CASE WHEN i % 100 = 0 THEN now() - interval '1 minute' ELSE now() + (i % 14400) * interval '1 second' END, now() \
         FROM generate_series(1, $1) AS i",
    )
    .bind(rows as i64)
    .execute(&env.pool)
    .await?;
    // Each with its order, as a tracking request leaves it (the due scan reads a parcel's first order).
    sqlx::query(
        "INSERT INTO orders (order_id, customer_email) SELECT 'order-' || i, 'ana@example.com' FROM generate_series(1, $1) AS i",
    )
    .bind(rows as i64)
    .execute(&env.pool)
    .await?;
    sqlx::query(
        "INSERT INTO order_parcels (order_ref, shipment_id) \
         SELECT o.id, s.id FROM shipments s JOIN orders o ON o.order_id = 'order-' || ltrim(substr(s.tracking_code, 3, 9), '0')",
    )
    .execute(&env.pool)
    .await?;
    sqlx::query("ANALYZE shipments").execute(&env.pool).await?;
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());

    let sql = tracking_store::shipments::due_scan_sql();
    let mut times = Vec::new();
    for _ in 0..30 {
        let mut tx = env.pool.begin().await?;
        let t = Instant::now();
        let got: Vec<tracking_store::shipments::ShipmentRow> = sqlx::query_as(&sql)
            .bind(chrono::Utc::now())
            .bind(500i64)
            .fetch_all(&mut *tx)
            .await?;
        times.push(t.elapsed());
        if got.len() != 500 {
            bail!("the scan returned {} rows, not 500", got.len());
        }
        tx.rollback().await?;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| rows | due | batch | median | p95 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {rows} | {} | 500 | {:.2} ms | {:.2} ms | {:.2} ms |",
        rows / 100,
        ms(times[14]),
        ms(times[28]),
        ms(times[29])
    );
    let plan: Vec<(String,)> = sqlx::query_as(&format!("EXPLAIN {sql}"))
        .bind(chrono::Utc::now())
        .bind(500i64)
        .fetch_all(&env.pool)
        .await?;
    println!("plan:");
    for (line,) in plan {
        println!("    {line}");
    }
    Ok(())
}

async fn publishers(changes: usize) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_secs(1)]).await?;
    println!(
        "# publishers: {changes} status changes drained by each publisher (PREFETCH 32); {}",
        machine()
    );
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let secret = "bench-secret-0123456789";
    let receiver = Receiver::start(secret.into(), "127.0.0.1:0".parse()?).await?;
    // Pacing lifted: this measures the publisher, not the default 10 calls per second per marketplace.
    let file = unpaced_marketplace(&env, &receiver, secret)?;
    for n in 0..changes {
        let c = status_change(
            &format!("B-{n}"),
            &s10("BP", n as u32),
            "delivered",
            "out_for_delivery",
            "ana@example.com",
            Some(("acme", "A")),
        );
        env.record_change(&c).await?;
        let body = serde_json::to_vec(&c)?;
        amqp.publish("email.order-status", &body).await?;
        amqp.publish("marketplace.order-status", &body).await?;
    }
    let mut rows = Vec::new();
    for (name, extra, what) in [
        (
            "email-publisher",
            vec![
                ("SMTP_URL", smtp.url()),
                ("EMAIL_FROM", "Loja <noreply@loja.example>".to_owned()),
            ],
            "SMTP server (tracking-sim smtp)",
        ),
        (
            "marketplace-publisher",
            vec![("MARKETPLACES_FILE", file.display().to_string())],
            "webhook receiver (tracking-sim)",
        ),
    ] {
        let mut settings = extra;
        settings.push(("RUST_LOG", "warn".into()));
        let mut worker = Worker::spawn(&env, name, &settings)?;
        worker.wait_healthy(Duration::from_secs(60)).await?;
        let started = Instant::now();
        let ended = wait_for(
            name,
            Duration::from_secs(1800),
            Duration::from_millis(20),
            async || {
                Ok(
                    smtp.received().len() >= changes && name == "email-publisher"
                        || receiver.calls().len() >= changes && name == "marketplace-publisher",
                )
            },
        )
        .await?;
        let rss = peak_rss_mb(worker.pid());
        worker.terminate()?;
        rows.push((name, what, ended - started, rss));
    }
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state = 'done'")
        .fetch_one(&env.pool)
        .await?;
    if done as usize != 2 * changes
        || smtp.received().len() != changes
        || receiver.calls().len() != changes
    {
        bail!(
            "unexpected result: {done} deliveries done, {} emails, {} calls",
            smtp.received().len(),
            receiver.calls().len()
        );
    }
    println!("| publisher | far end | time for {changes} | per second | peak RSS |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, what, took, rss) in rows {
        println!(
            "| {name} | {what} | {:.2} s | {:.0} | {rss:.1} MB |",
            took.as_secs_f64(),
            changes as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}

async fn fetcher(codes: usize) -> anyhow::Result<()> {
    use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
    println!(
        "# fetcher: {codes} tracking requests against the Correios simulator (127.0.0.1), budget lifted; {}",
        machine()
    );
    println!("| batch size | time | codes/s | carrier calls | calls per code | fetcher peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for batch in [50usize, 1] {
        let env = TestEnv::new().await?;
        env.migrate().await?;
        let amqp = env.amqp().await?;
        amqp.declare(&[Duration::from_secs(1)]).await?;
        let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
        for n in 0..codes {
            let code = s10("BF", n as u32);
            sim.script(&code, Script::Journey(Journey::delivered().all_at_once()));
            let body = serde_json::to_vec(&request(
                &format!("f-{n}"),
                &code,
                "ana@example.com",
                "pt-BR",
                None,
            ))?;
            amqp.publish("tracking.requests", &body).await?;
        }
        let settings = [
            ("CORREIOS_BASE_URL", sim.base_url()),
            ("CORREIOS_USER", "sim-user".to_owned()),
            ("CORREIOS_ACCESS_CODE", "sim-code".to_owned()),
            ("CORREIOS_BATCH_SIZE", batch.to_string()),
            ("CORREIOS_RATE_PER_SECOND", "100000".to_owned()),
            ("CORREIOS_BURST", "100000".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let mut worker = Worker::spawn(&env, "fetcher", &settings)?;
        worker.wait_healthy(Duration::from_secs(60)).await?;
        let started = Instant::now();
        let ended = wait_for(
            "the fetcher",
            Duration::from_secs(1800),
            Duration::from_millis(50),
            async || Ok(amqp.count(NORMALIZER_QUEUE).await? as usize >= codes),
        )
        .await?;
        let rss = peak_rss_mb(worker.pid());
        worker.terminate()?;
        let took = ended - started;
        let calls = sim.tracking_calls();
        println!(
            "| {batch} | {:.2} s | {:.0} | {calls} | {:.3} | {rss:.1} MB |",
            took.as_secs_f64(),
            codes as f64 / took.as_secs_f64(),
            calls as f64 / codes as f64
        );
    }
    Ok(())
}

async fn latency(rate: usize, seconds: u64) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_secs(1)]).await?;
    let total = rate * seconds as usize;
    println!(
        "# latency: {total} carrier updates at {rate}/s, each a new shipment delivered (one change, one email); {}",
        machine()
    );
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let quiet = ("RUST_LOG", "warn".to_owned());
    let mut normalizer = Worker::spawn(&env, "normalizer", std::slice::from_ref(&quiet))?;
    normalizer.wait_healthy(Duration::from_secs(60)).await?;
    let mut email = Worker::spawn(
        &env,
        "email-publisher",
        &[
            quiet,
            ("SMTP_URL", smtp.url()),
            ("EMAIL_FROM", "Loja <noreply@loja.example>".to_owned()),
            // Each parcel's first news is its delivery, which emails nobody by default: the email is measured.
            ("EMAIL_DELIVERED_WHEN_FIRST_SEEN", "true".to_owned()),
        ],
    )?;
    email.wait_healthy(Duration::from_secs(60)).await?;
    let history = history();
    let mut sent = Vec::with_capacity(total);
    let mut sent_at = Vec::with_capacity(total);
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for n in 0..total {
        tokio::time::sleep_until(start + every * n as u32).await;
        let code = s10("LT", n as u32);
        let req = request(
            &format!("lat-{n}"),
            &code,
            &format!("c{n}@example.com"),
            "pt-BR",
            None,
        );
        let body = serde_json::to_vec(&carrier_update(&code, Some(&req), &history))?;
        sent.push(Instant::now());
        sent_at.push(chrono::Utc::now());
        amqp.publish(NORMALIZER_QUEUE, &body).await?;
    }
    let offered = start.elapsed().as_secs_f64();
    wait_for(
        "every email",
        Duration::from_secs(600),
        Duration::from_millis(50),
        async || Ok(smtp.received().len() >= total),
    )
    .await?;
    let mut latencies: Vec<Duration> = smtp
        .received()
        .iter()
        .filter_map(|r| Some(r.at.saturating_duration_since(*sent.get(update_number(r)?)?)))
        .collect();
    if latencies.len() != total {
        bail!("{} of {total} emails matched their update", latencies.len());
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("offered {:.0} updates/s", total as f64 / offered);
    println!("| updates | rate | p50 | p90 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {total} | {rate}/s | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(latencies[latencies.len() - 1])
    );
    println!(
        "peak resident memory: normalizer {:.1} MB, email-publisher {:.1} MB",
        peak_rss_mb(normalizer.pid()),
        peak_rss_mb(email.pid())
    );
    stages(&env, &sent_at, &smtp).await?;
    normalizer.terminate()?;
    email.terminate()?;
    Ok(())
}
