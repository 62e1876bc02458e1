//! The fetcher against the carrier simulators (real HTTP servers on 127.0.0.1), with the real binaries, RabbitMQ and
//! PostgreSQL: batching, the shared request budget, schema drift turning a carrier broken and its replay, unknown
//! event codes, and Jadlog through the same path.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use tracking_sim::correios::{CorreiosSim, Journey, SRO_009, Script, SimConfig, SimEvent};
use tracking_sim::jadlog::{JadlogSim, delivered_journey};
use tracking_tests::{TestEnv, Worker, correios_env, eventually, request, s10};

const EVENTS_QUEUE: &str = "normalizer.carrier-events";

async fn env() -> anyhow::Result<TestEnv> {
    TestEnv::ready().await
}

async fn start(env: &TestEnv, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Worker> {
    Worker::started(env, name, extra).await
}

fn with(
    mut base: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    base.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    base
}

async fn publish_requests(env: &TestEnv, codes: &[String]) -> anyhow::Result<()> {
    let amqp = env.amqp().await?;
    for (n, code) in codes.iter().enumerate() {
        let body = serde_json::to_vec(&request(
            &format!("o-{n}"),
            code,
            "ana@example.com",
            "pt-BR",
            None,
        ))?;
        amqp.publish("tracking.requests", &body).await?;
    }
    Ok(())
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_and_twenty_codes_are_asked_in_calls_of_fifty_fifty_and_twenty()
-> anyhow::Result<()> {
    let env = env().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let codes: Vec<String> = (0..120).map(|n| s10("BT", n)).collect();
    for c in &codes {
        sim.script(c, Script::Journey(Journey::delivered().all_at_once()));
    }
    publish_requests(&env, &codes).await?;
    let fetcher = start(
        &env,
        "fetcher",
        &with(
            correios_env(&sim),
            &[
                ("CORREIOS_RATE_PER_SECOND", "100"),
                ("CORREIOS_BURST", "100"),
            ],
        ),
    )
    .await?;
    let amqp = env.amqp().await?;
    eventually(Duration::from_secs(30), "120 carrier updates", || async {
        Ok((amqp.count(EVENTS_QUEUE).await? == 120).then_some(()))
    })
    .await?;
    let mut batches = sim.batch_sizes();
    batches.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(batches, vec![50, 50, 20]);
    assert_eq!(
        metric(&fetcher.metrics().await?, "carrier_calls_total{"),
        3.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fetchers_share_one_request_budget() -> anyhow::Result<()> {
    let env = env().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let codes: Vec<String> = (0..13).map(|n| s10("BB", n)).collect();
    let settings = with(
        correios_env(&sim),
        &[
            ("CORREIOS_BATCH_SIZE", "1"),
            ("CORREIOS_RATE_PER_SECOND", "4"),
            ("CORREIOS_BURST", "1"),
            ("FETCH_LINGER_MS", "0"),
        ],
    );
    let a = start(&env, "fetcher", &settings).await?;
    let b = start(&env, "fetcher", &settings).await?;
    let amqp = env.amqp().await?;
    let started = Instant::now();
    publish_requests(&env, &codes).await?;
    eventually(Duration::from_secs(30), "13 carrier updates", || async {
        Ok((amqp.count(EVENTS_QUEUE).await? == 13).then_some(()))
    })
    .await?;
    let took = started.elapsed();
    // 13 calls at 4 per second with a burst of 1: at least 3 s, whichever fetcher makes them (each alone would allow
    // 4 per second, both 8: 1.5 s).
    assert!(took >= Duration::from_millis(2800), "took {took:?}");
    for w in [&a, &b] {
        assert!(
            metric(&w.metrics().await?, "carrier_calls_total{") >= 1.0,
            "both fetchers called"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_field_turns_the_carrier_broken_within_one_polling_cycle_and_the_kept_answer_replays()
-> anyhow::Result<()> {
    let env = env().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let code = s10("SD", 1);
    sim.script(&code, Script::Journey(Journey::delivered()));
    let fast = [
        ("POLL_INTERVAL_SECS", "2"),
        ("POLL_INTERVAL_NEAR_DELIVERY_SECS", "2"),
        ("SCHEDULER_TICK_MS", "200"),
    ];
    let _normalizer = start(&env, "normalizer", &with(vec![], &fast)).await?;
    let _scheduler = start(&env, "scheduler", &with(vec![], &fast)).await?;
    let fetcher = start(
        &env,
        "fetcher",
        &with(correios_env(&sim), &[("CARRIER_CALL_RETRIES", "0")]),
    )
    .await?;
    publish_requests(&env, std::slice::from_ref(&code)).await?;
    eventually(
        Duration::from_secs(20),
        "the first poll recorded",
        || async {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM shipments")
                .fetch_optional(&env.pool)
                .await?;
            Ok((status.as_deref() == Some("posted")).then_some(()))
        },
    )
    .await?;

    // Correios renames dtHrCriado: the next poll (at most 2 s away) cannot be read.
    sim.rename_event_field(Some(("dtHrCriado", "dataHora")));
    let changed = Instant::now();
    let health = eventually(Duration::from_secs(20), "correios broken", || async {
        let (_, h) = fetcher.health().await?;
        Ok((h["carriers"]["correios"]["state"] == "broken").then_some(h))
    })
    .await?;
    let took = changed.elapsed();
    println!("schema change to carrier broken: {} ms", took.as_millis());
    assert!(
        took < Duration::from_secs(4),
        "within one polling cycle (2 s) and a call: {took:?}"
    );
    let reason = health["carriers"]["correios"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("unreadable") && reason.contains("dtHrCriado"),
        "{reason}"
    );
    assert!(
        fetcher
            .metrics()
            .await?
            .lines()
            .any(|l| l.starts_with("carrier_state{") && l.contains("broken") && l.ends_with(" 1")),
    );
    assert!(fetcher.log_text().contains("BROKEN"));
    // The health row is written by a task of its own, so the kept answer may come after it: both are waited for.
    let (state, counters): (String, serde_json::Value) = eventually(
        Duration::from_secs(5),
        "the health row and the kept answer",
        || async {
            let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM carrier_responses")
                .fetch_one(&env.pool)
                .await?;
            Ok(sqlx::query_as(
                "SELECT state, counters FROM carrier_health WHERE carrier = 'correios'",
            )
            .fetch_optional(&env.pool)
            .await?
            .filter(|(s, _): &(String, serde_json::Value)| s == "broken" && kept >= 1))
        },
    )
    .await?;
    assert_eq!(state, "broken");
    assert!(
        counters["schema_changes"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    let (kept, body): (i64, String) = sqlx::query_as(
        "SELECT count(*), min(body) FROM carrier_responses WHERE replayed_at IS NULL",
    )
    .fetch_one(&env.pool)
    .await?;
    assert!(kept >= 1);
    assert!(
        body.contains("dataHora") && body.contains(&code),
        "the whole answer is kept"
    );

    // The parser learns the new name (here: the carrier goes back); kept answers still hold dataHora, so they stay
    // unreadable for today's parser and say so; a kept answer in the known shape replays into events.
    sim.rename_event_field(None);
    let replay = || -> anyhow::Result<String> {
        let out = std::process::Command::new(tracking_tests::bin_dir().join("trackctl"))
            .args(["carriers", "replay"])
            .envs(env.worker_env())
            .envs(correios_env(&sim))
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            out.status.success(),
            "trackctl carriers replay failed: {text}"
        );
        Ok(text)
    };
    let out = replay()?;
    assert!(
        out.contains("Replayed 0 kept answer(s)") && out.contains("still unreadable"),
        "{out}"
    );
    let fixed_body = body.replace("dataHora", "dtHrCriado");
    sqlx::query("UPDATE carrier_responses SET body = $1")
        .bind(&fixed_body)
        .execute(&env.pool)
        .await?;
    let out = replay()?;
    assert!(
        !out.contains("Replayed 0 kept") && !out.contains("0 carrier update(s) published"),
        "{out}"
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM carrier_responses WHERE replayed_at IS NULL")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(left, 0);

    // And the next good poll makes the carrier degraded (a recent failure), not broken.
    let h = eventually(
        Duration::from_secs(20),
        "correios no longer broken",
        || async {
            let (_, h) = fetcher.health().await?;
            Ok((h["carriers"]["correios"]["state"] != "broken").then_some(h))
        },
    )
    .await?;
    assert_eq!(h["carriers"]["correios"]["state"], "degraded", "{h}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_code_pair_is_stored_with_its_text_counted_and_shown_and_a_repeated_event_once()
-> anyhow::Result<()> {
    let env = env().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let code = s10("UK", 1);
    let mut journey = Journey::delivered();
    journey.events.truncate(1);
    let at = journey.events[0].at + chrono::Duration::hours(3);
    journey.events.push(SimEvent::new(
        "XYZ",
        "77",
        "Objeto em análise aduaneira especial",
        "CURITIBA",
        "PR",
        "Unidade de Tratamento",
        at,
    ));
    // Correios sometimes repeats an event within one answer.
    journey.events.push(journey.events[1].clone());
    sim.script(&code, Script::Journey(journey.all_at_once()));
    let normalizer = start(&env, "normalizer", &[]).await?;
    let _fetcher = start(&env, "fetcher", &correios_env(&sim)).await?;
    publish_requests(&env, std::slice::from_ref(&code)).await?;
    let row: (Option<String>, String) =
        eventually(
            Duration::from_secs(20),
            "the unknown event stored",
            || async {
                Ok(sqlx::query_as(
                    "SELECT status, description FROM tracking_events WHERE code = 'XYZ'",
                )
                .fetch_optional(&env.pool)
                .await?)
            },
        )
        .await?;
    assert_eq!(
        row,
        (None, "Objeto em análise aduaneira especial".to_owned()),
        "stored with its text, unmapped"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tracking_events")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(stored, 2, "the repeated event is stored once");
    let status: String = sqlx::query_scalar("SELECT status FROM shipments")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(status, "posted", "an unmapped event changes nothing");
    // Counted after the batch's commit, so possibly after the rows above are visible.
    eventually(
        Duration::from_secs(10),
        "the unmapped code counted",
        || async {
            let metrics = normalizer.metrics().await?;
            Ok(metrics
                .lines()
                .any(|l| {
                    l.starts_with("unmapped_events_total{")
                        && l.contains("code=\"XYZ\"")
                        && l.contains("type=\"77\"")
                        && l.ends_with(" 1")
                })
                .then_some(()))
        },
    )
    .await?;
    assert!(
        normalizer
            .log_text()
            .contains("An event code nobody mapped")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jadlog_parcels_travel_through_the_same_fetcher() -> anyhow::Result<()> {
    let env = env().await?;
    let sim = JadlogSim::start("jadlog-token", "127.0.0.1:0".parse()?).await?;
    let code = "10084500001234";
    sim.script(code, delivered_journey());
    let _normalizer = start(&env, "normalizer", &[]).await?;
    let fetcher = start(
        &env,
        "fetcher",
        &[
            ("JADLOG_BASE_URL", sim.base_url()),
            ("JADLOG_TOKEN", "jadlog-token".into()),
        ],
    )
    .await?;
    let mut req = request("J-1", code, "ana@example.com", "pt-BR", None);
    req["carrier"] = "jadlog".into();
    env.amqp()
        .await?
        .publish("tracking.requests", &serde_json::to_vec(&req)?)
        .await?;
    let status: String = eventually(Duration::from_secs(20), "delivered", || async {
        let s: Option<String> =
            sqlx::query_scalar("SELECT status FROM shipments WHERE carrier = 'jadlog'")
                .fetch_optional(&env.pool)
                .await?;
        Ok(s.filter(|s| s == "delivered"))
    })
    .await?;
    assert_eq!(status, "delivered");
    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM status_changes")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(
        changes, 1,
        "registered to delivered at once: the whole history came in one poll"
    );
    let (_, health) = fetcher.health().await?;
    assert_eq!(health["carriers"]["jadlog"]["state"], "ok", "{health}");
    assert_eq!(sim.batch_sizes(), vec![1]);
    Ok(())
}

/// Issue 13 part 2, points 2 and 4: in one call of three codes, one answer we do not recognise and one `SRO-009`
/// concern their own code only; the third is delivered as usual. The SRO-009 shipment is recorded as not
/// trackable with this account (the table, the tracking API, `trackctl shipment show`, a metric, a log line for
/// operators) instead of parking its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecognised_answer_and_sro_009_concern_their_code_alone_and_sro_009_is_recorded_not_trackable()
-> anyhow::Result<()> {
    let env = env().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let codes: Vec<String> = (0..3).map(|n| s10("NT", n)).collect();
    sim.script(
        &codes[0],
        Script::Journey(Journey::delivered().all_at_once()),
    );
    sim.script(
        &codes[1],
        Script::MessageAndNoEvents("SRO-042: Mensagem que nenhum cliente conhece.".into()),
    );
    sim.script(&codes[2], Script::Message(SRO_009.into()));
    let normalizer = start(&env, "normalizer", &[]).await?;
    let fetcher = start(
        &env,
        "fetcher",
        &with(correios_env(&sim), &[("FETCH_LINGER_MS", "500")]),
    )
    .await?;
    let api_addr = tracking_tests::free_addr();
    let _api = start(
        &env,
        "tracking-api",
        &[
            ("HTTP_ADDR", api_addr.to_string()),
            ("API_TOKEN", "carriers-test-token-0123456789-abcdef".into()),
        ],
    )
    .await?;
    publish_requests(&env, &codes).await?;

    let rows: Vec<(String, String, Option<String>, Option<String>)> =
        eventually(Duration::from_secs(30), "three shipments recorded", || async {
            let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT tracking_code, status, carrier_message, not_trackable_reason FROM shipments ORDER BY tracking_code",
            )
            .fetch_all(&env.pool)
            .await?;
            Ok((rows.len() == 3 && rows[0].1 == "delivered").then_some(rows))
        })
        .await?;
    assert_eq!(
        sim.batch_sizes(),
        vec![3],
        "one call for the three codes, answered at once"
    );
    assert_eq!(rows[0].0, codes[0]);
    assert_eq!(
        rows[0].1, "delivered",
        "the other codes of the call went on"
    );
    assert_eq!(rows[0].3, None);
    assert_eq!(rows[1].1, "registered", "kept, to be polled again");
    assert!(
        rows[1]
            .2
            .as_deref()
            .is_some_and(|m| m.starts_with("SRO-042")),
        "{rows:?}"
    );
    assert_eq!(rows[1].3, None);
    assert_eq!(rows[2].1, "registered");
    let reason = rows[2].3.clone().unwrap_or_default();
    assert!(
        reason.contains("SRO-009") && reason.contains("shipping platform"),
        "an operator-facing reason: {reason:?}"
    );

    let (unknown_next, not_trackable_next): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM (SELECT next_poll_at FROM shipments WHERE tracking_code = $1) - now())::float8, \
                extract(epoch FROM (SELECT next_poll_at FROM shipments WHERE tracking_code = $2) - now())::float8",
    )
    .bind(&codes[1])
    .bind(&codes[2])
    .fetch_one(&env.pool)
    .await?;
    assert!(
        unknown_next < 6.0 * 3600.0,
        "the unrecognised code is polled as usual: {unknown_next}"
    );
    assert!(
        not_trackable_next > 23.0 * 3600.0,
        "not trackable: polled only at POLL_INTERVAL_MAX_SECS (24 h): {not_trackable_next}"
    );

    let amqp = env.amqp().await?;
    assert_eq!(
        amqp.count("tracking.requests.dead").await?,
        0,
        "nothing parked"
    );
    let (_, health) = fetcher.health().await?;
    assert_eq!(health["carriers"]["correios"]["state"], "ok", "{health}");
    let fetched = fetcher.metrics().await?;
    assert_eq!(
        metric(&fetched, "carrier_unrecognised_answers_total{"),
        1.0,
        "{fetched}"
    );
    assert!(fetcher.log_text().contains("do not recognise"));
    // Counted after the batch's commit, so possibly after the shipment rows are visible.
    eventually(
        Duration::from_secs(10),
        "the not trackable shipment counted",
        || async {
            let normalized = normalizer.metrics().await?;
            Ok((metric(&normalized, "shipments_not_trackable_total{") == 1.0).then_some(()))
        },
    )
    .await?;
    assert!(
        normalizer
            .log_text()
            .contains("not trackable with this carrier account")
    );

    let tracking: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{api_addr}/v1/orders/o-2/tracking"))
        .bearer_auth("carriers-test-token-0123456789-abcdef")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let shown = &tracking["shipments"][0];
    assert_eq!(shown["tracking_code"], codes[2].as_str(), "{tracking}");
    assert_eq!(
        shown["not_trackable"]["reason"],
        reason.as_str(),
        "{tracking}"
    );
    assert!(shown["not_trackable"]["since"].is_string(), "{tracking}");
    let delivered: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{api_addr}/v1/orders/o-0/tracking"))
        .bearer_auth("carriers-test-token-0123456789-abcdef")
        .send()
        .await?
        .json()
        .await?;
    assert!(
        delivered["shipments"][0]["not_trackable"].is_null(),
        "{delivered}"
    );

    let out = std::process::Command::new(tracking_tests::bin_dir().join("trackctl"))
        .args(["shipment", "show", &codes[2]])
        .envs(env.worker_env())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("NOT TRACKABLE with this account") && text.contains("SRO-009"),
        "{text}"
    );
    Ok(())
}

/// Three ways a carrier changes its answers for every object at once: the events under another key, every event's
/// time field renamed, a message format nobody knows. Each turns the carrier broken within seconds, with a sample
/// of what was not recognised in the reason, the whole answer kept for replay, and no update published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_shape_changed_for_every_object_turns_the_carrier_broken_whatever_the_change()
-> anyhow::Result<()> {
    type Change = fn(&CorreiosSim, &[String]);
    let changes: [(&str, Change, &str); 3] = [
        (
            "eventos under another key",
            |sim, _| sim.rename_object_field(Some(("eventos", "events"))),
            "neither eventos nor mensagem (its fields: ",
        ),
        (
            "every event's time renamed",
            |sim, _| sim.rename_event_field(Some(("dtHrCriado", "dataHora"))),
            "dtHrCriado",
        ),
        (
            "a new mensagem format",
            |sim, codes| {
                for code in codes {
                    sim.script(
                        code,
                        Script::Message("Objeto não localizado no fluxo postal.".into()),
                    );
                }
            },
            "Objeto não localizado no fluxo postal.",
        ),
    ];
    for (n, (what, change, sample)) in changes.into_iter().enumerate() {
        let env = env().await?;
        let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
        let codes: Vec<String> = (0..6).map(|i| s10("SC", (n * 10 + i) as u32)).collect();
        for code in &codes {
            sim.script(code, Script::Journey(Journey::delivered().all_at_once()));
        }
        change(&sim, &codes);
        let fetcher = start(
            &env,
            "fetcher",
            &with(
                correios_env(&sim),
                &[("FETCH_LINGER_MS", "1000"), ("CARRIER_CALL_RETRIES", "0")],
            ),
        )
        .await?;
        let started = Instant::now();
        publish_requests(&env, &codes).await?;
        let health = eventually(Duration::from_secs(30), "correios broken", || async {
            let (_, h) = fetcher.health().await?;
            Ok((h["carriers"]["correios"]["state"] == "broken").then_some(h))
        })
        .await?;
        println!("{what}: broken after {} ms", started.elapsed().as_millis());
        let reason = health["carriers"]["correios"]["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            reason.contains("shape changed")
                && (reason.contains("were not recognised") || reason.contains("cannot be read")),
            "{what}: {reason}"
        );
        assert!(reason.contains(sample), "{what}: a sample in {reason}");
        let kept: Vec<String> = eventually(Duration::from_secs(10), "the answer kept", || async {
            let kept: Vec<String> = sqlx::query_scalar("SELECT body FROM carrier_responses")
                .fetch_all(&env.pool)
                .await?;
            Ok((!kept.is_empty()).then_some(kept))
        })
        .await?;
        assert!(
            codes.iter().all(|c| kept[0].contains(c.as_str())),
            "{what}: the whole answer is kept"
        );
        eventually(Duration::from_secs(10), "counted", || async {
            let m = fetcher.metrics().await?;
            Ok((metric(
                &m,
                "carrier_errors_total{carrier=\"correios\",kind=\"schema\"}",
            ) >= 1.0)
                .then_some(()))
        })
        .await?;
        let amqp = env.amqp().await?;
        assert_eq!(
            amqp.count(EVENTS_QUEUE).await?,
            0,
            "{what}: no code's update published"
        );
    }
    Ok(())
}
