//! The Jadlog client against the Jadlog simulator (a real HTTP server on 127.0.0.1).

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tracking_carriers::jadlog::{JadlogClient, JadlogSettings};
use tracking_carriers::{CallRetry, FetchError, ObjectResult};
use tracking_domain::{Carrier, TrackingCode};
use tracking_sim::jadlog::{JadlogSim, delivered_journey};

fn settings(sim: &JadlogSim, token: &str) -> JadlogSettings {
    JadlogSettings {
        base_url: sim.base_url(),
        token: token.to_owned().into(),
        timeout: Duration::from_secs(5),
        time_zone: chrono_tz::America::Sao_Paulo,
        batch: 50,
        retry: CallRetry::default(),
        max_body: tracking_carriers::DEFAULT_MAX_BODY_BYTES,
    }
}

fn code(s: &str) -> TrackingCode {
    let c = TrackingCode::parse(s).unwrap();
    c.validate_for(Carrier::Jadlog).unwrap();
    c
}

#[tokio::test]
async fn codes_are_matched_events_read_in_brazil_time_and_unknown_codes_kept() -> anyhow::Result<()>
{
    let sim = JadlogSim::start("jadlog-token", "127.0.0.1:0".parse()?).await?;
    sim.script("10084500001234", delivered_journey());
    let client = JadlogClient::new(settings(&sim, "jadlog-token"))?;
    let codes = [code("10084500001234"), code("10084500009999")];
    let answers = client.track(&codes).await?;
    match &answers[&codes[0]] {
        ObjectResult::Found {
            events,
            estimated_delivery,
        } => {
            let seen: Vec<&str> = events.iter().map(|e| e.code.as_str()).collect();
            assert_eq!(seen, ["EMISSAO", "TRANSFERENCIA", "EM ROTA", "ENTREGUE"]);
            assert_eq!(
                events[3].occurred_at.to_rfc3339(),
                "2026-03-22T15:12:06-03:00"
            );
            assert_eq!(events[3].unit.as_deref(), Some("FL CAMPINAS"));
            assert!(estimated_delivery.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&answers[&codes[1]], ObjectResult::NotYet { message } if message.contains("Nenhum registro"))
    );
    assert_eq!(sim.batch_sizes(), vec![2], "one call for both codes");

    let wrong = JadlogClient::new(settings(&sim, "other"))?;
    assert!(matches!(
        wrong.track(&codes).await,
        Err(FetchError::Auth(_))
    ));
    Ok(())
}

#[tokio::test]
async fn the_error_object_is_read_under_erro_or_error_and_not_located_means_not_yet()
-> anyhow::Result<()> {
    let sim = JadlogSim::start("jadlog-token", "127.0.0.1:0".parse()?).await?;
    sim.script("10084500001234", delivered_journey());
    sim.script_error("10084500001111", "error", "Nao localizado");
    sim.script_error("10084500002222", "erro", "Não localizado");
    sim.script_error("10084500003333", "error", "Nenhum registro encontrado");
    sim.script_error(
        "10084500004444",
        "error",
        "Consulta não autorizada para este CNPJ",
    );
    let client = JadlogClient::new(settings(&sim, "jadlog-token"))?;
    let codes = [
        code("10084500001234"),
        code("10084500001111"),
        code("10084500002222"),
        code("10084500003333"),
        code("10084500004444"),
    ];
    let answers = client.track(&codes).await?;
    assert!(matches!(&answers[&codes[0]], ObjectResult::Found { events, .. } if events.len() == 4));
    for c in &codes[1..4] {
        assert!(
            matches!(&answers[c], ObjectResult::NotYet { .. }),
            "{c}: {:?}",
            answers[c]
        );
    }
    assert!(
        matches!(&answers[&codes[4]], ObjectResult::Refused { message } if message.contains("não autorizada")),
        "{:?}",
        answers[&codes[4]]
    );
    Ok(())
}
