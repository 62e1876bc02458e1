//! The one stream type lettre speaks SMTP on: TCP or TLS over TCP, opened by [`crate::smtp`], with, after a
//! STARTTLS done by [`crate::starttls`], a greeting of ours in front (lettre waits for a greeting before its
//! EHLO, and after STARTTLS the server sends none).

use lettre::transport::smtp::client::AsyncTokioStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What lettre reads first on a connection whose greeting was already read before STARTTLS.
const GREETING: &[u8] = b"220 the connection was greeted before STARTTLS\r\n";

enum Inner {
    Plain(TcpStream),
    Tls(Box<tokio_native_tls::TlsStream<TcpStream>>),
}

pub(crate) struct SmtpStream {
    /// The greeting still to be read (empty when the server's own greeting is still in the stream).
    greeting: &'static [u8],
    inner: Inner,
}

impl SmtpStream {
    /// A connection whose greeting the server has not sent yet.
    pub(crate) fn plain(tcp: TcpStream) -> SmtpStream {
        SmtpStream {
            greeting: b"",
            inner: Inner::Plain(tcp),
        }
    }

    /// TLS from the first byte: the server greets over TLS.
    pub(crate) fn tls(tls: tokio_native_tls::TlsStream<TcpStream>) -> SmtpStream {
        SmtpStream {
            greeting: b"",
            inner: Inner::Tls(Box::new(tls)),
        }
    }

    /// A connection past STARTTLS (or past an EHLO that offered none), behind a greeting of ours.
    pub(crate) fn greeted(inner: SmtpStream) -> SmtpStream {
        SmtpStream {
            greeting: GREETING,
            inner: inner.inner,
        }
    }
}

impl std::fmt::Debug for SmtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Plain(_) => "SmtpStream(plain)",
            Inner::Tls(_) => "SmtpStream(tls)",
        })
    }
}

impl AsyncTokioStream for SmtpStream {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match &self.inner {
            Inner::Plain(tcp) => tcp.peer_addr(),
            Inner::Tls(tls) => tls.get_ref().get_ref().get_ref().peer_addr(),
        }
    }
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.greeting.is_empty() {
            let n = self.greeting.len().min(buf.remaining());
            buf.put_slice(&self.greeting[..n]);
            self.greeting = &self.greeting[n..];
            return Poll::Ready(Ok(()));
        }
        match &mut self.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Inner::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Inner::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Inner::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Inner::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_greeted_stream_gives_the_greeting_then_the_connections_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            peer.write_all(b"inner bytes").await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut greeted = SmtpStream::greeted(SmtpStream::plain(tcp));
        let want = GREETING.len() + b"inner bytes".len();
        let mut all = Vec::new();
        // Small reads: the greeting is given in pieces as asked.
        let mut buf = [0u8; 7];
        while all.len() < want {
            let n = greeted.read(&mut buf).await.unwrap();
            assert!(n > 0);
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, [GREETING, b"inner bytes"].concat());
        assert_eq!(greeted.peer_addr().unwrap(), addr);
    }
}
