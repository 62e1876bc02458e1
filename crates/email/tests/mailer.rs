//! The mailer's settings checks, its Message-IDs, and its retry-or-park decision against a scripted SMTP
//! server on a local port (the full round trip through a real SMTP server is in the end-to-end tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use secrecy::SecretString;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracking_domain::EmailAddress;
use tracking_email::{Mailer, MailerConfigError, MailerSettings, RenderedEmail, SendError};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn settings(url: &str, from: &str) -> MailerSettings {
    MailerSettings {
        smtp_url: SecretString::from(url.to_owned()),
        from: from.into(),
        timeout: Duration::from_secs(5),
        pool_max_size: 2,
        ca: None,
        auth_retry: Duration::from_secs(300),
    }
}

fn email() -> RenderedEmail {
    RenderedEmail {
        subject: "Our store: seu pedido foi entregue".into(),
        text: "Olá, Ana Souza!\n\nSeu pedido foi entregue.\n".into(),
        html: "<p>Olá, Ana Souza!</p>".into(),
    }
}

#[tokio::test]
async fn message_ids_are_derived_from_the_change_and_the_sender_domain() -> TestResult {
    let id = Uuid::parse_str("6a1f4c0e-9b7d-4e21-8f3a-2d5c7b91e044")?;
    let named = Mailer::new(&settings(
        "smtp://127.0.0.1:1025",
        "Our store <noreply@store.example>",
    ))?;
    assert_eq!(
        named.message_id(id),
        "<6a1f4c0e-9b7d-4e21-8f3a-2d5c7b91e044@store.example>"
    );
    let bare = Mailer::new(&settings(
        "smtp://127.0.0.1:1025",
        "noreply@mail.shop.example",
    ))?;
    assert_eq!(
        bare.message_id(id),
        "<6a1f4c0e-9b7d-4e21-8f3a-2d5c7b91e044@mail.shop.example>"
    );
    assert_eq!(bare.message_id(id), bare.message_id(id));
    Ok(())
}

#[tokio::test]
async fn bad_urls_are_refused_without_showing_the_password() {
    for url in [
        "http://user:hunter2@smtp.example:25",
        "not a url hunter2",
        "smtps://user:hunter2@:465",
        "smtp://user:hunter2@smtp.example:99999",
    ] {
        let err = Mailer::new(&settings(url, "noreply@store.example")).unwrap_err();
        assert!(
            matches!(err, MailerConfigError::SmtpUrl(_)),
            "{url}: {err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("hunter2"),
            "{url}: the password leaked: {shown}"
        );
        assert!(shown.contains("SMTP URL"), "{shown}");
    }
    let s = settings(
        "smtps://user:hunter2@smtp.example:465",
        "noreply@store.example",
    );
    assert!(!format!("{s:?}").contains("hunter2"));
    let mailer = Mailer::new(&s).unwrap();
    assert!(!format!("{mailer:?}").contains("hunter2"));
}

#[tokio::test]
async fn bad_senders_and_limits_are_refused() {
    for from in [
        "",
        "noreply",
        "Store <noreply>",
        "Store noreply@store.example>",
        "a@b@c.example",
    ] {
        let err = Mailer::new(&settings("smtp://127.0.0.1:1025", from)).unwrap_err();
        assert!(
            matches!(err, MailerConfigError::From { .. }),
            "{from:?}: {err:?}"
        );
        assert!(err.to_string().contains("sender address"), "{err}");
    }
    let mut s = settings("smtp://127.0.0.1:1025", "noreply@store.example");
    s.pool_max_size = 0;
    assert!(matches!(Mailer::new(&s), Err(MailerConfigError::PoolSize)));
    let mut s = settings("smtp://127.0.0.1:1025", "noreply@store.example");
    s.timeout = Duration::ZERO;
    assert!(matches!(Mailer::new(&s), Err(MailerConfigError::Timeout)));
}

#[test]
fn a_mailer_can_be_made_outside_a_runtime() {
    // Nothing runs in the background: connections are opened by the sends themselves.
    assert!(Mailer::new(&settings("smtp://127.0.0.1:1025", "noreply@store.example")).is_ok());
}

/// A scripted SMTP server: the n-th connection answers RCPT TO with the n-th reply (`None`: it stops
/// answering there). Reports each accepted message's DATA, and counts connections.
async fn scripted_server(
    rcpt_replies: Vec<Option<&'static str>>,
) -> (u16, mpsc::UnboundedReceiver<String>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        for rcpt_reply in rcpt_replies {
            let (socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply = if upper.starts_with("EHLO") {
                        "250-test\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("RCPT") {
                        match rcpt_reply {
                            Some(reply) => reply,
                            None => {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                return;
                            }
                        }
                    } else if upper.starts_with("DATA") {
                        write.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        let _ = tx.send(data);
                        "250 2.0.0 queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        "250 ok\r\n"
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx, connections)
}

fn ana() -> EmailAddress {
    EmailAddress::parse("ana@example.com").unwrap()
}

#[tokio::test]
async fn an_accepted_email_carries_its_headers_and_both_parts() -> TestResult {
    let (port, mut received, _) = scripted_server(vec![Some("250 2.1.5 ok\r\n")]).await;
    let mailer = Mailer::new(&settings(
        &format!("smtp://127.0.0.1:{port}"),
        "Our store <noreply@store.example>",
    ))?;
    let id = mailer.message_id(Uuid::nil());
    mailer
        .send(&ana(), Some("Ana Souza"), &email(), &id)
        .await?;
    let data = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await?
        .unwrap();
    assert!(
        data.contains("Message-ID: <00000000-0000-0000-0000-000000000000@store.example>"),
        "{data}"
    );
    assert!(
        data.contains("From: \"Our store\" <noreply@store.example>"),
        "{data}"
    );
    assert!(
        data.contains("To: \"Ana Souza\" <ana@example.com>"),
        "{data}"
    );
    assert!(
        data.contains("Subject: Our store: seu pedido foi entregue"),
        "{data}"
    );
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(
        data.contains("Content-Type: text/plain; charset=utf-8"),
        "{data}"
    );
    assert!(
        data.contains("Content-Type: text/html; charset=utf-8"),
        "{data}"
    );
    Ok(())
}

#[tokio::test]
async fn a_5xx_answer_is_permanent_and_shows_the_server_answer() -> TestResult {
    let (port, _received, _) =
        scripted_server(vec![Some("550 5.1.1 mailbox unavailable\r\n")]).await;
    let mailer = Mailer::new(&settings(
        &format!("smtp://127.0.0.1:{port}"),
        "noreply@store.example",
    ))?;
    let err = mailer
        .send(&ana(), None, &email(), &mailer.message_id(Uuid::nil()))
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(matches!(err, SendError::Permanent(_)));
    let shown = err.to_string();
    assert!(
        shown.contains("550") && shown.contains("mailbox unavailable"),
        "{shown}"
    );
    Ok(())
}

#[tokio::test]
async fn a_4xx_answer_is_transient() -> TestResult {
    let (port, _received, _) = scripted_server(vec![Some("451 4.3.0 try again later\r\n")]).await;
    let mailer = Mailer::new(&settings(
        &format!("smtp://127.0.0.1:{port}"),
        "noreply@store.example",
    ))?;
    let err = mailer
        .send(&ana(), None, &email(), &mailer.message_id(Uuid::nil()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("451"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_refused_connection_is_transient() -> TestResult {
    // Bind and drop: the port is free, nobody listens.
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let mailer = Mailer::new(&settings(
        &format!("smtp://127.0.0.1:{port}"),
        "noreply@store.example",
    ))?;
    let err = mailer
        .send(&ana(), None, &email(), &mailer.message_id(Uuid::nil()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out_as_transient_and_its_connection_is_not_reused()
-> TestResult {
    // First connection: stops answering at RCPT TO. Second: accepts.
    let (port, mut received, connections) =
        scripted_server(vec![None, Some("250 2.1.5 ok\r\n")]).await;
    let mut s = settings(&format!("smtp://127.0.0.1:{port}"), "noreply@store.example");
    s.timeout = Duration::from_millis(500);
    let mailer = Mailer::new(&s)?;
    let id = mailer.message_id(Uuid::nil());
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        mailer.send(&ana(), None, &email(), &id),
    )
    .await?
    .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("500ms"), "{err}");

    // The abandoned connection must not serve the next email: it would wait on the silent server,
    // or read the previous command's late answer.
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        mailer.send(&ana(), None, &email(), &id),
    )
    .await??;
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert!(received.recv().await.is_some());
    Ok(())
}

#[test]
fn the_mailer_can_be_shared_between_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Mailer>();
}
