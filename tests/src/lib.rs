//! Test support: every test gets its own RabbitMQ vhost and PostgreSQL database (dropped afterwards), and talks to
//! real servers: the worker binaries from `target/debug/`, maildev (a real SMTP server with a REST API), the Correios
//! simulator and the marketplace receiver (real HTTP servers on 127.0.0.1).
//!
//! `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672`) and `TEST_DATABASE_URL` (default
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`, a role that can create databases) say where the servers are.
//! Vhosts are created with `rabbitmqctl` (as root, or through `sudo -n`).

#![allow(clippy::unwrap_used)]

pub mod certs;
pub mod journey;
pub mod pg_cluster;
pub mod prometheus;
pub mod proxy;
pub mod rabbit_cluster;
pub mod rabbit_node;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::PgPool;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_base_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// Runs `rabbitmqctl` (directly, or through `sudo -n`).
pub fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let direct = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    if let Ok(out) = &direct
        && out.status.success()
    {
        return Ok(());
    }
    let out = Command::new("sudo")
        .arg("-n")
        .arg("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// An isolated place to run: a vhost and a database of its own.
pub struct TestEnv {
    pub name: String,
    pub amqp_url: String,
    pub database_url: String,
    pub pool: PgPool,
    /// How this test's own AMQP client connects (the workers' settings: URL, CA file).
    pub amqp_settings: tracking_runtime::amqp::AmqpSettings,
    /// Settings every worker of this test gets besides [`TestEnv::worker_env`]'s usual ones.
    extra_env: Vec<(String, String)>,
    /// `AMQP_URL` per binary name, replacing the test's own (a broker user of each worker's own).
    worker_amqp_urls: std::collections::BTreeMap<String, String>,
    /// The vhost made for this test on the shared broker (none on a broker of the test's own).
    vhost: Option<String>,
    database: String,
    /// The maintenance database of the server holding `database` (to drop it afterwards).
    admin_url: String,
    /// Messages this test leaves parked on purpose, per parking queue ([`TestEnv::expect_parked`]): any other
    /// message left in a `.dead` queue fails the test when the environment is dropped.
    expected_parked: std::sync::Mutex<std::collections::BTreeMap<String, u32>>,
}

/// How a [`TestEnv`] differs from the default one (the shared broker and database, without TLS).
#[derive(Default)]
pub struct EnvOptions {
    /// Appended to the test database's URL, e.g. `?sslmode=require`.
    pub database_query: String,
    /// A broker of the test's own (e.g. [`rabbit_node::RabbitNode`]'s `amqps://` URL): no vhost is made, the
    /// default one is used.
    pub amqp_url: Option<String>,
    /// `AMQP_CA_FILE` for the workers and the test's own client.
    pub amqp_ca_file: Option<PathBuf>,
    /// `AMQP_CLIENT_CERT_FILE` and `AMQP_CLIENT_KEY_FILE`, likewise.
    pub amqp_client_identity: Option<(PathBuf, PathBuf)>,
    /// The maintenance database URL of another PostgreSQL server (default: `TEST_DATABASE_URL`'s).
    pub admin_url: Option<String>,
}

impl TestEnv {
    pub async fn new() -> anyhow::Result<Self> {
        Self::with(EnvOptions::default()).await
    }

    /// An environment whose database lives on the PostgreSQL server of `admin_url` (a maintenance database URL
    /// of a role that can create databases), e.g. a [`PrivatePostgres`].
    pub async fn on_postgres(admin_url: &str) -> anyhow::Result<Self> {
        Self::with(EnvOptions {
            admin_url: Some(admin_url.to_owned()),
            ..EnvOptions::default()
        })
        .await
    }

    pub async fn with(options: EnvOptions) -> anyhow::Result<Self> {
        let admin_url = options.admin_url.clone().unwrap_or_else(admin_database_url);
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("t_{id}");
        let (amqp_url, vhost) = match options.amqp_url {
            Some(url) => (url, None),
            None => {
                let vhost = format!("t-{id}");
                tokio::task::block_in_place(|| -> anyhow::Result<()> {
                    rabbitmqctl(&["add_vhost", &vhost])?;
                    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])
                })?;
                (format!("{}/{vhost}", amqp_base_url()), Some(vhost))
            }
        };
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .context("the admin database URL has no database name")?;
        let database_url = format!("{base}/{database}{}", options.database_query);
        tracking_store::create_database_if_missing(&database_url).await?;
        let pool = tracking_store::pool(&tracking_store::DbSettings::new(&database_url))?;
        // In-process publishers and consumers declare the application's topology.
        tracking_app::install();
        let mut amqp_settings = tracking_runtime::amqp::AmqpSettings::with_url(&amqp_url);
        let mut extra_env = Vec::new();
        if let Some(ca) = &options.amqp_ca_file {
            amqp_settings.ca_file = Some(tracking_runtime::tls::PemFile::read(
                "AMQP_CA_FILE",
                &ca.display().to_string(),
                tracking_runtime::tls::PemKind::Certificates,
            )?);
            extra_env.push(("AMQP_CA_FILE".to_owned(), ca.display().to_string()));
        }
        if let Some((cert, key)) = &options.amqp_client_identity {
            use tracking_runtime::tls::{PemFile, PemKind};
            amqp_settings.client_identity = Some((
                PemFile::read(
                    "AMQP_CLIENT_CERT_FILE",
                    &cert.display().to_string(),
                    PemKind::Certificates,
                )?,
                PemFile::read(
                    "AMQP_CLIENT_KEY_FILE",
                    &key.display().to_string(),
                    PemKind::PrivateKey,
                )?,
            ));
            extra_env.push((
                "AMQP_CLIENT_CERT_FILE".to_owned(),
                cert.display().to_string(),
            ));
            extra_env.push(("AMQP_CLIENT_KEY_FILE".to_owned(), key.display().to_string()));
        }
        Ok(Self {
            name: id,
            amqp_url,
            database_url,
            pool,
            amqp_settings,
            extra_env,
            worker_amqp_urls: std::collections::BTreeMap::new(),
            vhost,
            database,
            admin_url,
            expected_parked: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// A migrated environment with the topology declared (delay tiers of 200 ms and 1 s, as [`TestEnv::worker_env`]).
    pub async fn ready() -> anyhow::Result<Self> {
        let env = Self::new().await?;
        env.migrate().await?;
        env.amqp()
            .await?
            .declare(&[Duration::from_millis(200), Duration::from_secs(1)])
            .await?;
        Ok(env)
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        tracking_store::migrate(&self.pool).await?;
        Ok(())
    }

    /// The environment every worker of this test gets.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AMQP_URL".into(), self.amqp_url.clone()),
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("RUST_LOG".into(), "info,lapin=warn".into()),
            ("RETRY_DELAYS_MS".into(), "200,1000".into()),
            ("SHUTDOWN_GRACE_MS".into(), "3000".into()),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// Records a status change as the normalizer would (its shipment, then the change in `status_changes`, marked
    /// published), so that the publishers, which send only recorded changes, take it when it is published.
    pub async fn record_change(&self, change: &Value) -> anyhow::Result<()> {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let shipment_id: i64 = sqlx::query_scalar(
            "INSERT INTO shipments (carrier, tracking_code) VALUES ($1, $2) \
             ON CONFLICT (store, carrier, tracking_code) WHERE retired_at IS NULL DO UPDATE SET updated_at = now() \
             RETURNING id",
        )
        .bind(text(&change["carrier"]))
        .bind(text(&change["tracking_code"]))
        .fetch_one(&self.pool)
        .await?;
        let order_ref = add_order(
            &self.pool,
            shipment_id,
            &Order {
                order_id: text(&change["order_id"]).unwrap_or_default(),
                email: text(&change["customer"]["email"]).unwrap_or_default(),
                marketplace: text(&change["marketplace"]["name"])
                    .zip(text(&change["marketplace"]["order_id"])),
                ..Order::default()
            },
        )
        .await?;
        sqlx::query(
            "INSERT INTO status_changes (change_id, shipment_id, status, previous_status, occurred_at, payload, published_at, \
                 order_ref) \
             VALUES ($1::text::uuid, $2, $3, $4, $5::text::timestamptz, $6, now(), $7)",
        )
        .bind(text(&change["change_id"]))
        .bind(shipment_id)
        .bind(text(&change["status"]))
        .bind(text(&change["previous_status"]))
        .bind(text(&change["occurred_at"]))
        .bind(change)
        .bind(order_ref)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A setting every worker of this test gets, replacing the usual one of that name.
    pub fn set_worker_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    /// The `AMQP_URL` binary `name` gets (its own broker user), instead of the test's own.
    pub fn set_worker_amqp_url(&mut self, name: &str, url: &str) {
        self.worker_amqp_urls
            .insert(name.to_owned(), url.to_owned());
    }

    /// The `AMQP_URL` binary `name` gets.
    pub fn worker_amqp_url(&self, name: &str) -> &str {
        self.worker_amqp_urls
            .get(name)
            .map_or(self.amqp_url.as_str(), String::as_str)
    }

    pub fn log_dir(&self) -> PathBuf {
        let dir = target_dir().join("test-logs").join(&self.name);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    pub async fn amqp(&self) -> anyhow::Result<Amqp> {
        Amqp::connect_with(&self.amqp_settings).await
    }

    /// Says this test leaves exactly `n` messages in parking queue `queue` (`tracking.requests.dead`) when it
    /// ends; without it a test may leave none there. Checked when the environment is dropped.
    pub fn expect_parked(&self, queue: &str, n: u32) {
        self.expected_parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_owned(), n);
    }

    /// What the parking queues hold that the test did not say it leaves there ([`TestEnv::expect_parked`]), one
    /// line per queue; empty when the broker cannot be reached (a test that stopped its own broker).
    fn unexpected_parked(&self) -> Vec<String> {
        let settings = self.amqp_settings.clone();
        let counts = std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<Vec<(String, u32)>> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let amqp = tokio::time::timeout(
                            Duration::from_secs(10),
                            Amqp::connect_with(&settings),
                        )
                        .await??;
                        let counts = amqp.parked_counts().await;
                        amqp.close().await;
                        counts
                    })
                })
                .join()
        });
        let Ok(Ok(counts)) = counts else {
            return Vec::new();
        };
        let expected = self
            .expected_parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        counts
            .into_iter()
            .filter_map(|(queue, n)| {
                let wanted = expected.get(&queue).copied().unwrap_or(0);
                (n != wanted).then(|| {
                    format!("{queue} holds {n} parked message(s); the test expected {wanted}")
                })
            })
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Checked before the vhost goes; not when the test already failed (its own failure says more).
        let unexpected = if std::thread::panicking() {
            Vec::new()
        } else {
            self.unexpected_parked()
        };
        if let Some(vhost) = &self.vhost {
            let _ = rabbitmqctl(&["delete_vhost", vhost]);
        }
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args([
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            unexpected.is_empty(),
            "messages were parked that the test did not expect (TestEnv::expect_parked): {}",
            unexpected.join("; ")
        );
    }
}

/// A PostgreSQL cluster of this test's own (Debian's `pg_createcluster`, trust authentication on 127.0.0.1, a free
/// port) with the settings a test needs that the shared server does not have; stopped and removed on drop, also
/// when the test fails. Needs root (or a user allowed to run `pg_createcluster`).
pub struct PrivatePostgres {
    version: String,
    name: String,
    pub port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a cluster with `options` (`guc=value`, e.g. `max_connections=100`).
    pub fn start(options: &[&str]) -> anyhow::Result<PrivatePostgres> {
        let version = std::fs::read_dir("/etc/postgresql")
            .context("PostgreSQL's Debian cluster tools are not installed (/etc/postgresql)")?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .context("no PostgreSQL version in /etc/postgresql")?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let me = PrivatePostgres {
            version,
            name: format!("test-{id}"),
            port: free_addr().port(),
        };
        let mut create = Command::new("pg_createcluster");
        create
            .args([&me.version, &me.name, "-p", &me.port.to_string(), "--start"])
            .stdout(Stdio::null());
        for o in options {
            create.args(["-o", o]);
        }
        create.args(["--", "--auth-local=trust", "--auth-host=trust"]);
        let out = create.output().context("running pg_createcluster")?;
        if !out.status.success() {
            bail!(
                "pg_createcluster failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(me)
    }

    /// The maintenance database's URL, for [`TestEnv::on_postgres`].
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log (connection errors such as "too many clients" show here too).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(format!(
            "/var/log/postgresql/postgresql-{}-{}.log",
            self.version, self.name
        ))
        .unwrap_or_default()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

/// Where the worker binaries are: `target/debug/`, or `target/$TRACKING_BIN_PROFILE/` (the benchmarks use release).
pub fn bin_dir() -> PathBuf {
    let profile = std::env::var("TRACKING_BIN_PROFILE").unwrap_or_else(|_| "debug".into());
    target_dir().join(profile)
}

/// A port free a moment ago: the kernel's pick for a listener that is closed again at once. Another process can
/// take it before the caller binds it, so it is only for a binary that must be given an address to listen on
/// (`METRICS_ADDR`, `HTTP_ADDR`): [`Worker::spawn`] starts a worker again on a new port when the one it was
/// given was taken meanwhile. A server of the test's own binds port 0 itself, or holds a socket from
/// [`reserved_socket`].
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A socket bound to a port of the kernel's choice on 127.0.0.1 and not listening yet: connections to it are
/// refused (as to a server that is down) until the test starts its server on it (`socket.listen(..)`), and no
/// other process can take the port meanwhile.
pub fn reserved_socket() -> anyhow::Result<(tokio::net::TcpSocket, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let addr = socket.local_addr()?;
    Ok((socket, addr))
}

/// How often [`Worker::spawn`]'s worker is started again when its `METRICS_ADDR` port was taken between
/// [`free_addr`] and the worker's bind.
const PORT_RETRIES: usize = 3;

/// A worker binary running as its own process; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Worker {
    pub name: String,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    /// How it was started (the binary and its whole environment but `METRICS_ADDR`), to start it again on
    /// another port when its `METRICS_ADDR` was taken before it could bind it.
    bin: PathBuf,
    settings: Vec<(String, String)>,
    /// Restarts left for that.
    port_retries: usize,
}

impl Worker {
    pub fn spawn(env: &TestEnv, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
        let bin = bin_dir().join(name);
        if !bin.exists() {
            bail!(
                "{} is missing: build the binaries first (`make test` does: cargo build --workspace --bins)",
                bin.display()
            );
        }
        let mut settings = env.worker_env();
        settings.push(("AMQP_URL".into(), env.worker_amqp_url(name).to_owned()));
        settings.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let log_dir = env.log_dir();
        let metrics_addr = free_addr();
        let log = log_dir.join(format!("{name}-{}.log", metrics_addr.port()));
        let child = Self::start_process(&bin, &settings, metrics_addr, &log)?;
        Ok(Worker {
            name: name.into(),
            metrics_addr,
            log,
            child,
            bin,
            settings,
            port_retries: PORT_RETRIES,
        })
    }

    fn start_process(
        bin: &std::path::Path,
        settings: &[(String, String)],
        metrics_addr: SocketAddr,
        log: &std::path::Path,
    ) -> anyhow::Result<Child> {
        let file = std::fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        cmd.envs(settings.iter().map(|(k, v)| (k, v)))
            .env("METRICS_ADDR", metrics_addr.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }

    /// When the process ended because a port it was given to listen on (`METRICS_ADDR`, or `HTTP_ADDR` from
    /// [`free_addr`]) was taken by another process in between, starts it again on a new port and says so: the
    /// binaries cannot be handed a bound socket, and do not report the address they bound for port 0, so this
    /// retry is the least-bad way to own their ports. Read the address used with [`Worker::setting`].
    fn restarted_on_taken_port(&mut self) -> anyhow::Result<bool> {
        if self.port_retries == 0 {
            return Ok(false);
        }
        let log = self.log_text();
        let Some(name) = ["METRICS_ADDR", "HTTP_ADDR"].into_iter().find(|name| {
            log.lines().any(|l| {
                l.contains(&format!("setting {name}: cannot listen on"))
                    && l.contains("Address already in use")
            })
        }) else {
            return Ok(false);
        };
        self.port_retries -= 1;
        let fresh = free_addr();
        if name == "METRICS_ADDR" {
            self.metrics_addr = fresh;
        } else {
            for (k, v) in self.settings.iter_mut() {
                if k == name {
                    *v = fresh.to_string();
                }
            }
        }
        self.child = Self::start_process(&self.bin, &self.settings, self.metrics_addr, &self.log)?;
        Ok(true)
    }

    /// The address `HTTP_ADDR` (tracking-api's) was last given: the one it listens on once healthy.
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self
            .setting("HTTP_ADDR")
            .context("the worker was given no HTTP_ADDR")?
            .parse()?)
    }

    /// The value setting `name` was last given (after a restart on a taken port, the new address).
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Spawns the worker and waits until its `/health` answers 200.
    pub async fn started(
        env: &TestEnv,
        name: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Worker> {
        let mut w = Worker::spawn(env, name, extra)?;
        w.wait_healthy(Duration::from_secs(60)).await?;
        Ok(w)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<Value> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            let url = format!("http://{}/health", self.metrics_addr);
            if let Some(status) = self.child.try_wait()? {
                if self.restarted_on_taken_port()? {
                    continue;
                }
                bail!(
                    "{} exited with {status} before it was healthy; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(resp.json().await?);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not healthy within {within:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn health(&self) -> anyhow::Result<(u16, Value)> {
        let resp = reqwest::get(format!("http://{}/health", self.metrics_addr)).await?;
        Ok((resp.status().as_u16(), resp.json().await?))
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(
            reqwest::get(format!("http://{}/metrics", self.metrics_addr))
                .await?
                .text()
                .await?,
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of metric `name` over all its labels (0 when it was not recorded yet).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric_sum(&self.metrics().await?, name))
    }

    /// `messages_total{queue}` of this worker per outcome (acked, retried, parked, waited, unavailable).
    pub async fn settled(
        &self,
        queue: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        Ok(settled_counts(&self.metrics().await?, queue))
    }

    /// How many messages of `queue` this worker is done with: acked or parked (a retried or waiting message
    /// is counted when it ends).
    pub async fn finished(&self, queue: &str) -> anyhow::Result<u64> {
        let settled = self.settled(queue).await?;
        Ok(["acked", "parked"]
            .iter()
            .filter_map(|o| settled.get(*o))
            .sum())
    }

    /// SIGTERM, then waits for the exit code.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not stop within 15 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to end on its own.
    pub async fn wait_exit(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still runs after {within:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a binary to completion (for configuration checks): exit status and everything it printed.
    pub fn run_to_exit(
        env: &TestEnv,
        name: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<(i32, String)> {
        let bin = bin_dir().join(name);
        let mut cmd = Command::new(&bin);
        cmd.envs(env.worker_env())
            .env("METRICS_ADDR", free_addr().to_string());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), text))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
    }
}

/// maildev: a real SMTP server whose REST API lists what it received.
pub struct Maildev {
    pub smtp_port: u16,
    pub web_port: u16,
    child: Child,
}

impl Maildev {
    pub async fn start() -> anyhow::Result<Maildev> {
        let bin =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/node_modules/.bin/maildev");
        if !bin.exists() {
            bail!("maildev is missing at {}: run `make setup`", bin.display());
        }
        let (smtp_port, web_port) = (free_addr().port(), free_addr().port());
        let dir = target_dir()
            .join("test-logs")
            .join(format!("maildev-{smtp_port}"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .args([
                "--ip",
                "127.0.0.1",
                "--web-ip",
                "127.0.0.1",
                "-s",
                &smtp_port.to_string(),
                "-w",
                &web_port.to_string(),
            ])
            .arg("--mail-directory")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let me = Maildev {
            smtp_port,
            web_port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while me.emails().await.is_err() {
            if Instant::now() > deadline {
                bail!("maildev did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(me)
    }

    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.smtp_port)
    }

    /// What the SMTP server received (maildev 3 serves it at `/api/email`, maildev 2 at `/email`).
    pub async fn emails(&self) -> anyhow::Result<Vec<Value>> {
        for path in ["api/email", "email"] {
            let resp = reqwest::get(format!("http://127.0.0.1:{}/{path}", self.web_port)).await?;
            if resp.status().is_success()
                && let Ok(list) = resp.json::<Vec<Value>>().await
            {
                return Ok(list);
            }
        }
        bail!("maildev did not list its emails")
    }
}

impl Drop for Maildev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of metric `name`'s samples over all their labels in a `/metrics` text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until a scheduler has been ticking for a whole second after now: its
/// `scheduler_last_tick_timestamp_seconds` (whole seconds, set after each tick) reaches now + 2 s, so that
/// every scan due in that second (late scans every `LATE_SCAN_INTERVAL_MS`, polls) ran after this call. The
/// positive signal of "more scans change nothing" for a binary whose time cannot be paused.
pub async fn wait_ticks_after_now(scheduler: &Worker, within: Duration) -> anyhow::Result<()> {
    let after = (chrono::Utc::now().timestamp() + 2) as f64;
    eventually(within, "a second of scheduler ticks", || async {
        Ok((scheduler
            .metric("scheduler_last_tick_timestamp_seconds")
            .await?
            >= after)
            .then_some(()))
    })
    .await
}

/// Waits until every recorded status change is marked published (the normalizer's outbox, its relay
/// included, has nothing left to send).
pub async fn wait_changes_published(pool: &PgPool, within: Duration) -> anyhow::Result<i64> {
    eventually(within, "every status change published", || async {
        let (all, unpublished): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM status_changes",
        )
        .fetch_one(pool)
        .await?;
        Ok((unpublished == 0).then_some(all))
    })
    .await
}

/// `messages_total{queue="QUEUE",outcome=...}` of a `/metrics` text, per outcome.
pub fn settled_counts(metrics: &str, queue: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let queue_label = format!("queue=\"{queue}\"");
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("messages_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.split(',').any(|l| l == queue_label) {
            continue;
        }
        let Some(outcome) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("outcome=\""))
            .and_then(|o| o.strip_suffix('"'))
        else {
            continue;
        };
        if let Ok(n) = value.trim().parse::<f64>() {
            *out.entry(outcome.to_owned()).or_insert(0) += n as u64;
        }
    }
    out
}

/// Waits for a worker to be done with exactly `n` messages of `queue`, then checks nothing of them is left:
/// the positive signal of a "nothing more happens" check, instead of a quiet period. Done means acked or
/// parked as `messages_total` counts them ([`Worker::finished`]), which a worker records once a message's
/// effects are done (an email sent, a change published with confirms) and just before it settles it; then
/// `queue` and its retry tiers must hold no ready message. A message handed back (a crash, a lost channel)
/// would be counted again when handled again, so the count is read again after the queues were seen empty:
/// more than `n` fails at once (a message handled twice).
pub async fn wait_finished(
    amqp: &Amqp,
    worker: &Worker,
    queue: &str,
    n: u64,
    within: Duration,
) -> anyhow::Result<()> {
    wait_finished_by(amqp, &[worker], queue, n, within).await
}

/// [`wait_finished`] for several workers consuming `queue`: together they are done with exactly `n` messages.
pub async fn wait_finished_by(
    amqp: &Amqp,
    workers: &[&Worker],
    queue: &str,
    n: u64,
    within: Duration,
) -> anyhow::Result<()> {
    let tiers: Vec<String> = [Duration::from_millis(200), Duration::from_secs(1)]
        .iter()
        .map(|d| tracking_app::topology::retry_queue(queue, *d))
        .collect();
    let finished = || async {
        let mut sum = 0;
        let mut each = Vec::new();
        for w in workers {
            let settled = w.settled(queue).await?;
            sum += ["acked", "parked"]
                .iter()
                .filter_map(|o| settled.get(*o))
                .sum::<u64>();
            each.push((w.name.clone(), settled));
        }
        anyhow::Ok((sum, each))
    };
    let deadline = Instant::now() + within;
    loop {
        let (done, each) = finished().await?;
        if done > n {
            bail!(
                "{done} messages of {queue} finished, more than the {n} expected: one was handled twice ({each:?})"
            );
        }
        let mut empty = done == n;
        for q in std::iter::once(queue.to_owned()).chain(tiers.iter().cloned()) {
            empty = empty && amqp.ready(&q).await?.unwrap_or(0) == 0;
        }
        if empty && finished().await?.0 == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} message(s) of {queue} were not finished within {within:?}: {each:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` until it returns `Some`, or fails after `within` with `what`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message taken from a queue.
#[derive(Debug)]
pub struct Taken {
    pub body: Vec<u8>,
    pub headers: FieldTable,
}

impl Taken {
    pub fn header(&self, key: &str) -> Option<String> {
        match self.headers.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            AMQPValue::LongInt(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// A test's own AMQP client.
pub struct Amqp {
    conn: Connection,
    channel: lapin::Channel,
}

impl Amqp {
    pub async fn connect(url: &str) -> anyhow::Result<Amqp> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        Self::on(conn).await
    }

    /// Connects as the workers do (`tracking_runtime::amqp::connect`: TLS with the settings' CA file).
    pub async fn connect_with(
        settings: &tracking_runtime::amqp::AmqpSettings,
    ) -> anyhow::Result<Amqp> {
        let conn = tracking_runtime::amqp::connect(settings, "test").await?;
        Self::on(conn).await
    }

    async fn on(conn: Connection) -> anyhow::Result<Amqp> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Amqp { conn, channel })
    }

    /// Declares the contract's topology (as every worker does at start).
    pub async fn declare(&self, retry_delays: &[Duration]) -> anyhow::Result<()> {
        tracking_app::topology::declare(&self.channel, retry_delays).await?;
        Ok(())
    }

    /// Declares a durable queue of its own (a benchmark's, outside the contract's topology).
    pub async fn declare_queue(&self, queue: &str) -> anyhow::Result<()> {
        self.channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        Ok(())
    }

    /// Publishes bytes to a queue through the default exchange and waits for the confirm.
    pub async fn publish(&self, queue: &str, body: &[u8]) -> anyhow::Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        if !confirm.is_ack() || confirm.take_message().is_some() {
            bail!("the broker did not take the message for {queue}");
        }
        Ok(())
    }

    pub async fn count(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(tracking_app::topology::message_count(&self.channel, queue).await?)
    }

    /// Takes (and acks) every message now in `queue`.
    pub async fn drain(&self, queue: &str) -> anyhow::Result<Vec<Taken>> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            let delivery = msg.delivery;
            delivery.ack(BasicAckOptions::default()).await?;
            out.push(Taken {
                body: delivery.data.clone(),
                headers: delivery.properties.headers().clone().unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Every `.dead` queue's depth, for "nothing was parked" checks.
    pub async fn dead_counts(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for q in tracking_app::topology::WORK_QUEUES {
            let dead = tracking_app::topology::dead_queue(q);
            out.push((dead.clone(), self.count(&dead).await?));
        }
        Ok(out)
    }

    /// Every parking queue's depth, a queue not declared (yet) counting none.
    pub async fn parked_counts(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for q in tracking_app::topology::WORK_QUEUES {
            let dead = tracking_app::topology::dead_queue(q);
            let n = self.ready(&dead).await?.unwrap_or(0);
            out.push((dead, n));
        }
        Ok(out)
    }

    /// The messages ready in `queue` (a passive declare counts ready ones only, not those a consumer holds), or
    /// `None` when there is no such queue. Asked on a channel of its own: a passive declare of a missing queue
    /// closes its channel.
    pub async fn ready(&self, queue: &str) -> anyhow::Result<Option<u32>> {
        let ch = self.conn.create_channel().await?;
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => {
                let _ = ch.close(200, "counted".into()).await;
                Ok(Some(q.message_count()))
            }
            Err(e) if tracking_app::topology::reply(&e).is_some_and(|(code, _)| code == 404) => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn close(&self) {
        let _ = self.conn.close(200, "done".into()).await;
    }

    pub async fn queue_exists(&self, queue: &str) -> bool {
        let ch = match self.conn.create_channel().await {
            Ok(c) => c,
            Err(_) => return false,
        };
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
    }

    /// Consumes one message within `within` (used by runtime tests).
    pub async fn consume_one(
        &self,
        queue: &str,
        within: Duration,
    ) -> anyhow::Result<Option<Taken>> {
        let ch = self.conn.create_channel().await?;
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await?;
        match tokio::time::timeout(within, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack(BasicAckOptions::default()).await?;
                Ok(Some(Taken {
                    body: d.data.clone(),
                    headers: d.properties.headers().clone().unwrap_or_default(),
                }))
            }
            Ok(Some(Err(e))) => Err(e.into()),
            _ => Ok(None),
        }
    }
}

/// A tracking request in the contract's shape.
pub fn request(
    order_id: &str,
    code: &str,
    email: &str,
    locale: &str,
    marketplace: Option<&str>,
) -> Value {
    let mut r = serde_json::json!({
        "order_id": order_id,
        "tracking_code": code,
        "customer": { "email": email, "name": "Ana Souza", "locale": locale },
        "invoice_number": "00012345"
    });
    if let Some(m) = marketplace {
        r["marketplace"] = serde_json::json!({ "name": m, "order_id": format!("MP-{order_id}") });
    }
    r
}

/// A Correios event as the fetcher puts it in a carrier update: (code, type, time with offset).
pub fn correios_event(code: &str, kind: &str, at: &str) -> Value {
    serde_json::json!({
        "code": code, "type": kind, "occurred_at": at,
        "description": format!("{code} {kind}"),
        "location": { "city": "CAMPINAS", "state": "SP" },
        "unit": "Unidade de Tratamento",
        "raw": {}
    })
}

/// A carrier update for `normalizer.carrier-events`; with `request`, it registers the shipment.
pub fn carrier_update(code: &str, request: Option<&Value>, events: &[Value]) -> Value {
    let mut u = serde_json::json!({
        "carrier": "correios", "tracking_code": code, "source": "carrier",
        "fetched_at": chrono::Utc::now().to_rfc3339(),
        "events": events,
    });
    if let Some(r) = request {
        let mut r = r.clone();
        r["carrier"] = "correios".into();
        u["request"] = r;
    }
    u
}

/// A status change as the normalizer publishes it on `order.status`, with a fresh change id.
pub fn status_change(
    order_id: &str,
    code: &str,
    status: &str,
    previous: &str,
    email: &str,
    marketplace: Option<(&str, &str)>,
) -> Value {
    let mut c = serde_json::json!({
        "change_id": uuid::Uuid::new_v4(), "order_id": order_id, "tracking_code": code, "carrier": "correios",
        "status": status, "previous_status": previous, "occurred_at": "2026-11-23T15:00:00-03:00", "source": "carrier",
        "event": { "code": "BDE", "type": "01", "description": "Objeto entregue ao destinatário",
                   "location": { "city": "CAMPINAS", "state": "SP" } },
        "customer": { "email": email, "name": "Ana Souza", "locale": "pt-BR" },
        "invoice_number": "NF-1"
    });
    if let Some((name, order)) = marketplace {
        c["marketplace"] = serde_json::json!({ "name": name, "order_id": order });
    }
    c
}

/// The n-th valid Correios S10 code of a series: `{prefix}{8 digits}{check digit}BR`.
/// An order as a test writes it beside a shipment it inserts by hand (default store, `pt-BR`).
#[derive(Debug, Clone)]
pub struct Order {
    pub order_id: String,
    pub email: String,
    pub name: Option<String>,
    pub locale: String,
    pub marketplace: Option<(String, String)>,
}

impl Default for Order {
    fn default() -> Self {
        Self {
            order_id: "1".into(),
            email: "ana@example.com".into(),
            name: None,
            locale: "pt-BR".into(),
            marketplace: None,
        }
    }
}

impl Order {
    pub fn new(order_id: &str, email: &str) -> Self {
        Self {
            order_id: order_id.into(),
            email: email.into(),
            ..Self::default()
        }
    }
}

/// Registers `order` (or updates its context) and links it to shipment `shipment_id`, as the normalizer does for
/// a tracking request; the order's id in `orders`.
pub async fn add_order(pool: &PgPool, shipment_id: i64, order: &Order) -> anyhow::Result<i64> {
    let order_ref: i64 = sqlx::query_scalar(
        "INSERT INTO orders (order_id, customer_email, customer_name, customer_locale, marketplace_name, \
             marketplace_order_id) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (store, order_id) DO UPDATE SET customer_email = EXCLUDED.customer_email, \
             marketplace_name = EXCLUDED.marketplace_name, marketplace_order_id = EXCLUDED.marketplace_order_id \
         RETURNING id",
    )
    .bind(&order.order_id)
    .bind(&order.email)
    .bind(&order.name)
    .bind(&order.locale)
    .bind(order.marketplace.as_ref().map(|m| m.0.clone()))
    .bind(order.marketplace.as_ref().map(|m| m.1.clone()))
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "INSERT INTO order_parcels (order_ref, shipment_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(order_ref)
    .bind(shipment_id)
    .execute(pool)
    .await?;
    Ok(order_ref)
}

/// Gives every shipment without an order the order `order-{tracking_code}` of `email` (shipments a test inserted
/// by hand in bulk).
pub async fn add_orders_by_code(pool: &PgPool, email: &str) -> anyhow::Result<()> {
    let ids: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, tracking_code FROM shipments s \
         WHERE NOT EXISTS (SELECT 1 FROM order_parcels op WHERE op.shipment_id = s.id) ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for (id, code) in ids {
        add_order(pool, id, &Order::new(&format!("order-{code}"), email)).await?;
    }
    Ok(())
}

pub fn s10(prefix: &str, n: u32) -> String {
    let digits = format!("{:08}", n % 100_000_000);
    let check = tracking_domain::code::s10_check_digit(digits.as_bytes()).unwrap();
    format!("{prefix}{digits}{check}BR")
}

/// The Correios simulator and marketplace receiver settings a fetcher and a marketplace publisher need.
pub fn correios_env(sim: &tracking_sim::correios::CorreiosSim) -> Vec<(&'static str, String)> {
    vec![
        ("CORREIOS_BASE_URL", sim.base_url()),
        ("CORREIOS_USER", "sim-user".into()),
        ("CORREIOS_ACCESS_CODE", "sim-code".into()),
        ("CORREIOS_TIMEOUT_MS", "5000".into()),
        ("CARRIER_RETRY_BASE_MS", "200".into()),
    ]
}

/// Writes a marketplaces file naming one webhook marketplace and returns its path.
pub fn marketplaces_file(
    env: &TestEnv,
    name: &str,
    url: &str,
    secret: &str,
) -> anyhow::Result<PathBuf> {
    let path = env.log_dir().join("marketplaces.toml");
    std::fs::write(
        &path,
        format!(
            "[[marketplace]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{secret}\"\n"
        ),
    )?;
    Ok(path)
}
