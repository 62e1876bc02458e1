//! The alert rules (`deploy/prometheus/alerts.yml`), proven twice:
//!
//! - `promtool check rules` and `promtool test rules` on `deploy/prometheus/alerts.test.yml`, which must show every
//!   alert both firing and quiet (fails when promtool is missing: `make setup` installs it);
//! - a real Prometheus of the test's own (`tracking_tests::prometheus`) scraping the real worker binaries, with the
//!   real rules and every `for:` shortened to 2 s: Correios' answers turn unreadable and `CarrierBroken` goes to
//!   `firing` in Prometheus' own `/api/v1/alerts`; the scheduler stops and `SchedulerNotTicking` fires.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};
use tracking_tests::prometheus::{Job, Prometheus, rules_with_for};
use tracking_tests::{TestEnv, Worker, correios_env, eventually, s10};
use yaml_rust2::{Yaml, YamlLoader};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// Runs promtool in `deploy/prometheus/`; fails with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}): `make setup` installs Debian's prometheus package, which has it")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn load(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Every alert's name, from alerts.yml.
fn alert_names() -> Vec<String> {
    let rules = load(&rules_dir().join("alerts.yml"));
    let mut names = Vec::new();
    for group in rules["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            names.push(rule["alert"].as_str().unwrap().to_owned());
        }
    }
    names
}

#[test]
fn promtool_finds_the_rules_valid() {
    let out = promtool(&["check", "rules", "alerts.yml"]);
    let count = alert_names().len();
    assert!(count >= 14, "{count} alerts");
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "{out}"
    );
}

#[test]
fn promtool_unit_tests_pass_and_show_every_alert_firing_and_quiet() {
    let out = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");

    // Each alert has a case where it fires and one where it stays quiet (an empty exp_alerts).
    let tests = load(&rules_dir().join("alerts.test.yml"));
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for t in tests["tests"].as_vec().unwrap() {
        for case in t["alert_rule_test"].as_vec().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let fires = case["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty());
            let entry = seen.entry(name).or_default();
            if fires {
                entry.0 = true;
            } else {
                entry.1 = true;
            }
        }
    }
    for name in alert_names() {
        assert_eq!(
            seen.get(&name),
            Some(&(true, true)),
            "alerts.test.yml must show {name} firing and quiet"
        );
    }
}

#[test]
fn the_shortened_rules_change_only_the_waits() {
    let short = rules_with_for("2s").unwrap();
    let real = std::fs::read_to_string(rules_dir().join("alerts.yml")).unwrap();
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.trim_start().starts_with("for:"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(strip(&short), strip(&real));
    let fors = short
        .lines()
        .filter(|l| l.trim_start().starts_with("for:"))
        .count();
    assert_eq!(fors, alert_names().len(), "one `for:` per alert");
    assert!(
        short
            .lines()
            .filter(|l| l.trim_start().starts_with("for:"))
            .all(|l| l.trim() == "for: 2s")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// End to end: a real Prometheus scraping the real binaries.

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correios_answers_that_cannot_be_read_fire_carrier_broken_in_prometheus()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let (first, second) = (s10("PA", 1), s10("PA", 2));
    for code in [&first, &second] {
        sim.script(code, Script::Journey(Journey::delivered()));
    }
    let mut settings = correios_env(&sim);
    settings.push(("CARRIER_CALL_RETRIES", "0".into()));
    settings.push(("FETCH_LINGER_MS", "0".into()));
    let fetcher = Worker::started(&env, "fetcher", &settings).await?;
    let prometheus = Prometheus::start(
        &env.log_dir(),
        &[Job::new("fetcher", &[fetcher.metrics_addr])],
        &rules_with_for("2s")?,
    )
    .await?;
    let amqp = env.amqp().await?;

    // A healthy call: Prometheus sees Correios ok, and CarrierBroken stays quiet for a few evaluations.
    let request =
        |code: &str| tracking_tests::request("A-1", code, "ana@example.com", "pt-BR", None);
    amqp.publish("tracking.requests", &serde_json::to_vec(&request(&first))?)
        .await?;
    eventually(WAIT, "Prometheus sees Correios ok", || async {
        let ok = prometheus
            .query(r#"carrier_state{job="fetcher",carrier="correios",state="ok"} == 1"#)
            .await?;
        Ok((sim.polls(&first) >= 1 && !ok.is_empty()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        prometheus
            .alerts_named("CarrierBroken", &[])
            .await?
            .is_empty(),
        "CarrierBroken is active on a healthy carrier: {:?}",
        prometheus.alerts().await?
    );

    // Correios renames a field (the simulator's control API, as the demo's documented command does): the next
    // call cannot be read, and the alert goes to firing.
    let broken = reqwest::Client::new()
        .put(format!("{}/_sim/answers", sim.base_url()))
        .json(&serde_json::json!({ "rename_event_field": ["dtHrCriado", "dataHora"] }))
        .send()
        .await?;
    assert_eq!(broken.status().as_u16(), 204);
    let started = Instant::now();
    amqp.publish("tracking.requests", &serde_json::to_vec(&request(&second))?)
        .await?;
    let alert = prometheus
        .wait_firing("CarrierBroken", &[("carrier", "correios")], WAIT)
        .await?;
    println!(
        "unreadable answers to CarrierBroken firing: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(alert["labels"]["severity"], "critical");
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("correios") && summary.contains("trackctl carriers health"),
        "{summary}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_scheduler_fires_scheduler_not_ticking_in_prometheus() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let mut scheduler =
        Worker::started(&env, "scheduler", &[("SCHEDULER_TICK_MS", "200".into())]).await?;
    let prometheus = Prometheus::start(
        &env.log_dir(),
        &[Job::new("scheduler", &[scheduler.metrics_addr])],
        &rules_with_for("2s")?,
    )
    .await?;

    // While it ticks: its last tick is fresh in Prometheus, and the alert stays quiet.
    eventually(WAIT, "Prometheus sees the scheduler tick", || async {
        let fresh = prometheus
            .query("time() - scheduler_last_tick_timestamp_seconds < 10")
            .await?;
        Ok((!fresh.is_empty()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in ["SchedulerNotTicking", "WorkerDown", "WorkerUnhealthy"] {
        assert!(
            prometheus.alerts_named(name, &[]).await?.is_empty(),
            "{name} is active while the scheduler ticks: {:?}",
            prometheus.alerts().await?
        );
    }
    let healthy = prometheus
        .query(r#"min(health_component_up{job="scheduler"}) == 1"#)
        .await?;
    assert!(!healthy.is_empty(), "health_component_up is scraped");

    // It stops: no tick any more, and its target is down.
    let status = scheduler.terminate()?;
    assert!(status.success(), "{status}");
    let started = Instant::now();
    let alert = prometheus
        .wait_firing("SchedulerNotTicking", &[], WAIT)
        .await?;
    println!(
        "scheduler stopped to SchedulerNotTicking firing: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(alert["labels"]["severity"], "critical");
    prometheus
        .wait_firing("WorkerDown", &[("job", "scheduler")], WAIT)
        .await?;
    Ok(())
}
