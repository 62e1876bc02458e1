//! `trackctl` against the real RabbitMQ and PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracking_tests::{
    TestEnv, Worker, carrier_update, correios_event, eventually, request, s10, target_dir,
};

fn trackctl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> anyhow::Result<(bool, String)> {
    trackctl_with(env, args, stdin, &[])
}

fn trackctl_with(
    env: &TestEnv,
    args: &[&str],
    stdin: Option<&str>,
    extra: &[(&str, String)],
) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new(target_dir().join("debug/trackctl"))
        .args(args)
        .envs(env.worker_env())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_publish_and_dead_letters_list_and_replay() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (ok, out) = trackctl(&env, &["migrate"], None)?;
    assert!(ok, "{out}");
    assert!(tracking_store::schema_ready(&env.pool).await?);

    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_millis(200), Duration::from_secs(1)])
        .await?;
    let (ok, out) = trackctl(
        &env,
        &[
            "publish",
            "--order-id",
            "9",
            "--code",
            "DL746686536BR",
            "--email",
            "ana@example.com",
            "--marketplace",
            "acme:A-9",
        ],
        None,
    )?;
    assert!(ok, "{out}");
    let good = serde_json::to_string(&request(
        "10",
        "PG747937788BR",
        "bia@example.com",
        "en",
        None,
    ))?;
    let (ok, out) = trackctl(
        &env,
        &["publish", "--file", "-"],
        Some(&format!("{good}\n{{\"order_id\": 1}}\n\n")),
    )?;
    assert!(!ok, "an invalid line fails the command: {out}");
    assert!(
        out.contains("line 2: not sent") && out.contains("Published 1"),
        "{out}"
    );
    assert_eq!(amqp.count("tracking.requests").await?, 2);

    // A parked request, as the runtime parks it.
    let parked = amqp.drain("tracking.requests").await?;
    let publisher = tracking_runtime::amqp::Publisher::new(
        tracking_runtime::amqp::AmqpSettings::with_url(&env.amqp_url),
        "t",
    );
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-park-reason".into(),
        lapin::types::AMQPValue::LongString("carrier refused it".into()),
    );
    headers.insert("x-attempts".into(), lapin::types::AMQPValue::LongLongInt(3));
    publisher
        .publish(tracking_runtime::amqp::Outgoing {
            exchange: "",
            routing_key: "tracking.requests.dead",
            body: &parked[0].body,
            headers,
            message_id: Some("m-1".into()),
        })
        .await?;

    let (ok, out) = trackctl(&env, &["dead", "list", "tracking.requests"], None)?;
    assert!(ok, "{out}");
    assert!(
        out.contains("1 parked message")
            && out.contains("carrier refused it")
            && out.contains("attempts 3"),
        "{out}"
    );
    // A quorum queue counts a returned message as ready a moment after the return.
    let parked_again = tracking_tests::eventually(
        Duration::from_secs(5),
        "the listed message to be ready again",
        || async { Ok((amqp.count("tracking.requests.dead").await? == 1).then_some(())) },
    )
    .await;
    assert!(
        parked_again.is_ok(),
        "listing leaves the message parked: {parked_again:?}"
    );
    let (ok, out) = trackctl(&env, &["dead", "show", "tracking.requests", "1"], None)?;
    assert!(ok, "{out}");
    assert!(
        out.contains("x-park-reason: ")
            && out.contains("carrier refused it")
            && out.contains("\"tracking_code\""),
        "{out}"
    );
    let (ok, out) = trackctl(&env, &["dead", "show", "tracking.requests", "2"], None)?;
    assert!(!ok && out.contains("holds 1 message"), "{out}");
    tracking_tests::eventually(
        Duration::from_secs(5),
        "the shown message parked again",
        || async { Ok((amqp.count("tracking.requests.dead").await? == 1).then_some(())) },
    )
    .await?;

    let (ok, out) = trackctl(&env, &["dead", "replay", "tracking.requests.dead"], None)?;
    assert!(ok, "{out}");
    assert_eq!(amqp.count("tracking.requests.dead").await?, 0);
    let replayed = amqp.drain("tracking.requests").await?;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].body, parked[0].body);
    assert_eq!(
        replayed[0].header("x-park-reason"),
        None,
        "park headers are dropped, so attempts start again"
    );

    let (ok, out) = trackctl(&env, &["dead", "purge", "tracking.requests"], None)?;
    assert!(!ok && out.contains("--yes"), "{out}");
    let (ok, out) = trackctl(&env, &["dead", "list", "no.such.queue"], None)?;
    assert!(!ok && out.contains("not a work queue"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recompute_after_the_event_table_changed_emits_only_new_changes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let mut normalizer = Worker::spawn(&env, "normalizer", &[])?;
    normalizer.wait_healthy(Duration::from_secs(60)).await?;
    let amqp = env.amqp().await?;
    let code = s10("RC", 7);
    let req = request("RC-7", &code, "ana@example.com", "pt-BR", None);
    // XQ/01 is in no table: stored, unmapped; the shipment is posted.
    let update = carrier_update(
        &code,
        Some(&req),
        &[
            correios_event("PO", "01", "2026-11-20T10:00:00-03:00"),
            correios_event("XQ", "01", "2026-11-22T10:00:00-03:00"),
        ],
    );
    amqp.publish("normalizer.carrier-events", &serde_json::to_vec(&update)?)
        .await?;
    eventually(Duration::from_secs(20), "posted, published", || async {
        Ok((amqp.count("email.order-status").await? == 1).then_some(()))
    })
    .await?;
    amqp.drain("email.order-status").await?;
    normalizer.terminate()?;

    // `events unmapped` names the pair, how often and where it was seen, and what to do (the alert's command).
    let (ok, out) = trackctl(&env, &["events", "unmapped"], None)?;
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("correios") && l.contains(" XQ "))
        .unwrap_or_else(|| panic!("no XQ line: {out}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[..5], ["correios", "XQ", "01", "1", "1"], "{line}");
    assert!(line.ends_with("XQ 01"), "its description: {line}");
    assert!(!out.contains(" PO "), "PO is mapped: {out}");
    assert!(
        out.contains("1 unmapped pair(s)")
            && out.contains("crates/domain/data/correios.toml")
            && out.contains("trackctl shipment recompute --all"),
        "{out}"
    );

    // Nothing changed in the table: nothing new.
    let (ok, out) = trackctl(&env, &["shipment", "recompute", "--all"], None)?;
    assert!(
        ok && out.contains("0 event(s) remapped, 0 new status change(s)"),
        "{out}"
    );

    // The table now maps XQ/01 to awaiting pickup.
    let dir = env.log_dir().join("tables");
    std::fs::create_dir_all(&dir)?;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/domain/data");
    std::fs::copy(data.join("jadlog.toml"), dir.join("jadlog.toml"))?;
    let correios = std::fs::read_to_string(data.join("correios.toml"))?
        + "\n[[rule]]\ncodes = [\"XQ\"]\ntypes = [\"01\"]\nstatus = \"awaiting_pickup\"\n";
    std::fs::write(dir.join("correios.toml"), correios)?;
    let tables = [("EVENT_TABLES_DIR", dir.display().to_string())];
    let (ok, out) = trackctl_with(&env, &["shipment", "recompute", &code], None, &tables)?;
    assert!(ok, "{out}");
    assert!(out.contains("posted -> awaiting_pickup"), "{out}");
    assert!(
        out.contains("1 event(s) remapped, 1 new status change(s)"),
        "{out}"
    );
    let published = amqp.drain("email.order-status").await?;
    assert_eq!(published.len(), 1);
    let change: serde_json::Value = serde_json::from_slice(&published[0].body)?;
    assert_eq!(
        (
            &change["previous_status"],
            &change["status"],
            &change["event"]["code"]
        ),
        (&"posted".into(), &"awaiting_pickup".into(), &"XQ".into())
    );
    let status: String = sqlx::query_scalar("SELECT status FROM shipments")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(status, "awaiting_pickup");
    let (ok, out) = trackctl(&env, &["events", "unmapped"], None)?;
    assert!(
        ok && out.contains("Every stored carrier event maps to a status."),
        "{out}"
    );

    // Again: already applied, nothing new, nothing published.
    let (ok, out) = trackctl_with(&env, &["shipment", "recompute", "--all"], None, &tables)?;
    assert!(
        ok && out.contains("0 event(s) remapped, 0 new status change(s)"),
        "{out}"
    );
    assert_eq!(amqp.count("email.order-status").await?, 0);
    let (ok, out) = trackctl(&env, &["shipment", "recompute"], None)?;
    assert!(!ok && out.contains("--all"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_csv_reports_bad_rows_by_line_and_field_and_publishes_the_good_ones()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let amqp = env.amqp().await?;
    let (good1, good2, bad) = (s10("CS", 1), s10("CS", 2), s10("CS", 3));
    let csv = format!(
        "order_id,tracking_code,email,name,locale,carrier,marketplace,marketplace_order_id,invoice_number\r\n\
         C-1,{good1},ana@example.com,\"Souza, Ana\",es,correios,acme,ACME-1,NF-1\r\n\
         C-2,{},bia@example.com,,,,,,\r\n\
         C-3,{bad},not-an-email,Caio,fr,,,,\r\n\
         C-4,{bad},caio@example.com,Caio,en,,acme,,\r\n\
         C-5,{bad},caio@example.com\r\n\
         \r\n",
        good2.to_lowercase()
    );
    let (ok, out) = trackctl(&env, &["publish", "--csv", "-"], Some(&csv))?;
    assert!(!ok, "invalid rows fail the command: {out}");
    assert!(
        out.contains("line 4: not sent: email: \"not-an-email\" is not an email address; locale: "),
        "{out}"
    );
    assert!(
        out.contains("line 5: not sent: marketplace_order_id: is required"),
        "{out}"
    );
    assert!(
        out.contains("line 6: not sent: expected 9 fields as in the header, found 3"),
        "{out}"
    );
    assert!(
        out.contains("Published 2 tracking request(s); refused 3."),
        "{out}"
    );
    let published = amqp.drain("tracking.requests").await?;
    let bodies: Vec<serde_json::Value> = published
        .iter()
        .map(|m| serde_json::from_slice(&m.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["tracking_code"], good1.as_str());
    assert_eq!(bodies[0]["customer"]["name"], "Souza, Ana");
    assert_eq!(bodies[0]["customer"]["locale"], "es");
    assert_eq!(
        bodies[0]["marketplace"],
        serde_json::json!({"name": "acme", "order_id": "ACME-1"})
    );
    assert_eq!(bodies[0]["invoice_number"], "NF-1");
    assert_eq!(bodies[1]["tracking_code"], good2.as_str());
    assert_eq!(bodies[1]["customer"]["locale"], "pt-BR");
    assert!(bodies[1].get("marketplace").is_none());

    // A header that names an unknown column publishes nothing.
    let (ok, out) = trackctl(
        &env,
        &["publish", "--csv", "-"],
        Some(&format!(
            "order_id,tracking_code,e-mail\nC-9,{good1},ana@example.com\n"
        )),
    )?;
    assert!(!ok && out.contains("unknown column \"e-mail\""), "{out}");
    assert_eq!(amqp.count("tracking.requests").await?, 0);

    // A large file: progress on standard error every 500 and at the end; columns in any order.
    let path = env.log_dir().join("many.csv");
    let mut many = String::from("email,tracking_code,order_id\n");
    for n in 0..1001 {
        many.push_str(&format!("c{n}@example.com,{},M-{n}\n", s10("MN", n)));
    }
    std::fs::write(&path, many)?;
    let (ok, out) = trackctl(&env, &["publish", "--csv", path.to_str().unwrap()], None)?;
    assert!(ok, "{out}");
    for line in [
        "published 500/1001",
        "published 1000/1001",
        "published 1001/1001",
    ] {
        assert!(out.contains(line), "{line} missing: {out}");
    }
    assert!(
        out.contains("Published 1001 tracking request(s); refused 0."),
        "{out}"
    );
    assert_eq!(amqp.count("tracking.requests").await?, 1001);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriers_health_prints_the_fetchers_reports_and_unknown_for_the_rest() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    env.migrate().await?;
    let (ok, out) = trackctl(&env, &["carriers", "health"], None)?;
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("correios") && lines[0].contains("unknown"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("jadlog") && lines[1].contains("unknown"),
        "{out}"
    );
    sqlx::query(
        "INSERT INTO carrier_health (carrier, state, reason, counters, updated_at) \
         VALUES ('correios', 'degraded', 'timeouts: 4 of the last 10 calls', '{\"timeouts\": 4}', '2026-11-24T18:00:00Z')",
    )
    .execute(&env.pool)
    .await?;
    let (ok, out) = trackctl(&env, &["carriers", "health"], None)?;
    assert!(ok, "{out}");
    assert!(
        out.contains("correios   degraded  reported 2026-11-24 18:00:00 UTC  reason: timeouts: 4 of the last 10 calls  counters: {\"timeouts\":4}"),
        "{out}"
    );
    assert!(out.contains("jadlog     unknown"), "{out}");
    Ok(())
}

/// Issue 18.9: a message returned to its queue again and again (a worker killed, restarted or timed out by the broker
/// while holding it) is parked by the broker itself at the queue's delivery limit, without `x-park-reason`;
/// `trackctl dead list` and `dead show` still say why, from RabbitMQ's `x-death`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_parked_by_the_broker_at_the_delivery_limit_says_why() -> anyhow::Result<()> {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    use tracking_app::topology::{DELIVERY_LIMIT, TRACKING_REQUESTS, dead_queue};

    let env = TestEnv::new().await?;
    let amqp = env.amqp().await?;
    amqp.declare(&[Duration::from_millis(200), Duration::from_secs(1)])
        .await?;
    let body = serde_json::to_vec(&request(
        "limit-1",
        "DL746686536BR",
        "ana@example.com",
        "pt-BR",
        None,
    ))?;
    amqp.publish(TRACKING_REQUESTS, &body).await?;

    // What a worker that dies while holding the message does to it, as often as the broker allows.
    let conn = tracking_runtime::amqp::connect(&env.amqp_settings, "test-returns").await?;
    let ch = conn.create_channel().await?;
    let mut returns = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        match ch
            .basic_get(TRACKING_REQUESTS.into(), BasicGetOptions::default())
            .await?
        {
            Some(msg) => {
                msg.delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
                returns += 1;
            }
            None if amqp.count(&dead_queue(TRACKING_REQUESTS)).await? == 1 => break,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    eprintln!("returned {returns} times before the broker parked it");
    assert!(
        returns >= DELIVERY_LIMIT,
        "parked after {returns} returns only"
    );
    assert_eq!(amqp.count(&dead_queue(TRACKING_REQUESTS)).await?, 1);
    let _ = conn.close(200, "bye".into()).await;

    let (ok, out) = trackctl(&env, &["dead", "list", "tracking.requests"], None)?;
    eprintln!("{out}");
    assert!(ok, "{out}");
    assert!(
        out.contains("1 parked message")
            && out.contains(&format!(
                "reason: returned to tracking.requests unsettled more than {DELIVERY_LIMIT} times (its delivery limit): parked by the broker, not a worker"
            )),
        "{out}"
    );
    tracking_tests::eventually(
        Duration::from_secs(5),
        "the listed message parked again",
        || async { Ok((amqp.count("tracking.requests.dead").await? == 1).then_some(())) },
    )
    .await?;
    let (ok, out) = trackctl(&env, &["dead", "show", "tracking.requests", "1"], None)?;
    eprintln!("{out}");
    assert!(ok, "{out}");
    assert!(
        out.contains("reason: returned to tracking.requests unsettled more than")
            && out.contains(
                "x-death: [{count=1, exchange=, queue=tracking.requests, reason=delivery_limit,"
            ),
        "{out}"
    );
    env.expect_parked("tracking.requests.dead", 1);
    Ok(())
}

/// `dead list` and `dead show` read parked messages without counting a delivery (RabbitMQ 4 drops or dead-letters a
/// quorum queue's message past its delivery limit, 20 by default, and a message handed back with nack and requeue
/// counts one there up to 4.2). On a parking queue left by an earlier version with a delivery limit of 2 (kept as it
/// is, with a warning), listing five times and showing each message drops nothing and keeps the order; the control
/// shows that this broker does drop a message handed back that often.
#[tokio::test(flavor = "multi_thread")]
async fn reading_parked_messages_counts_no_delivery() -> anyhow::Result<()> {
    use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let env = TestEnv::new().await?;
    let conn = lapin::Connection::connect(&env.amqp_url, Default::default()).await?;
    let ch = conn.create_channel().await?;
    let limited = |limit: i64| {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
        args
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let amqp = env.amqp().await?;

    // The control: handed back three times, a message under a limit of 2 is gone.
    ch.queue_declare("control".into(), durable, limited(2))
        .await?;
    amqp.publish("control", b"\"m0\"").await?;
    for _ in 0..3 {
        if let Some(m) = ch
            .basic_get("control".into(), BasicGetOptions::default())
            .await?
        {
            m.delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
    }
    // The broker enforces the limit on returns: the queue empties.
    tracking_tests::eventually(Duration::from_secs(10), "the control dropped", || async {
        Ok((amqp.count("control").await? == 0).then_some(()))
    })
    .await?;

    ch.queue_declare("tracking.requests.dead".into(), durable, limited(2))
        .await?;
    for body in ["\"m1\"", "\"m2\"", "\"m3\""] {
        amqp.publish("tracking.requests.dead", body.as_bytes())
            .await?;
    }
    for round in 0..5 {
        let (ok, out) = trackctl(&env, &["dead", "list", "tracking.requests"], None)?;
        assert!(ok, "{out}");
        assert!(out.contains("3 parked message(s)"), "round {round}: {out}");
        let at = |m: &str| out.find(m).unwrap_or_else(|| panic!("{m} missing: {out}"));
        assert!(
            at("#1") < at("m1") && at("m1") < at("#2") && at("#2") < at("m2"),
            "{out}"
        );
        assert!(at("m2") < at("#3") && at("#3") < at("m3"), "{out}");
        if round == 0 {
            assert!(out.contains("kept as it is"), "the upgrade warning: {out}");
        }
    }
    for n in 1..=3 {
        let (ok, out) = trackctl(
            &env,
            &["dead", "show", "tracking.requests", &n.to_string()],
            None,
        )?;
        assert!(ok && out.contains(&format!("\"m{n}\"")), "{out}");
    }
    let parked = amqp.drain("tracking.requests.dead").await?;
    let bodies: Vec<String> = parked
        .iter()
        .map(|t| String::from_utf8_lossy(&t.body).into_owned())
        .collect();
    assert_eq!(bodies, ["\"m1\"", "\"m2\"", "\"m3\""]);
    for t in &parked {
        assert!(
            matches!(
                t.headers.inner().get("x-delivery-count"),
                None | Some(AMQPValue::LongLongInt(0)) | Some(AMQPValue::LongInt(0))
            ),
            "a delivery was counted: {:?}",
            t.headers
        );
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}
