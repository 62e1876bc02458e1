//! A small SMTP server (RFC 5321: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that keeps what it accepts and
//! refuses chosen recipients with `550 5.1.1`, as a mail server refuses an unknown mailbox. For tests that need an
//! SMTP server to refuse, or to come and go on a fixed port. On request it speaks TLS (from the first byte, or
//! after STARTTLS, RFC 3207) with a certificate the test gives, and asks for a user and password (AUTH PLAIN,
//! RFC 4954) before it takes a message.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// The DATA as sent (headers and body, dot-unstuffed).
    pub data: String,
    /// When the server accepted it (after the final dot).
    pub at: std::time::Instant,
    /// The same moment on the wall clock (to compare with times a database recorded).
    pub at_wall: std::time::SystemTime,
    /// Whether the session that sent it spoke TLS.
    pub tls: bool,
    /// The user the session authenticated as, if any.
    pub user: Option<String>,
}

impl Received {
    /// A header's value (first occurrence, unfolded), by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }
}

/// How a TLS server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (`smtps://`, port 465's way).
    Wrapper,
    /// Plain first, TLS after the client's STARTTLS (offered in the EHLO answer).
    StartTls,
}

/// What a server started with [`SmtpServer::start_with`] does besides plain SMTP.
#[derive(Default)]
pub struct Options {
    /// Recipients refused with `550`.
    pub refused: Vec<String>,
    /// TLS: how, and the certificate and its key (PEM; the key PKCS#8, as `openssl` writes it).
    pub tls: Option<(TlsMode, Vec<u8>, Vec<u8>)>,
    /// A user and password asked for (AUTH PLAIN) before any message is taken.
    pub login: Option<(String, String)>,
    /// Bytes written in clear right behind STARTTLS's go-ahead, as someone in between could: replies forged to
    /// be read as if they came over TLS.
    pub injected_after_starttls: Vec<u8>,
}

struct Shared {
    refused: HashSet<String>,
    received: Mutex<Vec<Received>>,
    /// How long the final `250` after DATA waits (the message is already kept): for tests that need something
    /// to happen between a message being taken and the client learning it was.
    accept_delay: Mutex<std::time::Duration>,
    tls: Option<(TlsMode, tokio_native_tls::TlsAcceptor)>,
    login: Option<(String, String)>,
    injected_after_starttls: Vec<u8>,
    /// AUTH commands received, over TLS or not.
    auth_commands: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running server; it stops on [`SmtpServer::shutdown`] or when dropped.
pub struct SmtpServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl SmtpServer {
    /// Listens on `addr` (port 0 allowed); `refused` recipients get `550`.
    pub async fn start(addr: SocketAddr, refused: &[&str]) -> anyhow::Result<SmtpServer> {
        let options = Options {
            refused: refused.iter().map(|r| (*r).to_owned()).collect(),
            ..Options::default()
        };
        SmtpServer::start_with(addr, options).await
    }

    /// Listens on `addr` (port 0 allowed) with TLS, a login or refused recipients as `options` say.
    pub async fn start_with(addr: SocketAddr, options: Options) -> anyhow::Result<SmtpServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        SmtpServer::start_on(listener, options).await
    }

    /// Serves on a socket the caller bound already: a test that holds its port from the start (bound, not yet
    /// listening, so that connections are refused until the server starts) hands it over with
    /// `socket.listen(..)`, and no other process can take the port in between.
    pub async fn start_on(listener: TcpListener, options: Options) -> anyhow::Result<SmtpServer> {
        let tls = match options.tls {
            None => None,
            Some((mode, cert, key)) => {
                let identity = native_tls::Identity::from_pkcs8(&cert, &key)
                    .context("the SMTP server's certificate or key")?;
                let acceptor = native_tls::TlsAcceptor::new(identity)?;
                Some((mode, acceptor.into()))
            }
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            refused: options
                .refused
                .iter()
                .map(|r| r.to_ascii_lowercase())
                .collect(),
            received: Mutex::new(Vec::new()),
            accept_delay: Mutex::new(std::time::Duration::ZERO),
            tls,
            login: options.login,
            injected_after_starttls: options.injected_after_starttls,
            auth_commands: AtomicUsize::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let serving = shared.clone();
        tokio::spawn(async move {
            let mut listening = stopped.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let shared = serving.clone();
                        let mut stopped = stopped.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = serve(stream, &shared) => {}
                                _ = stopped.wait_for(|s| *s) => {}
                            }
                        });
                    }
                    _ = listening.wait_for(|s| *s) => break,
                }
            }
        });
        Ok(SmtpServer { shared, addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// How many messages were received so far (without copying them).
    pub fn received_count(&self) -> usize {
        lock(&self.shared.received).len()
    }

    /// How many AUTH commands clients sent (a client that must not send its password in clear sends none).
    pub fn auth_commands(&self) -> usize {
        self.shared.auth_commands.load(Ordering::Relaxed)
    }

    /// Delays every later final reply to DATA by `delay`; the message counts as received before the delay.
    pub fn set_accept_delay(&self, delay: std::time::Duration) {
        *lock(&self.shared.accept_delay) = delay;
    }

    /// Stops listening and drops open sessions.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn address(arg: &str) -> String {
    let a = arg.trim();
    let a = a.split_once(':').map_or(a, |(_, rest)| rest).trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// One client's connection: TLS first, or plain with TLS after STARTTLS, or plain.
async fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let tls_failed = |e: native_tls::Error| std::io::Error::other(e.to_string());
    match &shared.tls {
        Some((TlsMode::Wrapper, acceptor)) => {
            let stream = acceptor.accept(stream).await.map_err(tls_failed)?;
            session(stream, shared, Stage::Greet { tls: true }).await?;
        }
        Some((TlsMode::StartTls, acceptor)) => {
            if let Some(stream) = session(stream, shared, Stage::Greet { tls: false }).await? {
                let stream = acceptor.accept(stream).await.map_err(tls_failed)?;
                session(stream, shared, Stage::AfterStartTls).await?;
            }
        }
        None => {
            session(stream, shared, Stage::Greet { tls: false }).await?;
        }
    }
    Ok(())
}

/// Where a session starts.
#[derive(Clone, Copy)]
enum Stage {
    /// A new connection: the server greets first.
    Greet { tls: bool },
    /// TLS just began after STARTTLS: the client speaks first (EHLO again), and everything before is forgotten.
    AfterStartTls,
}

/// Speaks SMTP on `stream` until QUIT or the end of the connection; returns the stream when the client asked
/// for STARTTLS and the server said yes.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shared: &Shared,
    stage: Stage,
) -> std::io::Result<Option<S>> {
    let mut conn = BufReader::new(stream);
    let tls = match stage {
        Stage::Greet { tls } => {
            conn.write_all(b"220 sim.smtp ESMTP ready\r\n").await?;
            tls
        }
        Stage::AfterStartTls => true,
    };
    let offers_starttls = !tls && matches!(shared.tls, Some((TlsMode::StartTls, _)));
    let (mut from, mut to) = (String::new(), Vec::<String>::new());
    let mut user: Option<String> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let needs_login = shared.login.is_some() && user.is_none();
        let reply: std::borrow::Cow<'static, [u8]> = match verb.as_str() {
            "EHLO" => {
                let mut r = String::from("250-sim.smtp\r\n250-8BITMIME\r\n");
                if offers_starttls {
                    r.push_str("250-STARTTLS\r\n");
                }
                if shared.login.is_some() {
                    r.push_str("250-AUTH PLAIN\r\n");
                }
                r.push_str("250 SMTPUTF8\r\n");
                r.into_bytes().into()
            }
            "HELO" => b"250 sim.smtp\r\n".into(),
            "STARTTLS" if offers_starttls => {
                let go_ahead = [
                    &b"220 2.0.0 ready to start TLS\r\n"[..],
                    &shared.injected_after_starttls,
                ]
                .concat();
                conn.write_all(&go_ahead).await?;
                if !conn.buffer().is_empty() {
                    // Commands sent before TLS began would be read as if sent over it (RFC 3207's warning).
                    return Err(std::io::Error::other("data pipelined after STARTTLS"));
                }
                return Ok(Some(conn.into_inner()));
            }
            "AUTH" => {
                shared.auth_commands.fetch_add(1, Ordering::Relaxed);
                match authenticate(&mut conn, &command, shared).await? {
                    Some(name) => {
                        user = Some(name);
                        b"235 2.7.0 authentication succeeded\r\n".into()
                    }
                    None => b"535 5.7.8 authentication credentials invalid\r\n".into(),
                }
            }
            "MAIL" | "RCPT" | "DATA" if needs_login => {
                b"530 5.7.0 authentication required\r\n".into()
            }
            "MAIL" => {
                from = address(&command[4..]);
                to.clear();
                b"250 2.1.0 OK\r\n".into()
            }
            "RCPT" => {
                let rcpt = address(&command[4..]);
                if shared.refused.contains(&rcpt) {
                    b"550 5.1.1 <mailbox> unknown: no such user here\r\n".into()
                } else {
                    to.push(rcpt);
                    b"250 2.1.5 OK\r\n".into()
                }
            }
            "DATA" if to.is_empty() => b"554 5.5.1 no valid recipients\r\n".into(),
            "DATA" => {
                conn.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if conn.read_line(&mut line).await? == 0 {
                        return Ok(None);
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(unstuffed);
                }
                lock(&shared.received).push(Received {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                    at: std::time::Instant::now(),
                    at_wall: std::time::SystemTime::now(),
                    tls,
                    user: user.clone(),
                });
                let delay = *lock(&shared.accept_delay);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                b"250 2.0.0 queued\r\n".into()
            }
            "RSET" => {
                to.clear();
                b"250 2.0.0 OK\r\n".into()
            }
            "NOOP" => b"250 2.0.0 OK\r\n".into(),
            "QUIT" => {
                conn.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(None);
            }
            _ => b"502 5.5.2 command not recognized\r\n".into(),
        };
        conn.write_all(&reply).await?;
    }
}

/// `AUTH PLAIN` with its response on the line or after a `334`: the user, when the user and password are the
/// ones asked for.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    command: &str,
    shared: &Shared,
) -> std::io::Result<Option<String>> {
    let mut words = command.split_whitespace().skip(1);
    if !words
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("PLAIN"))
    {
        return Ok(None);
    }
    let response = match words.next() {
        Some(r) => r.to_owned(),
        None => {
            conn.write_all(b"334 \r\n").await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            line.trim_end().to_owned()
        }
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(response) else {
        return Ok(None);
    };
    // authzid NUL user NUL password
    let mut parts = decoded.split(|b| *b == 0).skip(1);
    let (Some(user), Some(password)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (user, password) = (
        String::from_utf8_lossy(user).into_owned(),
        String::from_utf8_lossy(password).into_owned(),
    );
    Ok(shared
        .login
        .as_ref()
        .filter(|(u, p)| *u == user && *p == password)
        .map(|_| user))
}
