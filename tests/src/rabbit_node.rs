//! A RabbitMQ node of a test's own, on free ports, beside the shared one: started and removed by
//! `scripts/chaos.sh mq-up` / `down`, the same code `make chaos` starts its node with (run as the `rabbitmq` user
//! for its Erlang cookie, its own node name, ports, config, data and logs). Stopped and its files removed on drop,
//! also when the test fails; its logs are kept in the test's directory.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct RabbitNode {
    /// The node's `DIR` for `scripts/chaos.sh` (its `state`, `ports` and, after drop, `logs/`).
    dir: PathBuf,
    /// `amqps://guest:guest@127.0.0.1:{port}/%2f` (or `amqp://` without TLS).
    pub amqp_url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/chaos.sh")
}

impl RabbitNode {
    /// A node with a plain AMQP listener (`amqp://`), its files in a new directory under `parent`.
    pub fn start(parent: &Path) -> anyhow::Result<RabbitNode> {
        Self::up(parent, None)
    }

    /// A node whose only listener is TLS, with the server certificate and CA in `tls_dir` (`ca.pem`,
    /// `server.pem`, `server.key`); with `verify_peer`, it requires a client certificate the CA signed. Its files
    /// go in a new directory under `parent`, whose random name also names the node.
    pub fn start_tls(
        parent: &Path,
        tls_dir: &Path,
        verify_peer: bool,
    ) -> anyhow::Result<RabbitNode> {
        Self::up(parent, Some((tls_dir, verify_peer)))
    }

    fn up(parent: &Path, tls: Option<(&Path, bool)>) -> anyhow::Result<RabbitNode> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = &parent.join(format!("mq{id}"));
        std::fs::create_dir_all(dir)?;
        // Removed on drop even if the start fails half way.
        let mut node = RabbitNode {
            dir: dir.to_owned(),
            amqp_url: String::new(),
        };
        let mut up = Command::new("bash");
        up.arg(script()).arg("mq-up").arg(dir);
        if let Some((tls_dir, verify_peer)) = tls {
            up.env("MQ_TLS_DIR", tls_dir)
                .env("MQ_VERIFY_PEER", if verify_peer { "1" } else { "0" });
        }
        let out = up.output().context("running scripts/chaos.sh mq-up")?;
        if !out.status.success() {
            bail!(
                "the RabbitMQ node did not start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let state = std::fs::read_to_string(dir.join("state"))?;
        node.amqp_url = state
            .lines()
            .find_map(|l| l.strip_prefix("AMQP_URL="))
            .context("scripts/chaos.sh mq-up wrote no AMQP_URL")?
            .to_owned();
        Ok(node)
    }

    /// The node's port (from its URL).
    pub fn port(&self) -> Option<u16> {
        self.amqp_url
            .rsplit_once(':')?
            .1
            .split('/')
            .next()?
            .parse()
            .ok()
    }

    /// Raises (`true`) or clears a memory alarm on this node (`set_vm_memory_high_watermark` 0, then 0.4): while
    /// it is raised the node blocks every connection that publishes.
    pub fn memory_alarm(&self, raised: bool) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg(script())
            .arg("ctl")
            .arg(&self.dir)
            .arg(if raised {
                "mq-alarm-on"
            } else {
                "mq-alarm-off"
            })
            .output()?;
        if !out.status.success() {
            bail!(
                "setting the node's memory watermark failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The node's client connections as it reports them: `ssl`, `peer_cert_subject` (the client certificate) and
    /// `client_properties` (which hold the connection's name).
    pub fn connections(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = Command::new("bash")
            .arg(script())
            .arg("ctl")
            .arg(&self.dir)
            .arg("mq-connections")
            .output()?;
        if !out.status.success() {
            bail!(
                "listing the node's connections failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "rabbitmqctl list_connections printed {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}
