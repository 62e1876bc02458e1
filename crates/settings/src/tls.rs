//! PEM files named by settings (`AMQP_CA_FILE`, `DATABASE_CA_FILE`, `SMTP_CA_FILE`, a client certificate and
//! key): read once at start, so that a file that cannot be read, or holds no PEM block, stops the binary with exit
//! code 2 naming the setting, instead of failing every connection later.

use crate::SettingsError;

/// The content of a PEM file a setting names.
#[derive(Clone)]
pub struct PemFile {
    /// The setting that named it, for error messages.
    pub setting: &'static str,
    pub path: String,
    pub pem: Vec<u8>,
    /// How many certificates it holds (0 for a key file).
    pub certificates: usize,
}

impl std::fmt::Debug for PemFile {
    // A key file's content is a secret: only the setting and the path are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemFile")
            .field("setting", &self.setting)
            .field("path", &self.path)
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

/// What a PEM file must hold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    Certificates,
    PrivateKey,
}

/// The file the setting `name` names, or `None` when the setting is unset. An unreadable file, or one without
/// the PEM block `kind` asks for, is a [`SettingsError`] naming the setting.
pub fn pem_file(name: &'static str, kind: PemKind) -> Result<Option<PemFile>, SettingsError> {
    match crate::var(name) {
        None => Ok(None),
        Some(path) => PemFile::read(name, path.trim(), kind).map(Some),
    }
}

impl PemFile {
    /// Reads `path` for the setting `setting`; errors name the setting and the path, never the content.
    pub fn read(setting: &'static str, path: &str, kind: PemKind) -> Result<Self, SettingsError> {
        let pem = std::fs::read(path)
            .map_err(|e| SettingsError::new(setting, format!("cannot read {path}: {e}")))?;
        let text = String::from_utf8_lossy(&pem);
        let certificates = count_certificates(&text);
        let ok = match kind {
            PemKind::Certificates => certificates > 0,
            PemKind::PrivateKey => text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----"),
        };
        if !ok {
            let what = match kind {
                PemKind::Certificates => "a PEM certificate (-----BEGIN CERTIFICATE-----)",
                PemKind::PrivateKey => "a PEM private key (-----BEGIN PRIVATE KEY-----)",
            };
            return Err(SettingsError::new(
                setting,
                format!("{path} holds no {what}"),
            ));
        }
        Ok(PemFile {
            setting,
            path: path.to_owned(),
            pem,
            certificates,
        })
    }
}

/// How many `-----BEGIN CERTIFICATE-----` blocks a PEM text holds.
pub fn count_certificates(pem: &str) -> usize {
    pem.matches(BEGIN).count()
}

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Each certificate block of a PEM text, from its `BEGIN` line to its `END` line, for TLS stacks that read one
/// certificate at a time. Text between blocks is left out; a block without its `END` line is returned as it is,
/// for the stack to refuse.
pub fn certificate_blocks(pem: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let len = block.find(END).map_or(block.len(), |end| end + END.len());
        blocks.push(&block[..len]);
        rest = &block[len..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_counted() {
        let one = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(count_certificates(one), 1);
        assert_eq!(count_certificates(&one.repeat(3)), 3);
        assert_eq!(count_certificates("not a certificate"), 0);
    }

    #[test]
    fn certificate_blocks_are_cut_at_their_end_lines() {
        let one = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        let two = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----";
        let text = format!("# a comment\n{one}\nbetween\n{two}\n");
        assert_eq!(certificate_blocks(&text), [one, two]);
        let cut = "-----BEGIN CERTIFICATE-----\nMII";
        assert_eq!(certificate_blocks(&format!("{one}\n{cut}")), [one, cut]);
        assert!(certificate_blocks("no PEM here").is_empty());
    }
}
