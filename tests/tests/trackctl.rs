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
