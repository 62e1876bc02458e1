//! A RabbitMQ cluster of a test's own: N nodes of the machine's RabbitMQ on free ports, each with its own node
//! name, data, logs and configuration, joined with `rabbitmqctl join_cluster` (`scripts/chaos.sh cluster-up`, the
//! code `make chaos CLUSTER=3` starts its cluster with). Never the shared node on 5672. On drop every node is
//! killed by its pid (also when the test failed half way) and its files removed; its logs are kept in the
//! test's directory.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct RabbitCluster {
    /// The cluster's `DIR` for `scripts/chaos.sh` (`state`, and `node1`..`nodeN`, each a node's `DIR`).
    dir: PathBuf,
    /// Each node's `amqp://guest:guest@127.0.0.1:{port}/%2f`, in order.
    pub urls: Vec<String>,
    /// Each node's name (`name@localhost`), in order.
    pub names: Vec<String>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/chaos.sh")
}

fn run(args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .context("running scripts/chaos.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/chaos.sh {:?} failed: {}{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn state_value(dir: &Path, key: &str) -> anyhow::Result<String> {
    let state = std::fs::read_to_string(dir.join("state"))
        .with_context(|| format!("reading {}/state", dir.display()))?;
    state
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(str::to_owned)
        .with_context(|| format!("no {key} in {}/state", dir.display()))
}

impl RabbitCluster {
    /// Starts `n` nodes and joins them into one cluster; its files go in a new directory under `parent`.
    pub fn start(parent: &Path, n: usize) -> anyhow::Result<RabbitCluster> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let dir = parent.join(format!("mq{id}"));
        std::fs::create_dir_all(&dir)?;
        // Killed and removed on drop even if the start fails half way.
        let mut cluster = RabbitCluster {
            dir: dir.clone(),
            urls: Vec::new(),
            names: Vec::new(),
        };
        run(&[
            "cluster-up".as_ref(),
            dir.as_os_str(),
            n.to_string().as_ref(),
        ])?;
        for k in 1..=n {
            let node = cluster.node_dir(k - 1);
            cluster.urls.push(state_value(&node, "AMQP_URL")?);
            cluster.names.push(state_value(&node, "MQNODE")?);
        }
        Ok(cluster)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}", i + 1))
    }

    /// `AMQP_URL` for the whole cluster: every node's URL, comma-separated, in order.
    pub fn amqp_url(&self) -> String {
        self.urls.join(",")
    }

    fn ctl(&self, i: usize, action: &str) -> anyhow::Result<String> {
        let node = self.node_dir(i);
        run(&["ctl".as_ref(), node.as_os_str(), action.as_ref()])
    }

    /// Stops node `i` (`rabbitmqctl stop`, then until its process is gone).
    pub fn stop(&self, i: usize) -> anyhow::Result<()> {
        self.ctl(i, "mq-stop").map(drop)
    }

    /// Starts node `i` again and waits until it runs and listens; it rejoins the cluster on its own.
    pub fn start_node(&self, i: usize) -> anyhow::Result<()> {
        self.ctl(i, "mq-start").map(drop)
    }

    /// Waits (at most `within`) until stopping node `i` would leave every quorum queue with a majority (the
    /// node stopped before it caught up again).
    pub fn wait_not_quorum_critical(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            match self.ctl(i, "mq-quorum-critical") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("node {} stayed quorum-critical: {e}", self.names[i])
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Every client connection of the cluster, as `(node name, connection name)`, asked of node `i`.
    pub fn connections(&self, i: usize) -> anyhow::Result<Vec<(String, String)>> {
        let out = self.ctl(i, "mq-cluster-connections")?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out)
            .with_context(|| format!("rabbitmqctl list_connections printed {out}"))?;
        Ok(list
            .iter()
            .map(|c| {
                // The node by its AMQP port; the connection's name is among its client properties.
                let port = c["port"].as_u64().unwrap_or_default().to_string();
                let node = self
                    .urls
                    .iter()
                    .position(|u| port_of(u) == Some(port.as_str()))
                    .map_or_else(|| format!("port {port}"), |k| self.names[k].clone());
                (node, connection_name(&c["client_properties"]))
            })
            .collect())
    }
}

/// The port of `amqp://user:password@host:port/vhost`.
fn port_of(url: &str) -> Option<&str> {
    url.rsplit_once(':')?.1.split('/').next()
}

/// `connection_name` out of `rabbitmqctl --formatter json`'s client properties: a list of `[key, type, value]`
/// (or an object, depending on the version).
fn connection_name(props: &serde_json::Value) -> String {
    if let Some(name) = props.get("connection_name").and_then(|v| v.as_str()) {
        return name.to_owned();
    }
    props
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|entry| {
            let e = entry.as_array()?;
            (e.first()?.as_str()? == "connection_name")
                .then(|| e.last()?.as_str().map(str::to_owned))?
        })
        .unwrap_or_default()
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("mq-kill")
            .arg(&self.dir)
            .output();
    }
}
