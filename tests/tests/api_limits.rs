//! `tracking-api` under hostile clients: the real binary on a real socket, spoken to byte by byte (raw
//! `TcpStream`), on the real RabbitMQ and PostgreSQL. Slow headers and slow bodies are cut within their bounds,
//! connections beyond `API_MAX_CONNECTIONS` wait, a flood from one address takes no more than
//! `API_MAX_CONNECTIONS_PER_ADDRESS` of them (another client, from another loopback address, is answered at once),
//! a client that does not read its answers and an idle keep-alive connection are cut, a call that hangs gets 503
//! after `API_REQUEST_TIMEOUT_MS`, and an order's tracking answer is bounded.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tracking_tests::{TestEnv, Worker, free_addr, s10};

const TOKEN: &str = "api-token-for-tests-0123456789-abcdef";

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
        // The address it listens on: another than `addr` when that port was taken before it could bind it.
        let addr = worker.http_addr()?;
        Ok(Api {
            _worker: worker,
            addr,
        })
    }

    async fn connect(&self) -> anyhow::Result<TcpStream> {
        Ok(TcpStream::connect(self.addr).await?)
    }

    /// A connection from `from` (any 127.0.0.0/8 address: all loopback on Linux), with the given receive buffer.
    async fn connect_from(
        &self,
        from: &str,
        recv_buffer: Option<u32>,
    ) -> anyhow::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        socket.bind(SocketAddr::new(from.parse::<IpAddr>()?, 0))?;
        Ok(socket.connect(self.addr).await?)
    }

    /// A whole `GET /openapi.json` on a fresh connection: the status line of the answer.
    async fn probe(&self) -> anyhow::Result<String> {
        let s = self.connect().await?;
        Self::probe_on(s).await
    }

    /// A whole `GET /openapi.json` on `s`: the status line of the answer.
    async fn probe_on(mut s: TcpStream) -> anyhow::Result<String> {
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
            "INSERT INTO shipments (carrier, tracking_code) VALUES ('correios', $1) RETURNING id",
        )
        .bind(s10("BG", n))
        .fetch_one(&env.pool)
        .await?;
        tracking_tests::add_order(
            &env.pool,
            id,
            &tracking_tests::Order::new("BIG-1", "ana@example.com"),
        )
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

/// `n` connections from 127.0.0.1, each with half a request line sent, opened 100 at a time.
async fn half_sent(api: &Api, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut all = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let opening = (chunk * 100..n.min(chunk * 100 + 100)).map(|_| async {
            let mut s = api.connect_from("127.0.0.1", None).await?;
            s.write_all(b"GET /openapi.json HT").await?;
            anyhow::Ok(s)
        });
        for s in futures_util::future::join_all(opening).await {
            all.push(s?);
        }
    }
    Ok(all)
}

/// Whether the server closed `s` (an answer, then the end, or a reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    tokio::time::timeout(within, read_all(s)).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_sent_connections_from_one_address_do_not_delay_another_client()
-> anyhow::Result<()> {
    let env = env().await?;
    // Headers may take a minute: only the per-address bound can keep the flood from every slot.
    let api = Api::start(
        &env,
        &[
            ("API_HEADER_TIMEOUT_MS", "60000"),
            ("API_MAX_CONNECTIONS_PER_ADDRESS", "32"),
        ],
    )
    .await?;
    let mut flood = half_sent(&api, 1000).await?;
    // The flooder keeps opening more while the other client calls.
    let stop = tokio_util::sync::CancellationToken::new();
    let reopening = tokio::spawn({
        let stop = stop.clone();
        let addr = api.addr;
        async move {
            let mut opened = 0u32;
            while !stop.is_cancelled() {
                let batch = (0..50).map(|_| async move {
                    let socket = TcpSocket::new_v4()?;
                    socket.bind("127.0.0.1:0".parse()?)?;
                    let mut s = socket.connect(addr).await?;
                    s.write_all(b"GET /openapi.json HT").await?;
                    anyhow::Ok(s)
                });
                let held: Vec<_> = futures_util::future::join_all(batch).await;
                opened += held.iter().filter(|s| s.is_ok()).count() as u32;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            opened
        }
    });
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let call = async {
            let s = api.connect_from("127.0.0.2", None).await?;
            let connected = started.elapsed();
            anyhow::Ok((connected, Api::probe_on(s).await?))
        };
        let (connected, status) = tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .map_err(|_| {
                anyhow::anyhow!("another client was not answered within 1 s: {latencies:?}")
            })??;
        latencies.push((connected, started.elapsed()));
        assert_eq!(status, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let reopened = reopening.await?;
    let slowest = latencies.iter().map(|l| l.1).max().unwrap_or_default();
    eprintln!(
        "another client's calls under the flood: slowest {slowest:?}, all (connected, answered) {latencies:?}; \
         the flooder opened {reopened} more meanwhile"
    );
    assert!(reopened > 0, "the flood went on during the calls");
    // Of the first thousand, the server holds exactly the bound and closed the rest at once.
    let checks = flood
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_secs(2)));
    let closed = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .filter(|c| *c)
        .count();
    assert_eq!(1000 - closed, 32, "connections still held for 127.0.0.1");
    // A complete call from the flooding address is refused while it holds its 32; another address is served.
    let mut s = api.connect_from("127.0.0.1", None).await?;
    s.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        .await?;
    // Let the request arrive before the accept loop reads what was sent (then the 429 is delivered, not reset).
    let answer = tokio::time::timeout(Duration::from_secs(5), read_all(&mut s)).await??;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || status_line(&answer) == "HTTP/1.1 429 Too Many Requests",
        "{text}"
    );
    assert_eq!(
        Api::probe_on(api.connect_from("127.0.0.3", None).await?).await?,
        "HTTP/1.1 200 OK"
    );
    // Once the flood goes, the address is served again.
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        Api::probe_on(api.connect_from("127.0.0.1", None).await?).await?,
        "HTTP/1.1 200 OK"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_cut_after_the_write_timeout() -> anyhow::Result<()>
{
    let env = env().await?;
    let api = Api::start(
        &env,
        &[
            ("API_WRITE_TIMEOUT_MS", "1000"),
            ("API_HEADER_TIMEOUT_MS", "60000"),
        ],
    )
    .await?;
    // A small receive window, and requests pipelined without ever reading an answer: the server's writes stall.
    let s = api.connect_from("127.0.0.1", Some(4096)).await?;
    let (_reader, mut writer) = s.into_split();
    let started = Instant::now();
    let writing = tokio::spawn(async move {
        let batch = b"GET /openapi.json HTTP/1.1\r\nHost: api\r\n\r\n".repeat(100);
        let mut sent = 0usize;
        loop {
            if let Err(e) = writer.write_all(&batch).await {
                return (sent, e);
            }
            sent += 100;
        }
    });
    // Without a write timeout the server stops reading once its answers stall, and this write blocks forever.
    let (sent, error) = tokio::time::timeout(Duration::from_secs(15), writing)
        .await
        .map_err(|_| {
            anyhow::anyhow!("a client that reads nothing was still connected after 15 s")
        })??;
    let cut_after = started.elapsed();
    eprintln!("cut after {cut_after:?} ({sent} requests sent, then: {error})");
    assert!(
        cut_after >= Duration::from_millis(900),
        "cut before the write timeout: {cut_after:?}"
    );
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error}"
    );
    assert_eq!(api.probe().await?, "HTTP/1.1 200 OK");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() -> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(&env, &[("API_HEADER_TIMEOUT_MS", "1000")]).await?;
    let mut s = api.connect().await?;
    s.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: api\r\n\r\n")
        .await?;
    // The whole answer (its length from Content-Length), then nothing more is sent.
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let whole = loop {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before the answer was complete");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .ok_or_else(|| anyhow::anyhow!("no content-length: {head}"))?
                .parse()?;
            if body.len() >= length {
                break head.to_owned();
            }
        }
    };
    assert!(whole.starts_with("HTTP/1.1 200 OK"), "{whole}");
    let idle_from = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(5), read_all(&mut s))
        .await
        .map_err(|_| anyhow::anyhow!("an idle keep-alive connection was still open after 5 s"))??;
    let idle_for = idle_from.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900) && idle_for < Duration::from_secs(3),
        "{idle_for:?}"
    );
    assert!(rest.is_empty() || status_line(&rest).contains(" 408 "));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_answered_within_the_request_timeout_gets_503_and_the_api_goes_on()
-> anyhow::Result<()> {
    let env = env().await?;
    let api = Api::start(&env, &[("API_REQUEST_TIMEOUT_MS", "1000")]).await?;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/orders/HANG-1/tracking", api.addr);
    // A migration-like lock: every read of shipments waits for it.
    let mut lock = env.pool.begin().await?;
    sqlx::query("LOCK TABLE shipments IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await?;
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        http.get(&url).bearer_auth(TOKEN).send(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("a hanging call was not answered within 5 s"))??;
    let waited = started.elapsed();
    assert_eq!(resp.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let body: Value = resp.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("API_REQUEST_TIMEOUT_MS"),
        "{body}"
    );
    // Calls that need no table are answered meanwhile.
    assert_eq!(api.probe().await?, "HTTP/1.1 200 OK");
    lock.rollback().await?;
    let resp = http.get(&url).bearer_auth(TOKEN).send().await?;
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
    Ok(())
}

/// A port taken between `free_addr` and the API's bind (by another test's server, say) costs a restart on a new
/// port rather than a failed test: `Worker` starts it again, and the test reads the address it was given last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_port_is_replaced_by_a_free_one() -> anyhow::Result<()> {
    let env = env().await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?;
    let mut worker = Worker::spawn(
        &env,
        "tracking-api",
        &[
            ("HTTP_ADDR", taken_addr.to_string()),
            ("API_TOKEN", TOKEN.to_owned()),
        ],
    )?;
    worker.wait_healthy(Duration::from_secs(60)).await?;
    let addr = worker.http_addr()?;
    assert_ne!(addr, taken_addr);
    let api = Api {
        _worker: worker,
        addr,
    };
    let mut s = api.connect().await?;
    s.write_all(
        b"GET /v1/shipments/DL746686536BR HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), read_all(&mut s)).await??;
    assert!(status_line(&answer).starts_with("HTTP/1.1 "), "{answer:?}");
    drop(taken);
    Ok(())
}
