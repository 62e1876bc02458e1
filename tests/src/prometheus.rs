//! A real Prometheus (Debian's `prometheus`) of a test's own: a free port, its own directory under
//! `target/test-logs/`, short scrape and evaluation intervals, the project's alert rules with every `for:`
//! shortened, and static scrape targets. Stopped (SIGKILL) and its data removed on drop; its log stays.

use anyhow::{Context, bail};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `deploy/prometheus/alerts.yml`.
pub fn alert_rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml")
}

/// The project's alert rules with every `for:` set to `to` (say `2s`), nothing else changed: what the end-to-end
/// tests and the demo load, so that an alert fires in seconds rather than minutes.
pub fn rules_with_for(to: &str) -> anyhow::Result<String> {
    let rules = std::fs::read_to_string(alert_rules_path())?;
    let for_line = regex::Regex::new(r"(?m)^(\s*)for: \S+$")?;
    let shortened = for_line.replace_all(&rules, format!("${{1}}for: {to}").as_str());
    if shortened == rules && !rules.contains(&format!("for: {to}")) {
        bail!("alerts.yml has no `for:` line to shorten");
    }
    Ok(shortened.into_owned())
}

/// A scrape job: its name (the alert rules expect the workers' names) and targets (`host:port`).
pub struct Job {
    pub name: String,
    pub targets: Vec<SocketAddr>,
    /// `/metrics` unless set.
    pub metrics_path: Option<String>,
}

impl Job {
    pub fn new(name: &str, targets: &[SocketAddr]) -> Self {
        Job {
            name: name.into(),
            targets: targets.to_vec(),
            metrics_path: None,
        }
    }
}

pub struct Prometheus {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second, evaluating `rules` every second, and waits until it is ready.
    pub async fn start(log_dir: &Path, jobs: &[Job], rules: &str) -> anyhow::Result<Prometheus> {
        let bin = which("prometheus").context(
            "prometheus is missing: `make setup` installs Debian's prometheus package (/usr/bin/prometheus)",
        )?;
        let addr = crate::free_addr();
        let dir = log_dir.join(format!("prometheus-{}", addr.port()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("alerts.yml"), rules)?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - alerts.yml\nscrape_configs:\n",
        );
        for job in jobs {
            let targets: Vec<String> = job.targets.iter().map(|t| format!("\"{t}\"")).collect();
            config.push_str(&format!(
                "  - job_name: \"{}\"\n    metrics_path: \"{}\"\n    static_configs:\n      - targets: [{}]\n",
                job.name,
                job.metrics_path.as_deref().unwrap_or("/metrics"),
                targets.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting prometheus")?;
        let mut me = Prometheus {
            addr,
            dir,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!("prometheus exited with {status}; log:\n{}", me.log_text());
            }
            if let Ok(r) = reqwest::get(me.url("/-/ready")).await
                && r.status().is_success()
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus was not ready within 60 s; log:\n{}",
                    me.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The active alerts (pending and firing), from Prometheus' own `GET /api/v1/alerts`.
    pub async fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        let body: Value = reqwest::get(self.url("/api/v1/alerts"))
            .await?
            .json()
            .await?;
        Ok(body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The active alerts named `name` whose labels include `labels`.
    pub async fn alerts_named(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .alerts()
            .await?
            .into_iter()
            .filter(|a| {
                a["labels"]["alertname"] == name
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            })
            .collect())
    }

    /// An instant query's result vector (`GET /api/v1/query`).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let url = reqwest::Url::parse_with_params(&self.url("/api/v1/query"), [("query", promql)])?;
        let body: Value = reqwest::get(url).await?.json().await?;
        if body["status"] != "success" {
            bail!("query {promql:?} failed: {body}");
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until the alert `name` (with `labels`) is `firing`, and returns it.
    pub async fn wait_firing(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        within: Duration,
    ) -> anyhow::Result<Value> {
        crate::eventually(
            within,
            &format!("alert {name} {labels:?} firing"),
            || async {
                Ok(self
                    .alerts_named(name, labels)
                    .await?
                    .into_iter()
                    .find(|a| a["state"] == "firing"))
            },
        )
        .await
        .with_context(|| format!("active alerts: {:?}", self.alerts_now()))
    }

    fn alerts_now(&self) -> String {
        // A blocking read for the error message only.
        let url = self.url("/api/v1/alerts");
        std::thread::spawn(move || {
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "3", &url])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        })
        .join()
        .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
