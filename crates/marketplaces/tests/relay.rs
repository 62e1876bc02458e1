//! The relay against real HTTP servers on 127.0.0.1 (the marketplace receiver and a witness): a redirect is a
//! refusal that names the `Location`, and the signed call never reaches the place it points to; an answer larger
//! than the limit is a failed call, not read whole; reasons never show the call's credentials.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use tracking_marketplaces::adapters::{Call, Once};
use tracking_marketplaces::{Relay, RelayError};
use tracking_sim::marketplace::Receiver;
use tracking_sim::witness::Witness;

const SECRET: &str = "0123456789abcdef-webhook";
const APP_TOKEN: &str = "vtex-app-token-SECRET-42";
const BEARER: &str = "APP_USR-meli-access-token-77";

/// A call carrying every kind of credential the adapters send.
fn signed_call(url: &str) -> Call {
    Call {
        step: "webhook",
        once: Once::PerChange,
        method: reqwest::Method::POST,
        url: url.to_owned(),
        headers: vec![
            ("Content-Type", "application/json".into()),
            (
                "Idempotency-Key",
                "0b4a6f3e-8d2c-5b1a-9e7f-1c2d3e4f5a6b".into(),
            ),
            (
                "X-Signature",
                tracking_marketplaces::signature(SECRET, 1_700_000_000, b"{}"),
            ),
            ("X-VTEX-API-AppKey", "vtexappkey-store-XYZ".into()),
            ("X-VTEX-API-AppToken", APP_TOKEN.into()),
            ("Authorization", format!("Bearer {BEARER}")),
        ],
        body: b"{}".to_vec(),
    }
}

fn relay() -> Relay {
    Relay::new(Duration::from_secs(10), 64 * 1024).unwrap()
}

#[tokio::test]
async fn a_redirect_is_a_refusal_naming_the_location_and_the_call_goes_nowhere_else()
-> anyhow::Result<()> {
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    let witness = Witness::start("127.0.0.1:0".parse()?).await?;
    let elsewhere = format!("{}/collect", witness.base_url());
    for status in [301, 302, 303, 307, 308] {
        receiver.redirect_next(status, &elsewhere);
        match relay().send(&signed_call(&receiver.url())).await {
            Err(RelayError::Refused { reason }) => {
                assert!(reason.contains(&elsewhere), "{status}: {reason}");
                assert!(reason.contains(&status.to_string()), "{reason}");
            }
            other => panic!("{status}: {other:?}"),
        }
    }
    assert_eq!(receiver.calls().len(), 5, "each call made once");
    assert!(
        witness.seen().is_empty(),
        "the redirect target got {:?}",
        witness.seen()
    );
    // And the receiver, answering normally again, takes the call.
    assert!(relay().send(&signed_call(&receiver.url())).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_a_failed_call_and_is_not_read_whole()
-> anyhow::Result<()> {
    let receiver = Receiver::start(SECRET.into(), "127.0.0.1:0".parse()?).await?;
    for status in [200, 400] {
        receiver.answer_huge_next(status, 16 * 1024 * 1024 * 1024);
        let started = Instant::now();
        match relay().send(&signed_call(&receiver.url())).await {
            Err(RelayError::Retry { reason, .. }) => {
                assert!(reason.contains("larger than 65536 bytes"), "{reason}");
            }
            other => panic!("{status}: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not read whole");
    }
    Ok(())
}

#[tokio::test]
async fn reasons_and_debug_output_never_show_the_credentials() -> anyhow::Result<()> {
    // Nothing listens on port 1: the transport error names the URL, whose query carries a token.
    let call = signed_call(&format!("http://127.0.0.1:1/hook?token={BEARER}"));
    let err = relay().send(&call).await.unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(BEARER), "{text}");
    let shown = format!("{call:?}");
    for secret in [APP_TOKEN, BEARER, "vtexappkey-store-XYZ", "v1="] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("Idempotency-Key"), "{shown}");
    Ok(())
}
