//! STARTTLS (RFC 3207) done here, on the bare TCP connection, before lettre speaks SMTP on it.
//!
//! lettre reads replies through a buffer it keeps across STARTTLS: bytes that arrive in clear after the server's
//! go-ahead (sent by the server, or put there by someone in between) would be read as answers given over TLS, so
//! a forged `250` could pass for the server's acceptance of an email it never saw (the "response injection" of
//! RFC 3207's section 6). Here the replies before TLS are read a byte at a time, never past their last line: what
//! follows the go-ahead reaches the TLS handshake, which refuses it. lettre then gets the TLS stream behind a
//! greeting of ours ([`crate::stream::SmtpStream::greeted`]) and starts with EHLO over TLS, as after its own
//! STARTTLS.

use lettre::transport::smtp::extension::ClientId;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most bytes one reply before TLS (the greeting, the EHLO answer) may take.
const MAX_REPLY: usize = 16 * 1024;

/// One reply: its code and its lines' text (after the code).
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join(" / ")
    }
}

/// Why STARTTLS did not happen.
pub(crate) enum Refused {
    /// The server does not offer it (nothing was sent but EHLO; the connection is at the point after EHLO).
    NotOffered,
    /// The server answered something other than what the exchange needs, or the connection failed.
    Failed(String),
}

/// Greets the server, sends EHLO and, when the server offers STARTTLS, STARTTLS: `Ok` when the next byte on `tcp`
/// belongs to the TLS handshake.
pub(crate) async fn negotiate(tcp: &mut TcpStream, hello: &ClientId) -> Result<(), Refused> {
    expect(tcp, 220, "the server's greeting is").await?;
    send(tcp, &format!("EHLO {hello}\r\n")).await?;
    let ehlo = expect(tcp, 250, "EHLO was answered").await?;
    let offered = ehlo.lines.iter().skip(1).any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("STARTTLS"))
    });
    if !offered {
        return Err(Refused::NotOffered);
    }
    send(tcp, "STARTTLS\r\n").await?;
    expect(tcp, 220, "STARTTLS was answered").await?;
    Ok(())
}

async fn send(tcp: &mut TcpStream, command: &str) -> Result<(), Refused> {
    tcp.write_all(command.as_bytes())
        .await
        .map_err(|e| Refused::Failed(e.to_string()))
}

/// The next reply, when its code is `code`; otherwise a failure saying `what` and the reply.
async fn expect(tcp: &mut TcpStream, code: u16, what: &str) -> Result<Reply, Refused> {
    let reply = read_reply(tcp)
        .await
        .map_err(|e| Refused::Failed(e.to_string()))?;
    if reply.code != code {
        return Err(Refused::Failed(format!(
            "{what} {} {}",
            reply.code,
            reply.text()
        )));
    }
    Ok(reply)
}

/// Reads one reply, up to the end of its last line (`NNN text`, after any `NNN-text` lines) and not a byte more.
async fn read_reply(tcp: &mut TcpStream) -> io::Result<Reply> {
    let mut lines = Vec::new();
    let mut line = Vec::new();
    let mut total = 0;
    loop {
        let byte = tcp.read_u8().await?;
        total += 1;
        if total > MAX_REPLY {
            return Err(io::Error::other(format!(
                "a reply longer than {MAX_REPLY} bytes"
            )));
        }
        if byte != b'\n' {
            line.push(byte);
            continue;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        line.clear();
        let code = text
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| io::Error::other("an answer that is not an SMTP reply"))?;
        let last = text.as_bytes().get(3) != Some(&b'-');
        lines.push(text.get(4..).unwrap_or("").to_owned());
        if last {
            return Ok(Reply { code, lines });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that writes `script` at once after each line it reads, in turn; returns what it read.
    async fn scripted(script: Vec<&'static [u8]>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = tokio::io::BufReader::new(stream);
            let mut heard = Vec::new();
            let mut script = script.into_iter();
            stream
                .get_mut()
                .write_all(script.next().unwrap())
                .await
                .unwrap();
            for reply in script {
                let mut line = String::new();
                tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line)
                    .await
                    .unwrap();
                heard.push(line.trim_end().to_owned());
                stream.get_mut().write_all(reply).await.unwrap();
            }
            heard
        });
        (port, task)
    }

    #[tokio::test]
    async fn nothing_after_the_go_ahead_is_read() {
        let (port, server) = scripted(vec![
            b"220 mx ready\r\n",
            b"250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
            // The go-ahead, and a forged answer right behind it.
            b"220 go ahead\r\n250 2.0.0 forged\r\n",
        ])
        .await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let hello = ClientId::Domain("loja.example".into());
        assert!(negotiate(&mut tcp, &hello).await.is_ok());
        assert_eq!(server.await.unwrap(), ["EHLO loja.example", "STARTTLS"]);
        // What follows the go-ahead is still in the socket, for the TLS handshake to refuse.
        let mut rest = vec![0; 64];
        let n = tcp.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"250 2.0.0 forged\r\n");
    }

    #[tokio::test]
    async fn a_server_without_starttls_hears_nothing_but_ehlo() {
        let (port, server) = scripted(vec![
            b"220 mx ready\r\n",
            b"250-mx\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
        ])
        .await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let result = negotiate(&mut tcp, &ClientId::Domain("h".into())).await;
        assert!(matches!(result, Err(Refused::NotOffered)));
        assert_eq!(server.await.unwrap(), ["EHLO h"]);
    }

    #[tokio::test]
    async fn refusals_and_nonsense_are_failures_with_the_answer() {
        for (script, expected) in [
            (
                vec![&b"554 5.7.1 go away\r\n"[..]],
                "greeting is 554 5.7.1 go away",
            ),
            (
                vec![&b"220 mx\r\n"[..], b"550 no\r\n"],
                "EHLO was answered 550 no",
            ),
            (
                vec![
                    &b"220 mx\r\n"[..],
                    b"250-mx\r\n250 STARTTLS\r\n",
                    b"454 4.7.0 TLS not available\r\n",
                ],
                "STARTTLS was answered 454",
            ),
            (
                vec![&b"HTTP/1.1 400 Bad Request\r\n"[..]],
                "not an SMTP reply",
            ),
        ] {
            let (port, _server) = scripted(script).await;
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            match negotiate(&mut tcp, &ClientId::Domain("h".into())).await {
                Err(Refused::Failed(text)) => assert!(text.contains(expected), "{text}"),
                _ => panic!("{expected}: not a failure"),
            }
        }
    }

    #[tokio::test]
    async fn an_endless_reply_is_cut_at_its_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let line = b"220-"
                .iter()
                .chain(&[b'x'; 1000])
                .chain(b"\r\n")
                .copied()
                .collect::<Vec<u8>>();
            while stream.write_all(&line).await.is_ok() {}
        });
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        match negotiate(&mut tcp, &ClientId::Domain("h".into())).await {
            Err(Refused::Failed(text)) => assert!(text.contains("longer than"), "{text}"),
            _ => panic!("not cut"),
        }
    }
}
