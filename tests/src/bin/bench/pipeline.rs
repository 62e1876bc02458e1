//! `bench pipeline [PARCELS]`: the whole pipeline (fetcher, normalizer, email publisher, marketplace publisher,
//! release binaries) drains PARCELS tracking requests against the Correios simulator, the SMTP server and the
//! webhook receiver of `tracking-sim`; then, in the same run, the null pipeline (`null-worker`: the same hops on the
//! same runtime, handlers that only parse and forward) drains the same requests. Prints parcels/s for both, their
//! ratio, and CPU milliseconds per parcel (from `/proc/PID/stat`) for PostgreSQL (the backends of the run's
//! database), RabbitMQ (`beam.smp`) and each worker, with each worker's peak and median resident memory.

use super::procstat::{self, CpuSpan};
use anyhow::bail;
use std::time::{Duration, Instant};
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_sim::marketplace::Receiver;
use tracking_sim::smtp::SmtpServer;
use tracking_tests::{TestEnv, Worker, request, s10};

const SECRET: &str = "bench-secret-0123456789";

/// One drained run.
struct Run {
    took: Duration,
    postgres_ticks: u64,
    rabbitmq_ticks: u64,
    /// Name, CPU ticks, peak RSS MB, median RSS MB while draining, median anonymous RSS MB while draining.
    workers: Vec<(String, u64, f64, f64, f64)>,
    /// PostgreSQL's own counts over the run (the whole pipeline only).
    database: Option<DatabaseWork>,
}

/// What PostgreSQL did for the run: transactions committed in the run's database, and WAL flushes to disk
/// (`pg_stat_wal.wal_sync`, the whole server's: the other users of the server count too).
#[derive(Debug, Clone, Copy, Default)]
struct DatabaseWork {
    commits: i64,
    wal_syncs: i64,
}

async fn database_work(env: &TestEnv) -> anyhow::Result<DatabaseWork> {
    // The statistics are a snapshot per transaction: clear it so each call reads fresh counts.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&env.pool)
        .await?;
    let (commits, wal_syncs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), \
                (SELECT wal_sync FROM pg_stat_wal)",
    )
    .fetch_one(&env.pool)
    .await?;
    Ok(DatabaseWork { commits, wal_syncs })
}

/// What one durable step costs on this machine, alone: a one-row commit in PostgreSQL (its WAL flushed to disk),
/// and a persistent message published with a confirm (RabbitMQ writes it to disk before confirming). Each the mean
/// of `n` done one after the other on one connection.
async fn durable_step_costs(env: &TestEnv, n: u32) -> anyhow::Result<(Duration, Duration)> {
    sqlx::query("CREATE TABLE bench_commit_cost (n int)")
        .execute(&env.pool)
        .await?;
    let started = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO bench_commit_cost VALUES ($1)")
            .bind(i as i32)
            .execute(&env.pool)
            .await?;
    }
    let commit = started.elapsed() / n;
    let amqp = env.amqp().await?;
    let queue = "bench.confirm-cost";
    amqp.declare_queue(queue).await?;
    let started = Instant::now();
    for _ in 0..n {
        amqp.publish(queue, b"{}").await?;
    }
    let confirm = started.elapsed() / n;
    Ok((commit, confirm))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn publish_requests(env: &TestEnv, parcels: usize) -> anyhow::Result<()> {
    let amqp = env.amqp().await?;
    for n in 0..parcels {
        let code = s10("PL", n as u32);
        let req = request(
            &format!("pl-{n}"),
            &code,
            &format!("c{n}@example.com"),
            "pt-BR",
            Some("acme"),
        );
        amqp.publish("tracking.requests", &serde_json::to_vec(&req)?)
            .await?;
    }
    Ok(())
}

/// The PostgreSQL backends serving the run's database (the benchmark's own connection left out).
pub(super) async fn our_backends(env: &TestEnv) -> anyhow::Result<Vec<u32>> {
    let database = env
        .database_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&database)
    .fetch_all(&env.pool)
    .await?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// Starts `rest` (waiting until each is healthy), then `first_stage` with the clock running, and waits until
/// `done` says the parcels are through; samples CPU and memory meanwhile.
async fn drain(
    env: &TestEnv,
    rest: Vec<Worker>,
    first_stage: impl FnOnce() -> anyhow::Result<Worker>,
    count_postgres: bool,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Run> {
    let before = if count_postgres {
        Some(database_work(env).await?)
    } else {
        None
    };
    let mut workers = rest;
    for w in &mut workers {
        w.wait_healthy(Duration::from_secs(60)).await?;
    }
    let beams = procstat::pids_named("beam.smp");
    let mut rabbit = CpuSpan::default();
    let mut postgres = CpuSpan::default();
    let mut own: Vec<CpuSpan> = workers.iter().map(|_| CpuSpan::default()).collect();
    rabbit.sample(&beams, false);
    if count_postgres {
        postgres.sample(&our_backends(env).await?, false);
    }
    for (w, span) in workers.iter().zip(&mut own) {
        span.sample(&[w.pid()], false);
    }
    let started = Instant::now();
    workers.push(first_stage()?);
    own.push(CpuSpan::default());
    let mut rss: Vec<Vec<f64>> = workers.iter().map(|_| Vec::new()).collect();
    let mut anon: Vec<Vec<f64>> = workers.iter().map(|_| Vec::new()).collect();
    let deadline = started + Duration::from_secs(1800);
    loop {
        let finished = done().await?;
        if count_postgres {
            postgres.sample(&our_backends(env).await?, true);
        }
        rabbit.sample(&beams, false);
        for (((w, span), samples), anon) in
            workers.iter().zip(&mut own).zip(&mut rss).zip(&mut anon)
        {
            span.sample(&[w.pid()], true);
            samples.push(procstat::memory_mb(w.pid(), "VmRSS"));
            anon.push(procstat::memory_mb(w.pid(), "RssAnon"));
        }
        if finished {
            break;
        }
        if Instant::now() > deadline {
            bail!("the parcels were not through within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let database = match before {
        Some(b) => {
            let after = database_work(env).await?;
            Some(DatabaseWork {
                commits: after.commits - b.commits,
                wal_syncs: after.wal_syncs - b.wal_syncs,
            })
        }
        None => None,
    };
    let mut rows = Vec::new();
    let median = |mut samples: Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples.get(samples.len() / 2).copied().unwrap_or(0.0)
    };
    for (((w, span), samples), anon) in workers.iter().zip(&own).zip(rss).zip(anon) {
        rows.push((
            w.name.clone(),
            span.ticks(),
            procstat::memory_mb(w.pid(), "VmHWM"),
            median(samples),
            median(anon),
        ));
    }
    for w in &mut workers {
        let _ = w.terminate();
    }
    Ok(Run {
        took,
        postgres_ticks: postgres.ticks(),
        rabbitmq_ticks: rabbit.ticks(),
        workers: rows,
        database,
    })
}

async fn real(parcels: usize) -> anyhow::Result<(Run, (Duration, Duration))> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_secs(1)]).await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    for n in 0..parcels {
        sim.script(
            &s10("PL", n as u32),
            Script::Journey(Journey::delivered().all_at_once()),
        );
    }
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    // Pacing lifted: this measures the pipeline, not the default 10 calls per second per marketplace.
    let file = super::unpaced_marketplace(&env, &receiver, SECRET)?;
    publish_requests(&env, parcels).await?;
    let quiet = ("RUST_LOG", "warn".to_owned());
    let marketplaces = ("MARKETPLACES_FILE", file.display().to_string());
    let mut normalizer = Worker::spawn(&env, "normalizer", std::slice::from_ref(&quiet))?;
    // The normalizer migrates; the publishers wait for the schema.
    normalizer.wait_healthy(Duration::from_secs(60)).await?;
    let email = Worker::spawn(
        &env,
        "email-publisher",
        &[
            quiet.clone(),
            marketplaces.clone(),
            ("SMTP_URL", smtp.url()),
            ("EMAIL_FROM", "Loja <noreply@loja.example>".to_owned()),
            // Each parcel's first news is its delivery, which emails nobody by default: the email is measured.
            ("EMAIL_DELIVERED_WHEN_FIRST_SEEN", "true".to_owned()),
        ],
    )?;
    let marketplace = Worker::spawn(
        &env,
        "marketplace-publisher",
        &[quiet.clone(), marketplaces],
    )?;
    let mut fetcher_env = tracking_tests::correios_env(&sim);
    fetcher_env.push(("CORREIOS_RATE_PER_SECOND", "100000".into()));
    fetcher_env.push(("CORREIOS_BURST", "100000".into()));
    fetcher_env.push(quiet);
    let run = drain(
        &env,
        vec![normalizer, email, marketplace],
        || Worker::spawn(&env, "fetcher", &fetcher_env),
        true,
        async || Ok(smtp.received_count() >= parcels && receiver.call_count() >= parcels),
    )
    .await?;
    // Publishers record a send after the far end accepted it: give the last records a moment.
    let mut done = 0i64;
    for _ in 0..100 {
        done = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state = 'done'")
            .fetch_one(&env.pool)
            .await?;
        if done as usize >= 2 * parcels {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if done as usize != 2 * parcels
        || smtp.received_count() != parcels
        || receiver.call_count() != parcels
    {
        bail!(
            "unexpected result: {done} deliveries done, {} emails, {} calls",
            smtp.received_count(),
            receiver.call_count()
        );
    }
    let costs = durable_step_costs(&env, 200).await?;
    Ok((run, costs))
}

/// `messages_total` of `queue` on the worker serving `/metrics` at `addr`.
async fn handled(addr: std::net::SocketAddr, queue: &str) -> anyhow::Result<usize> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("messages_total{") && l.contains(queue))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize)
}

async fn null(parcels: usize) -> anyhow::Result<Run> {
    let env = TestEnv::new().await?;
    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_secs(1)]).await?;
    publish_requests(&env, parcels).await?;
    let role = |r: &str| {
        Worker::spawn(
            &env,
            "null-worker",
            &[("NULL_ROLE", r.to_owned()), ("RUST_LOG", "warn".to_owned())],
        )
        .map(|mut w| {
            w.name = format!("null {r}");
            w
        })
    };
    let normalizer = role("normalizer")?;
    let email = role("email")?;
    let marketplace = role("marketplace")?;
    let (email_addr, marketplace_addr) = (email.metrics_addr, marketplace.metrics_addr);
    let run = drain(
        &env,
        vec![normalizer, email, marketplace],
        || role("fetcher"),
        false,
        async || {
            let e = handled(email_addr, "email.order-status").await?;
            let m = handled(marketplace_addr, "marketplace.order-status").await?;
            Ok(e >= parcels && m >= parcels)
        },
    )
    .await?;
    Ok(run)
}

pub async fn pipeline(parcels: usize) -> anyhow::Result<()> {
    let ticks = procstat::ticks_per_second();
    println!(
        "# pipeline: {parcels} parcels (one Correios call per 50 codes, one email and one webhook call each, budget and \
         pacing lifted) through the release workers, and through the null pipeline; {}; load average before: {}",
        super::machine(),
        load_average()
    );
    let (real, costs) = real(parcels).await?;
    let load_between = load_average();
    let null = null(parcels).await?;
    let rate = |r: &Run| parcels as f64 / r.took.as_secs_f64();
    let per_parcel = |t: u64| t as f64 * 1000.0 / ticks / parcels as f64;
    println!(
        "| pipeline | time | parcels/s | PostgreSQL | RabbitMQ | workers | CPU ms per parcel in all |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, r) in [("whole pipeline", &real), ("null pipeline", &null)] {
        let workers: u64 = r.workers.iter().map(|w| w.1).sum();
        println!(
            "| {name} | {:.2} s | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            r.took.as_secs_f64(),
            rate(r),
            per_parcel(r.postgres_ticks),
            per_parcel(r.rabbitmq_ticks),
            per_parcel(workers),
            per_parcel(r.postgres_ticks + r.rabbitmq_ticks + workers)
        );
    }
    println!(
        "whole / null pipeline throughput: {:.2}",
        rate(&real) / rate(&null)
    );
    if let Some(db) = real.database {
        println!(
            "PostgreSQL, whole pipeline: {:.2} commits and {:.2} WAL flushes to disk per parcel",
            db.commits as f64 / parcels as f64,
            db.wal_syncs as f64 / parcels as f64
        );
    }
    let (commit, confirm) = costs;
    println!(
        "one durable step alone on this machine: a PostgreSQL one-row commit {:.2} ms, a RabbitMQ persistent \
         publish with confirm {:.2} ms (mean of 200 in a row)",
        commit.as_secs_f64() * 1000.0,
        confirm.as_secs_f64() * 1000.0
    );
    println!(
        "| worker | CPU ms per parcel | peak RSS (VmHWM) | median RSS while draining | of which its own (RssAnon) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for r in [&real, &null] {
        for (name, t, peak, median, anon) in &r.workers {
            println!(
                "| {name} | {:.2} ms | {peak:.1} MB | {median:.1} MB | {anon:.1} MB |",
                per_parcel(*t)
            );
        }
    }
    println!(
        "load average between the runs: {load_between}; after: {}. RabbitMQ's figure is the whole broker's \
         (beam.smp), shared with anything else using it meanwhile; PostgreSQL's is the backends of the run's database.",
        load_average()
    );
    Ok(())
}
