//! Accepting HTTP connections within bounds.
//!
//! `axum::serve` (0.8) builds hyper's connection without a timer, so hyper's header read timeout never applies
//! (a client that connects and never finishes its headers holds its connection and task forever), and it accepts
//! every connection it is offered. This loop does what `axum::serve` does for HTTP/1 with these bounds:
//! - `API_HEADER_TIMEOUT_MS`: a connection whose request headers are not complete in time is closed. hyper starts
//!   this clock whenever it waits for a request, so it is also the idle keep-alive timeout: a connection that
//!   sends nothing for that long after an answer is closed;
//! - `API_WRITE_TIMEOUT_MS`: a write of the answer that makes no progress for that long (a client that does not
//!   read) fails, and the connection is closed ([`WriteTimeout`]);
//! - `API_MAX_CONNECTIONS`: beyond it, nothing more is accepted: new connections wait in the listen backlog
//!   (and the kernel refuses them once that is full) until one closes;
//! - `API_MAX_CONNECTIONS_PER_ADDRESS`: one client (one IPv4 address, or one IPv6 /64, see [`client_of`]) holds at
//!   most this many of them; a further connection from it is closed at once, with a 429 answer if its socket
//!   takes one without waiting (`refuse`). So one client cannot take the slots of the others. The address is the
//!   TCP peer's: behind a proxy every client is the proxy.
//!
//! Bodies are bounded where they are read (`body::Body`, `API_BODY_TIMEOUT_MS`), whole calls by
//! `API_REQUEST_TIMEOUT_MS` (`crate::observe`). Each request carries its peer as
//! `axum::extract::ConnectInfo<SocketAddr>`.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// The bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `API_HEADER_TIMEOUT_MS`.
    pub header_timeout: Duration,
    /// `API_WRITE_TIMEOUT_MS`.
    pub write_timeout: Duration,
    /// `API_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `API_MAX_CONNECTIONS_PER_ADDRESS`.
    pub max_per_client: usize,
}

/// What a refused connection is told, if its socket takes it at once (it is never waited for).
const REFUSED: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\n\
Content-Type: application/json\r\nContent-Length: 72\r\n\r\n\
{\"error\":\"too many open connections from this address; try again later\"}";

/// Whom the per-client bounds count: an IPv4 address (an IPv4-mapped IPv6 one as such), or an IPv6 address's /64
/// (one subscriber usually holds a whole /64, so counting single IPv6 addresses would bound nothing).
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// The open connections per client. Only clients with an open connection have an entry, so it holds at most
/// `API_MAX_CONNECTIONS` entries.
struct PerClient {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted for its client until dropped.
struct ClientSlot {
    owner: Arc<PerClient>,
    client: IpAddr,
}

impl PerClient {
    fn try_open(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// The listen backlog: connections the kernel completes before the accept loop takes them (capped by
/// `net.core.somaxconn`, 4096 by default since Linux 5.4). Beyond it the kernel drops SYNs, and a client waits
/// for its retransmission (1 s, then 3 s): a flood of connections that the loop refuses still passes through
/// this queue, so it is larger than tokio's default (1024).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind` sets it).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Refusals are logged at most this often (with how many there were), so a flood cannot flood the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` until `shutdown`, then stops accepting and waits for the open connections to
/// finish their calls (each is told to close once its call is answered).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient {
        max: limits.max_per_client,
        open: Mutex::new(HashMap::new()),
    });
    let connections = TaskTracker::new();
    let mut full = false;
    let mut refused = 0u64;
    let mut refusal_logged: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: not fatal.
                    tracing::warn!(error = %e, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Some(slot) = per_client.try_open(client_of(remote.ip())) else {
            refuse(&stream);
            drop(stream);
            metrics::counter!("api_connections_refused_total").increment(1);
            refused += 1;
            if refusal_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                // The address is a customer's: not logged.
                tracing::warn!(
                    refused,
                    max = limits.max_per_client,
                    "Connections refused (429): their address already held API_MAX_CONNECTIONS_PER_ADDRESS \
                     connections (counted since the last such line)."
                );
                refusal_logged = Some(Instant::now());
                refused = 0;
            }
            continue;
        };
        let at_cap = permits.available_permits() == 0;
        if at_cap && !full {
            tracing::warn!(
                max = limits.max_connections,
                "API_MAX_CONNECTIONS connections are open: further connections wait until one closes."
            );
        }
        full = at_cap;
        metrics::gauge!("api_open_connections").increment(1.0);
        let service = TowerToHyperService::new(WithPeer {
            app: app.clone(),
            peer: remote,
        });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
            let mut conn = pin!(builder.serve_connection(io, service));
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "Connection closed with an error.");
            }
            metrics::gauge!("api_open_connections").decrement(1.0);
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Tells a refused connection why, without waiting for anything: what it already sent is read first (so that
/// closing it sends a FIN, and the answer arrives, rather than a reset), then the answer is written if the
/// socket takes it now.
fn refuse(stream: &TcpStream) {
    let mut scratch = [0u8; 2048];
    let _ = stream.try_read(&mut scratch);
    let _ = stream.try_write(REFUSED);
}

/// The application, with each request's TCP peer as `ConnectInfo` (what `axum::serve`'s
/// `into_make_service_with_connect_info` gives).
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: SocketAddr,
}

impl Service<hyper::Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<hyper::Request<Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.call(req)
    }
}

/// A stream whose writes fail once one has made no progress for `timeout`: the socket's send buffer stayed full
/// that long, so the client is not reading its answer. Reads pass through (their bounds are hyper's header
/// timeout and `API_BODY_TIMEOUT_MS`).
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write waits; reset each time one goes through.
    clock: Pin<Box<Sleep>>,
    armed: bool,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            clock: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        if !self.armed {
            self.clock
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
            self.armed = true;
        }
        match self.clock.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing of the answer for API_WRITE_TIMEOUT_MS",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, polled)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_one_whole_answer() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 "));
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(parsed["error"].is_string());
    }

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_64s() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(client_of(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(client_of(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_ne!(client_of(a), client_of(other));
        assert_eq!(client_of(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_client_holds_at_most_its_bound_and_its_entry_goes_with_its_last_connection() {
        let per = Arc::new(PerClient {
            max: 2,
            open: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = per.try_open(a).unwrap();
        let two = per.try_open(a).unwrap();
        assert!(per.try_open(a).is_none(), "a third for the same client");
        let other = per.try_open(b).unwrap();
        drop(one);
        let three = per.try_open(a).unwrap();
        drop((two, three, other));
        assert!(per.open.lock().unwrap().is_empty());
    }
}
