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

// ---------------------------------------------------------------------------------------------------------------
// Label values written once (`tracking_app::catalog::LABEL_VALUES`), and the docs checked against them.

/// The values a docs cell or a dashboard description lists: its backquoted spans when it has any, else its
/// comma-separated items (a last one after "or"), each without a parenthesis after it.
fn listed_values(text: &str) -> std::collections::BTreeSet<String> {
    let quoted: Vec<String> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    if !quoted.is_empty() {
        return quoted.into_iter().collect();
    }
    let mut depth = 0;
    let mut flat = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    flat.replace(" or ", ",")
        .split(',')
        .map(|v| v.trim().trim_end_matches('.').trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

#[test]
fn the_value_lister_reads_both_formats() {
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        listed_values("`a`, `b_c` (note, with a comma), `d`"),
        want(&["a", "b_c", "d"])
    );
    assert_eq!(
        listed_values("a, b (retried, later), c or d."),
        want(&["a", "b", "c", "d"])
    );
    assert_eq!(listed_values("a, b (held: later)."), want(&["a", "b"]));
}

#[test]
fn operations_md_and_the_dashboard_list_the_catalogued_label_values() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let operations = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let dashboard =
        std::fs::read_to_string(root.join("deploy/grafana/dashboards/tracking.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut descriptions = Vec::new();
    let mut todo = vec![&dashboard];
    while let Some(v) = todo.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(d)) = m.get("description") {
                    descriptions.push(d.clone());
                }
                todo.extend(m.values());
            }
            serde_json::Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    let mut sources = String::new();
    for dir in ["crates/workers/src", "crates/api/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    sources.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
    }
    let mut found = Vec::new();
    for lv in tracking_app::catalog::LABEL_VALUES {
        let want: std::collections::BTreeSet<String> =
            lv.values.iter().map(|v| v.to_string()).collect();
        let head = format!("`{}{{", lv.metric);
        let row = operations
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&head) && l.contains(lv.label));
        match row.and_then(|r| r.split('|').nth(3)) {
            Some(cell) if listed_values(cell) == want => {}
            Some(cell) => found.push(format!(
                "docs/operations.md lists {:?} for {}{{{}}}, the catalog {want:?}",
                listed_values(cell),
                lv.metric,
                lv.label
            )),
            None => found.push(format!(
                "docs/operations.md has no row for `{}{{…}}`",
                lv.metric
            )),
        }
        let prefix = format!("{}{{", lv.metric);
        for d in descriptions.iter().filter(|d| d.starts_with(&prefix)) {
            let listed = listed_values(d.split_once(": ").map_or("", |(_, rest)| rest));
            if listed != want {
                found.push(format!(
                    "the Grafana dashboard lists {listed:?} for {}, the catalog {want:?}",
                    lv.metric
                ));
            }
        }
        for v in lv.values {
            if !sources.contains(&format!("\"{v}\"")) {
                found.push(format!(
                    "{}{{{}=\"{v}\"}} is catalogued but no source under crates/workers or crates/api writes \"{v}\"",
                    lv.metric, lv.label
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
