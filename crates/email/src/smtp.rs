//! The SMTP server the mailer sends to, and how a connection to it is opened (by us: lettre speaks the protocol on
//! it); [`crate::connections`] keeps them for reuse.
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
use crate::starttls::{self, Refused};
use crate::stream::SmtpStream;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use std::io;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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

/// The TLS side of every connection (`smtps://` and STARTTLS alike), made once: TLS 1.2 at least, the system's
/// roots and `roots` (PEM certificate blocks).
fn tls_connector(roots: &[&str]) -> Result<tokio_native_tls::TlsConnector, ServerError> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    for (n, pem) in roots.iter().enumerate() {
        let certificate = native_tls::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
            ServerError::Ca(format!(
                "its certificate number {} cannot be read: {e}",
                n + 1
            ))
        })?;
        builder.add_root_certificate(certificate);
    }
    let connector = builder
        .build()
        .map_err(|e| ServerError::Url(format!("TLS cannot be set up: {e}")))?;
    Ok(connector.into())
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
    /// Set whenever `tls` is not [`Tls::None`].
    connector: Option<tokio_native_tls::TlsConnector>,
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
            server.connector = Some(tls_connector(roots)?);
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
            connector: None,
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

    /// A transient failure of `step` with the far end's `detail`, the password taken out of the detail only (the
    /// fixed text would show which words it matched).
    fn failed(&self, step: &str, detail: &dyn std::fmt::Display) -> OpenFailure {
        let mut detail = detail.to_string();
        if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
            detail = detail.replace(password, "***");
        }
        OpenFailure::Other(SendError::Transient(format!("{step}: {detail}")))
    }

    /// TLS over `tcp`, the certificate checked against the URL's host.
    async fn handshake(
        &self,
        connector: &tokio_native_tls::TlsConnector,
        tcp: TcpStream,
    ) -> Result<SmtpStream, OpenFailure> {
        const TLS_FAILED: &str = "TLS with the SMTP server failed (is its certificate for this host, and signed by a CA \
                                  the system or SMTP_CA_FILE trusts?)";
        match connector.connect(&self.host, tcp).await {
            Ok(tls) => Ok(SmtpStream::tls(tls)),
            Err(e) => Err(self.failed(TLS_FAILED, &e)),
        }
    }

    /// Opens a connection ready to send: TCP with `TCP_NODELAY`, TLS as the URL asks, EHLO, authentication.
    /// Every failure here is transient (see the module's documentation); a refusal of the credentials is told
    /// apart, so that they are not tried again at once.
    pub(crate) async fn open(&self) -> Result<AsyncSmtpConnection, OpenFailure> {
        let mut tcp = self
            .tcp()
            .await
            .map_err(|e| self.failed("cannot connect to the SMTP server", &e))?;
        let stream = match (self.tls, &self.connector) {
            (Tls::None, _) => SmtpStream::plain(tcp),
            (_, None) => return Err(self.failed("TLS cannot be used", &"no TLS settings")),
            (Tls::Wrapper, Some(connector)) => self.handshake(connector, tcp).await?,
            (Tls::Required | Tls::Opportunistic, Some(connector)) => {
                match starttls::negotiate(&mut tcp, &self.hello).await {
                    Ok(()) => SmtpStream::greeted(self.handshake(connector, tcp).await?),
                    // Asked for, not offered (a server without TLS, or someone in between who took it out):
                    // nothing, credentials least of all, is sent in clear.
                    Err(Refused::NotOffered) if self.tls == Tls::Required => {
                        let _ = tcp.write_all(b"QUIT\r\n").await;
                        return Err(self.failed(
                            "SMTP_URL requires STARTTLS (tls=required)",
                            &"the server does not offer it, so nothing was sent",
                        ));
                    }
                    Err(Refused::NotOffered) => SmtpStream::greeted(SmtpStream::plain(tcp)),
                    Err(Refused::Failed(e)) => {
                        return Err(self.failed("STARTTLS with the SMTP server failed", &e));
                    }
                }
            }
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
            .await
            .map_err(|e| self.failed("the SMTP server refused the connection", &e))?;
        if let Some(credentials) = &self.credentials
            && let Err(e) = conn
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
        {
            return Err(match e.status() {
                // The server's text is left out: a server may repeat what it was sent.
                Some(code) => OpenFailure::CredentialsRefused(format!(
                    "the SMTP server refused the credentials of SMTP_URL (answer {code})"
                )),
                None => self.failed("authentication with the SMTP server failed", &e),
            });
        }
        Ok(conn)
    }
}

/// Why a connection could not be opened.
pub(crate) enum OpenFailure {
    /// The server answered the credentials with a refusal (its code only).
    CredentialsRefused(String),
    Other(SendError),
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
