//! The SMTP connections the mailer sends through: opened by us (lettre speaks the protocol on them), kept idle
//! for reuse.
//!
//! Why not lettre's own pool: lettre writes a message's body and its final `.` in two writes and opens its
//! sockets without `TCP_NODELAY`, so the final dot waits in the kernel (Nagle) until the server acknowledges the
//! body, and servers delay that acknowledgement by up to 40 ms: every email took 40 ms more than the server
//! needed (measured with `bench latency`: claim to accepted 44 ms against a local server). Opening the socket
//! here sets `TCP_NODELAY` on every connection, plain, STARTTLS or TLS from the start.
//!
//! The URL is the one lettre reads (`smtp://host:port`, `?tls=required` or `?tls=opportunistic` for STARTTLS,
//! `smtps://` for TLS from the start, `user:password@`, a path naming the EHLO domain), with lettre's default
//! ports (25, 587 with STARTTLS, 465) and its authentication (PLAIN, then LOGIN) when a password is given. TLS
//! (either way) asks for TLS 1.2 at least and trusts the system's roots and those of `SMTP_CA_FILE`.
//!
//! What fails while a connection is opened (connecting, TLS, the greeting, EHLO, the credentials) is transient
//! whatever the server answered: it concerns the server or this worker's settings, never the email, which is
//! retried (and parked only past the retry window) instead of being parked at once.

use crate::mailer::SendError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters, TlsVersion,
};
use lettre::transport::smtp::extension::ClientId;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long an idle connection is kept: servers close idle connections after a few minutes, and one they closed
/// costs a failed NOOP before a fresh one is opened.
const IDLE_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    None,
    /// STARTTLS, refusing a server that does not offer it.
    Required,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// TLS from the first byte (`smtps://`).
    Wrapper,
}

/// The TLS side of every connection, made once: TLS 1.2 at least, the system's roots and the CA file's.
#[derive(Clone)]
struct TlsConfig {
    /// For `smtps://`.
    wrapper: tokio_native_tls::TlsConnector,
    /// For STARTTLS, which lettre performs on the connection.
    starttls: TlsParameters,
}

impl TlsConfig {
    /// `roots`: PEM certificate blocks trusted besides the system's roots.
    fn new(host: &str, roots: &[&str]) -> Result<TlsConfig, ServerError> {
        let mut wrapper = native_tls::TlsConnector::builder();
        wrapper.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
        let mut starttls =
            TlsParameters::builder(host.to_owned()).set_min_tls_version(TlsVersion::Tlsv12);
        for (n, pem) in roots.iter().enumerate() {
            let refused = |e: &dyn std::fmt::Display| {
                ServerError::Ca(format!(
                    "its certificate number {} cannot be read: {e}",
                    n + 1
                ))
            };
            wrapper.add_root_certificate(
                native_tls::Certificate::from_pem(pem.as_bytes()).map_err(|e| refused(&e))?,
            );
            starttls = starttls.add_root_certificate(
                Certificate::from_pem(pem.as_bytes()).map_err(|e| refused(&e))?,
            );
        }
        let tls =
            |e: &dyn std::fmt::Display| ServerError::Url(format!("TLS cannot be set up: {e}"));
        Ok(TlsConfig {
            wrapper: wrapper.build().map_err(|e| tls(&e))?.into(),
            starttls: starttls.build_native().map_err(|e| tls(&e))?,
        })
    }
}

/// Why the URL or the CA file cannot be used. Never repeats the URL (it may hold a password).
#[derive(Debug)]
pub(crate) enum ServerError {
    Url(String),
    Ca(String),
}

/// Where and how to connect, read from the SMTP URL.
#[derive(Clone)]
pub(crate) struct Server {
    host: String,
    port: u16,
    tls: Tls,
    tls_config: Option<TlsConfig>,
    hello: ClientId,
    credentials: Option<Credentials>,
    /// The decoded password, only to take it out of the server's answers should one repeat it.
    password: Option<String>,
}

impl Server {
    /// Reads the URL; `roots` are PEM certificate blocks (`SMTP_CA_FILE`) trusted besides the system's roots,
    /// refused with a URL that asks for no TLS.
    pub(crate) fn new(url: &str, roots: &[&str]) -> Result<Server, ServerError> {
        let mut server = Server::from_url(url).map_err(ServerError::Url)?;
        if server.tls == Tls::None {
            if !roots.is_empty() {
                return Err(ServerError::Ca(
                    "is set, but the SMTP URL asks for no TLS (use smtps://, or smtp://...?tls=required for STARTTLS)"
                        .into(),
                ));
            }
        } else {
            server.tls_config = Some(TlsConfig::new(&server.host, roots)?);
        }
        Ok(server)
    }

    /// Reads the URL. The error never repeats the URL (it may hold a password).
    fn from_url(url: &str) -> Result<Server, String> {
        let url = url::Url::parse(url).map_err(|e| e.to_string())?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL names no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (tls, port) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None) => (Tls::None, 25),
            ("smtp", Some("required")) => (Tls::Required, 587),
            ("smtp", Some("opportunistic")) => (Tls::Opportunistic, 587),
            ("smtps", _) => (Tls::Wrapper, 465),
            (scheme, tls) => {
                return Err(format!(
                    "unknown scheme {scheme:?} or tls parameter {tls:?}"
                ));
            }
        };
        let hello = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the user or password is not UTF-8 once decoded".to_owned())
        };
        let password = url.password().map(decode).transpose()?;
        let credentials = match &password {
            Some(password) => Some(Credentials::new(decode(url.username())?, password.clone())),
            None => None,
        };
        Ok(Server {
            port: url.port().unwrap_or(port),
            host,
            tls,
            tls_config: None,
            hello,
            credentials,
            password,
        })
    }

    /// A TCP connection to the server with `TCP_NODELAY` set.
    async fn tcp(&self) -> io::Result<TcpStream> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// Opens a connection ready to send: TCP with `TCP_NODELAY`, TLS as the URL asks, EHLO, authentication.
    /// Every failure here is transient (see the module's documentation).
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let failed = |step: &str, e: &dyn std::fmt::Display| {
            let mut text = format!("{step}: {e}");
            if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
                text = text.replace(password, "***");
            }
            SendError::Transient(text)
        };
        const TLS_FAILED: &str = "TLS with the SMTP server failed (is its certificate for this host, and signed by a CA \
                                  the system or SMTP_CA_FILE trusts?)";
        let tcp = self
            .tcp()
            .await
            .map_err(|e| failed("cannot connect to the SMTP server", &e))?;
        let stream: Box<dyn AsyncTokioStream> = match (&self.tls_config, self.tls) {
            (Some(config), Tls::Wrapper) => {
                let tls = config
                    .wrapper
                    .connect(&self.host, tcp)
                    .await
                    .map_err(|e| failed(TLS_FAILED, &e))?;
                Box::new(TlsTcp(tls))
            }
            _ => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(|e| failed("the SMTP server refused the connection", &e))?;
        let starttls = match self.tls {
            Tls::Required => true,
            Tls::Opportunistic => conn.can_starttls(),
            Tls::None | Tls::Wrapper => false,
        };
        if starttls {
            if !conn.can_starttls() {
                // Asked for, not offered (a server without TLS, or someone in between who took it out): nothing,
                // credentials least of all, is sent in clear.
                conn.abort().await;
                return Err(failed(
                    "the SMTP URL requires STARTTLS (tls=required)",
                    &"the server does not offer it, so nothing was sent",
                ));
            }
            let params = match &self.tls_config {
                Some(config) => config.starttls.clone(),
                None => return Err(failed(TLS_FAILED, &"no TLS settings")),
            };
            conn.starttls(params, &self.hello)
                .await
                .map_err(|e| failed(TLS_FAILED, &e))?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| failed("the SMTP server refused the credentials of SMTP_URL", &e))?;
        }
        Ok(conn)
    }
}

/// Connections to one server: idle ones are reused (checked with NOOP first), at most `max_idle` kept.
pub(crate) struct Connections {
    server: Server,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl Connections {
    pub(crate) fn new(server: Server, max_idle: usize) -> Connections {
        Connections {
            server,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that still answers, or a new one.
    pub(crate) async fn take(&self) -> Result<AsyncSmtpConnection, SendError> {
        loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some((mut conn, since)) = next else {
                return self.server.open().await;
            };
            if since.elapsed() < IDLE_FOR && !conn.has_broken() && conn.test_connected().await {
                return Ok(conn);
            }
        }
    }

    /// Gives back a connection whose last send went through; beyond `max_idle` it is closed.
    pub(crate) fn give_back(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle && !conn.has_broken() {
            idle.push((conn, Instant::now()));
        }
    }
}

/// A TLS stream lettre can speak SMTP on.
struct TlsTcp(tokio_native_tls::TlsStream<TcpStream>);

impl std::fmt::Debug for TlsTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTcp")
    }
}

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().get_ref().get_ref().peer_addr()
    }
}

impl AsyncRead for TlsTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_as_lettre_reads_them() {
        let s = Server::from_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("127.0.0.1", 2525, Tls::None)
        );
        assert!(s.credentials.is_none());
        let s = Server::from_url("smtp://u%40x:p%3Aw@smtp.example?tls=required").unwrap();
        assert_eq!((s.port, s.tls), (587, Tls::Required));
        assert_eq!(
            s.credentials,
            Some(Credentials::new("u@x".into(), "p:w".into()))
        );
        let s = Server::from_url("smtp://smtp.example?tls=opportunistic").unwrap();
        assert_eq!((s.port, s.tls), (587, Tls::Opportunistic));
        let s = Server::from_url("smtps://smtp.example/loja.example").unwrap();
        assert_eq!((s.port, s.tls), (465, Tls::Wrapper));
        assert_eq!(s.hello, ClientId::Domain("loja.example".into()));
        assert_eq!(Server::from_url("smtp://h").unwrap().port, 25);
        for bad in ["http://h", "smtp://h?tls=maybe", "smtp:///x"] {
            assert!(Server::from_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn every_connection_is_opened_with_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = Server::from_url(&format!("smtp://127.0.0.1:{port}")).unwrap();
        // A socket's default is off: the connector's is on.
        assert!(
            !TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap()
                .nodelay()
                .unwrap()
        );
        assert!(server.tcp().await.unwrap().nodelay().unwrap());
    }
}
