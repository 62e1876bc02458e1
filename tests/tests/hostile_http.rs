//! Hostile far ends against the real binaries (fetcher, marketplace publisher), with RabbitMQ and PostgreSQL:
//! - a Correios token answer in shapes nobody expected: the token reaches neither the fetcher's log nor any text
//!   column of the database, and even an answer with a NUL byte is kept;
//! - an endless (chunked, generated on the fly) tracking answer: refused after `CARRIER_MAX_BODY_BYTES` with little
//!   memory, the carrier reported with a clear reason, other carriers and later calls flowing;
//! - redirects: a carrier's to another host, a marketplace's anywhere, are not followed; the target sees nothing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tracking_sim::correios::{CorreiosSim, Fault, Journey, Script, SimConfig, TokenQuirk};
use tracking_sim::jadlog::{JadlogSim, delivered_journey};
use tracking_sim::marketplace::Receiver;
use tracking_sim::witness::Witness;
use tracking_tests::{
    TestEnv, Worker, correios_env, eventually, marketplaces_file, request, s10, status_change,
};

const EVENTS_QUEUE: &str = "normalizer.carrier-events";

fn with(
    mut base: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    base.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    base
}

async fn publish_request(
    env: &TestEnv,
    order: &str,
    code: &str,
    carrier: &str,
) -> anyhow::Result<()> {
    let mut req = request(order, code, "ana@example.com", "pt-BR", None);
    req["carrier"] = carrier.into();
    env.amqp()
        .await?
        .publish("tracking.requests", &serde_json::to_vec(&req)?)
        .await
}

/// Every row of every text-like column (text, varchar, json, jsonb) of the test's database that contains `needle`,
/// as `table.column`.
async fn columns_containing(env: &TestEnv, needle: &str) -> anyhow::Result<Vec<String>> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'json', 'jsonb')",
    )
    .fetch_all(&env.pool)
    .await?;
    let mut found = Vec::new();
    for (table, column) in columns {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{table}\" WHERE strpos(\"{column}\"::text, $1) > 0"
        ))
        .bind(needle)
        .fetch_one(&env.pool)
        .await?;
        if n > 0 {
            found.push(format!("{table}.{column}"));
        }
    }
    Ok(found)
}

/// The peak resident memory of a process, in bytes (`VmHWM` of `/proc/PID/status`).
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correios_token_in_any_shape_reaches_neither_the_log_nor_the_database()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let code = s10("TK", 1);
    sim.script(&code, Script::Journey(Journey::delivered()));
    let fetcher = Worker::started(
        &env,
        "fetcher",
        &with(
            correios_env(&sim),
            &[
                ("CARRIER_CALL_RETRIES", "0"),
                ("CARRIER_RETRY_MAX_MS", "400"),
                ("MAX_ATTEMPTS", "1000"),
            ],
        ),
    )
    .await?;
    publish_request(&env, "TK-1", &code, "correios").await?;
    // Each shape, and what the kept row's error says about it.
    let quirks = [
        (TokenQuirk::ExpiraEmNumber, "invalid type: integer"),
        (TokenQuirk::ExpiraEmText, "bad expiraEm"),
        (TokenQuirk::TokenKey("accessToken".into()), "missing field"),
        (TokenQuirk::PlainText, "expected ident"),
        (TokenQuirk::NulByte, "control character"),
    ];
    for (quirk, says) in quirks {
        sim.token_quirk(Some(quirk.clone()));
        eventually(
            Duration::from_secs(20),
            &format!("the answer to {quirk:?} kept"),
            || async {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM carrier_responses WHERE strpos(error, $1) > 0",
                )
                .bind(says)
                .fetch_one(&env.pool)
                .await?;
                Ok((n > 0).then_some(()))
            },
        )
        .await?;
    }
    sim.token_quirk(None);
    eventually(Duration::from_secs(20), "the events published", || async {
        Ok((env.amqp().await?.count(EVENTS_QUEUE).await? == 1).then_some(()))
    })
    .await?;
    let (_, health) = fetcher.health().await?;
    let tokens = sim.issued_tokens();
    assert!(tokens.len() >= 6, "{} tokens", tokens.len());
    // Let the last health row land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = fetcher.log_text();
    assert!(log.contains("could not be read"), "the answers were logged");
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        for secret in [token.as_str(), signature] {
            assert!(!log.contains(secret), "the fetcher's log shows a token");
            assert!(
                !health.to_string().contains(secret),
                "/health shows a token"
            );
            let found = columns_containing(&env, secret).await?;
            assert!(found.is_empty(), "a token is stored in {found:?}");
        }
    }
    let redacted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carrier_responses WHERE strpos(body, '[redacted]') > 0",
    )
    .fetch_one(&env.pool)
    .await?;
    assert!(redacted >= 5, "kept, redacted: {redacted}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_carrier_answer_is_refused_with_little_memory_while_other_carriers_flow()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let jadlog = JadlogSim::start("jadlog-token", "127.0.0.1:0".parse()?).await?;
    let (first, second) = (s10("HG", 1), s10("HG", 2));
    sim.script(&first, Script::Journey(Journey::delivered().all_at_once()));
    sim.script(&second, Script::Journey(Journey::delivered().all_at_once()));
    let jadlog_code = "10084500001234";
    jadlog.script(jadlog_code, delivered_journey());
    let mut settings = with(correios_env(&sim), &[("CARRIER_RETRY_MAX_MS", "400")]);
    settings.push(("JADLOG_BASE_URL", jadlog.base_url()));
    settings.push(("JADLOG_TOKEN", "jadlog-token".into()));
    let fetcher = Worker::started(&env, "fetcher", &settings).await?;
    let amqp = env.amqp().await?;
    publish_request(&env, "HG-1", &first, "correios").await?;
    eventually(Duration::from_secs(20), "the first answer", || async {
        Ok((amqp.count(EVENTS_QUEUE).await? == 1).then_some(()))
    })
    .await?;
    let before = peak_rss(fetcher.pid())?;

    // Three 4 GiB answers: the call and its two in-process retries (CARRIER_CALL_RETRIES default 2).
    const HUGE: u64 = 4 * 1024 * 1024 * 1024;
    sim.fail_next(vec![Fault::Huge(HUGE); 3]);
    publish_request(&env, "HG-2", &second, "correios").await?;
    // Jadlog keeps flowing meanwhile, and the refused request is answered once Correios behaves.
    publish_request(&env, "J-1", jadlog_code, "jadlog").await?;
    eventually(Duration::from_secs(30), "three answers", || async {
        Ok((amqp.count(EVENTS_QUEUE).await? == 3).then_some(()))
    })
    .await?;
    // The refusal made Correios degraded, with the reason, and it stays so for the health window.
    let log = fetcher.log_text();
    assert!(
        log.lines().any(|l| l.contains("degraded")
            && l.contains("larger than 8388608 bytes")
            && l.contains("CARRIER_MAX_BODY_BYTES")),
        "{log}"
    );
    let (_, health) = fetcher.health().await?;
    assert_eq!(
        health["carriers"]["correios"]["state"], "degraded",
        "{health}"
    );
    assert_eq!(health["carriers"]["jadlog"]["state"], "ok", "{health}");
    let peak = peak_rss(fetcher.pid())?;
    println!(
        "fetcher peak RSS: {} MiB before, {} MiB after three {} MiB answers",
        before >> 20,
        peak >> 20,
        HUGE >> 20
    );
    assert!(
        peak < 96 * 1024 * 1024 && peak - before < 48 * 1024 * 1024,
        "peak RSS {} MiB (before {} MiB)",
        peak >> 20,
        before >> 20
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM carrier_responses")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(kept, 0, "a refused answer is not kept");
    let metrics = fetcher.metrics().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("carrier_errors_total{")
                && l.contains("correios")
                && l.contains("http_error")),
        "counted as an HTTP error: {metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_redirect_to_another_host_breaks_the_carrier_and_the_host_sees_nothing()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let witness = Witness::start("127.0.0.1:0".parse()?).await?;
    let code = s10("RD", 1);
    sim.script(&code, Script::Journey(Journey::delivered().all_at_once()));
    let elsewhere = format!(
        "{}/srorastro/v1/objetos?codigosObjetos={code}",
        witness.base_url()
    );
    sim.fail_next(vec![Fault::Redirect(307, elsewhere.clone())]);
    let fetcher = Worker::started(
        &env,
        "fetcher",
        &with(correios_env(&sim), &[("CARRIER_CALL_RETRIES", "0")]),
    )
    .await?;
    publish_request(&env, "RD-1", &code, "correios").await?;
    // The redirect was one answer: the request is answered on its retry.
    eventually(Duration::from_secs(20), "the answer", || async {
        Ok((env.amqp().await?.count(EVENTS_QUEUE).await? == 1).then_some(()))
    })
    .await?;
    // It turned the carrier broken (until the retry's good answer) with the Location in the reason.
    let log = fetcher.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("BROKEN") && l.contains(&elsewhere) && l.contains("307")),
        "{log}"
    );
    assert!(witness.seen().is_empty(), "{:?}", witness.seen());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketplace_redirect_parks_the_change_with_the_location_and_the_signed_call_goes_nowhere()
-> anyhow::Result<()> {
    const SECRET: &str = "webhook-secret-for-tests-0123";
    let env = TestEnv::ready().await?;
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let witness = Witness::start("127.0.0.1:0".parse()?).await?;
    let elsewhere = format!("{}/hooks/tracking", witness.base_url());
    receiver.redirect_next(307, &elsewhere);
    let file = marketplaces_file(&env, "acme", &receiver.url(), SECRET)?;
    let _publisher = Worker::started(
        &env,
        "marketplace-publisher",
        &[
            ("MARKETPLACES_FILE", file.display().to_string()),
            ("MARKETPLACE_RETRY_BASE_MS", "200".to_owned()),
        ],
    )
    .await?;
    let amqp = env.amqp().await?;
    let change = status_change(
        "MR-1",
        &s10("DL", 7),
        "delivered",
        "out_for_delivery",
        "ana@example.com",
        Some(("acme", "A-7")),
    );
    env.record_change(&change).await?;
    amqp.publish("marketplace.order-status", &serde_json::to_vec(&change)?)
        .await?;
    eventually(Duration::from_secs(20), "the change parked", || async {
        Ok((amqp.count("marketplace.order-status.dead").await? == 1).then_some(()))
    })
    .await?;
    let parked = amqp.drain("marketplace.order-status.dead").await?;
    let reason = parked[0].header("x-park-reason").unwrap();
    assert!(
        reason.contains("307") && reason.contains(&elsewhere),
        "{reason}"
    );
    assert_eq!(receiver.calls().len(), 1, "one call, not retried");
    assert!(witness.seen().is_empty(), "{:?}", witness.seen());
    Ok(())
}

/// Starts a worker that must refuse its settings: its exit status and log (a worker that starts anyway fails the
/// test after a while instead of hanging it).
async fn refused(env: &TestEnv, name: &str, extra: &[(&str, String)]) -> anyhow::Result<String> {
    let mut w = Worker::spawn(env, name, extra)?;
    let status = w.wait_exit(Duration::from_secs(20)).await?;
    let log = w.log_text();
    assert!(!status.success(), "{name} accepted its settings: {log}");
    Ok(log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_are_settings_refused_when_unusable() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    for bad in ["12", "lots"] {
        let settings = [
            ("CORREIOS_USER", "sim-user".to_owned()),
            ("CORREIOS_ACCESS_CODE", "sim-code".to_owned()),
            ("CARRIER_MAX_BODY_BYTES", bad.to_owned()),
        ];
        let log = refused(&env, "fetcher", &settings).await?;
        assert!(log.contains("CARRIER_MAX_BODY_BYTES"), "{log}");
    }
    let log = refused(
        &env,
        "marketplace-publisher",
        &[("MARKETPLACE_MAX_BODY_BYTES", "lots".to_owned())],
    )
    .await?;
    assert!(log.contains("MARKETPLACE_MAX_BODY_BYTES"), "{log}");
    Ok(())
}
