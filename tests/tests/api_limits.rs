//! `tracking-api` under hostile clients: the real binary on a real socket, spoken to byte by byte (raw
//! `TcpStream`), on the real RabbitMQ and PostgreSQL. Slow headers and slow bodies are cut within their bounds,
//! and connections beyond `API_MAX_CONNECTIONS` wait.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracking_tests::{TestEnv, Worker, free_addr, s10};

const TOKEN: &str = "api-token-for-tests-0123456789";

struct Api {
    _worker: Worker,
    addr: SocketAddr,
}

impl Api {
    async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> anyhow::Result<Api> {
        let addr = free_addr();
        let mut settings = vec![
            ("HTTP_ADDR", addr.to_string()),
            ("API_TOKEN", TOKEN.to_owned()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut worker = Worker::spawn(env, "tracking-api", &settings)?;
        worker.wait_healthy(Duration::from_secs(60)).await?;
        Ok(Api {
            _worker: worker,
            addr,
        })
    }

    async fn connect(&self) -> anyhow::Result<TcpStream> {
        Ok(TcpStream::connect(self.addr).await?)
    }

    /// A whole `GET /openapi.json` on a fresh connection: the status line of the answer.
    async fn probe(&self) -> anyhow::Result<String> {
        let mut s = self.connect().await?;
        s.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            .await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), read_all(&mut s)).await??;
        Ok(status_line(&answer))
    }
}

async fn env() -> anyhow::Result<TestEnv> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    Ok(env)
}

/// Everything until the server closes the connection (a reset counts as closed too).
async fn read_all(s: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e.into()),
        }
    }
}

fn status_line(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_after_the_header_timeout()
-> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(&env, &[("API_HEADER_TIMEOUT_MS", "1000")]).await?;

    // Connects and says nothing.
    let mut silent = api.connect().await?;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_all(&mut silent))
        .await
        .map_err(|_| anyhow::anyhow!("a silent connection was still open after 5 s"))??;
    let silent_for = started.elapsed();
    assert!(
        silent_for >= Duration::from_millis(900),
        "cut too early: {silent_for:?}"
    );
    assert!(
        answer.is_empty() || status_line(&answer).contains(" 408 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Trickles a header line, a byte every 100 ms: each byte is on time, the headers never are.
    let trickle = api.connect().await?;
    let (mut reader, mut writer) = trickle.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer
            .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: api\r\nX-Slow: ")
            .await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        match reader.read_to_end(&mut buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("a trickling connection was still open after 5 s"))?;
    closed?;
    let trickled_for = started.elapsed();
    assert!(
        trickled_for >= Duration::from_millis(900) && trickled_for < Duration::from_secs(4),
        "{trickled_for:?}"
    );
    writing.abort();

    // Nobody else is affected.
    assert_eq!(api.probe().await?, "HTTP/1.1 200 OK");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_within_the_body_timeout_and_publishes_nothing()
-> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(&env, &[("API_BODY_TIMEOUT_MS", "1000")]).await?;
    let amqp = env.amqp().await?;
    for path in [
        "/v1/tracking-requests".to_owned(),
        format!("/v1/shipments/{}/events", s10("SB", 1)),
        "/v1/orders/SB-1/delivery-confirmation".to_owned(),
    ] {
        let mut s = api.connect().await?;
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"order_id\": "
            )
            .as_bytes(),
        )
        .await?;
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_all(&mut s))
            .await
            .map_err(|_| {
                anyhow::anyhow!("{path}: a stalled body was still waited for after 5 s")
            })??;
        let waited = started.elapsed();
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 408 Request Timeout",
            "{path}: {text}"
        );
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
            "{path}: {waited:?}"
        );
        let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap())?;
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("API_BODY_TIMEOUT_MS"),
            "{body}"
        );
    }
    assert_eq!(amqp.count("tracking.requests").await?, 0);
    assert_eq!(amqp.count("normalizer.carrier-events").await?, 0);
    // A body that arrives in time is read as before.
    let mut s = api.connect().await?;
    s.write_all(
        format!(
            "POST /v1/tracking-requests HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"
        )
        .as_bytes(),
    )
    .await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_all(&mut s)).await??;
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 422 Unprocessable Entity",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() -> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(
        &env,
        &[
            ("API_MAX_CONNECTIONS", "2"),
            ("API_HEADER_TIMEOUT_MS", "60000"),
        ],
    )
    .await?;
    // Two slow clients hold both connections, headers half sent.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = api.connect().await?;
        s.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: api\r\n")
            .await?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third, complete request waits: nothing is answered while the cap is reached.
    let mut third = api.connect().await?;
    third
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        .await?;
    let mut peek = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), third.peek(&mut peek)).await;
    assert!(
        early.is_err(),
        "the third connection was served beyond API_MAX_CONNECTIONS=2: {early:?}"
    );
    // One slow client goes away: the third is served.
    drop(held.remove(0));
    let answer = tokio::time::timeout(Duration::from_secs(5), read_all(&mut third))
        .await
        .map_err(|_| anyhow::anyhow!("the waiting connection was not served once one closed"))??;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
    // The second slow client still holds its place; the freed one serves again.
    assert_eq!(api.probe().await?, "HTTP/1.1 200 OK");
    drop(held);
    Ok(())
}
