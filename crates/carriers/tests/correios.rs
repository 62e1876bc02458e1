//! The Correios client against the simulator (a real HTTP server on 127.0.0.1 with API Rastro's shapes).

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use std::time::Instant;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings};
use tracking_carriers::{CallRetry, FetchError, ObjectResult};
use tracking_domain::TrackingCode;
use tracking_sim::correios::{CorreiosSim, Fault, Journey, SRO_009, Script, SimConfig};

fn settings(sim: &CorreiosSim, access_code: &str, card: Option<&str>) -> CorreiosSettings {
    CorreiosSettings {
        base_url: sim.base_url(),
        user: "sim-user".into(),
        access_code: access_code.to_owned().into(),
        postage_card: card.map(str::to_owned),
        timeout: Duration::from_secs(5),
        time_zone: chrono_tz::America::Sao_Paulo,
        batch: 50,
        retry: CallRetry {
            retries: 2,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(5),
        },
        max_body: tracking_carriers::DEFAULT_MAX_BODY_BYTES,
    }
}

fn code(s: &str) -> TrackingCode {
    TrackingCode::parse(s).unwrap()
}

#[tokio::test]
async fn objects_are_matched_by_code_and_the_token_is_reused_then_refreshed_once_when_refused()
-> anyhow::Result<()> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(
        "DL746686536BR",
        Script::Journey(Journey::delivered().all_at_once()),
    );
    sim.script("PG747937788BR", Script::NotFound);
    sim.script("SW091892778BR", Script::Invalid);
    let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
    let codes = [
        code("DL746686536BR"),
        code("PG747937788BR"),
        code("SW091892778BR"),
    ];

    // The simulator answers in reverse order: results are matched by codObjeto.
    let answers = client.track(&codes).await?;
    match &answers[&codes[0]] {
        ObjectResult::Found {
            events,
            estimated_delivery,
        } => {
            assert_eq!(events.len(), 4);
            assert_eq!(events[0].code, "BDE", "newest first, as sent");
            assert_eq!(
                events[0].occurred_at.offset().local_minus_utc(),
                -3 * 3600,
                "read as Brazil time"
            );
            assert!(estimated_delivery.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&answers[&codes[1]], ObjectResult::NotYet { message } if message.starts_with("SRO-020"))
    );
    assert!(
        matches!(&answers[&codes[2]], ObjectResult::Refused { message } if message.starts_with("SRO-019"))
    );

    client.track(&codes[..1]).await?;
    assert_eq!(sim.token_requests(), 1, "the token is cached");
    sim.expire_tokens();
    client.track(&codes[..1]).await?;
    assert_eq!(
        sim.token_requests(),
        2,
        "a refused token is refreshed once and the call retried"
    );
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_are_an_auth_failure_and_the_postage_card_variant_works()
-> anyhow::Result<()> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let wrong = CorreiosClient::new(settings(&sim, "wrong", None))?;
    let err = wrong.track(&[code("DL746686536BR")]).await.unwrap_err();
    assert!(matches!(err, FetchError::Auth(_)), "{err}");

    // A simulator that only issues tokens for one postage card (through /token/v1/autentica/cartaopostagem).
    let card_config = SimConfig {
        postage_card: Some("0067599079".into()),
        ..SimConfig::default()
    };
    let card_sim = CorreiosSim::start(card_config, "127.0.0.1:0".parse()?).await?;
    let with_card = CorreiosClient::new(settings(&card_sim, "sim-code", Some("0067599079")))?;
    let answers = with_card.track(&[code("DL746686536BR")]).await?;
    assert!(matches!(
        answers[&code("DL746686536BR")],
        ObjectResult::NotYet { .. }
    ));
    let other_card = CorreiosClient::new(settings(&card_sim, "sim-code", Some("1111111111")))?;
    assert!(
        other_card.track(&[code("DL746686536BR")]).await.is_err(),
        "another card gets no token"
    );

    let down = CorreiosClient::new(CorreiosSettings {
        base_url: "http://127.0.0.1:1".into(),
        ..settings(&sim, "sim-code", None)
    })?;
    let err = down.track(&[code("DL746686536BR")]).await.unwrap_err();
    assert!(matches!(err, FetchError::Transient { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_token_within_five_minutes_of_expira_em_is_replaced_before_use() -> anyhow::Result<()> {
    let config = SimConfig {
        token_ttl: chrono::Duration::minutes(4),
        ..SimConfig::default()
    };
    let sim = CorreiosSim::start(config, "127.0.0.1:0".parse()?).await?;
    let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
    client.track(&[code("DL746686536BR")]).await?;
    client.track(&[code("DL746686536BR")]).await?;
    assert_eq!(
        sim.token_requests(),
        2,
        "expiraEm (read with zoneOffset) is less than 5 minutes away each time"
    );
    let long = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let client = CorreiosClient::new(settings(&long, "sim-code", None))?;
    client.track(&[code("DL746686536BR")]).await?;
    client.track(&[code("DL746686536BR")]).await?;
    assert_eq!(long.token_requests(), 1, "a 24 h token is kept");
    Ok(())
}

async fn scripted() -> anyhow::Result<(CorreiosSim, CorreiosClient)> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(
        "DL746686536BR",
        Script::Journey(Journey::delivered().all_at_once()),
    );
    let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
    Ok((sim, client))
}

fn found(answers: &tracking_carriers::Answered) -> usize {
    match &answers[&code("DL746686536BR")] {
        ObjectResult::Found { events, .. } => events.len(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_the_call_succeeds() -> anyhow::Result<()> {
    let (sim, client) = scripted().await?;
    sim.fail_next(vec![Fault::Status(429, Some("1".into()))]);
    let started = Instant::now();
    let answers = client.track(&[code("DL746686536BR")]).await?;
    assert_eq!(found(&answers), 4);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_429_without_retry_after_and_a_500_are_retried_with_backoff_within_bounds()
-> anyhow::Result<()> {
    let (sim, client) = scripted().await?;
    sim.fail_next(vec![Fault::Status(429, None), Fault::Status(500, None)]);
    let answers = client.track(&[code("DL746686536BR")]).await?;
    assert_eq!(found(&answers), 4, "the third try succeeds");
    // Three 500s in a row exhaust the two retries: a transient error for the fetcher to delay.
    sim.fail_next(vec![
        Fault::Status(500, None),
        Fault::Status(502, None),
        Fault::Status(503, None),
    ]);
    let err = client.track(&[code("DL746686536BR")]).await.unwrap_err();
    assert!(
        matches!(&err, FetchError::Transient { reason, .. } if reason.contains("503")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_call_that_outlives_the_timeout_is_a_timeout_and_is_retried() -> anyhow::Result<()> {
    let (sim, _) = scripted().await?;
    let client = CorreiosClient::new(CorreiosSettings {
        timeout: Duration::from_millis(500),
        retry: CallRetry {
            retries: 0,
            ..CallRetry::default()
        },
        ..settings(&sim, "sim-code", None)
    })?;
    client.track(&[code("DL746686536BR")]).await?; // the token, first
    sim.fail_next(vec![Fault::Delay(Duration::from_secs(2))]);
    let err = client.track(&[code("DL746686536BR")]).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err}");
    let patient = CorreiosClient::new(CorreiosSettings {
        timeout: Duration::from_millis(500),
        ..settings(&sim, "sim-code", None)
    })?;
    sim.fail_next(vec![Fault::Delay(Duration::from_secs(2))]);
    assert_eq!(
        found(&patient.track(&[code("DL746686536BR")]).await?),
        4,
        "retried after the timeout"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_json_is_unreadable_and_a_renamed_event_field_is_a_changed_shape()
-> anyhow::Result<()> {
    let (sim, client) = scripted().await?;
    let cut = r#"{"objetos": [{"codObjeto": "DL746686536BR", "eventos": ["#;
    sim.fail_next(vec![Fault::Body(cut.into())]);
    match client.track(&[code("DL746686536BR")]).await {
        Err(FetchError::Malformed {
            body, http_status, ..
        }) => {
            assert_eq!(body, cut);
            assert_eq!(http_status, Some(200));
        }
        other => panic!("{other:?}"),
    }
    // Schema drift: dtHrCriado now arrives as dataHora. Nothing in this one-object answer reads: the call fails as
    // a changed shape, naming the field, with the whole answer kept.
    sim.rename_event_field(Some(("dtHrCriado", "dataHora")));
    match client.track(&[code("DL746686536BR")]).await {
        Err(FetchError::Schema { reason, body }) => {
            assert!(reason.contains("dtHrCriado"), "{reason}");
            assert!(body.contains("dataHora"), "the whole answer is kept");
        }
        other => panic!("{other:?}"),
    }
    // Kept answers are read again once the parser (here: the carrier) is fixed.
    sim.rename_event_field(None);
    assert_eq!(found(&client.track(&[code("DL746686536BR")]).await?), 4);
    Ok(())
}

#[tokio::test]
async fn duplicate_events_are_passed_on_as_sent() -> anyhow::Result<()> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let mut journey = Journey::delivered().all_at_once();
    journey.events.insert(1, journey.events[1].clone());
    journey.reveal_per_poll = journey.events.len();
    sim.script("DL746686536BR", Script::Journey(journey));
    let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
    let answers = client.track(&[code("DL746686536BR")]).await?;
    assert_eq!(
        found(&answers),
        5,
        "the normalizer's fingerprints remove the copy, not the client"
    );
    Ok(())
}

#[tokio::test]
async fn the_simulator_rejects_an_accept_language_the_real_api_does_not_take() -> anyhow::Result<()>
{
    let (sim, client) = scripted().await?;
    client.track(&[code("DL746686536BR")]).await?;
    let token = reqwest::Client::new()
        .post(format!("{}/token/v1/autentica", sim.base_url()))
        .basic_auth("sim-user", Some("sim-code"))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!(
        "{}/srorastro/v1/objetos?codigosObjetos=DL746686536BR&resultado=T",
        sim.base_url()
    );
    for language in ["fr-FR", "pt", ""] {
        let resp = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&token)
            .header("Accept-Language", language)
            .send()
            .await?;
        assert_eq!(resp.status(), 400, "{language:?}");
        assert!(resp.text().await?.contains("SRO-018"));
    }
    let ok = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&token)
        .header("Accept-Language", "pt-BR")
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    Ok(())
}

#[tokio::test]
async fn per_object_answers_concern_their_object_alone_and_never_fail_the_call()
-> anyhow::Result<()> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(
        "DL746686536BR",
        Script::Journey(Journey::delivered().all_at_once()),
    );
    sim.script(
        "PG747937788BR",
        Script::Message("SRO-042: Mensagem que nenhum cliente conhece.".into()),
    );
    sim.script(
        "SW091892778BR",
        Script::MessageAndNoEvents(
            "SRO-020: Objeto não encontrado na base de dados dos Correios.".into(),
        ),
    );
    sim.script("JT124720455BR", Script::Message(SRO_009.into()));
    sim.script("DU713842539BR", Script::MessageAndNoEvents(SRO_009.into()));
    let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
    let codes = [
        code("DL746686536BR"),
        code("PG747937788BR"),
        code("SW091892778BR"),
        code("JT124720455BR"),
        code("DU713842539BR"),
    ];
    let answers = client.track(&codes).await?;
    assert!(matches!(&answers[&codes[0]], ObjectResult::Found { events, .. } if events.len() == 4));
    assert!(
        matches!(&answers[&codes[1]], ObjectResult::Unrecognised { message } if message.starts_with("SRO-042")),
        "{:?}",
        answers[&codes[1]]
    );
    assert!(
        matches!(&answers[&codes[2]], ObjectResult::NotYet { message } if message.starts_with("SRO-020")),
        "a message with an empty eventos is the message's answer: {:?}",
        answers[&codes[2]]
    );
    for c in &codes[3..] {
        assert!(
            matches!(&answers[c], ObjectResult::NotTrackable { message } if message.starts_with("SRO-009")),
            "{:?}",
            answers[c]
        );
    }
    assert_eq!(sim.batch_sizes(), vec![5], "one call answered all five");
    Ok(())
}

#[tokio::test]
async fn tipo_is_read_as_a_string_or_a_number() -> anyhow::Result<()> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(
        "DL746686536BR",
        Script::Journey(Journey::delivered().all_at_once()),
    );
    sim.numeric_tipo(true);
    let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
    let answers = client.track(&[code("DL746686536BR")]).await?;
    match &answers[&code("DL746686536BR")] {
        ObjectResult::Found { events, .. } => {
            assert!(
                events.iter().all(|e| e.kind.as_deref() == Some("01")),
                "{events:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn gtw_008_refreshes_the_token_whatever_http_status_it_comes_with() -> anyhow::Result<()> {
    for status in [401, 403, 400] {
        let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
        sim.script(
            "DL746686536BR",
            Script::Journey(Journey::delivered().all_at_once()),
        );
        sim.refuse_tokens_with(status);
        let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
        client.track(&[code("DL746686536BR")]).await?;
        sim.expire_tokens();
        let answers = client.track(&[code("DL746686536BR")]).await;
        assert!(
            answers.is_ok(),
            "GTW-008 with {status}: {:?}",
            answers.err()
        );
        assert_eq!(
            sim.token_requests(),
            2,
            "GTW-008 with {status} refreshed the token once"
        );
    }
    Ok(())
}

#[tokio::test]
async fn one_object_whose_events_cannot_be_read_is_its_codes_problem_beside_readable_ones()
-> anyhow::Result<()> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    let client = CorreiosClient::new(settings(&sim, "sim-code", None))?;
    let good = [code("DL746686536BR"), code("DL746686540BR")];
    let odd = code("DL746686553BR");
    let body = serde_json::json!({ "objetos": [
        { "codObjeto": good[0].as_str(), "eventos": [] },
        { "codObjeto": good[1].as_str(), "eventos": [] },
        { "codObjeto": odd.as_str(), "eventos": [{ "codigo": "RO", "descricao": "x", "dataHora": "2026-11-20T10:00:00" }] },
    ]})
    .to_string();
    let codes = [good[0].clone(), good[1].clone(), odd.clone()];
    let answers = client.parse_tracking(&codes, &body)?;
    match &answers[&odd] {
        ObjectResult::Unrecognised { message } => {
            assert!(message.contains("dtHrCriado"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&answers[&good[0]], ObjectResult::Found { .. }));
    // Every object unreadable: the answer's shape changed.
    let body = body.replace(
        r#""eventos":[]"#,
        r#""eventos":[{"codigo":"RO","descricao":"x"}]"#,
    );
    match client.parse_tracking(&codes, &body) {
        Err(FetchError::Schema { reason, .. }) => {
            assert!(
                reason.starts_with("3 of the answer's 3 objects"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}
