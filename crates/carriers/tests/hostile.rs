//! Hostile answers against the carrier clients, from the simulators (real HTTP servers on 127.0.0.1): token answers
//! in shapes nobody expected must not leak the token.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings};
use tracking_carriers::{CallRetry, FetchError};
use tracking_domain::TrackingCode;
use tracking_sim::correios::{CorreiosSim, Journey, Script, SimConfig, TokenQuirk};

const CODE: &str = "DL746686536BR";

fn settings(sim: &CorreiosSim) -> CorreiosSettings {
    CorreiosSettings {
        base_url: sim.base_url(),
        user: "sim-user".into(),
        access_code: "sim-code".to_owned().into(),
        postage_card: None,
        timeout: Duration::from_secs(10),
        time_zone: chrono_tz::America::Sao_Paulo,
        batch: 50,
        retry: CallRetry {
            retries: 0,
            ..CallRetry::default()
        },
    }
}

fn code() -> TrackingCode {
    TrackingCode::parse(CODE).unwrap()
}

async fn scripted() -> anyhow::Result<CorreiosSim> {
    let sim = CorreiosSim::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
    sim.script(CODE, Script::Journey(Journey::delivered().all_at_once()));
    Ok(sim)
}

/// Everything an error can show: its message, and a kept body.
fn all_text(e: &FetchError) -> String {
    match e {
        FetchError::Malformed { body, .. } => format!("{e} {body}"),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn a_token_answer_in_any_unexpected_shape_never_shows_the_token() -> anyhow::Result<()> {
    let sim = scripted().await?;
    let client = CorreiosClient::new(settings(&sim))?;
    for quirk in [
        TokenQuirk::ExpiraEmNumber,
        TokenQuirk::ExpiraEmText,
        TokenQuirk::TokenKey("accessToken".into()),
        TokenQuirk::PlainText,
        TokenQuirk::NulByte,
    ] {
        sim.token_quirk(Some(quirk.clone()));
        let err = client.track(&[code()]).await.unwrap_err();
        let token = sim.issued_tokens().pop().unwrap();
        let text = all_text(&err);
        assert!(
            matches!(err, FetchError::Malformed { .. }),
            "{quirk:?}: {err}"
        );
        assert!(!text.contains(&token), "{quirk:?} leaked the token: {text}");
        // The token's signature alone (say, the JWT cut by a snippet) is not there either.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "{quirk:?}: {text}");
        assert!(
            !text.contains('\0'),
            "{quirk:?}: a NUL byte would not store"
        );
        assert!(text.contains("[redacted]"), "{quirk:?}: {text}");
    }
    sim.token_quirk(None);
    client.track(&[code()]).await?;
    Ok(())
}
