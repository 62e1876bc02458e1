//! Certificates a test makes for itself with the `openssl` command line tool: a CA, and certificates it signs for
//! a server (with the host names and addresses it answers on) or a client.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate authority of a test's own: `{name}.pem` (the CA certificate) and `{name}.key` in `dir`.
pub struct TestCa {
    pub dir: PathBuf,
    pub name: String,
    /// The CA certificate, to give as `AMQP_CA_FILE` or `DATABASE_CA_FILE`.
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate and its private key (PEM, the key in PKCS#8 as `openssl` writes it).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (Debian's openssl package)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl TestCa {
    /// A new CA named `name` (its certificate's common name too), valid for two days.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        std::fs::create_dir_all(dir)?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &path_str(&key),
            "-out",
            &path_str(&cert),
        ])?;
        Ok(TestCa {
            dir: dir.to_owned(),
            name: name.to_owned(),
            cert,
            key,
        })
    }

    /// A certificate for a server answering on `names` (`DNS:localhost`, `IP:127.0.0.1`, ...).
    pub fn server(&self, file_stem: &str, names: &[&str]) -> anyhow::Result<Issued> {
        self.issue(
            file_stem,
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
                names.join(",")
            ),
        )
    }

    /// A certificate for a client (`ssl_options.verify = verify_peer` on the broker).
    pub fn client(&self, file_stem: &str) -> anyhow::Result<Issued> {
        self.issue(file_stem, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, file_stem: &str, extensions: &str) -> anyhow::Result<Issued> {
        let cert = self.dir.join(format!("{file_stem}.pem"));
        let key = self.dir.join(format!("{file_stem}.key"));
        let csr = self.dir.join(format!("{file_stem}.csr"));
        let ext = self.dir.join(format!("{file_stem}.ext"));
        std::fs::write(&ext, extensions)?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={file_stem}"),
            "-keyout",
            &path_str(&key),
            "-out",
            &path_str(&csr),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path_str(&csr),
            "-CA",
            &path_str(&self.cert),
            "-CAkey",
            &path_str(&self.key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path_str(&ext),
            "-out",
            &path_str(&cert),
        ])?;
        Ok(Issued { cert, key })
    }
}
