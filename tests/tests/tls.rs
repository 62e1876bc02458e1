//! TLS wherever a connection leaves the process: the pipeline over `amqps://` (a RabbitMQ node of the test's own
//! with a TLS listener only and a certificate the test's CA signed) and over PostgreSQL with `sslmode=require`
//! (this machine's PostgreSQL has `ssl = on` with Debian's snakeoil certificate); CA files that do not fit are
//! refused with an error naming the setting to check, without the URL's password, while the worker keeps
//! retrying; a CA file that cannot be read stops every binary with exit code 2.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tracking_runtime::tls::{PemFile, PemKind};
use tracking_store::DbSettings;
use tracking_tests::certs::TestCa;
use tracking_tests::pg_cluster::PgCluster;
use tracking_tests::rabbit_node::RabbitNode;
use tracking_tests::{EnvOptions, TestEnv, Worker, eventually, journey, target_dir};

/// Debian's self-signed certificate, which this machine's PostgreSQL serves (CN and DNS name `localhost`).
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

const WORKERS: [&str; 5] = [
    "normalizer",
    "fetcher",
    "scheduler",
    "email-publisher",
    "marketplace-publisher",
];

fn test_dir(name: &str) -> PathBuf {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let dir = target_dir()
        .join("test-logs")
        .join(format!("tls-{name}-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA (`ca.pem`), a server certificate it signed for 127.0.0.1 and localhost (`server.pem`, `server.key`) in
/// `dir`, as `scripts/chaos.sh mq-up` takes them.
fn server_tls(dir: &Path) -> anyhow::Result<TestCa> {
    let ca = TestCa::new(dir, "ca")?;
    ca.server("server", &["DNS:localhost", "IP:127.0.0.1"])?;
    Ok(ca)
}

/// `url` with `password` as its password (the user kept).
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (creds, host) = rest.rsplit_once('@').unwrap();
    let user = creds.split(':').next().unwrap();
    format!("{scheme}://{user}:{password}@{host}")
}

/// `url` with another query.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split('?').next().unwrap();
    format!("{base}?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_amqps_with_a_private_ca_and_over_postgresql_tls()
-> anyhow::Result<()> {
    let dir = test_dir("pipeline");
    let tls = dir.join("tls");
    let ca = server_tls(&tls)?;
    // The node also asks for a client certificate (AMQP_CLIENT_CERT_FILE / AMQP_CLIENT_KEY_FILE).
    let client = ca.client("client")?;
    let node = RabbitNode::start_tls(&dir.join("node"), &tls, true)?;
    assert!(node.amqp_url.starts_with("amqps://"), "{}", node.amqp_url);
    let env = TestEnv::with(EnvOptions {
        database_query: "?sslmode=require".into(),
        amqp_url: Some(node.amqp_url.clone()),
        amqp_ca_file: Some(ca.cert.clone()),
        amqp_client_identity: Some((client.cert.clone(), client.key.clone())),
        ..EnvOptions::default()
    })
    .await?;

    let workers = journey::posted_to_delivered(&env).await?;

    // PostgreSQL: every connection to this test's database is encrypted, each worker's among them (the pool
    // names its connections after the program).
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
         WHERE a.datname = current_database()",
    )
    .fetch_all(&env.pool)
    .await?;
    for worker in WORKERS {
        assert!(
            rows.iter().any(|(name, _)| name == worker),
            "no connection of {worker}: {rows:?}"
        );
    }
    assert!(rows.iter().all(|(_, ssl)| *ssl), "{rows:?}");

    // RabbitMQ: the node has no plain listener, and says that each worker's connections use TLS and present the
    // client certificate. Connections are named `{worker}-publish` and `{queue}-consume`.
    let connections = node.connections()?;
    for prefix in [
        "normalizer",
        "tracking.requests-consume",
        "scheduler-publish",
        "email.order-status-consume",
        "marketplace.order-status-consume",
    ] {
        assert!(
            connections
                .iter()
                .any(|c| c["client_properties"].to_string().contains(prefix)),
            "no connection named {prefix}...: {connections:?}"
        );
    }
    for c in &connections {
        assert_eq!(c["ssl"], true, "{c}");
        assert!(
            c["peer_cert_subject"]
                .as_str()
                .is_some_and(|s| s.contains("CN=client")),
            "{c}"
        );
    }
    journey::stop_cleanly(workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_no_trusted_ca_signed_is_refused_naming_amqp_ca_file()
-> anyhow::Result<()> {
    let dir = test_dir("wrong-amqp-ca");
    let tls = dir.join("tls");
    server_tls(&tls)?;
    let other = TestCa::new(&dir.join("other"), "other-ca")?;
    let node = RabbitNode::start_tls(&dir.join("node"), &tls, false)?;
    let url = with_password(&node.amqp_url, "amqp-secret-417");
    let env = TestEnv::with(EnvOptions {
        amqp_url: Some(url.clone()),
        amqp_ca_file: Some(other.cert.clone()),
        ..EnvOptions::default()
    })
    .await?;
    env.migrate().await?;
    // A consuming worker (marketplace-publisher) and the scheduler, which only publishes.
    for name in ["marketplace-publisher", "scheduler"] {
        let mut worker = Worker::spawn(&env, name, &[])?;
        let (code, body) = eventually(
            Duration::from_secs(30),
            "/health to name AMQP_CA_FILE",
            || async {
                Ok(worker.health().await.ok().filter(|(_, b)| {
                    b["errors"]["rabbitmq"]
                        .as_str()
                        .is_some_and(|e| e.contains("AMQP_CA_FILE"))
                }))
            },
        )
        .await?;
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["components"]["rabbitmq"], "down", "{body}");
        let error = body["errors"]["rabbitmq"].as_str().unwrap();
        assert!(error.contains("TLS handshake"), "{error}");
        assert!(error.contains("certificate verify failed"), "{error}");
        // Treated as unavailable: the worker keeps trying (a second attempt is logged) and does not exit.
        eventually(Duration::from_secs(30), "a second attempt", || async {
            Ok((worker.log_text().matches("AMQP_CA_FILE").count() >= 2).then_some(()))
        })
        .await?;
        assert!(worker.is_running(), "{}", worker.log_text());
        let log = worker.log_text();
        assert!(!log.contains("amqp-secret-417"), "{log}");
        assert!(!body.to_string().contains("amqp-secret-417"), "{body}");
    }
    // trackctl connects the same way and says the same.
    let out = Command::new(tracking_tests::bin_dir().join("trackctl"))
        .args(["dead", "list", "tracking.requests"])
        .env("AMQP_URL", &url)
        .env("AMQP_CA_FILE", &other.cert)
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("AMQP_CA_FILE"), "{text}");
    assert!(!text.contains("amqp-secret-417"), "{text}");
    Ok(())
}

/// Connects through `tracking_store::pool` with `url` and `DATABASE_CA_FILE` = `ca`: whether the connection is
/// encrypted (`pg_stat_ssl`), or the error as an operator reads it.
async fn connect(url: String, ca: Option<&str>) -> anyhow::Result<Result<bool, String>> {
    let mut settings = DbSettings::new(&url);
    settings.acquire_timeout = Duration::from_secs(5);
    settings.ca_file = ca
        .map(|p| PemFile::read("DATABASE_CA_FILE", p, PemKind::Certificates))
        .transpose()?;
    let pool = tracking_store::pool(&settings)?;
    let ssl: Result<bool, tracking_store::StoreError> =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .map_err(Into::into);
    pool.close().await;
    Ok(ssl.map_err(|e| e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_follows_sslmode_and_a_refused_certificate_names_database_ca_file()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    // This machine's PostgreSQL serves Debian's snakeoil certificate: self-signed, issued for `localhost` only,
    // and (on Debian) also among the system's roots, which native-tls trusts besides DATABASE_CA_FILE. So what
    // refuses it here is verify-full under a name it was not issued for: 127.0.0.1.
    let url = with_password(&env.database_url, "pg-secret-829");
    assert!(
        url.contains("@127.0.0.1:"),
        "the test database's URL names 127.0.0.1: {url}"
    );
    let full = with_query(&url, "sslmode=verify-full");
    let mut scheduler = Worker::spawn(
        &env,
        "scheduler",
        &[
            ("DATABASE_URL", full.clone()),
            ("DATABASE_CA_FILE", SNAKEOIL.to_owned()),
        ],
    )?;
    let (code, body) = eventually(
        Duration::from_secs(30),
        "/health to name DATABASE_CA_FILE",
        || async {
            Ok(scheduler.health().await.ok().filter(|(_, b)| {
                b["errors"]["postgres"]
                    .as_str()
                    .is_some_and(|e| e.contains("DATABASE_CA_FILE"))
            }))
        },
    )
    .await?;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["components"]["postgres"], "down", "{body}");
    let error = body["errors"]["postgres"].as_str().unwrap();
    assert!(error.contains("TLS handshake"), "{error}");
    // Unavailable, not fatal: the scheduler keeps running and trying.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(scheduler.is_running(), "{}", scheduler.log_text());
    let log = scheduler.log_text();
    assert!(log.contains("DATABASE_CA_FILE"), "{log}");
    assert!(!log.contains("pg-secret-829"), "{log}");
    assert!(!body.to_string().contains("pg-secret-829"), "{body}");

    // Through the library: what each sslmode does here.
    let refused = connect(full.clone(), Some(SNAKEOIL)).await?.unwrap_err();
    assert!(
        refused.contains("DATABASE_CA_FILE") && !refused.contains("pg-secret-829"),
        "{refused}"
    );
    let by_name = full.replace("@127.0.0.1:", "@localhost:");
    assert_eq!(connect(by_name, Some(SNAKEOIL)).await?, Ok(true));
    let ca = with_query(&url, "sslmode=verify-ca");
    assert_eq!(connect(ca.clone(), Some(SNAKEOIL)).await?, Ok(true));
    // DATABASE_CA_FILE replaces the URL's sslrootcert (here a file that does not exist).
    let missing_root = format!("{ca}&sslrootcert=/nonexistent/root.pem");
    assert!(connect(missing_root.clone(), None).await?.is_err());
    assert_eq!(connect(missing_root, Some(SNAKEOIL)).await?, Ok(true));
    assert_eq!(
        connect(with_query(&url, "sslmode=require"), None).await?,
        Ok(true)
    );
    assert_eq!(
        connect(with_query(&url, "sslmode=disable"), None).await?,
        Ok(false)
    );
    // prefer (the default) takes TLS when the server offers it.
    assert_eq!(connect(env.database_url.clone(), None).await?, Ok(true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_certificate_the_ca_file_did_not_sign_is_refused_naming_database_ca_file()
-> anyhow::Result<()> {
    // A cluster of the test's own, serving a certificate the test's CA signed (in no system store).
    let dir = test_dir("pg-ca");
    let tls = dir.join("tls");
    let ca = server_tls(&tls)?;
    let other = TestCa::new(&dir.join("other"), "other-ca")?;
    let cluster = PgCluster::start_tls(&dir, &tls)?;
    let url = with_query(
        &with_password(&cluster.url, "pg-secret-311"),
        "sslmode=verify-full",
    );
    let other_ca = other.cert.display().to_string();
    let refused = connect(url.clone(), Some(&other_ca)).await?.unwrap_err();
    assert!(refused.contains("DATABASE_CA_FILE"), "{refused}");
    assert!(refused.contains("certificate verify failed"), "{refused}");
    assert!(!refused.contains("pg-secret-311"), "{refused}");
    // Without a CA file only the system's roots are trusted: refused too.
    assert!(connect(url.clone(), None).await?.is_err());
    let right_ca = ca.cert.display().to_string();
    assert_eq!(connect(url.clone(), Some(&right_ca)).await?, Ok(true));
    let verify_ca = with_query(&url, "sslmode=verify-ca");
    assert!(connect(verify_ca.clone(), Some(&other_ca)).await?.is_err());
    assert_eq!(connect(verify_ca, Some(&right_ca)).await?, Ok(true));
    drop(cluster);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_cannot_be_read_stops_every_binary_with_exit_code_2() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dir = test_dir("unreadable");
    let not_pem = dir.join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello")?;
    let missing = dir.join("missing.pem").display().to_string();
    let common = [
        ("SMTP_URL", "smtp://127.0.0.1:1".to_owned()),
        ("EMAIL_FROM", "a@b.co".to_owned()),
        ("API_TOKEN", "token-for-tests-0123456789".to_owned()),
        ("HTTP_ADDR", tracking_tests::free_addr().to_string()),
    ];
    for setting in ["AMQP_CA_FILE", "DATABASE_CA_FILE"] {
        for path in [missing.clone(), not_pem.display().to_string()] {
            for name in WORKERS.iter().chain(&["tracking-api"]) {
                let mut extra = common.to_vec();
                extra.push((setting, path.clone()));
                let mut worker = Worker::spawn(&env, name, &extra)?;
                let status = worker.wait_exit(Duration::from_secs(20)).await?;
                let log = worker.log_text();
                assert_eq!(status.code(), Some(2), "{name} {setting}={path}: {log}");
                assert!(log.contains(setting), "{name}: {log}");
            }
            let args: &[&str] = if setting == "AMQP_CA_FILE" {
                &["dead", "list", "tracking.requests"]
            } else {
                &["shipment", "show", "DL746686536BR"]
            };
            let out = Command::new(tracking_tests::bin_dir().join("trackctl"))
                .args(args)
                .envs(env.worker_env())
                .env(setting, &path)
                .output()?;
            let text = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "trackctl {setting}={path}: {text}"
            );
            assert!(text.contains(setting), "{text}");
        }
    }
    Ok(())
}
