//! `make chaos` (docs/RELIABILITY.md): PARCELS parcels through the release workers while they are killed with
//! SIGKILL at random, RabbitMQ is stopped for 20 s and PostgreSQL for 60 s; then, once every queue is empty, how
//! many emails and marketplace calls were lost, doubled and parked.
//!
//! `scripts/chaos.sh` starts this program after starting a PostgreSQL cluster and a RabbitMQ node of the run's own
//! (never the shared ones: other tests use them), and removes them afterwards. It passes:
//! - `AMQP_URL`, `DATABASE_URL`: those servers;
//! - `CHAOS_DIR`: the run's directory (`bin/` holds copies of the release workers, `logs/` gets one log per worker,
//!   appended at each restart, and `report.md`);
//! - `CHAOS_SCRIPT`: the script, called back as `CHAOS_SCRIPT ctl CHAOS_DIR {mq,pg}-{stop,start}|mq-queues`.
//!
//! With `CHAOS_MQ_NODES` = N above 1 (`make chaos CLUSTER=3`), `AMQP_URL` lists the N nodes of a cluster the script
//! started (in `CHAOS_DIR/node1`..`nodeN`) and, instead of stopping the one node, the harness stops
//! `CHAOS_MQ_NODE_STOPS` (3) nodes chosen at random (never the same twice in a row), one at a time, each for
//! `CHAOS_MQ_DOWN_SECS`, once stopping it leaves every quorum queue a majority
//! (`rabbitmq-queues check_if_node_is_quorum_critical`).
//!
//! Tunables (environment): `CHAOS_SECS` (300: how long workers are killed, at least until both outages are over),
//! `CHAOS_KILL_EVERY_MS` (2000-6000: the random pause between kills), `CHAOS_MQ_DOWN_SECS` (20),
//! `CHAOS_PG_DOWN_SECS` (60), `CHAOS_MAX_WAIT_SECS` (1200: the bound on waiting for the pipeline to drain once the
//! chaos is over), `CHAOS_STALL_SECS` (300: give up earlier when nothing moved at all for this long),
//! `CHAOS_DELIVERY_LEASE_SECS` (unset: the publishers' default `DELIVERY_LEASE_SECS`), `CHAOS_SETTLE_TARGET_SECS`
//! (120: every email and call must be done this long after the last fault), `CHAOS_RETURNS_TARGET_PER_MIN` (6: no
//! message may come back through the delay queues more often in any minute). The workers otherwise run at their
//! defaults, the delay tiers included (1 s, 10 s, 60 s, 600 s).
//!
//! Expected: one email per recorded status change whose status notifies by default, one marketplace call per
//! recorded change (every parcel has the webhook marketplace `acme`), read from `status_changes` at the end. Received:
//! by Message-ID (`<{change_id}@domain>`) at the SMTP server and by `Idempotency-Key` (the change id) at the
//! receiver, both in this process. A double is "explained" when the publisher that sent it was killed between its
//! first and second arrival (a send the far end accepted but whose record the kill cut).

use anyhow::{Context, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracking_app::topology;
use tracking_domain::Status;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_sim::marketplace::Receiver;
use tracking_sim::smtp::SmtpServer;
use tracking_tests::{free_addr, request, s10};
use uuid::Uuid;

const WORKERS: [&str; 5] = [
    "normalizer",
    "fetcher",
    "scheduler",
    "email-publisher",
    "marketplace-publisher",
];
const EMAIL_PUBLISHER: &str = "email-publisher";
const MARKETPLACE_PUBLISHER: &str = "marketplace-publisher";
const MARKETPLACE: &str = "acme";
const SECRET: &str = "chaos-webhook-secret-0123456789";
/// The default tiers, 10-minute one included: a change sent there by a crash shows as a late settle.
const RETRY_DELAYS_MS: [u64; 4] = tracking_runtime::amqp::DEFAULT_RETRY_DELAYS_MS;
/// How long after a kill its worker is started again (a supervisor's restart).
const RESTART_AFTER: Duration = Duration::from_secs(1);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

struct Settings {
    parcels: usize,
    amqp_url: String,
    database_url: String,
    dir: PathBuf,
    script: PathBuf,
    chaos_for: Duration,
    kill_every: (u64, u64),
    mq_down: Duration,
    /// The cluster's nodes (1: one node of its own, no cluster).
    mq_nodes: usize,
    mq_node_stops: usize,
    pg_down: Duration,
    max_wait: Duration,
    stall: Duration,
    settle_target: Duration,
    returns_target: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let parcels = match std::env::args().nth(1) {
            Some(n) => n.parse().context("PARCELS must be a number")?,
            None => env_or("PARCELS", 10_000usize)?,
        };
        let var = |name: &str| {
            std::env::var(name)
                .with_context(|| format!("{name} is not set: run scripts/chaos.sh (make chaos)"))
        };
        let kill_every: String = env_or("CHAOS_KILL_EVERY_MS", "2000-6000".to_owned())?;
        let (lo, hi) = kill_every
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .filter(|(a, b): &(u64, u64)| a <= b && *a > 0)
            .context("CHAOS_KILL_EVERY_MS must be MIN-MAX in milliseconds")?;
        Ok(Settings {
            parcels,
            amqp_url: var("AMQP_URL")?,
            database_url: var("DATABASE_URL")?,
            dir: PathBuf::from(var("CHAOS_DIR")?),
            script: PathBuf::from(var("CHAOS_SCRIPT")?),
            chaos_for: Duration::from_secs(env_or("CHAOS_SECS", 300)?),
            kill_every: (lo, hi),
            mq_down: Duration::from_secs(env_or("CHAOS_MQ_DOWN_SECS", 20)?),
            mq_nodes: env_or("CHAOS_MQ_NODES", 1usize)?.max(1),
            mq_node_stops: env_or("CHAOS_MQ_NODE_STOPS", 3usize)?,
            pg_down: Duration::from_secs(env_or("CHAOS_PG_DOWN_SECS", 60)?),
            max_wait: Duration::from_secs(env_or("CHAOS_MAX_WAIT_SECS", 1200)?),
            stall: Duration::from_secs(env_or("CHAOS_STALL_SECS", 300)?),
            settle_target: Duration::from_secs(env_or("CHAOS_SETTLE_TARGET_SECS", 120)?),
            returns_target: env_or("CHAOS_RETURNS_TARGET_PER_MIN", 6)?,
        })
    }
}

/// What happened when, relative to the harness's start, for the log and the report.
#[derive(Clone)]
struct Clock {
    start: Instant,
    timeline: Arc<Mutex<Vec<String>>>,
}

impl Clock {
    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn note(&self, what: impl AsRef<str>) {
        let line = format!("[{:8.1} s] {}", self.secs(), what.as_ref());
        println!("{line}");
        self.timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }
}

/// A small xorshift generator: which worker to kill and when need no more.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One worker binary kept running by the harness, as a supervisor would: started again after a kill or an exit.
struct Proc {
    name: &'static str,
    bin: PathBuf,
    log: PathBuf,
    metrics: SocketAddr,
    child: Option<Child>,
    restart_at: Option<Instant>,
    starts: u32,
    kills: u32,
    exits: Vec<String>,
    failing: u32,
}

impl Proc {
    fn start(&mut self, env: &[(String, String)], clock: &Clock) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.starts += 1;
        writeln!(
            file,
            "=== chaos harness: start #{} at {:.1} s ===",
            self.starts,
            clock.secs()
        )?;
        let child = Command::new(&self.bin)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("METRICS_ADDR", self.metrics.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.restart_at = None;
        Ok(())
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, reaped at once.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
        }
    }

    /// Notices an exit the harness did not cause.
    fn reap(&mut self, clock: &Clock) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            self.failing += 1;
            let what = format!("{} exited on its own ({status})", self.name);
            clock.note(format!("{what}; see {}", self.log.display()));
            self.exits.push(format!("{:.1} s: {status}", clock.secs()));
            let backoff = Duration::from_secs(1 << self.failing.min(3));
            self.restart_at = Some(Instant::now() + backoff);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn terminate(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A kill, for the report and for telling which doubles a kill explains.
struct Kill {
    worker: &'static str,
    at: Instant,
}

/// A server outage as it happened.
#[derive(Clone, Debug)]
struct Outage {
    what: String,
    stop_began: f64,
    stopped: f64,
    start_began: f64,
    answering: f64,
}

/// `CHAOS_SCRIPT ctl DIR ACTION`, for the run's `DIR` or one cluster node's (`DIR/nodeK`).
fn ctl_in(settings: &Settings, dir: &std::path::Path, action: &str) -> anyhow::Result<()> {
    let out = Command::new("bash")
        .arg(&settings.script)
        .arg("ctl")
        .arg(dir)
        .arg(action)
        .output()?;
    if !out.status.success() {
        bail!(
            "{action} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn ctl_async(
    settings: &Arc<Settings>,
    dir: &std::path::Path,
    action: &'static str,
) -> anyhow::Result<()> {
    let s = settings.clone();
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || ctl_in(&s, &dir, action)).await?
}

/// One server stopped for a while: what it is, the `DIR` of its ctl actions, and how long it stays down.
struct Step {
    what: String,
    dir: PathBuf,
    stop: &'static str,
    start: &'static str,
    down: Duration,
    /// A cluster node: stopped only once no quorum queue needs it for a majority.
    quorum: bool,
    /// The pause after it answers again, before the next step.
    then: Duration,
}

/// RabbitMQ (the one node, or `mq_node_stops` random nodes of the cluster, one at a time, never the same node
/// twice in a row), then PostgreSQL.
fn steps(settings: &Settings, rng: &mut Rng) -> Vec<Step> {
    let mut steps = Vec::new();
    if settings.mq_nodes > 1 {
        let mut previous = None;
        for _ in 0..settings.mq_node_stops {
            let k = other_node(settings.mq_nodes, previous, rng);
            previous = Some(k);
            let k = k + 1;
            steps.push(Step {
                what: format!("RabbitMQ node {k} of {}", settings.mq_nodes),
                dir: settings.dir.join(format!("node{k}")),
                stop: "mq-stop",
                start: "mq-start",
                down: settings.mq_down,
                quorum: true,
                then: Duration::from_secs(10),
            });
        }
    } else {
        steps.push(Step {
            what: "RabbitMQ".into(),
            dir: settings.dir.clone(),
            stop: "mq-stop",
            start: "mq-start",
            down: settings.mq_down,
            quorum: false,
            then: Duration::from_secs(30),
        });
    }
    steps.push(Step {
        what: "PostgreSQL".into(),
        dir: settings.dir.clone(),
        stop: "pg-stop",
        start: "pg-start",
        down: settings.pg_down,
        quorum: false,
        then: Duration::from_secs(30),
    });
    steps
}

/// A random node of `n` (from 0) other than `previous`.
fn other_node(n: usize, previous: Option<usize>, rng: &mut Rng) -> usize {
    match previous {
        Some(p) if n > 1 => {
            let k = rng.below(n as u64 - 1) as usize;
            if k >= p { k + 1 } else { k }
        }
        _ => rng.below(n as u64) as usize,
    }
}

/// Stops RabbitMQ (or its cluster's nodes, one at a time), waits, starts it; then PostgreSQL. Never two at once.
async fn outages(
    settings: Arc<Settings>,
    clock: Clock,
    done: Arc<Mutex<Vec<Outage>>>,
    seed: u64,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(20)).await;
    for step in steps(&settings, &mut Rng(seed | 1)) {
        let what = &step.what;
        if step.quorum {
            // The node stopped before caught up: stopping this one leaves every quorum queue a majority.
            let deadline = Instant::now() + Duration::from_secs(120);
            while let Err(e) = ctl_async(&settings, &step.dir, "mq-quorum-critical").await {
                if Instant::now() > deadline {
                    bail!("{what} stayed quorum-critical for 120 s: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let stop_began = clock.secs();
        clock.note(format!("stopping {what} for {} s", step.down.as_secs()));
        ctl_async(&settings, &step.dir, step.stop).await?;
        let stopped = clock.secs();
        clock.note(format!("{what} stopped"));
        tokio::time::sleep(step.down).await;
        let start_began = clock.secs();
        clock.note(format!("starting {what}"));
        ctl_async(&settings, &step.dir, step.start).await?;
        let answering = clock.secs();
        clock.note(format!("{what} answers again"));
        done.lock().unwrap_or_else(|p| p.into_inner()).push(Outage {
            what: what.clone(),
            stop_began,
            stopped,
            start_began,
            answering,
        });
        tokio::time::sleep(step.then).await;
    }
    Ok(())
}

/// A connection to the first node of `url` that answers (a comma-separated list under `CLUSTER`).
async fn amqp(url: &str) -> anyhow::Result<(Connection, lapin::Channel)> {
    let settings = tracking_runtime::amqp::AmqpSettings::with_url(url);
    let conn = tracking_runtime::amqp::connect(&settings, "chaos").await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// Ready messages in a queue (passive declare: the count now, not the management API's lagging one).
async fn depth(conn: &Connection, queue: &str) -> anyhow::Result<u32> {
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let n = q.message_count();
    let _ = ch.close(200, "".into()).await;
    Ok(n)
}

fn delays() -> Vec<Duration> {
    RETRY_DELAYS_MS
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect()
}

fn work_and_retry_queues() -> Vec<String> {
    let mut out = Vec::new();
    for q in topology::WORK_QUEUES {
        out.push(q.to_owned());
        for d in delays() {
            out.push(topology::retry_queue(q, d));
        }
    }
    out
}

async fn publish_requests(settings: &Settings, clock: &Clock) -> anyhow::Result<()> {
    let (conn, channel) = amqp(&settings.amqp_url).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let locales = ["pt-BR", "es", "en"];
    for chunk in (0..settings.parcels).collect::<Vec<_>>().chunks(500) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for &n in chunk {
            let req = request(
                &format!("chaos-{n}"),
                &s10("CH", n as u32),
                &format!("c{n}@example.com"),
                locales[n % locales.len()],
                Some(MARKETPLACE),
            );
            let body = serde_json::to_vec(&req)?;
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        topology::TRACKING_REQUESTS.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        for c in confirms {
            let confirm = c.await?;
            if !confirm.is_ack() || confirm.take_message().is_some() {
                bail!("the broker did not take a tracking request");
            }
        }
    }
    clock.note(format!(
        "{} tracking requests published (marketplace {MARKETPLACE})",
        settings.parcels
    ));
    let _ = conn.close(200, "".into()).await;
    Ok(())
}

async fn wait_healthy(p: &mut Proc, within: Duration) -> anyhow::Result<()> {
    let url = format!("http://{}/health", p.metrics);
    let deadline = Instant::now() + within;
    loop {
        if let Some(c) = p.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "{} exited with {status} before it was healthy; see {}",
                p.name,
                p.log.display()
            );
        }
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} was not healthy within {within:?}; see {}",
                p.name,
                p.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Progress as the database sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DbProgress {
    shipments: i64,
    finished: i64,
    changes: i64,
    unpublished: i64,
    /// Delivery records neither done nor parked (claimed, failed and waiting for a retry).
    open: i64,
    done: i64,
}

async fn db_progress(pool: &PgPool) -> anyhow::Result<DbProgress> {
    let (shipments, finished): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'delivered' AND finished_at IS NOT NULL) FROM shipments",
    )
    .fetch_one(pool)
    .await?;
    let (changes, unpublished): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM status_changes",
    )
    .fetch_one(pool)
    .await?;
    let (open, done): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state NOT IN ('done', 'parked')), count(*) FILTER (WHERE state = 'done') FROM deliveries",
    )
    .fetch_one(pool)
    .await?;
    Ok(DbProgress {
        shipments,
        finished,
        changes,
        unpublished,
        open,
        done,
    })
}

/// Whether the run is over: every shipment delivered and finished, every change published, no delivery record
/// open, and no message ready in any work or retry queue. `Ok(Err(why))` while it is not; the progress when it is.
async fn drained(settings: &Settings, pool: &PgPool) -> anyhow::Result<Result<DbProgress, String>> {
    let p = db_progress(pool).await?;
    if p.shipments < settings.parcels as i64
        || p.finished < p.shipments
        || p.unpublished > 0
        || p.open > 0
    {
        return Ok(Err(format!(
            "{}/{} shipments delivered and finished, {} changes ({} unpublished), {} deliveries open",
            p.finished, settings.parcels, p.changes, p.unpublished, p.open
        )));
    }
    let (conn, _ch) = amqp(&settings.amqp_url).await?;
    let mut waiting = Vec::new();
    for q in work_and_retry_queues() {
        let n = depth(&conn, &q).await?;
        if n > 0 {
            waiting.push(format!("{q}: {n}"));
        }
    }
    let _ = conn.close(200, "".into()).await;
    if waiting.is_empty() {
        Ok(Ok(p))
    } else {
        Ok(Err(format!("messages ready: {}", waiting.join(", "))))
    }
}

/// Every queue's messages, ready and unacknowledged, from the broker itself.
fn broker_queues(settings: &Settings) -> anyhow::Result<Vec<(String, u64)>> {
    let out = Command::new("bash")
        .arg(&settings.script)
        .args(["ctl"])
        .arg(&settings.dir)
        .arg("mq-queues")
        .output()?;
    if !out.status.success() {
        bail!("mq-queues failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
        })
        .collect())
}

#[derive(Default)]
struct Tally {
    expected: usize,
    received_distinct: usize,
    lost: Vec<Uuid>,
    skipped: usize,
    doubled: usize,
    extra_copies: usize,
    /// Doubles whose publisher was killed within [`CUT`] of the first copy: the far end had it, the record not.
    cut_at_once: usize,
    /// Doubles whose publisher was killed later, while PostgreSQL was down: the record was waiting for it.
    cut_while_db_down: usize,
    doubles_explained: usize,
    /// The longest time from a double's first copy to the kill that explains it.
    longest_cut: Duration,
    unexpected: usize,
}

/// How soon after the far end took a send a kill must come to have cut its record (the record is one short
/// statement right after the answer; 3 s leaves room for a loaded machine).
const CUT: Duration = Duration::from_secs(3);

/// Compares what was expected with what arrived (id → arrival times), and explains each double by a kill of
/// `publisher` that came after its first copy (by at most 1 s before: the far end may log the arrival after the
/// client died waiting for the answer) and before its second: within [`CUT`] of the first copy, or while
/// PostgreSQL was down (`db_down`), when the record waits for the database.
fn tally(
    expected: &HashSet<Uuid>,
    skipped: &HashSet<Uuid>,
    arrivals: &HashMap<Uuid, Vec<Instant>>,
    kills: &[Kill],
    publisher: &str,
    db_down: &[(Instant, Instant)],
) -> Tally {
    let mut t = Tally {
        expected: expected.len(),
        ..Tally::default()
    };
    for id in expected {
        match arrivals.get(id) {
            Some(_) => t.received_distinct += 1,
            None if skipped.contains(id) => t.skipped += 1,
            None => t.lost.push(*id),
        }
    }
    for (id, times) in arrivals {
        if !expected.contains(id) {
            t.unexpected += 1;
        }
        if times.len() > 1 {
            t.doubled += 1;
            t.extra_copies += times.len() - 1;
            let mut times = times.clone();
            times.sort();
            let (first, second) = (times[0], times[1]);
            let since = first.checked_sub(Duration::from_secs(1)).unwrap_or(first);
            let candidates = kills
                .iter()
                .filter(|k| k.worker == publisher && k.at >= since && k.at <= second);
            let mut at_once = None;
            let mut while_down = None;
            for k in candidates {
                let gap = k.at.saturating_duration_since(first);
                if gap <= CUT {
                    at_once = Some(at_once.map_or(gap, |g: Duration| g.min(gap)));
                } else if db_down
                    .iter()
                    .any(|(from, to)| k.at >= *from && k.at <= *to + CUT && first <= *to)
                {
                    while_down = Some(while_down.map_or(gap, |g: Duration| g.min(gap)));
                }
            }
            let gap = match (at_once, while_down) {
                (Some(g), _) => {
                    t.cut_at_once += 1;
                    Some(g)
                }
                (None, Some(g)) => {
                    t.cut_while_db_down += 1;
                    Some(g)
                }
                (None, None) => None,
            };
            if let Some(g) = gap {
                t.doubles_explained += 1;
                t.longest_cut = t.longest_cut.max(g);
            }
        }
    }
    t
}

/// How soon after the last fault the expected deliveries were done. The pipeline is still making changes when
/// the faults end (the parcels' later events), so each delivery is timed from the later of the last fault and its
/// change's record: the faults' work, and the work that came after them.
struct Settle {
    /// The longest from the later of the last fault and the change's record to its first arrival.
    after: Duration,
    /// Of the changes recorded before the last fault, the last first arrival after it (zero when all came before).
    held: Duration,
    /// How many took longer than the target.
    late: usize,
}

fn settle(
    expected: &HashSet<Uuid>,
    arrivals: &HashMap<Uuid, Vec<Instant>>,
    recorded: &HashMap<Uuid, Instant>,
    last_fault: Instant,
    target: Duration,
) -> Settle {
    let mut s = Settle {
        after: Duration::ZERO,
        held: Duration::ZERO,
        late: 0,
    };
    for id in expected {
        let Some(first) = arrivals.get(id).and_then(|t| t.iter().min().copied()) else {
            continue;
        };
        let at = recorded.get(id).copied().unwrap_or(last_fault);
        let took = first.saturating_duration_since(at.max(last_fault));
        s.after = s.after.max(took);
        if took > target {
            s.late += 1;
        }
        if at <= last_fault {
            s.held = s.held.max(first.saturating_duration_since(last_fault));
        }
    }
    s
}

/// Each message's returns through the delay queues, from the workers' logs.
#[derive(Default)]
struct Returns {
    total: usize,
    messages: usize,
    /// The most returns of one message within any 60 s.
    max_per_minute: usize,
    worst: Option<(String, String)>,
    /// The most returns of all messages within one second.
    peak_per_second: usize,
    by_queue: BTreeMap<String, usize>,
    per_minute: Vec<usize>,
}

impl Returns {
    fn over(&self, target: usize) -> usize {
        self.per_minute.iter().filter(|n| **n > target).count()
    }
}

/// The value of `key=` in a log line, up to a space, `}` or `:`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find([' ', '}', ':']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Reads every `logs/*.log` for the consume loop's "Retrying later." and "Waiting again." lines (a message sent
/// to a delay queue), by queue and message id.
fn returns_from_logs(dir: &std::path::Path) -> Returns {
    let mut by_message: HashMap<(String, String), Vec<chrono::DateTime<chrono::Utc>>> =
        HashMap::new();
    let files = std::fs::read_dir(dir).into_iter().flatten().flatten();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file.path()) else {
            continue;
        };
        for line in text.lines() {
            if !(line.contains("Retrying later.") || line.contains("Waiting again.")) {
                continue;
            }
            let Some(at) = line
                .split_whitespace()
                .next()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            else {
                continue;
            };
            let (Some(queue), Some(id)) = (field(line, "queue="), field(line, "message_id="))
            else {
                continue;
            };
            // Messages without an id (tracking requests) cannot be told apart: not counted per message.
            if id.is_empty() || id == "\"\"" {
                continue;
            }
            by_message
                .entry((queue.to_owned(), id.to_owned()))
                .or_default()
                .push(at.with_timezone(&chrono::Utc));
        }
    }
    let mut r = Returns {
        messages: by_message.len(),
        ..Returns::default()
    };
    let mut per_second: HashMap<i64, usize> = HashMap::new();
    for ((queue, id), mut times) in by_message {
        times.sort();
        r.total += times.len();
        *r.by_queue.entry(queue.clone()).or_default() += times.len();
        for t in &times {
            *per_second.entry(t.timestamp()).or_default() += 1;
        }
        let mut most = 0;
        let mut from = 0;
        for to in 0..times.len() {
            while times[to] - times[from] >= chrono::Duration::seconds(60) {
                from += 1;
            }
            most = most.max(to - from + 1);
        }
        r.per_minute.push(most);
        if most > r.max_per_minute {
            r.max_per_minute = most;
            r.worst = Some((queue, id));
        }
    }
    r.peak_per_second = per_second.values().copied().max().unwrap_or(0);
    r
}

fn message_id_change(value: &str) -> Option<Uuid> {
    let inner = value.trim().trim_start_matches('<').trim_end_matches('>');
    inner.split('@').next()?.parse().ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracking_app::install();
    let settings = Arc::new(Settings::from_env()?);
    let clock = Clock {
        start: Instant::now(),
        timeline: Arc::new(Mutex::new(Vec::new())),
    };
    let code = run(settings.clone(), clock).await?;
    std::process::exit(code);
}

async fn run(settings: Arc<Settings>, clock: Clock) -> anyhow::Result<i32> {
    let logs = settings.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    clock.note(format!(
        "chaos: {} parcels; {}",
        settings.parcels,
        machine()
    ));

    // The database (the normalizer migrates it at start) and the topology with this run's delay tiers.
    tracking_store::create_database_if_missing(&settings.database_url).await?;
    let pool = tracking_store::pool(&tracking_store::DbSettings::new(&settings.database_url))?;
    {
        let (conn, channel) = amqp(&settings.amqp_url).await?;
        topology::declare(&channel, &delays()).await?;
        let _ = conn.close(200, "".into()).await;
    }

    // The far ends, in this process: Correios, the SMTP server, the marketplace's webhook receiver.
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    // No promised date: a parcel is never late here (a late notice is an email for no status change, which the
    // report would count as unexpected now that the date in `Journey::delivered()` has passed).
    let mut journey = Journey::delivered();
    journey.dt_prevista = None;
    for n in 0..settings.parcels {
        sim.script(&s10("CH", n as u32), Script::Journey(journey.clone()));
    }
    let smtp = SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let marketplaces = settings.dir.join("marketplaces.toml");
    // Pacing lifted: the default 10 calls per second would make the run measure the pace, not the faults.
    std::fs::write(
        &marketplaces,
        format!(
            "[[marketplace]]\nname = \"{MARKETPLACE}\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nrate_per_second = 100000\n",
            receiver.url()
        ),
    )?;

    let lease_secs: Option<u64> = std::env::var("CHAOS_DELIVERY_LEASE_SECS")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse())
        .transpose()
        .context("CHAOS_DELIVERY_LEASE_SECS must be a number")?;
    let mut worker_env: Vec<(String, String)> = [
        ("AMQP_URL", settings.amqp_url.clone()),
        ("DATABASE_URL", settings.database_url.clone()),
        // The consumer's debug lines log every return through the delay queues ("Waiting again."), which the
        // report counts per message.
        (
            "RUST_LOG",
            "info,lapin=warn,tracking_runtime::amqp::consumer=debug".to_owned(),
        ),
        ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
        // Fast polling (as the end-to-end tests): a parcel's four events come one per poll.
        ("POLL_INTERVAL_SECS", "1".to_owned()),
        ("POLL_INTERVAL_NEAR_DELIVERY_SECS", "1".to_owned()),
        ("FINAL_POLL_AFTER_SECS", "1".to_owned()),
        ("SCHEDULER_TICK_MS", "200".to_owned()),
        ("CORREIOS_BASE_URL", sim.base_url()),
        ("CORREIOS_USER", "sim-user".to_owned()),
        ("CORREIOS_ACCESS_CODE", "sim-code".to_owned()),
        ("CORREIOS_TIMEOUT_MS", "5000".to_owned()),
        ("CORREIOS_RATE_PER_SECOND", "100000".to_owned()),
        ("CORREIOS_BURST", "100000".to_owned()),
        ("CARRIER_RETRY_BASE_MS", "1000".to_owned()),
        ("SMTP_URL", smtp.url()),
        ("EMAIL_FROM", "Loja Caos <rastreio@loja.example>".to_owned()),
        ("MARKETPLACES_FILE", marketplaces.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(secs) = lease_secs {
        worker_env.push(("DELIVERY_LEASE_SECS".to_owned(), secs.to_string()));
    }

    let bin = settings.dir.join("bin");
    let mut procs: Vec<Proc> = WORKERS
        .iter()
        .map(|name| Proc {
            name,
            bin: bin.join(name),
            log: logs.join(format!("{name}.log")),
            metrics: free_addr(),
            child: None,
            restart_at: None,
            starts: 0,
            kills: 0,
            exits: Vec::new(),
            failing: 0,
        })
        .collect();
    // The normalizer first: it migrates the database the others need.
    for p in procs.iter_mut() {
        p.start(&worker_env, &clock)?;
        wait_healthy(p, Duration::from_secs(60)).await?;
    }
    clock.note("every worker is healthy");

    publish_requests(&settings, &clock).await?;
    let flow_began = Instant::now();

    let done_outages = Arc::new(Mutex::new(Vec::<Outage>::new()));
    let mut outage_failed: Option<Option<String>> = None;
    let mut outage_task = tokio::spawn(outages(
        settings.clone(),
        clock.clone(),
        done_outages.clone(),
        Uuid::new_v4().as_u64_pair().1,
    ));

    let mut rng = Rng(Uuid::new_v4().as_u64_pair().0 | 1);
    let pause = |rng: &mut Rng| {
        let (lo, hi) = settings.kill_every;
        Duration::from_millis(lo + rng.below(hi - lo + 1))
    };
    let mut next_kill = Instant::now() + pause(&mut rng);
    let mut kills: Vec<Kill> = Vec::new();
    let mut chaos_over: Option<Instant> = None;
    let mut next_check = Instant::now();
    let mut next_progress = Instant::now();
    let mut settled_checks = 0;
    let mut timed_out = false;
    let mut last_progress: Option<DbProgress> = None;
    let mut moved: (Option<DbProgress>, Instant) = (None, Instant::now());
    loop {
        for p in procs.iter_mut() {
            p.reap(&clock);
            if !p.running() && p.restart_at.is_some_and(|at| Instant::now() >= at) {
                p.start(&worker_env, &clock)?;
            }
        }
        if outage_failed.is_none() && outage_task.is_finished() {
            let result = match (&mut outage_task).await {
                Ok(r) => r,
                Err(e) => Err(e.into()),
            };
            outage_failed = Some(result.err().map(|e| format!("{e:#}")));
            if let Some(Some(e)) = &outage_failed {
                clock.note(format!("an outage step failed: {e}"));
            }
        }
        let outages_over = outage_failed.is_some();
        if chaos_over.is_none() {
            if outages_over && flow_began.elapsed() >= settings.chaos_for {
                chaos_over = Some(Instant::now());
                clock.note(format!(
                    "chaos over: {} kills; every worker runs from now on",
                    kills.len()
                ));
            } else if Instant::now() >= next_kill {
                let running: Vec<usize> =
                    (0..procs.len()).filter(|i| procs[*i].running()).collect();
                if !running.is_empty() {
                    let i = running[rng.below(running.len() as u64) as usize];
                    let p = &mut procs[i];
                    p.kill();
                    p.failing = 0;
                    p.restart_at = Some(Instant::now() + RESTART_AFTER);
                    kills.push(Kill {
                        worker: p.name,
                        at: Instant::now(),
                    });
                    clock.note(format!("kill -9 {} (kill #{})", p.name, kills.len()));
                }
                next_kill = Instant::now() + pause(&mut rng);
            }
        }
        if Instant::now() >= next_progress {
            next_progress = Instant::now() + Duration::from_secs(30);
            let db = tokio::time::timeout(Duration::from_secs(3), db_progress(&pool))
                .await
                .ok()
                .and_then(Result::ok)
                .map_or_else(
                    || "database not answering".to_owned(),
                    |p| {
                        format!(
                            "{}/{} shipments done, {} changes ({} unpublished), deliveries {} done {} open",
                            p.finished, p.shipments, p.changes, p.unpublished, p.done, p.open
                        )
                    },
                );
            clock.note(format!(
                "progress: {db}; {} emails, {} calls received",
                smtp.received().len(),
                receiver.calls().len()
            ));
        }
        if let Some(over) = chaos_over
            && Instant::now() >= next_check
        {
            next_check = Instant::now() + Duration::from_secs(3);
            match tokio::time::timeout(Duration::from_secs(20), drained(&settings, &pool)).await {
                Ok(Ok(Ok(p))) if Some(p) == last_progress => settled_checks += 1,
                Ok(Ok(Ok(p))) => {
                    settled_checks = 1;
                    last_progress = Some(p);
                }
                Ok(Ok(Err(_))) | Ok(Err(_)) | Err(_) => {
                    settled_checks = 0;
                    last_progress = None;
                }
            }
            if settled_checks >= 3 {
                let s = settings.clone();
                let busy: Vec<(String, u64)> =
                    tokio::task::spawn_blocking(move || broker_queues(&s))
                        .await??
                        .into_iter()
                        .filter(|(q, n)| *n > 0 && !q.ends_with(".dead"))
                        .collect();
                if busy.is_empty() {
                    clock.note("drained: every shipment delivered and finished, every queue empty");
                    break;
                }
                clock.note(format!("still held by consumers: {busy:?}"));
                settled_checks = 0;
            }
            if let Ok(Ok(p)) =
                tokio::time::timeout(Duration::from_secs(5), db_progress(&pool)).await
                && moved.0 != Some(p)
            {
                moved = (Some(p), Instant::now());
            }
            let stalled = moved.1.elapsed() > settings.stall;
            if over.elapsed() > settings.max_wait || stalled {
                let why = match drained(&settings, &pool).await {
                    Ok(Err(why)) => why,
                    Ok(Ok(_)) => "the consumers still hold messages".to_owned(),
                    Err(e) => e.to_string(),
                };
                clock.note(format!(
                    "not drained {:.0} s after the chaos ended{}: {why}",
                    over.elapsed().as_secs_f64(),
                    if stalled {
                        " (nothing moved in the database for CHAOS_STALL_SECS)"
                    } else {
                        ""
                    }
                ));
                timed_out = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_after = flow_began.elapsed();
    let outage_error = outage_failed.flatten();
    for p in procs.iter_mut() {
        p.terminate(Duration::from_secs(10));
    }

    let outages_done = done_outages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report(
        &settings,
        &clock,
        &pool,
        &smtp,
        &receiver,
        &procs,
        &kills,
        &outages_done,
        drained_after,
        timed_out,
        outage_error,
    )
    .await
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

#[allow(clippy::too_many_arguments)]
async fn report(
    settings: &Settings,
    clock: &Clock,
    pool: &PgPool,
    smtp: &SmtpServer,
    receiver: &Receiver,
    procs: &[Proc],
    kills: &[Kill],
    outages: &[Outage],
    drained_after: Duration,
    timed_out: bool,
    outage_error: Option<String>,
) -> anyhow::Result<i32> {
    let changes: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT c.change_id, c.status, o.marketplace_name FROM status_changes c JOIN orders o ON o.id = c.order_ref",
    )
    .fetch_all(pool)
    .await?;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected_emails = HashSet::new();
    let mut expected_calls = HashSet::new();
    for (id, status, marketplace) in &changes {
        *by_status.entry(status.clone()).or_default() += 1;
        if status
            .parse::<Status>()
            .is_ok_and(Status::notifies_customer_by_default)
        {
            expected_emails.insert(*id);
        }
        if marketplace.as_deref() == Some(MARKETPLACE) {
            expected_calls.insert(*id);
        }
    }
    let skipped = |destination: &'static str| async move {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT change_id FROM deliveries WHERE destination = $1 AND state = 'done' AND detail LIKE 'skipped%'",
        )
        .bind(destination)
        .fetch_all(pool)
        .await?;
        anyhow::Ok(rows.into_iter().map(|(id,)| id).collect::<HashSet<_>>())
    };
    let skipped_emails = skipped("email").await?;
    let skipped_calls = skipped("marketplace:acme").await?;
    let delivery_states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT destination, state, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let (shipments, finished): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'delivered' AND finished_at IS NOT NULL) FROM shipments",
    )
    .fetch_one(pool)
    .await?;

    let mut emails: HashMap<Uuid, Vec<Instant>> = HashMap::new();
    let mut unreadable_emails = 0;
    for r in smtp.received() {
        match r
            .header("Message-ID")
            .as_deref()
            .and_then(message_id_change)
        {
            Some(id) => emails.entry(id).or_default().push(r.at),
            None => unreadable_emails += 1,
        }
    }
    let mut calls: HashMap<Uuid, Vec<Instant>> = HashMap::new();
    let mut unreadable_calls = 0;
    for c in receiver.calls() {
        match c.idempotency_key.as_deref().and_then(|k| k.parse().ok()) {
            Some(id) => calls.entry(id).or_default().push(c.received_at),
            None => unreadable_calls += 1,
        }
    }
    let db_down: Vec<(Instant, Instant)> = outages
        .iter()
        .filter(|o| o.what == "PostgreSQL")
        .map(|o| {
            (
                clock.start + Duration::from_secs_f64(o.stop_began),
                clock.start + Duration::from_secs_f64(o.answering),
            )
        })
        .collect();
    let e = tally(
        &expected_emails,
        &skipped_emails,
        &emails,
        kills,
        EMAIL_PUBLISHER,
        &db_down,
    );
    let m = tally(
        &expected_calls,
        &skipped_calls,
        &calls,
        kills,
        MARKETPLACE_PUBLISHER,
        &db_down,
    );

    // The last fault: the last kill, or the end of the last outage.
    let last_fault = kills
        .iter()
        .map(|k| k.at)
        .chain(
            outages
                .iter()
                .map(|o| clock.start + Duration::from_secs_f64(o.answering)),
        )
        .max()
        .unwrap_or(clock.start);
    // When each change was recorded, on this process's clock.
    let recorded_rows: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT change_id, created_at FROM status_changes")
            .fetch_all(pool)
            .await?;
    let (now, now_wall) = (Instant::now(), chrono::Utc::now());
    let recorded: HashMap<Uuid, Instant> = recorded_rows
        .into_iter()
        .map(|(id, at)| {
            let ago = (now_wall - at).to_std().unwrap_or_default();
            (id, now.checked_sub(ago).unwrap_or(now))
        })
        .collect();
    let es = settle(
        &expected_emails,
        &emails,
        &recorded,
        last_fault,
        settings.settle_target,
    );
    let ms = settle(
        &expected_calls,
        &calls,
        &recorded,
        last_fault,
        settings.settle_target,
    );
    let returns = returns_from_logs(&settings.dir.join("logs"));

    let (conn, _ch) = amqp(&settings.amqp_url).await?;
    let mut dead = Vec::new();
    for q in topology::WORK_QUEUES {
        let name = topology::dead_queue(q);
        dead.push((name.clone(), depth(&conn, &name).await?));
    }
    let _ = conn.close(200, "".into()).await;
    let parked: u32 = dead.iter().map(|(_, n)| n).sum();
    let publisher_kills = kills
        .iter()
        .filter(|k| k.worker == EMAIL_PUBLISHER || k.worker == MARKETPLACE_PUBLISHER)
        .count();

    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# make chaos: {} parcels", settings.parcels)?;
    writeln!(w)?;
    writeln!(
        w,
        "Machine: {}. Wall time {:.0} s (harness start to report); the pipeline drained {:.0} s after the requests were published{}.",
        machine(),
        clock.secs(),
        drained_after.as_secs_f64(),
        if timed_out {
            " (NOT drained: timed out)"
        } else {
            ""
        }
    )?;
    writeln!(
        w,
        "Shipments: {finished} of {shipments} delivered and finished; {} status changes recorded ({}).",
        changes.len(),
        by_status
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(w)?;
    writeln!(w, "| | emails | marketplace calls |")?;
    writeln!(w, "| --- | --- | --- |")?;
    writeln!(
        w,
        "| expected (from status_changes) | {} | {} |",
        e.expected, m.expected
    )?;
    writeln!(
        w,
        "| received, distinct | {} | {} |",
        e.received_distinct, m.received_distinct
    )?;
    writeln!(w, "| lost | {} | {} |", e.lost.len(), m.lost.len())?;
    writeln!(
        w,
        "| skipped by design (recorded `skipped`) | {} | {} |",
        e.skipped, m.skipped
    )?;
    writeln!(
        w,
        "| doubled (ids received more than once) | {} | {} |",
        e.doubled, m.doubled
    )?;
    writeln!(
        w,
        "| extra copies | {} | {} |",
        e.extra_copies, m.extra_copies
    )?;
    writeln!(
        w,
        "| doubles cut by a kill of its publisher within {} s of the first copy | {} | {} |",
        CUT.as_secs(),
        e.cut_at_once,
        m.cut_at_once
    )?;
    writeln!(
        w,
        "| doubles cut by a kill of its publisher later, while PostgreSQL was down | {} | {} |",
        e.cut_while_db_down, m.cut_while_db_down
    )?;
    writeln!(
        w,
        "| doubles no kill explains | {} | {} |",
        e.doubled - e.doubles_explained,
        m.doubled - m.doubles_explained
    )?;
    writeln!(
        w,
        "| longest first copy to kill, of the explained doubles | {:.2} s | {:.2} s |",
        e.longest_cut.as_secs_f64(),
        m.longest_cut.as_secs_f64()
    )?;
    writeln!(
        w,
        "| received but not expected | {} | {} |",
        e.unexpected, m.unexpected
    )?;
    writeln!(
        w,
        "| without a readable id | {unreadable_emails} | {unreadable_calls} |"
    )?;
    writeln!(
        w,
        "| recorded before the last fault: the last one done, after the fault | {:.1} s | {:.1} s |",
        es.held.as_secs_f64(),
        ms.held.as_secs_f64()
    )?;
    writeln!(
        w,
        "| longest from the later of the last fault and its change's record to its arrival | {:.1} s | {:.1} s |",
        es.after.as_secs_f64(),
        ms.after.as_secs_f64()
    )?;
    writeln!(
        w,
        "| done more than {} s after the later of the last fault and its record | {} | {} |",
        settings.settle_target.as_secs(),
        es.late,
        ms.late
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "The last fault at {:.1} s (the last kill or outage end). Returns through the delay queues (waits and retries, \
         from the workers' logs): {} in all, of {} messages; the most of one message in any 60 s: {}{}; the busiest \
         second: {}; messages over {} in a minute: {}.",
        last_fault
            .saturating_duration_since(clock.start)
            .as_secs_f64(),
        returns.total,
        returns.messages,
        returns.max_per_minute,
        returns
            .worst
            .as_ref()
            .map(|(q, id)| format!(" ({q} {id})"))
            .unwrap_or_default(),
        returns.peak_per_second,
        settings.returns_target,
        returns.over(settings.returns_target),
    )?;
    for (queue, n) in &returns.by_queue {
        writeln!(w, "- {queue}: {n} returns")?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "Parked: {parked} ({}).",
        dead.iter()
            .map(|(q, n)| format!("{q} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        w,
        "Deliveries: {}.",
        delivery_states
            .iter()
            .map(|(d, s, n)| format!("{d} {s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(w)?;
    writeln!(w, "| worker | kills (-9) | exits on its own | starts |")?;
    writeln!(w, "| --- | --- | --- | --- |")?;
    for p in procs {
        writeln!(
            w,
            "| {} | {} | {} | {} |",
            p.name,
            p.kills,
            p.exits.len(),
            p.starts
        )?;
    }
    writeln!(
        w,
        "| all | {} (publishers: {publisher_kills}) | {} | |",
        kills.len(),
        procs.iter().map(|p| p.exits.len()).sum::<usize>()
    )?;
    writeln!(w)?;
    for o in outages {
        writeln!(
            w,
            "{}: stop asked at {:.1} s, down from {:.1} s, start asked at {:.1} s, answering at {:.1} s ({:.1} s without it).",
            o.what,
            o.stop_began,
            o.stopped,
            o.start_began,
            o.answering,
            o.answering - o.stop_began
        )?;
    }
    if let Some(err) = &outage_error {
        writeln!(w, "An outage step FAILED: {err}")?;
    }
    if !e.lost.is_empty() || !m.lost.is_empty() {
        writeln!(w)?;
        writeln!(
            w,
            "Lost emails (first 20): {:?}",
            e.lost.iter().take(20).collect::<Vec<_>>()
        )?;
        writeln!(
            w,
            "Lost calls (first 20): {:?}",
            m.lost.iter().take(20).collect::<Vec<_>>()
        )?;
    }
    writeln!(w)?;
    let line = format!(
        "chaos: parcels={} lost_emails={} doubled_emails={} lost_calls={} doubled_calls={} parked={} kills={} publisher_kills={} doubles_unexplained={} skipped={} settle_emails_secs={:.0} settle_calls_secs={:.0} held_emails_secs={:.0} held_calls_secs={:.0} max_returns_per_min={} wall_secs={:.0}{}",
        settings.parcels,
        e.lost.len(),
        e.doubled,
        m.lost.len(),
        m.doubled,
        parked,
        kills.len(),
        publisher_kills,
        (e.doubled - e.doubles_explained) + (m.doubled - m.doubles_explained),
        e.skipped + m.skipped,
        es.after.as_secs_f64(),
        ms.after.as_secs_f64(),
        es.held.as_secs_f64(),
        ms.held.as_secs_f64(),
        returns.max_per_minute,
        clock.secs(),
        if timed_out { " timed_out=1" } else { "" }
    );
    writeln!(w, "{line}")?;
    print!("\n{out}");
    let timeline = clock
        .timeline
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .join("\n");
    std::fs::write(
        settings.dir.join("report.md"),
        format!("{out}\n## Timeline\n\n```\n{timeline}\n```\n"),
    )?;
    let mut lost_ids = String::new();
    for id in &e.lost {
        writeln!(lost_ids, "email {id}")?;
    }
    for id in &m.lost {
        writeln!(lost_ids, "call {id}")?;
    }
    for (what, arrivals) in [("email", &emails), ("call", &calls)] {
        for (id, t) in arrivals {
            if t.len() > 1 {
                writeln!(lost_ids, "doubled {what} {id} x{}", t.len())?;
            }
        }
    }
    std::fs::write(settings.dir.join("ids.txt"), lost_ids)?;
    let unexplained = (e.doubled - e.doubles_explained) + (m.doubled - m.doubles_explained);
    let failed = timed_out
        || outage_error.is_some()
        || !e.lost.is_empty()
        || !m.lost.is_empty()
        || parked > 0
        || unexplained > 0
        || e.unexpected + m.unexpected > 0
        || es.late + ms.late > 0
        || returns.max_per_minute > settings.returns_target;
    Ok(i32::from(failed))
}
