//! A PostgreSQL cluster of a test's own, on a free port, serving a certificate the test made: started and removed
//! by `scripts/chaos.sh pg-up` / `down`, the same code `make chaos` starts its cluster with. Dropped (cluster and
//! files) on drop, also when the test fails.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:{port}/postgres` (trust authentication).
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/chaos.sh")
}

impl PgCluster {
    /// A cluster serving `server.pem` / `server.key` from `tls_dir`; its files go in a new directory under
    /// `parent`, whose random name also names the cluster.
    pub fn start_tls(parent: &Path, tls_dir: &Path) -> anyhow::Result<PgCluster> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = parent.join(format!("pg{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = PgCluster {
            dir: dir.clone(),
            url: String::new(),
        };
        let out = Command::new("bash")
            .arg(script())
            .arg("pg-up")
            .arg(&dir)
            .env("PG_TLS_DIR", tls_dir)
            .output()
            .context("running scripts/chaos.sh pg-up")?;
        if !out.status.success() {
            bail!(
                "the PostgreSQL cluster did not start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let state = std::fs::read_to_string(dir.join("state"))?;
        let url = state
            .lines()
            .find_map(|l| l.strip_prefix("DATABASE_URL="))
            .context("scripts/chaos.sh pg-up wrote no DATABASE_URL")?;
        cluster.url = format!("{}/postgres", url.rsplit_once('/').map_or(url, |(b, _)| b));
        Ok(cluster)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}
