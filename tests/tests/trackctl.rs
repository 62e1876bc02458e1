//! `trackctl` against the real RabbitMQ and PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracking_tests::{TestEnv, request, target_dir};

fn trackctl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new(target_dir().join("debug/trackctl"))
        .args(args)
        .envs(env.worker_env())
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
