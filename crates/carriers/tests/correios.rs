//! The Correios client against the simulator (a real HTTP server on 127.0.0.1 with API Rastro's shapes).

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings};
use tracking_carriers::{FetchError, ObjectResult};
use tracking_domain::TrackingCode;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig};

fn settings(sim: &CorreiosSim, access_code: &str, card: Option<&str>) -> CorreiosSettings {
    CorreiosSettings {
        base_url: sim.base_url(),
        user: "sim-user".into(),
        access_code: access_code.to_owned().into(),
        postage_card: card.map(str::to_owned),
        timeout: Duration::from_secs(5),
        time_zone: chrono_tz::America::Sao_Paulo,
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
