//! A small SMTP server (RFC 5321: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that keeps what it accepts and
//! refuses chosen recipients with `550 5.1.1`, as a mail server refuses an unknown mailbox. For tests that need an
//! SMTP server to refuse, or to come and go on a fixed port.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

#[derive(Default)]
struct Shared {
    refused: HashSet<String>,
    received: Mutex<Vec<Received>>,
    /// How long the final `250` after DATA waits (the message is already kept): for tests that need something
    /// to happen between a message being taken and the client learning it was.
    accept_delay: Mutex<std::time::Duration>,
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
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            refused: refused.iter().map(|r| r.to_ascii_lowercase()).collect(),
            received: Mutex::new(Vec::new()),
            accept_delay: Mutex::new(std::time::Duration::ZERO),
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
                                _ = session(stream, &shared) => {}
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

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sim.smtp ESMTP ready\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::<String>::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sim.smtp\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" => b"250 sim.smtp\r\n",
            "MAIL" => {
                from = address(&command[4..]);
                to.clear();
                b"250 2.1.0 OK\r\n"
            }
            "RCPT" => {
                let rcpt = address(&command[4..]);
                if shared.refused.contains(&rcpt) {
                    b"550 5.1.1 <mailbox> unknown: no such user here\r\n"
                } else {
                    to.push(rcpt);
                    b"250 2.1.5 OK\r\n"
                }
            }
            "DATA" if to.is_empty() => b"554 5.5.1 no valid recipients\r\n",
            "DATA" => {
                write
                    .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
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
                });
                let delay = *lock(&shared.accept_delay);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                b"250 2.0.0 queued\r\n"
            }
            "RSET" => {
                to.clear();
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 command not recognized\r\n",
        };
        write.write_all(reply).await?;
    }
}
