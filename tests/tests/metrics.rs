//! Every binary's `/metrics` by Prometheus' conventions, checked by Prometheus' own linter: after a parcel has
//! travelled through the real workers (and tracking-api has answered), `promtool check metrics` reports nothing on
//! any page, every metric family has HELP text, and durations are histograms with buckets.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_sim::marketplace::Receiver;
use tracking_tests::{
    Maildev, TestEnv, Worker, correios_env, eventually, free_addr, marketplaces_file, request,
};

const SECRET: &str = "webhook-secret-for-tests-0123";
const TOKEN: &str = "metrics-test-token-0123456789-abcdef";

async fn start(env: &TestEnv, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    let mut w = Worker::spawn(env, name, extra)?;
    w.wait_healthy(Duration::from_secs(60)).await?;
    Ok(w)
}

/// What `promtool check metrics` says about one page: its exit status and everything it printed.
fn promtool_check(page: &str) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "promtool (Debian package prometheus, installed by scripts/setup.sh): {e}"
            )
        })?;
    child.stdin.take().unwrap().write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), said))
}

#[test]
fn promtool_finds_what_the_conventions_forbid() -> anyhow::Result<()> {
    // The check this file relies on must be able to fail: a counter without HELP and without `_total`.
    let (ok, said) = promtool_check("# TYPE requests counter\nrequests 1\n")?;
    assert!(!ok || !said.trim().is_empty(), "promtool said nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_page_passes_promtool_after_a_pipeline_run() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let code = "DL746686536BR";
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(code, Script::Journey(Journey::delivered()));
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let maildev = Maildev::start().await?;
    let mp_file = marketplaces_file(&env, "acme", &receiver.url(), SECRET)?
        .display()
        .to_string();
    let fast = [
        ("POLL_INTERVAL_SECS", "1".to_owned()),
        ("POLL_INTERVAL_NEAR_DELIVERY_SECS", "1".to_owned()),
        ("FINAL_POLL_AFTER_SECS", "1".to_owned()),
        ("SCHEDULER_TICK_MS", "200".to_owned()),
    ];

    let mut workers = vec![start(&env, "normalizer", &fast).await?];
    workers.push(start(&env, "fetcher", &correios_env(&sim)).await?);
    workers.push(start(&env, "scheduler", &fast).await?);
    workers.push(
        start(
            &env,
            "email-publisher",
            &[
                ("SMTP_URL", maildev.smtp_url()),
                ("EMAIL_FROM", "Loja <rastreio@loja.example>".to_owned()),
                ("MARKETPLACES_FILE", mp_file.clone()),
            ],
        )
        .await?,
    );
    workers.push(
        start(
            &env,
            "marketplace-publisher",
            &[("MARKETPLACES_FILE", mp_file.clone())],
        )
        .await?,
    );
    let api_addr = free_addr();
    workers.push(
        start(
            &env,
            "tracking-api",
            &[
                ("HTTP_ADDR", api_addr.to_string()),
                ("API_TOKEN", TOKEN.to_owned()),
                ("MARKETPLACES_FILE", mp_file),
            ],
        )
        .await?,
    );

    // The request goes in through tracking-api, so that it records its request metrics too.
    let req = request(
        "1385310000001-01",
        code,
        "ana@example.com",
        "pt-BR",
        Some("acme"),
    );
    let answer = reqwest::Client::new()
        .post(format!("http://{api_addr}/v1/tracking-requests"))
        .bearer_auth(TOKEN)
        .json(&req)
        .send()
        .await?;
    assert!(answer.status().is_success(), "{}", answer.text().await?);
    eventually(
        Duration::from_secs(90),
        "the delivered email and the marketplace calls",
        || async {
            let emails = maildev.emails().await?.len();
            Ok((emails >= 3 && receiver.calls().len() >= 4).then_some(()))
        },
    )
    .await?;

    for w in &workers {
        let page = w.metrics().await?;
        let name = &w.name;
        let (ok, said) = promtool_check(&page)?;
        assert!(
            ok && said.trim().is_empty(),
            "{name}: promtool check metrics says:\n{said}\n--- page ---\n{page}"
        );
        // Every family has HELP text (promtool only warns about it; this makes it a failure).
        for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
            let family = line.split_whitespace().nth(2).unwrap();
            assert!(
                page.contains(&format!("# HELP {family} ")),
                "{name}: {family} has no HELP"
            );
        }
        assert!(!page.contains("quantile="), "{name}: a summary is left");
    }
    // The durations are real histograms: their buckets add up over replicas.
    let normalizer = workers[0].metrics().await?;
    assert!(
        normalizer.contains("# TYPE message_handling_seconds histogram"),
        "{normalizer}"
    );
    assert!(normalizer.contains("message_handling_seconds_bucket{"));
    let fetcher = workers[1].metrics().await?;
    assert!(
        fetcher.contains("carrier_call_seconds_bucket{"),
        "{fetcher}"
    );
    Ok(())
}
