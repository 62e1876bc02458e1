//! Several stores (STORES_FILE), each with its own Correios account, on one Correios simulator serving several
//! accounts, with the real fetcher (and normalizer and tracking-api for the API scopes), RabbitMQ and PostgreSQL.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tracking_sim::correios::{AccessRefusal, CorreiosSim, Journey, Script, SimAccount, SimConfig};
use tracking_tests::{
    TestEnv, Worker, correios_env, eventually, free_addr, request, s10, wait_finished,
};

const EVENTS_QUEUE: &str = "normalizer.carrier-events";
const TOKEN_A: &str = "loja-a-api-token-0123456789abcdef0123";
const TOKEN_B: &str = "loja-b-api-token-0123456789abcdef0123";
const OPERATOR: &str = "operator-api-token-0123456789abcdef";
const ACCOUNT_A: &str = "correios:empresa-a";
const ACCOUNT_B: &str = "correios:empresa-b";

/// Two stores with their own Correios accounts (`empresa-a`, `empresa-b`) on `sim`, and their API tokens.
fn stores_file(env: &TestEnv) -> anyhow::Result<PathBuf> {
    let path = env.log_dir().join("stores.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[store]]
name = "loja-a"
display_name = "Loja A"
api_token = "{TOKEN_A}"
correios = {{ user = "empresa-a", access_code = "code-a" }}

[[store]]
name = "loja-b"
display_name = "Loja B"
api_token = "{TOKEN_B}"
correios = {{ user = "empresa-b", access_code = "code-b" }}
"#
        ),
    )?;
    Ok(path)
}

async fn sim_with_two_accounts() -> anyhow::Result<CorreiosSim> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    for (user, code) in [("empresa-a", "code-a"), ("empresa-b", "code-b")] {
        sim.add_account(SimAccount {
            user: user.into(),
            access_code: code.into(),
            postage_card: None,
        });
    }
    Ok(sim)
}

fn fetcher_settings(
    env: &TestEnv,
    sim: &CorreiosSim,
    extra: &[(&'static str, &str)],
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut s = correios_env(sim);
    s.push(("STORES_FILE", stores_file(env)?.display().to_string()));
    s.push(("FETCH_LINGER_MS", "50".into()));
    s.push(("CORREIOS_RATE_PER_SECOND", "100".into()));
    s.push(("CORREIOS_BURST", "100".into()));
    s.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Ok(s)
}

fn store_request(order: &str, code: &str, store: &str) -> Value {
    let mut r = request(order, code, "ana@example.com", "pt-BR", None);
    r["store"] = json!(store);
    r
}

/// A code of `user`'s contract, with a journey the simulator reveals whole.
fn contract_code(sim: &CorreiosSim, prefix: &str, n: u32, user: &str) -> String {
    let code = s10(prefix, n);
    sim.script(&code, Script::Journey(Journey::delivered().all_at_once()));
    sim.assign(&code, user);
    code
}

/// The tracking codes of the carrier updates now in the normalizer's queue (taken from it), with any carrier
/// message.
async fn updates(env: &TestEnv) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let amqp = env.amqp().await?;
    let mut out = Vec::new();
    for t in amqp.drain(EVENTS_QUEUE).await? {
        let v: Value = serde_json::from_slice(&t.body)?;
        out.push((
            v["tracking_code"].as_str().unwrap_or_default().to_owned(),
            v["carrier_message"].as_str().map(str::to_owned),
        ));
    }
    Ok(out)
}

async fn account(fetcher: &Worker, key: &str) -> anyhow::Result<Value> {
    let (_, health) = fetcher.health().await?;
    Ok(health["carriers"]["correios"]["accounts"][key].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_store_is_polled_with_its_own_account_and_a_revoked_one_stops_only_its_store()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = sim_with_two_accounts().await?;
    let a1 = contract_code(&sim, "SA", 1, "empresa-a");
    let b1 = contract_code(&sim, "SB", 1, "empresa-b");
    let fetcher = Worker::started(
        &env,
        "fetcher",
        &fetcher_settings(&env, &sim, &[("CARRIER_AUTH_HOLD_MS", "1000")])?,
    )
    .await?;
    let amqp = env.amqp().await?;
    for (order, code, store) in [("a-1", &a1, "loja-a"), ("b-1", &b1, "loja-b")] {
        amqp.publish(
            "tracking.requests",
            &serde_json::to_vec(&store_request(order, code, store))?,
        )
        .await?;
    }
    eventually(Duration::from_secs(30), "both stores' updates", || async {
        Ok((amqp.count(EVENTS_QUEUE).await? == 2).then_some(()))
    })
    .await?;
    // Each store's code was asked with its own account only, and each answer had the events (no SRO-009).
    assert_eq!(sim.polls_by("empresa-a", &a1), 1);
    assert_eq!(sim.polls_by("empresa-b", &a1), 0);
    assert_eq!(sim.polls_by("empresa-b", &b1), 1);
    assert_eq!(sim.polls_by("empresa-a", &b1), 0);
    assert_eq!(
        sim.polls_by("sim-user", &a1) + sim.polls_by("sim-user", &b1),
        0
    );
    let got = updates(&env).await?;
    assert!(got.iter().all(|(_, m)| m.is_none()), "{got:?}");
    let a = account(&fetcher, ACCOUNT_A).await?;
    assert_eq!(a["state"], "ok", "{a}");
    assert_eq!(a["stores"], json!(["loja-a"]), "{a}");

    // Store A's credentials are revoked: its parcels stop, its account is broken; store B goes on.
    sim.revoke("empresa-a");
    let a2 = contract_code(&sim, "SA", 2, "empresa-a");
    let b2 = contract_code(&sim, "SB", 2, "empresa-b");
    for (order, code, store) in [("a-2", &a2, "loja-a"), ("b-2", &b2, "loja-b")] {
        amqp.publish(
            "tracking.requests",
            &serde_json::to_vec(&store_request(order, code, store))?,
        )
        .await?;
    }
    let broken = eventually(
        Duration::from_secs(30),
        "store A's account broken",
        || async {
            let a = account(&fetcher, ACCOUNT_A).await?;
            Ok((a["state"] == "broken").then_some(a))
        },
    )
    .await?;
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("authentication"),
        "{broken}"
    );
    assert!(
        !broken.to_string().contains("code-a"),
        "no secret: {broken}"
    );
    eventually(Duration::from_secs(30), "store B's new update", || async {
        Ok((amqp.count(EVENTS_QUEUE).await? >= 1).then_some(()))
    })
    .await?;
    // A few more rounds of store A's request (each one back to the queue, to wait or be retried).
    let rounds = || async {
        let settled = fetcher.settled("tracking.requests").await?;
        anyhow::Ok(
            ["retried", "waited", "unavailable"]
                .iter()
                .filter_map(|o| settled.get(*o))
                .sum::<u64>(),
        )
    };
    let before = rounds().await?;
    eventually(Duration::from_secs(30), "two more rounds", || async {
        Ok((rounds().await? >= before + 2).then_some(()))
    })
    .await?;
    let got = updates(&env).await?;
    let codes: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codes, [b2.as_str()], "only store B's parcel moved");
    let b = account(&fetcher, ACCOUNT_B).await?;
    assert_eq!(b["state"], "ok", "{b}");
    let (status, health) = fetcher.health().await?;
    assert_eq!(
        status, 200,
        "a broken account does not make the fetcher unhealthy"
    );
    assert_eq!(
        health["carriers"]["correios"]["state"], "broken",
        "{health}"
    );
    assert!(
        health["carriers"]["correios"]["reason"]
            .as_str()
            .unwrap()
            .contains("account correios:empresa-a (stores loja-a)"),
        "{health}"
    );
    let metrics = fetcher.metrics().await?;
    let line = |account: &str, state: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("carrier_state{")
                    && l.contains(&format!("account=\"{account}\""))
                    && l.contains(&format!("state=\"{state}\""))
            })
            .map(str::to_owned)
    };
    let broken_line = line(ACCOUNT_A, "broken").unwrap();
    assert!(broken_line.ends_with(" 1"), "{broken_line}");
    assert!(broken_line.contains("stores=\"loja-a\""), "{broken_line}");
    assert!(line(ACCOUNT_B, "ok").unwrap().ends_with(" 1"), "{metrics}");
    // The API and trackctl read the accounts from the database.
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT account, stores, state FROM carrier_account_health ORDER BY account",
    )
    .fetch_all(&env.pool)
    .await?;
    assert!(
        rows.contains(&(ACCOUNT_A.into(), "loja-a".into(), "broken".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(ACCOUNT_B.into(), "loja-b".into(), "ok".into())),
        "{rows:?}"
    );
    // trackctl shows the accounts, one store's with --store.
    let out = std::process::Command::new(tracking_tests::target_dir().join("debug/trackctl"))
        .args(["carriers", "health", "--store", "loja-a"])
        .envs(env.worker_env())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.contains("broken")
            && l.contains("account correios:empresa-a")
            && l.contains("stores loja-a")),
        "{text}"
    );
    assert!(
        !text.contains("empresa-b"),
        "--store shows that store's accounts only: {text}"
    );
    // And tracking-api's /v1/carriers/health: all accounts for the operator, its own for a store.
    let (_api, base) = api(&env, &[]).await?;
    let http = reqwest::Client::new();
    let health = |token: &'static str| {
        let http = http.clone();
        let url = format!("{base}/v1/carriers/health");
        async move {
            let v: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    let all = health(OPERATOR).await?;
    let accounts = &all["carriers"]["correios"]["accounts"];
    assert_eq!(accounts[ACCOUNT_A]["state"], "broken", "{all}");
    assert_eq!(accounts[ACCOUNT_A]["stores"], json!(["loja-a"]), "{all}");
    assert_eq!(accounts[ACCOUNT_B]["state"], "ok", "{all}");
    let b = health(TOKEN_B).await?;
    assert_eq!(b["carriers"]["correios"]["state"], "ok", "{b}");
    assert!(
        b["carriers"]["correios"]["accounts"]
            .get(ACCOUNT_A)
            .is_none(),
        "{b}"
    );
    assert!(!b.to_string().contains("loja-a"), "{b}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_contracts_code_is_not_trackable_with_this_account_and_counted_per_account()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = sim_with_two_accounts().await?;
    // A label of store B's contract, sent as store A's.
    let b1 = contract_code(&sim, "SN", 1, "empresa-b");
    let fetcher = Worker::started(&env, "fetcher", &fetcher_settings(&env, &sim, &[])?).await?;
    let amqp = env.amqp().await?;
    amqp.publish(
        "tracking.requests",
        &serde_json::to_vec(&store_request("a-9", &b1, "loja-a"))?,
    )
    .await?;
    eventually(Duration::from_secs(30), "the update", || async {
        Ok((amqp.count(EVENTS_QUEUE).await? == 1).then_some(()))
    })
    .await?;
    let got = updates(&env).await?;
    assert!(
        got[0].1.as_deref().unwrap().starts_with("SRO-009"),
        "{got:?}"
    );
    let metrics = fetcher.metrics().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("carrier_not_trackable_answers_total{")
                && l.contains(&format!("account=\"{ACCOUNT_A}\""))
                && l.ends_with(" 1")),
        "{metrics}"
    );
    let a = account(&fetcher, ACCOUNT_A).await?;
    assert_eq!(
        a["state"], "ok",
        "an object's answer is not the account's health: {a}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtw_012_breaks_the_account_with_its_reason_and_costs_one_call_per_hold()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = sim_with_two_accounts().await?;
    sim.refuse_access("empresa-a", Some(AccessRefusal::Gtw012));
    let codes: Vec<String> = (0..10)
        .map(|n| contract_code(&sim, "SG", n, "empresa-a"))
        .collect();
    let b1 = contract_code(&sim, "SH", 1, "empresa-b");
    let fetcher = Worker::started(
        &env,
        "fetcher",
        &fetcher_settings(
            &env,
            &sim,
            &[
                ("CARRIER_AUTH_HOLD_MS", "2000"),
                ("CARRIER_RETRY_BASE_MS", "100"),
                ("CARRIER_RETRY_MAX_MS", "200"),
                ("CORREIOS_BATCH_SIZE", "2"),
                ("FETCH_CALLS_IN_FLIGHT", "1"),
                // Held requests are retried, not parked, for the length of the test.
                ("MAX_ATTEMPTS", "1000"),
            ],
        )?,
    )
    .await?;
    let amqp = env.amqp().await?;
    for (n, code) in codes.iter().enumerate() {
        amqp.publish(
            "tracking.requests",
            &serde_json::to_vec(&store_request(&format!("g-{n}"), code, "loja-a"))?,
        )
        .await?;
    }
    amqp.publish(
        "tracking.requests",
        &serde_json::to_vec(&store_request("h-1", &b1, "loja-b"))?,
    )
    .await?;
    let started = std::time::Instant::now();
    let broken = eventually(Duration::from_secs(30), "the account broken", || async {
        let a = account(&fetcher, ACCOUNT_A).await?;
        Ok((a["state"] == "broken").then_some(a))
    })
    .await?;
    let reason = broken["reason"].as_str().unwrap();
    assert!(reason.contains("GTW-012"), "{reason}");
    assert!(reason.contains("no scope for API Rastro"), "{reason}");
    // Ten requests in five batches, retried every 200 ms for 6 s: without the hold, dozens of calls; with it, one
    // call (and its token) per 2 s hold.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let calls = sim.tracking_calls_by("empresa-a");
    let allowed = (elapsed / 2.0).ceil() as usize + 1;
    assert!(
        (1..=allowed).contains(&calls),
        "{calls} calls in {elapsed:.1} s (at most {allowed})"
    );
    assert!(sim.token_requests_by("empresa-a") <= allowed, "tokens");
    // Store B is untouched.
    let b = account(&fetcher, ACCOUNT_B).await?;
    assert_eq!(b["state"], "ok", "{b}");
    assert_eq!(sim.polls_by("empresa-b", &b1), 1);
    // Once Correios enables the API, the next call after the hold goes through and every parcel moves.
    sim.refuse_access("empresa-a", None);
    eventually(Duration::from_secs(30), "every update", || async {
        let a = account(&fetcher, ACCOUNT_A).await?;
        Ok((amqp.count(EVENTS_QUEUE).await? == 11 && a["state"] != "broken").then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_an_unknown_store_is_parked_naming_the_store() -> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = sim_with_two_accounts().await?;
    let _fetcher = Worker::started(&env, "fetcher", &fetcher_settings(&env, &sim, &[])?).await?;
    let amqp = env.amqp().await?;
    let code = s10("SU", 1);
    amqp.publish(
        "tracking.requests",
        &serde_json::to_vec(&store_request("u-1", &code, "loja-z"))?,
    )
    .await?;
    let dead = eventually(Duration::from_secs(30), "the parked request", || async {
        let taken = amqp.drain("tracking.requests.dead").await?;
        Ok((!taken.is_empty()).then_some(taken))
    })
    .await?;
    let reason = dead[0].header("x-park-reason").unwrap_or_default();
    assert!(
        reason.contains("store") && reason.contains("loja-z"),
        "{reason}"
    );
    assert_eq!(sim.tracking_calls(), 0);
    Ok(())
}

/// `tracking-api` with the stores file, and its base URL.
async fn api(env: &TestEnv, extra: &[(&str, String)]) -> anyhow::Result<(Worker, String)> {
    let addr = free_addr();
    let mut settings = vec![
        ("HTTP_ADDR", addr.to_string()),
        ("API_TOKEN", OPERATOR.to_owned()),
        ("STORES_FILE", stores_file(env)?.display().to_string()),
    ];
    settings.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let w = Worker::started(env, "tracking-api", &settings).await?;
    // The address it listens on: another than `addr` when that port was taken before it could bind it.
    let base = format!("http://{}", w.http_addr()?);
    Ok((w, base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stores_token_sees_and_writes_only_its_stores_orders() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let sim = sim_with_two_accounts().await?;
    let a1 = contract_code(&sim, "SP", 1, "empresa-a");
    let b1 = contract_code(&sim, "SQ", 1, "empresa-b");
    let _fetcher = Worker::started(&env, "fetcher", &fetcher_settings(&env, &sim, &[])?).await?;
    // The normalizer sets when a delivered parcel's final poll is due.
    let _normalizer =
        Worker::started(&env, "normalizer", &[("FINAL_POLL_AFTER_SECS", "1".into())]).await?;
    let (_api, base) = api(&env, &[]).await?;
    let http = reqwest::Client::new();
    let post = |token: &'static str, body: Value| {
        let http = http.clone();
        let url = format!("{base}/v1/tracking-requests");
        async move {
            let r = http.post(url).bearer_auth(token).json(&body).send().await?;
            let status = r.status();
            let body: Value = r.json().await?;
            anyhow::Ok((status, body))
        }
    };
    // A store's token gives its requests its store.
    let (status, body) = post(
        TOKEN_A,
        request("ord-a", &a1, "ana@example.com", "pt-BR", None),
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = post(
        TOKEN_B,
        request("ord-b", &b1, "bia@example.com", "pt-BR", None),
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Naming another store with a store's token is refused, naming `store`.
    let (status, body) = post(TOKEN_A, store_request("ord-x", &a1, "loja-b")).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "store", "{body}");
    // An unknown store is refused (operator token).
    let (status, body) = post(OPERATOR, store_request("ord-z", &a1, "loja-z")).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "store", "{body}");

    let get = |token: &'static str, order: &'static str| {
        let http = http.clone();
        let url = format!("{base}/v1/orders/{order}/tracking");
        async move {
            let r = http.get(url).bearer_auth(token).send().await?;
            anyhow::Ok(r.status())
        }
    };
    eventually(
        Duration::from_secs(30),
        "both orders registered",
        || async {
            Ok((get(OPERATOR, "ord-a").await? == StatusCode::OK
                && get(OPERATOR, "ord-b").await? == StatusCode::OK)
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(get(TOKEN_A, "ord-a").await?, StatusCode::OK);
    assert_eq!(get(TOKEN_B, "ord-b").await?, StatusCode::OK);
    assert_eq!(get(TOKEN_A, "ord-b").await?, StatusCode::NOT_FOUND);
    assert_eq!(get(TOKEN_B, "ord-a").await?, StatusCode::NOT_FOUND);
    assert_eq!(
        get("not-a-token-of-anyone-0123456789abcdef", "ord-a").await?,
        StatusCode::UNAUTHORIZED
    );
    // Each parcel was polled with its store's account, the scheduler's re-polls too (its final poll after
    // delivery): the shipment keeps its store.
    let _scheduler =
        Worker::started(&env, "scheduler", &[("SCHEDULER_TICK_MS", "200".into())]).await?;
    eventually(Duration::from_secs(30), "the final polls", || async {
        Ok(
            (sim.polls_by("empresa-a", &a1) >= 2 && sim.polls_by("empresa-b", &b1) >= 2)
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(
        sim.polls_by("empresa-b", &a1) + sim.polls_by("sim-user", &a1),
        0
    );
    assert_eq!(
        sim.polls_by("empresa-a", &b1) + sim.polls_by("sim-user", &b1),
        0
    );
    // Writes too: a store's token cannot confirm another store's order.
    let confirm = |token: &'static str, order: &'static str| {
        let http = http.clone();
        let url = format!("{base}/v1/orders/{order}/delivery-confirmation");
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"delivered_at": chrono::Utc::now().to_rfc3339()}))
                .send()
                .await?;
            anyhow::Ok(r.status())
        }
    };
    assert_eq!(confirm(TOKEN_A, "ord-b").await?, StatusCode::NOT_FOUND);
    let manual = http
        .post(format!("{base}/v1/shipments/{b1}/events"))
        .bearer_auth(TOKEN_A)
        .json(
            &json!({"status": "out_for_delivery", "occurred_at": chrono::Utc::now().to_rfc3339()}),
        )
        .send()
        .await?;
    assert_eq!(manual.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stores_emails_come_from_its_sender_with_its_name_and_its_page() -> anyhow::Result<()>
{
    let env = TestEnv::ready().await?;
    let smtp = tracking_sim::smtp::SmtpServer::start("127.0.0.1:0".parse()?, &[]).await?;
    let path = env.log_dir().join("stores-email.toml");
    std::fs::write(
        &path,
        r#"
[[store]]
name = "loja-a"
display_name = "Loja A"
email_from = "Loja A <rastreio@loja-a.example>"
tracking_page_url = "https://rastreio.loja-a.example"
notify = ["delivered"]
"#,
    )?;
    let secret = "page-secret-for-tests-0123456789abcdef";
    let email = Worker::started(
        &env,
        "email-publisher",
        &[
            ("SMTP_URL", smtp.url()),
            ("EMAIL_FROM", "Global <noreply@global.example>".into()),
            ("STORE_NAME", "Global Shop".into()),
            ("TRACKING_PAGE_URL", "https://track.global.example".into()),
            ("TRACKING_PAGE_SECRET", secret.into()),
            ("STORES_FILE", path.display().to_string()),
        ],
    )
    .await?;
    let amqp = env.amqp().await?;
    let mut changes = Vec::new();
    for (n, store, status) in [
        (1, "loja-a", "delivered"),
        (2, "default", "delivered"),
        // Not in loja-a's notify list: no email.
        (3, "loja-a", "out_for_delivery"),
    ] {
        let mut c = tracking_tests::status_change(
            &format!("E-{n}"),
            &s10("SE", n),
            status,
            "in_transit",
            "ana@example.com",
            None,
        );
        c["store"] = json!(store);
        env.record_change(&c).await?;
        changes.push(c);
    }
    for c in &changes {
        amqp.publish("email.order-status", &serde_json::to_vec(c)?)
            .await?;
    }
    let got = eventually(Duration::from_secs(30), "two emails", || async {
        let r = smtp.received();
        Ok((r.len() >= 2).then_some(r))
    })
    .await?;
    wait_finished(
        &amqp,
        &email,
        "email.order-status",
        changes.len() as u64,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        smtp.received().len(),
        2,
        "loja-a's out_for_delivery is not notified"
    );
    let of = |order: &str| {
        got.iter()
            .find(|r| r.data.contains(order))
            .unwrap_or_else(|| panic!("no email for {order}"))
    };
    let a = of("E-1");
    assert!(
        a.header("From")
            .unwrap()
            .contains("rastreio@loja-a.example"),
        "{:?}",
        a.header("From")
    );
    assert!(a.data.contains("Loja A"), "the store's name");
    assert!(
        a.data.contains("https://rastreio.loja-a.example/t/"),
        "the store's page"
    );
    let d = of("E-2");
    assert!(d.header("From").unwrap().contains("noreply@global.example"));
    assert!(d.data.contains("https://track.global.example/t/"));
    // The store's page link names its store: it opens that store's order only.
    let key = tracking_domain::PageKey::new(secret).unwrap();
    // Soft line breaks of quoted-printable bodies removed.
    let text = a.data.replace("=\r\n", "");
    let token = text
        .split("https://rastreio.loja-a.example/t/")
        .nth(1)
        .unwrap()
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .next()
        .unwrap();
    let (store, order) = key.open(token).unwrap();
    assert_eq!((store.as_str(), order.as_str()), ("loja-a", "E-1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stores_file_stops_each_binary_naming_the_store_and_key_never_the_secret()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let path = env.log_dir().join("bad-stores.toml");
    std::fs::write(
        &path,
        "[[store]]\nname = \"loja-a\"\napi_token = \"too-short-secret\"\n",
    )?;
    for (bin, extra) in [
        ("fetcher", vec![]),
        ("tracking-api", vec![("API_TOKEN", OPERATOR.to_owned())]),
        (
            "email-publisher",
            vec![
                ("SMTP_URL", "smtp://127.0.0.1:1".to_owned()),
                ("EMAIL_FROM", "a@b.co".to_owned()),
            ],
        ),
    ] {
        let mut settings = extra;
        settings.push(("STORES_FILE", path.display().to_string()));
        let (code, out) = Worker::run_to_exit(&env, bin, &settings)?;
        assert_eq!(code, 2, "{bin}: {out}");
        assert!(
            out.contains("STORES_FILE")
                && out.contains("store \"loja-a\", api_token: must be at least 32"),
            "{bin}: {out}"
        );
        assert!(!out.contains("too-short-secret"), "{bin}: {out}");
    }
    Ok(())
}
