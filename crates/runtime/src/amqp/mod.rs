//! RabbitMQ: the contract's topology, a confirming publisher, and the consume loop.
//!
//! Publishing and consuming use separate connections (a memory or disk alarm blocks publishing
//! connections only, and a worker that consumed and published on one connection could stall).
//!
//! `AMQP_URL` may list several nodes of one cluster ([`brokers`]): a connection goes to the first that answers,
//! and when it is lost the next one goes to the next node.

mod batch;
pub mod brokers;
mod consumer;
mod publisher;
pub mod topology;

pub use batch::{BatchHandler, BatchSettings, run_batch_consumer};
pub use brokers::Brokers;
pub use consumer::{Handler, Incoming, Outcome, run_consumer, tier_at_least, tier_at_most};
pub use publisher::{Outgoing, PublishError, Publisher, watch_publisher};

use crate::settings::{self, SettingsError};
use crate::tls::{PemFile, PemKind, pem_file};
use brokers::BrokerIndex;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `RETRY_DELAYS_MS` when unset: the delay tiers (and so the `Q.retry.{ms}ms` queues) every worker declares.
pub const DEFAULT_RETRY_DELAYS_MS: [u64; 4] = [1_000, 10_000, 60_000, 600_000];

/// Broker settings shared by every worker.
#[derive(Clone)]
pub struct AmqpSettings {
    /// `AMQP_URL`: one URL, or a comma-separated list of the nodes of one cluster. The URLs may hold passwords:
    /// they are secrets, and only their `host:port` is ever printed. Shared by every connection of the process
    /// (cloning the settings shares it), so that its consumers and publisher move to the next node together.
    pub brokers: Arc<Brokers>,
    /// `AMQP_CONNECT_TIMEOUT_MS` (default 5000): how long opening a connection to one node may take before the next
    /// node is tried (a node that is down refuses at once; one cut off by the network may not answer at all).
    pub connect_timeout: Duration,
    /// `PREFETCH`: deliveries a consumer holds unacked at once, and so how many it handles concurrently.
    pub prefetch: u16,
    /// `PUBLISH_TIMEOUT_MS`: how long a publish may wait for the broker's confirm before it counts as failed
    /// (a publish can hang when the server closes the connection).
    pub publish_timeout: Duration,
    /// `RETRY_DELAYS_MS`: the delay tiers of the `Q.retry.*` queues; a retry waits in the smallest tier at least as long as asked.
    pub retry_delays: Vec<Duration>,
    /// `MAX_ATTEMPTS`: attempts per message before it is parked as "retries exhausted".
    pub max_attempts: u32,
    /// `RECONNECT_MAX_DELAY_MS`: the cap of the reconnect backoff.
    pub reconnect_max_delay: Duration,
    /// `SHUTDOWN_GRACE_MS`: how long in-flight messages may take to finish after shutdown is asked; the rest go back to the queue.
    pub shutdown_grace: Duration,
    /// `STALL_AFTER_SECS` (default 300): a consumer holding messages, or with messages ready in its queue, that
    /// settles none for this long reports itself stalled on `/health`.
    pub stall_after: Duration,
    /// `UNAVAILABLE_RETRY_MAX_MS` (default 5000): the cap of the backoff between tries of a message held while a
    /// dependency is down.
    pub unavailable_max_delay: Duration,
    /// `AMQP_CA_FILE`: PEM certificates trusted for an `amqps://` broker besides the system's roots (a private CA).
    /// Read at start: a file that cannot be read stops the binary (exit code 2).
    pub ca_file: Option<PemFile>,
    /// `AMQP_CLIENT_CERT_FILE` and `AMQP_CLIENT_KEY_FILE` (PEM; the key unencrypted PKCS#8): a client certificate
    /// for brokers that ask for one (`ssl_options.verify = verify_peer`). Both or neither.
    pub client_identity: Option<(PemFile, PemFile)>,
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("brokers", &self.brokers)
            .field("prefetch", &self.prefetch)
            .field("publish_timeout", &self.publish_timeout)
            .field("retry_delays", &self.retry_delays)
            .field("max_attempts", &self.max_attempts)
            .field("stall_after", &self.stall_after)
            .field("ca_file", &self.ca_file.as_ref().map(|f| &f.path))
            .finish_non_exhaustive()
    }
}

/// `amqp://user:***@host/vhost`: for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl AmqpSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let url = settings::var_or("AMQP_URL", DEFAULT_AMQP_URL);
        let brokers = Brokers::parse(&url).map_err(|e| SettingsError::new("AMQP_URL", e))?;
        let connect_timeout = settings::millis("AMQP_CONNECT_TIMEOUT_MS", 5_000)?;
        if connect_timeout.is_zero() {
            return Err(SettingsError::new(
                "AMQP_CONNECT_TIMEOUT_MS",
                "must be above 0",
            ));
        }
        let prefetch = settings::parse("PREFETCH", 32u16)?;
        if prefetch == 0 {
            return Err(SettingsError::new("PREFETCH", "must be at least 1"));
        }
        let max_attempts = settings::parse("MAX_ATTEMPTS", 8u32)?;
        if max_attempts == 0 {
            return Err(SettingsError::new("MAX_ATTEMPTS", "must be at least 1"));
        }
        let stall_after = settings::secs("STALL_AFTER_SECS", 300)?;
        if stall_after < Duration::from_secs(1) {
            return Err(SettingsError::new("STALL_AFTER_SECS", "must be at least 1"));
        }
        let client_identity = match (
            pem_file("AMQP_CLIENT_CERT_FILE", PemKind::Certificates)?,
            pem_file("AMQP_CLIENT_KEY_FILE", PemKind::PrivateKey)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(SettingsError::new(
                    "AMQP_CLIENT_KEY_FILE",
                    "is required with AMQP_CLIENT_CERT_FILE",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingsError::new(
                    "AMQP_CLIENT_CERT_FILE",
                    "is required with AMQP_CLIENT_KEY_FILE",
                ));
            }
        };
        Ok(Self {
            ca_file: pem_file("AMQP_CA_FILE", PemKind::Certificates)?,
            client_identity,
            stall_after,
            unavailable_max_delay: settings::millis("UNAVAILABLE_RETRY_MAX_MS", 5_000)?,
            brokers: Arc::new(brokers),
            connect_timeout,
            prefetch,
            publish_timeout: settings::millis("PUBLISH_TIMEOUT_MS", 10_000)?,
            retry_delays: settings::millis_list("RETRY_DELAYS_MS", &DEFAULT_RETRY_DELAYS_MS)?,
            max_attempts,
            reconnect_max_delay: settings::millis("RECONNECT_MAX_DELAY_MS", 30_000)?,
            shutdown_grace: settings::millis("SHUTDOWN_GRACE_MS", 20_000)?,
        })
    }

    /// Defaults for a given URL, or comma-separated list of URLs (tests).
    pub fn with_url(url: &str) -> Self {
        Self {
            brokers: Arc::new(Brokers::parse(url).unwrap_or_else(|_| Brokers::one(url))),
            connect_timeout: Duration::from_secs(5),
            prefetch: 32,
            publish_timeout: Duration::from_secs(10),
            retry_delays: vec![Duration::from_millis(200), Duration::from_secs(1)],
            max_attempts: 5,
            reconnect_max_delay: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            stall_after: Duration::from_secs(300),
            unavailable_max_delay: Duration::from_secs(1),
            ca_file: None,
            client_identity: None,
        }
    }

    /// The TLS configuration of an `amqps://` connection: the system's roots plus `AMQP_CA_FILE`, and the client
    /// certificate when one is set. Unused for `amqp://`.
    fn tls_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: self
                .client_identity
                .as_ref()
                .map(|(cert, key)| OwnedIdentity::PKCS8 {
                    pem: cert.pem.clone(),
                    key: key.pem.clone(),
                }),
            cert_chain: self
                .ca_file
                .as_ref()
                .map(|f| String::from_utf8_lossy(&f.pem).into_owned()),
        }
    }
}

/// Why a connection to RabbitMQ could not be opened. Neither variant shows `AMQP_URL`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS handshake failed: most often a broker certificate that no trusted CA signed, or one issued for
    /// another host name.
    #[error(
        "the TLS handshake with RabbitMQ failed ({0}): check AMQP_CA_FILE (the CA that signed the broker's certificate; without it only the system's roots are trusted) and that AMQP_URL names the host the certificate was issued for"
    )]
    Tls(String),
    #[error("cannot reach RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// The node accepted no connection within `AMQP_CONNECT_TIMEOUT_MS`.
    #[error("cannot reach RabbitMQ: no connection within {0:?} (AMQP_CONNECT_TIMEOUT_MS)")]
    Timeout(Duration),
    /// Several nodes are listed and none answered: how many, and the last one's failure.
    #[error(
        "none of the {nodes} RabbitMQ nodes of AMQP_URL answered; the last, {endpoint}: {last}"
    )]
    NoNode {
        nodes: usize,
        endpoint: String,
        last: Box<ConnectError>,
    },
}

impl ConnectError {
    fn from_connect(e: lapin::Error) -> Self {
        match tls_failure(&e) {
            Some(reason) => ConnectError::Tls(reason),
            None => ConnectError::Amqp(e),
        }
    }
}

/// The TLS library's own words when `e` is a failed TLS handshake.
fn tls_failure(e: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::IOError(io) = e.kind() else {
        return None;
    };
    let inner = io.get_ref()?;
    inner
        .downcast_ref::<native_tls::Error>()
        .map(|tls| tls.to_string())
}

/// Opens a connection named `name` (shown in the management UI) with the settings' TLS configuration: the one
/// way every binary connects, `trackctl` included. With several nodes in `AMQP_URL`, the first that answers
/// (see [`brokers`]).
pub async fn connect(
    settings: &AmqpSettings,
    name: &str,
) -> Result<lapin::Connection, ConnectError> {
    connect_any(settings, name).await.map(|(conn, _)| conn)
}

/// [`connect`], and which node answered (to report its loss with [`Brokers::lost`]).
pub(crate) async fn connect_any(
    settings: &AmqpSettings,
    name: &str,
) -> Result<(lapin::Connection, BrokerIndex), ConnectError> {
    let brokers = &settings.brokers;
    let mut last = None;
    for (tries, i) in brokers.try_order().enumerate() {
        match connect_one(settings, name, i).await {
            Ok(conn) => {
                brokers.answered(i);
                if tries > 0 {
                    tracing::warn!(connection = %name, broker = %brokers.endpoint(i),
                        "Connected to the next RabbitMQ node of AMQP_URL.");
                }
                return Ok((conn, i));
            }
            Err(e) => {
                if brokers.len() > 1 {
                    tracing::warn!(connection = %name, broker = %brokers.endpoint(i), error = %e,
                        "This RabbitMQ node does not answer; trying the next of AMQP_URL.");
                }
                last = Some((i, e));
            }
        }
    }
    match last {
        Some((i, e)) if brokers.len() > 1 => Err(ConnectError::NoNode {
            nodes: brokers.len(),
            endpoint: brokers.endpoint(i).to_owned(),
            last: Box::new(e),
        }),
        Some((_, e)) => Err(e),
        None => Err(ConnectError::Timeout(Duration::ZERO)),
    }
}

/// One connection to node `i`, bounded by `AMQP_CONNECT_TIMEOUT_MS`.
async fn connect_one(
    settings: &AmqpSettings,
    name: &str,
    i: BrokerIndex,
) -> Result<lapin::Connection, ConnectError> {
    let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    let opening = lapin::Connection::connect_with_config(
        settings.brokers.url(i),
        props,
        settings.tls_config(),
        runtime,
    );
    match tokio::time::timeout(settings.connect_timeout, opening).await {
        Ok(r) => r.map_err(ConnectError::from_connect),
        Err(_) => Err(ConnectError::Timeout(settings.connect_timeout)),
    }
}

/// Backoff for reconnecting: 100 ms doubling up to the cap, with full jitter.
pub(crate) fn reconnect_delay(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_millis(100).saturating_mul(2u32.saturating_pow(failures.min(16)));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
        let s = AmqpSettings::with_url("amqp://u:pw@h/v");
        assert!(!format!("{s:?}").contains("pw"));
        let s = AmqpSettings::with_url("amqp://u:pw1@h1:5701/v,amqp://u:pw2@h2:5702/v");
        let shown = format!("{s:?}");
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert!(
            shown.contains("h1:5701") && shown.contains("h2:5702"),
            "{shown}"
        );
    }

    #[test]
    fn reconnect_delay_is_capped() {
        for f in 0..40 {
            assert!(reconnect_delay(f, Duration::from_secs(3)) <= Duration::from_secs(3));
        }
    }
}
