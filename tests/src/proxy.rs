//! A TCP proxy in front of a real server, which a test can cut: while cut, it drops every open connection and
//! refuses new ones, as a server that went down would. It gives one test a PostgreSQL outage without stopping the
//! PostgreSQL that other tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct CutProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Cancelled (and replaced) at each cut: every open connection ends with it.
    sessions: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl CutProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (c, s, st) = (cut.clone(), sessions.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = st.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let session = s.lock().map(|t| t.clone()).unwrap_or_default();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = session.cancelled() => {}
                    }
                });
            }
        });
        Ok(CutProxy {
            addr,
            cut,
            sessions,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut t) = self.sessions.lock() {
            t.cancel();
            *t = CancellationToken::new();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}
