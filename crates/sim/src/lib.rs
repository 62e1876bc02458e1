//! `tracking-sim`: stand-ins for the far ends of the shipment-tracking pipeline, for tests and the demo.
//!
//! Both simulators are real HTTP servers on `127.0.0.1` speaking the real wire shapes, so the production
//! clients are exercised unchanged (only their base URL points here):
//!
//! - [`correios`]: the Correios "API Rastro" (token endpoints, `srorastro/v1/objetos`, SRO messages,
//!   the `Accept-Language` rule, gateway errors), with scripted journeys revealed poll by poll and a small
//!   control API (`/_sim/objects/{code}`, `/_sim/answers` to break its answers) for the demo.
//! - [`marketplace`]: a receiver for the signed marketplace webhook (`X-Signature: t=..,v1=..`), recording every
//!   call and answering scripted statuses (with `Retry-After`) on demand.
//! - [`jadlog`]: Jadlog's tracking call with a static token and scripted events.
//! - [`smtp`]: a small SMTP server that keeps what it accepts and refuses chosen recipients with 550.
//! - [`silent`]: a TCP server that accepts every connection and never answers (a hanging far end).
//! - [`witness`]: an HTTP server that records every request it gets (any method, any path) and answers 200: the
//!   place a redirect would lead to, to show that nothing reached it.
//!
//! The binaries `correios-sim` and `marketplace-receiver` wrap these for manual runs and the demo.

pub mod correios;
pub mod jadlog;
pub mod marketplace;
pub mod silent;
pub mod smtp;
pub mod witness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use tokio::sync::watch;

/// A running axum server; stopping it (explicitly or by dropping the guard) shuts it down gracefully.
#[derive(Debug)]
pub(crate) struct ServerGuard {
    stop: watch::Sender<bool>,
    addr: SocketAddr,
}

impl ServerGuard {
    pub(crate) async fn spawn(
        router: axum::Router,
        addr: SocketAddr,
    ) -> anyhow::Result<ServerGuard> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let mut local = listener.local_addr().context("no local address")?;
        if local.ip().is_unspecified() {
            local.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            let signal = async move {
                // Also completes when the sender is gone: the last handle was dropped.
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %e, "simulator server stopped with an error");
            }
        });
        Ok(ServerGuard { stop, addr: local })
    }

    pub(crate) fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A body of `size` bytes: `prefix`, then `entry` repeated (padded with spaces), made 64 KiB at a time as the
/// client reads (never held whole) and sent chunked (no `Content-Length`).
pub(crate) fn huge_body(size: u64, prefix: &[u8], entry: &[u8]) -> axum::body::Body {
    const CHUNK: usize = 64 * 1024;
    let mut first = Vec::with_capacity(CHUNK);
    first.extend_from_slice(prefix);
    let mut block = Vec::with_capacity(CHUNK);
    while block.len() + entry.len() <= CHUNK {
        block.extend_from_slice(entry);
    }
    block.resize(CHUNK, b' ');
    first.extend_from_slice(&block[..CHUNK - prefix.len().min(CHUNK)]);
    let first = axum::body::Bytes::from(first);
    let block = axum::body::Bytes::from(block);
    let stream = futures_util::stream::unfold((size, true), move |(left, is_first)| {
        let chunk = if is_first {
            first.clone()
        } else {
            block.clone()
        };
        async move {
            if left == 0 {
                return None;
            }
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            Some((
                Ok::<_, std::convert::Infallible>(chunk.slice(..n)),
                (left - n as u64, false),
            ))
        }
    });
    axum::body::Body::from_stream(stream)
}

/// Logging for the binaries: human-readable lines on stdout, `RUST_LOG` (default `info`).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

pub(crate) fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}
