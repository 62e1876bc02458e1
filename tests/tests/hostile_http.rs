//! Hostile far ends against the real binaries (fetcher, marketplace publisher), with RabbitMQ and PostgreSQL:
//! - a Correios token answer in shapes nobody expected: the token reaches neither the fetcher's log nor any text
//!   column of the database, and even an answer with a NUL byte is kept;

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig, TokenQuirk};
use tracking_tests::{TestEnv, Worker, correios_env, eventually, request, s10};

const EVENTS_QUEUE: &str = "normalizer.carrier-events";

fn with(
    mut base: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    base.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    base
}

async fn publish_request(
    env: &TestEnv,
    order: &str,
    code: &str,
    carrier: &str,
) -> anyhow::Result<()> {
    let mut req = request(order, code, "ana@example.com", "pt-BR", None);
    req["carrier"] = carrier.into();
    env.amqp()
        .await?
        .publish("tracking.requests", &serde_json::to_vec(&req)?)
        .await
}

/// Every row of every text-like column (text, varchar, json, jsonb) of the test's database that contains `needle`,
/// as `table.column`.
async fn columns_containing(env: &TestEnv, needle: &str) -> anyhow::Result<Vec<String>> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'json', 'jsonb')",
    )
    .fetch_all(&env.pool)
    .await?;
    let mut found = Vec::new();
    for (table, column) in columns {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{table}\" WHERE strpos(\"{column}\"::text, $1) > 0"
        ))
        .bind(needle)
        .fetch_one(&env.pool)
        .await?;
        if n > 0 {
            found.push(format!("{table}.{column}"));
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correios_token_in_any_shape_reaches_neither_the_log_nor_the_database()
-> anyhow::Result<()> {
    let env = TestEnv::ready().await?;
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let code = s10("TK", 1);
    sim.script(&code, Script::Journey(Journey::delivered()));
    let fetcher = Worker::started(
        &env,
        "fetcher",
        &with(
            correios_env(&sim),
            &[
                ("CARRIER_CALL_RETRIES", "0"),
                ("CARRIER_RETRY_MAX_MS", "400"),
                ("MAX_ATTEMPTS", "1000"),
            ],
        ),
    )
    .await?;
    publish_request(&env, "TK-1", &code, "correios").await?;
    // Each shape, and what the kept row's error says about it.
    let quirks = [
        (TokenQuirk::ExpiraEmNumber, "invalid type: integer"),
        (TokenQuirk::ExpiraEmText, "bad expiraEm"),
        (TokenQuirk::TokenKey("accessToken".into()), "missing field"),
        (TokenQuirk::PlainText, "expected ident"),
        (TokenQuirk::NulByte, "control character"),
    ];
    for (quirk, says) in quirks {
        sim.token_quirk(Some(quirk.clone()));
        eventually(
            Duration::from_secs(20),
            &format!("the answer to {quirk:?} kept"),
            || async {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM carrier_responses WHERE strpos(error, $1) > 0",
                )
                .bind(says)
                .fetch_one(&env.pool)
                .await?;
                Ok((n > 0).then_some(()))
            },
        )
        .await?;
    }
    sim.token_quirk(None);
    eventually(Duration::from_secs(20), "the events published", || async {
        Ok((env.amqp().await?.count(EVENTS_QUEUE).await? == 1).then_some(()))
    })
    .await?;
    let (_, health) = fetcher.health().await?;
    let tokens = sim.issued_tokens();
    assert!(tokens.len() >= 6, "{} tokens", tokens.len());
    // Let the last health row land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = fetcher.log_text();
    assert!(log.contains("could not be read"), "the answers were logged");
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        for secret in [token.as_str(), signature] {
            assert!(!log.contains(secret), "the fetcher's log shows a token");
            assert!(
                !health.to_string().contains(secret),
                "/health shows a token"
            );
            let found = columns_containing(&env, secret).await?;
            assert!(found.is_empty(), "a token is stored in {found:?}");
        }
    }
    let redacted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carrier_responses WHERE strpos(body, '[redacted]') > 0",
    )
    .fetch_one(&env.pool)
    .await?;
    assert!(redacted >= 5, "kept, redacted: {redacted}");
    Ok(())
}
