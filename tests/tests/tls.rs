//! TLS wherever a connection leaves the process: the pipeline over `amqps://` (a RabbitMQ node of the test's own
//! with a TLS listener only and a certificate the test's CA signed) and over PostgreSQL with `sslmode=require`
//! (this machine's PostgreSQL has `ssl = on` with Debian's snakeoil certificate); CA files that do not fit are
//! refused with an error naming the setting to check, without the URL's password, while the worker keeps
//! retrying; a CA file that cannot be read stops every binary with exit code 2. Emails go over `smtps://` and
//! STARTTLS with a password to an SMTP server whose certificate the test's CA signed (`SMTP_CA_FILE`), and are
//! held back, never parked and never sent in clear, when the certificate, the STARTTLS offer or the password is
//! wrong.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tracking_domain::EmailAddress;
use tracking_email::{Mailer, MailerConfigError, MailerSettings, RenderedEmail, SendError};
use tracking_runtime::tls::{PemFile, PemKind};
use tracking_sim::smtp::{Options, SmtpServer, TlsMode};
use tracking_store::DbSettings;
use tracking_tests::certs::{Issued, TestCa};
use tracking_tests::pg_cluster::PgCluster;
use tracking_tests::rabbit_node::RabbitNode;
use tracking_tests::{
    EnvOptions, TestEnv, Worker, eventually, journey, s10, status_change, target_dir,
};

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
        (
            "API_TOKEN",
            "token-for-tests-0123456789-abcdefghi".to_owned(),
        ),
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

/// A CA in `dir` and the SMTP server's certificate it signed for localhost.
fn smtp_tls(dir: &Path) -> anyhow::Result<(TestCa, Issued)> {
    let ca = TestCa::new(dir, "ca")?;
    let cert = ca.server("smtp", &["DNS:localhost"])?;
    Ok((ca, cert))
}

const SMTP_USER: &str = "loja";
const SMTP_PASSWORD: &str = "smtp-secret-4471";

/// An SMTP server on 127.0.0.1 speaking TLS as `mode` says with `cert` (for localhost), asking for
/// [`SMTP_USER`] and [`SMTP_PASSWORD`]; `None`: plain SMTP, still asking for them.
async fn smtp_server(mode: Option<TlsMode>, cert: &Issued) -> anyhow::Result<SmtpServer> {
    smtp_server_injecting(mode, cert, b"").await
}

/// [`smtp_server`], writing `injected` in clear right behind STARTTLS's go-ahead.
async fn smtp_server_injecting(
    mode: Option<TlsMode>,
    cert: &Issued,
    injected: &[u8],
) -> anyhow::Result<SmtpServer> {
    let tls = match mode {
        Some(mode) => Some((mode, std::fs::read(&cert.cert)?, std::fs::read(&cert.key)?)),
        None => None,
    };
    SmtpServer::start_with(
        "127.0.0.1:0".parse()?,
        Options {
            tls,
            login: Some((SMTP_USER.into(), SMTP_PASSWORD.into())),
            injected_after_starttls: injected.to_vec(),
            ..Options::default()
        },
    )
    .await
}

/// The URL of `server` on `localhost` (the name its certificate has) with the given scheme, password and query.
fn smtp_url(scheme: &str, password: &str, server: &SmtpServer, query: &str) -> String {
    format!(
        "{scheme}://{SMTP_USER}:{password}@localhost:{}{query}",
        server.addr().port()
    )
}

fn mailer(url: &str, ca: Option<&Path>) -> Result<Mailer, MailerConfigError> {
    mailer_with(url, ca, Duration::from_secs(300))
}

fn mailer_with(
    url: &str,
    ca: Option<&Path>,
    auth_retry: Duration,
) -> Result<Mailer, MailerConfigError> {
    Mailer::new(&MailerSettings {
        smtp_url: url.to_owned().into(),
        from: "Loja <noreply@loja.example>".into(),
        timeout: Duration::from_secs(10),
        pool_max_size: 2,
        ca: ca.map(|p| {
            PemFile::read(
                "SMTP_CA_FILE",
                &p.display().to_string(),
                PemKind::Certificates,
            )
            .unwrap()
        }),
        auth_retry,
    })
}

async fn send(mailer: &Mailer) -> Result<(), SendError> {
    let email = RenderedEmail {
        subject: "Pedido enviado".into(),
        text: "Seu pedido foi enviado.".into(),
        html: "<p>Seu pedido foi enviado.</p>".into(),
    };
    let to = EmailAddress::parse("ana@example.com").unwrap();
    let id = mailer.message_id(uuid::Uuid::new_v4());
    mailer.send(&to, Some("Ana"), &email, &id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_go_over_smtps_and_starttls_with_a_private_ca_and_a_password() -> anyhow::Result<()>
{
    let dir = test_dir("smtp");
    let (ca, cert) = smtp_tls(&dir)?;
    let env = TestEnv::ready().await?;
    let amqp = env.amqp().await?;
    for (n, (mode, scheme, query)) in [
        (TlsMode::Wrapper, "smtps", ""),
        (TlsMode::StartTls, "smtp", "?tls=required"),
    ]
    .into_iter()
    .enumerate()
    {
        let server = smtp_server(Some(mode), &cert).await?;
        let settings = [
            ("SMTP_URL", smtp_url(scheme, SMTP_PASSWORD, &server, query)),
            ("SMTP_CA_FILE", ca.cert.display().to_string()),
            ("EMAIL_FROM", "Loja <noreply@loja.example>".to_owned()),
        ];
        let worker = Worker::started(&env, "email-publisher", &settings).await?;
        let change = status_change(
            &format!("TLS-{n}"),
            &s10("TS", n as u32),
            "delivered",
            "out_for_delivery",
            "ana@example.com",
            None,
        );
        env.record_change(&change).await?;
        amqp.publish("email.order-status", &serde_json::to_vec(&change)?)
            .await?;
        eventually(Duration::from_secs(20), "the email received", || async {
            Ok((server.received_count() == 1).then_some(()))
        })
        .await?;
        let got = &server.received()[0];
        assert!(got.tls, "{mode:?}: the email came in clear");
        assert_eq!(got.user.as_deref(), Some(SMTP_USER), "{mode:?}");
        assert_eq!(got.to, ["ana@example.com"]);
        assert!(
            !worker.log_text().contains(SMTP_PASSWORD),
            "the password reached the log"
        );
        drop(worker);
    }
    Ok(())
}

/// One way a send is refused before the email leaves, and what its error must name.
struct Refusal<'a> {
    case: &'a str,
    server: &'a SmtpServer,
    url: String,
    ca: Option<&'a Path>,
    reasons: &'a [&'a str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_certificate_a_missing_starttls_or_a_wrong_password_hold_emails_back_without_leaking()
-> anyhow::Result<()> {
    let dir = test_dir("smtp-refused");
    let (ca, cert) = smtp_tls(&dir)?;
    let elsewhere = ca.server("elsewhere", &["DNS:mail.elsewhere.example"])?;
    let other_ca = TestCa::new(&dir.join("other"), "other")?;

    // Each way in turn: a failure the next try may not have (transient), with the reason to check, and
    // without the password; nothing received.
    let smtps = smtp_server(Some(TlsMode::Wrapper), &cert).await?;
    let starttls = smtp_server(Some(TlsMode::StartTls), &cert).await?;
    let plain = smtp_server(None, &cert).await?;
    let wrong_name = smtp_server(Some(TlsMode::Wrapper), &elsewhere).await?;
    let wrong_name_starttls = smtp_server(Some(TlsMode::StartTls), &elsewhere).await?;
    let injecting = smtp_server_injecting(
        Some(TlsMode::StartTls),
        &cert,
        b"250-sim.smtp\r\n250 AUTH PLAIN\r\n235 2.7.0 forged\r\n",
    )
    .await?;
    let cases = [
        Refusal {
            case: "a CA the server's certificate is not from",
            server: &smtps,
            url: smtp_url("smtps", SMTP_PASSWORD, &smtps, ""),
            ca: Some(&other_ca.cert),
            reasons: &["SMTP_CA_FILE", "certificate verify failed"],
        },
        Refusal {
            case: "the system's roots only",
            server: &starttls,
            url: smtp_url("smtp", SMTP_PASSWORD, &starttls, "?tls=required"),
            ca: None,
            reasons: &["SMTP_CA_FILE", "certificate verify failed"],
        },
        Refusal {
            case: "a certificate for another host",
            server: &wrong_name,
            url: smtp_url("smtps", SMTP_PASSWORD, &wrong_name, ""),
            ca: Some(&ca.cert),
            reasons: &["SMTP_CA_FILE", "hostname mismatch"],
        },
        Refusal {
            case: "a certificate for another host, over STARTTLS",
            server: &wrong_name_starttls,
            url: smtp_url("smtp", SMTP_PASSWORD, &wrong_name_starttls, "?tls=required"),
            ca: Some(&ca.cert),
            reasons: &["SMTP_CA_FILE", "hostname mismatch"],
        },
        Refusal {
            case: "replies injected in clear behind STARTTLS's go-ahead",
            server: &injecting,
            url: smtp_url("smtp", SMTP_PASSWORD, &injecting, "?tls=required"),
            ca: Some(&ca.cert),
            reasons: &["TLS with the SMTP server failed"],
        },
        Refusal {
            case: "no credentials for a server that asks for them",
            server: &plain,
            url: format!("smtp://localhost:{}", plain.addr().port()),
            ca: None,
            reasons: &["530", "asks for a user and password"],
        },
        Refusal {
            case: "STARTTLS required, not offered",
            server: &plain,
            url: smtp_url("smtp", SMTP_PASSWORD, &plain, "?tls=required"),
            ca: Some(&ca.cert),
            reasons: &["requires STARTTLS", "nothing was sent"],
        },
        Refusal {
            case: "a wrong password over smtps",
            server: &smtps,
            url: smtp_url("smtps", "not-the-password-1234", &smtps, ""),
            ca: Some(&ca.cert),
            reasons: &["535", "credentials of SMTP_URL"],
        },
        Refusal {
            case: "a wrong password over STARTTLS",
            server: &starttls,
            url: smtp_url("smtp", "not-the-password-1234", &starttls, "?tls=required"),
            ca: Some(&ca.cert),
            reasons: &["535", "credentials"],
        },
    ];
    for Refusal {
        case,
        server,
        url,
        ca: ca_file,
        reasons,
    } in cases
    {
        let auths_before = server.auth_commands();
        let err = send(&mailer(&url, ca_file)?).await.unwrap_err();
        let shown = err.to_string();
        assert!(err.is_transient(), "{case}: {shown}");
        for reason in reasons {
            assert!(shown.contains(reason), "{case}: {reason} not in {shown}");
        }
        assert!(
            !shown.contains(SMTP_PASSWORD) && !shown.contains("not-the-password-1234"),
            "{case}: {shown}"
        );
        assert_eq!(server.received_count(), 0, "{case}");
        if !case.contains("wrong password") {
            assert_eq!(
                server.auth_commands(),
                auths_before,
                "{case}: the password was sent"
            );
        }
    }
    // The same servers take the email once everything is right.
    for (server, url) in [
        (&smtps, smtp_url("smtps", SMTP_PASSWORD, &smtps, "")),
        (
            &starttls,
            smtp_url("smtp", SMTP_PASSWORD, &starttls, "?tls=required"),
        ),
    ] {
        send(&mailer(&url, Some(&ca.cert))?).await?;
        assert_eq!(server.received_count(), 1);
    }

    // Every certificate of SMTP_CA_FILE is trusted, not only its first.
    let bundle = dir.join("bundle.pem");
    std::fs::write(
        &bundle,
        [std::fs::read(&other_ca.cert)?, std::fs::read(&ca.cert)?].concat(),
    )?;
    send(&mailer(
        &smtp_url("smtps", SMTP_PASSWORD, &smtps, ""),
        Some(&bundle),
    )?)
    .await?;
    assert_eq!(smtps.received_count(), 2);
    // tls=opportunistic: TLS when offered; in clear, password included, when not (as documented).
    let url = smtp_url("smtp", SMTP_PASSWORD, &starttls, "?tls=opportunistic");
    send(&mailer(&url, Some(&ca.cert))?).await?;
    assert!(starttls.received()[1].tls);
    let url = smtp_url("smtp", SMTP_PASSWORD, &plain, "?tls=opportunistic");
    send(&mailer(&url, Some(&ca.cert))?).await?;
    let got = &plain.received()[0];
    assert_eq!((got.tls, got.user.as_deref()), (false, Some(SMTP_USER)));

    // Settings refused at start: a CA file with a plain URL, a certificate block that cannot be read.
    let plain_with_ca = mailer(&plain.url(), Some(&ca.cert)).unwrap_err();
    assert!(
        matches!(&plain_with_ca, MailerConfigError::Ca(m) if m.contains("no TLS")),
        "{plain_with_ca}"
    );
    let broken = dir.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )?;
    let unreadable =
        mailer(&smtp_url("smtps", SMTP_PASSWORD, &smtps, ""), Some(&broken)).unwrap_err();
    assert!(
        matches!(&unreadable, MailerConfigError::Ca(m) if m.contains("certificate number 1")),
        "{unreadable}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_ca_file_that_cannot_be_used_stops_the_email_publisher_with_exit_code_2()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dir = test_dir("smtp-ca");
    let ca = server_tls(&dir)?;
    let not_pem = dir.join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello")?;
    for (url, path) in [
        ("smtps://127.0.0.1:1", dir.join("missing.pem")),
        ("smtps://127.0.0.1:1", not_pem),
        ("smtp://127.0.0.1:1", ca.cert.clone()),
    ] {
        let settings = [
            ("SMTP_URL", url.to_owned()),
            ("EMAIL_FROM", "a@b.co".to_owned()),
            ("SMTP_CA_FILE", path.display().to_string()),
        ];
        let mut worker = Worker::spawn(&env, "email-publisher", &settings)?;
        let status = worker.wait_exit(Duration::from_secs(20)).await?;
        let log = worker.log_text();
        assert_eq!(status.code(), Some(2), "{url} {}: {log}", path.display());
        assert!(log.contains("SMTP_CA_FILE"), "{log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_not_tried_again_before_smtp_auth_retry_secs() -> anyhow::Result<()>
{
    let dir = test_dir("smtp-auth-retry");
    let (ca, cert) = smtp_tls(&dir)?;
    let server = smtp_server(Some(TlsMode::Wrapper), &cert).await?;
    let url = smtp_url("smtps", "not-the-password-1234", &server, "");
    let mailer = mailer_with(&url, Some(&ca.cert), Duration::from_secs(2))?;
    let first = send(&mailer).await.unwrap_err().to_string();
    assert!(first.contains("535"), "{first}");
    assert_eq!(server.auth_commands(), 1);
    // Within the pause: refused at once, without a login.
    for _ in 0..5 {
        let again = send(&mailer).await.unwrap_err();
        assert!(again.is_transient());
        assert!(
            again.to_string().contains("SMTP_AUTH_RETRY_SECS"),
            "{again}"
        );
    }
    assert_eq!(
        server.auth_commands(),
        1,
        "the credentials were tried again"
    );
    // After it: one try more.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = send(&mailer).await.unwrap_err().to_string();
    assert!(later.contains("535"), "{later}");
    assert_eq!(server.auth_commands(), 2);
    assert_eq!(server.received_count(), 0);
    Ok(())
}
