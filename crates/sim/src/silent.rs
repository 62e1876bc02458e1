//! A far end that hangs: it accepts every TCP connection and never answers (never reads a request to its end,
//! never writes a byte), as a marketplace endpoint or an SMTP relay behind a stuck load balancer does. A client
//! learns nothing but its own timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running silent server; dropping it (or [`SilentServer::shutdown`]) closes the listener and every connection
/// it holds.
#[derive(Debug)]
pub struct SilentServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl SilentServer {
    /// Binds `addr` (port 0 allowed) and holds every connection it accepts, on the current tokio runtime.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<SilentServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let mut local = listener.local_addr().context("no local address")?;
        if local.ip().is_unspecified() {
            local.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    conn = listener.accept() => match conn {
                        Ok((socket, _)) => {
                            count.fetch_add(1, Ordering::SeqCst);
                            held.push(socket);
                        }
                        Err(e) => tracing::warn!(error = %e, "the silent server could not accept"),
                    },
                }
            }
            drop(held);
        });
        Ok(SilentServer {
            addr: local,
            accepted,
            stop,
        })
    }

    /// `http://127.0.0.1:PORT/hooks/tracking`: a webhook URL that never answers.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/tracking", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every held connection.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
