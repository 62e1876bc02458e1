//! `tracking-api` under hostile clients: the real binary on a real socket, spoken to byte by byte (raw
//! `TcpStream`), on the real RabbitMQ and PostgreSQL. Slow headers and slow bodies are cut within their bounds,
//! connections beyond `API_MAX_CONNECTIONS` wait, and an order's tracking answer is bounded.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_tracking_answers_the_newest_events_and_shipments_within_the_bounds()
-> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(
        &env,
        &[
            ("API_TRACKING_MAX_EVENTS", "3"),
            ("API_TRACKING_MAX_SHIPMENTS", "2"),
        ],
    )
    .await?;
    let mut ids = Vec::new();
    for n in 1..=3 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO shipments (carrier, tracking_code, order_id, customer_email) \
             VALUES ('correios', $1, 'BIG-1', 'ana@example.com') RETURNING id",
        )
        .bind(s10("BG", n))
        .fetch_one(&env.pool)
        .await?;
        ids.push(id);
    }
    let newest = ids[2];
    // Ten events an hour apart (the newest last by carrier time), inserted newest first.
    sqlx::query(
        "INSERT INTO tracking_events (shipment_id, fingerprint, source, code, description, occurred_at) \
         SELECT $1, 'fp-' || n, 'carrier', 'E' || n, 'event ' || n, \
                TIMESTAMPTZ '2025-11-20T10:00:00Z' + make_interval(hours => n) \
         FROM generate_series(10, 1, -1) AS n",
    )
    .bind(newest)
    .execute(&env.pool)
    .await?;
    sqlx::query(
        "INSERT INTO status_changes (change_id, shipment_id, status, previous_status, occurred_at, payload) \
         SELECT gen_random_uuid(), $1, 'in_transit', 'registered', now(), jsonb_build_object('reason', 'change ' || n) \
         FROM generate_series(1, 5) AS n ORDER BY n",
    )
    .bind(newest)
    .execute(&env.pool)
    .await?;

    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/orders/BIG-1/tracking", api.addr))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let body: Value = resp.json().await?;
    assert_eq!(body["shipments_total"], 3, "{body}");
    assert_eq!(body["shipments_truncated"], true);
    let shipments = body["shipments"].as_array().unwrap();
    let codes: Vec<&str> = shipments
        .iter()
        .map(|s| s["tracking_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, [s10("BG", 2), s10("BG", 3)], "the newest shipments");
    assert_eq!(shipments[0]["events_total"], 0);
    assert_eq!(shipments[0]["events_truncated"], false);
    let big = &shipments[1];
    assert_eq!(big["events_total"], 10);
    assert_eq!(big["events_truncated"], true);
    let events: Vec<&str> = big["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["E8", "E9", "E10"],
        "the newest events, oldest first"
    );
    assert_eq!(big["changes_total"], 5);
    assert_eq!(big["changes_truncated"], true);
    let changes: Vec<&str> = big["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["change 3", "change 4", "change 5"]);
    // Every field of the answer is documented.
    let doc: Value = serde_json::from_str(tracking_api::OPENAPI)?;
    for (schema, object) in [("OrderTracking", &body), ("Shipment", big)] {
        for key in object.as_object().unwrap().keys() {
            assert!(
                doc["components"]["schemas"][schema]["properties"][key].is_object(),
                "{schema}.{key} is answered but not in openapi.json"
            );
        }
    }
    Ok(())
}
