//! The pipeline through PgBouncer in transaction mode, run here as the test's own process on a free port with its
//! own configuration (never the system service): three copies of every worker and of tracking-api, their
//! `DATABASE_URL` pointing at PgBouncer with sqlx's statement cache off (`statement-cache-capacity=0`), should
//! carry parcels from posted to delivered with each email and marketplace call once, while PostgreSQL sees no more
//! server connections than PgBouncer's pool.
//!
//! Ignored: with Debian's PgBouncer 1.18 it fails at start (`prepared statement "sqlx_s_1" already exists`: sqlx
//! 0.8 names its statements even with the cache off, docs/operations.md "PgBouncer"). With PgBouncer 1.21 or later
//! it sets `max_prepared_statements`, which is meant to fix that: `cargo test -p tracking-tests --test pgbouncer --
//! --ignored`.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_sim::marketplace::Receiver;
use tracking_tests::journey::fast;
use tracking_tests::{
    Maildev, TestEnv, Worker, admin_database_url, correios_env, eventually, free_addr,
    marketplaces_file, request, s10,
};

/// Server connections PgBouncer opens per database and user at most (`default_pool_size`).
const POOL_SIZE: i64 = 10;
const PARCELS: u32 = 6;
const COPIES: usize = 3;
const SECRET: &str = "webhook-secret-for-tests-0123";
const API_TOKEN: &str = "pgbouncer-test-api-token-0123456789abcdef";

/// A PgBouncer of the test's own, stopped (SIGTERM, then SIGKILL) on drop.
struct PgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The settings PgBouncer needs for this pipeline (docs/operations.md, "PgBouncer"): transaction pooling, and
/// sqlx's `extra_float_digits` startup parameter ignored (PgBouncer refuses parameters it does not track).
/// The parts of a `postgres://user:password@host:port/database` URL PgBouncer's `[databases]` line needs.
struct Server {
    user: String,
    password: String,
    host: String,
    port: String,
}

fn server(url: &str) -> Server {
    let rest = url.split_once("://").unwrap().1;
    let (creds, rest) = rest.rsplit_once('@').unwrap();
    let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
    let hostport = rest.split('/').next().unwrap();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    Server {
        user: user.into(),
        password: password.into(),
        host: host.into(),
        port: port.into(),
    }
}

fn config(port: u16, dir: &std::path::Path, server: &Server) -> String {
    format!(
        "[databases]\n\
         * = host={host} port={sport} user={user} password={password}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/users.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {POOL_SIZE}\n\
         max_client_conn = 1000\n\
         ignore_startup_parameters = extra_float_digits\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n\
         {prepared}",
        prepared = if tracks_prepared_statements() {
            "max_prepared_statements = 200\n"
        } else {
            ""
        },
        host = server.host,
        sport = server.port,
        user = server.user,
        password = server.password,
        dir = dir.display(),
    )
}

/// Whether the installed PgBouncer is 1.21 or later, which can keep named prepared statements across server
/// connections (`max_prepared_statements`).
fn tracks_prepared_statements() -> bool {
    let Ok(out) = Command::new("pgbouncer").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse::<u32>().ok())
        .collect::<Vec<_>>();
    matches!(version.as_slice(), [major, minor, ..] if (*major, *minor) >= (1, 21))
}

impl PgBouncer {
    async fn start() -> anyhow::Result<PgBouncer> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or_else(|| anyhow::anyhow!("pgbouncer is missing: scripts/setup.sh installs it"))?;
        let server = server(&admin_database_url());
        let port = free_addr().port();
        let dir = std::env::temp_dir().join(format!("pgbouncer-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("users.txt"), format!("\"{}\" \"\"\n", server.user))?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(&ini, config(port, &dir, &server))?;
        // PgBouncer refuses to run as root: as root, it drops to the `postgres` user, who must own its files.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let mut cmd = Command::new(bin);
        if root {
            let owned = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()?;
            anyhow::ensure!(owned.success(), "chown postgres {}", dir.display());
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let bouncer = PgBouncer { child, port, dir };
        eventually(Duration::from_secs(10), "pgbouncer to listen", || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ()))
        })
        .await?;
        Ok(bouncer)
    }

    /// `database_url` (a database of the same server) through PgBouncer, with sqlx's statement cache off.
    fn url_for(&self, database_url: &str) -> anyhow::Result<String> {
        let (scheme, rest) = database_url.split_once("://").unwrap();
        let (creds, rest) = rest.rsplit_once('@').unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        let sep = if path.contains('?') { '&' } else { '?' };
        Ok(format!(
            "{scheme}://{creds}@127.0.0.1:{}{path}{sep}statement-cache-capacity=0",
            self.port
        ))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fails with PgBouncer 1.18 (sqlx names its statements): docs/operations.md, PgBouncer"]
async fn three_copies_of_every_worker_run_the_pipeline_through_pgbouncer() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    // Migrations take a session-level advisory lock: run them directly, as docs/operations.md says.
    env.migrate().await?;
    env.amqp()
        .await?
        .declare(&[Duration::from_millis(200), Duration::from_secs(1)])
        .await?;
    let bouncer = PgBouncer::start().await?;
    env.set_worker_env("DATABASE_URL", &bouncer.url_for(&env.database_url)?);

    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let codes: Vec<String> = (0..PARCELS).map(|n| s10("DL", 7_460_000 + n)).collect();
    for code in &codes {
        sim.script(code, Script::Journey(Journey::delivered()));
    }
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let maildev = Maildev::start().await?;
    let mp_file = marketplaces_file(&env, "acme", &receiver.url(), SECRET)?
        .display()
        .to_string();
    let email_env = [
        ("SMTP_URL", maildev.smtp_url()),
        ("EMAIL_FROM", "Loja <rastreio@loja.example>".to_owned()),
        ("MARKETPLACES_FILE", mp_file.clone()),
    ];

    // PostgreSQL's view: the server connections to this database, sampled while everything runs.
    let database = env.database_url.rsplit('/').next().unwrap().to_owned();
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (pool, most, database) = (env.pool.clone(), most.clone(), database.clone());
        tokio::spawn(async move {
            loop {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name <> current_setting('application_name')",
                )
                .bind(&database)
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
                most.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut workers = Vec::new();
    let mut api_addrs = Vec::new();
    for _ in 0..COPIES {
        workers.push(Worker::started(&env, "normalizer", &fast()).await?);
        workers.push(Worker::started(&env, "fetcher", &correios_env(&sim)).await?);
        workers.push(Worker::started(&env, "scheduler", &fast()).await?);
        workers.push(Worker::started(&env, "email-publisher", &email_env).await?);
        workers.push(
            Worker::started(
                &env,
                "marketplace-publisher",
                &[("MARKETPLACES_FILE", mp_file.clone())],
            )
            .await?,
        );
        let addr = free_addr();
        workers.push(
            Worker::started(
                &env,
                "tracking-api",
                &[
                    ("API_TOKEN", API_TOKEN.to_owned()),
                    ("HTTP_ADDR", addr.to_string()),
                    ("MARKETPLACES_FILE", mp_file.clone()),
                ],
            )
            .await?,
        );
        api_addrs.push(addr);
    }

    // The requests come in through the three APIs in turn.
    let http = reqwest::Client::new();
    for (n, code) in codes.iter().enumerate() {
        let req = request(
            &format!("PGB-{n}"),
            code,
            "ana@example.com",
            "en",
            Some("acme"),
        );
        let answer = http
            .post(format!(
                "http://{}/v1/tracking-requests",
                api_addrs[n % COPIES]
            ))
            .bearer_auth(API_TOKEN)
            .json(&req)
            .send()
            .await?;
        assert_eq!(answer.status(), 202, "{}", answer.text().await?);
    }

    let parcels = i64::from(PARCELS);
    eventually(
        Duration::from_secs(180),
        "every parcel delivered and finished, each change emailed and relayed",
        || async {
            let finished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM shipments WHERE status = 'delivered' AND finished_at IS NOT NULL",
            )
            .fetch_one(&env.pool)
            .await?;
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM status_changes WHERE published_at IS NULL",
            )
            .fetch_one(&env.pool)
            .await?;
            Ok((finished == parcels
                && unpublished == 0
                && receiver.call_count() >= 4 * PARCELS as usize
                && maildev.emails().await?.len() >= 3 * PARCELS as usize)
                .then_some(()))
        },
    )
    .await?;
    // Time for a duplicate to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sampler.abort();

    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM status_changes")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(
        changes,
        4 * parcels,
        "posted, in transit, out for delivery, delivered"
    );
    let calls = receiver.calls();
    let keys: HashSet<String> = calls
        .iter()
        .filter_map(|c| {
            c.headers
                .iter()
                .find(|(k, _)| k == "idempotency-key")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(
        calls.len(),
        4 * PARCELS as usize,
        "each change relayed once"
    );
    assert_eq!(keys.len(), calls.len());
    assert_eq!(
        maildev.emails().await?.len(),
        3 * PARCELS as usize,
        "each email once"
    );
    for addr in &api_addrs {
        let tracking = http
            .get(format!("http://{addr}/v1/orders/PGB-0/tracking"))
            .bearer_auth(API_TOKEN)
            .send()
            .await?;
        assert_eq!(tracking.status(), 200);
    }

    let most = most.load(Ordering::Relaxed);
    println!(
        "{} processes through PgBouncer; at most {most} server connections to PostgreSQL (pool {POOL_SIZE})",
        workers.len()
    );
    assert!((1..=POOL_SIZE).contains(&most), "{most} server connections");
    for w in &workers {
        let log = w.log_text();
        assert!(
            !log.contains("prepared statement") && !log.contains("unsupported startup parameter"),
            "{}: {log}",
            w.name
        );
    }
    let log = bouncer.log_text();
    assert!(!log.contains("ERROR"), "pgbouncer: {log}");
    tracking_tests::journey::stop_cleanly(workers)?;
    Ok(())
}
