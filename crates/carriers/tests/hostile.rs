//! Hostile answers against the carrier clients, from the simulators (real HTTP servers on 127.0.0.1): token answers
//! in shapes nobody expected must not leak the token, an endless answer is refused after the configured size, and
//! a redirect to another host is not followed (the second server receives nothing).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings};
use tracking_carriers::{CallRetry, FetchError};
use tracking_domain::TrackingCode;
use tracking_sim::correios::{CorreiosSim, Fault, Journey, Script, SimConfig, TokenQuirk};
use tracking_sim::witness::Witness;

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
        max_body: tracking_carriers::DEFAULT_MAX_BODY_BYTES,
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

#[tokio::test]
async fn an_endless_answer_is_refused_after_the_configured_size_and_never_read_whole()
-> anyhow::Result<()> {
    let sim = scripted().await?;
    let client = CorreiosClient::new(CorreiosSettings {
        max_body: 1024 * 1024,
        ..settings(&sim)
    })?;
    client.track(&[code()]).await?;
    sim.fail_next(vec![Fault::Huge(64 * 1024 * 1024 * 1024)]);
    let started = Instant::now();
    let err = client.track(&[code()]).await.unwrap_err();
    assert!(
        matches!(&err, FetchError::Transient { reason, .. } if reason.contains("larger than 1048576 bytes")),
        "{err}"
    );
    assert_eq!(err.kind(), "http_error", "counted like other HTTP errors");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "64 GiB were not read: {:?}",
        started.elapsed()
    );
    // An answer within the limit still works.
    client.track(&[code()]).await?;
    Ok(())
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed_and_one_on_the_same_host_is()
-> anyhow::Result<()> {
    let sim = scripted().await?;
    let witness = Witness::start("127.0.0.1:0".parse()?).await?;
    let client = CorreiosClient::new(settings(&sim))?;
    let elsewhere = format!(
        "{}/srorastro/v1/objetos?codigosObjetos={CODE}",
        witness.base_url()
    );
    for status in [301, 302, 303, 307, 308] {
        sim.fail_next(vec![Fault::Redirect(status, elsewhere.clone())]);
        let err = client.track(&[code()]).await.unwrap_err();
        assert!(
            matches!(&err, FetchError::Malformed { reason, http_status: Some(s), .. }
                if reason.contains(&elsewhere) && *s == status),
            "{status}: {err}"
        );
    }
    assert!(
        witness.seen().is_empty(),
        "the other host got {:?}",
        witness.seen()
    );

    let same_host = format!(
        "{}/srorastro/v1/objetos?codigosObjetos={CODE}&resultado=T",
        sim.base_url()
    );
    sim.fail_next(vec![Fault::Redirect(307, same_host)]);
    assert!(client.track(&[code()]).await.is_ok());

    Ok(())
}
