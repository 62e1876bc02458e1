//! The marketplace receiver over real HTTP.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use tracking_sim::marketplace::{Receiver, sign, verify};

#[test]
fn sign_verify_round_trip() {
    let body = br#"{"change_id":"c1"}"#;
    let header = sign("topsecret", 1_774_450_000, body);
    assert!(verify("topsecret", &header, body));
    assert!(!verify("topsecret", &header, br#"{"change_id":"c2"}"#));
    assert!(!verify("wrong", &header, body));
}

#[tokio::test]
async fn records_signed_calls_and_scripted_answers() {
    let receiver = Receiver::start("topsecret".into(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert!(receiver.url().starts_with("http://127.0.0.1:"));
    assert!(receiver.url().ends_with("/hooks/tracking"));
    let client = reqwest::Client::new();
    let body = r#"{"change_id":"c1","status":"delivered","tracking_code":"DL746686536BR"}"#;
    let post = |signature: String| {
        client
            .post(receiver.url())
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "c1")
            .header("X-Signature", signature)
            .body(body)
            .send()
    };

    let res = post(sign("topsecret", 1_774_450_000, body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["ok"], true);

    receiver.answer_next(vec![(503, Some("2".into())), (429, None)]);
    let res = post(sign("topsecret", 1_774_450_001, body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers()["retry-after"], "2");
    let res = post(sign("topsecret", 1_774_450_002, body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    assert!(res.headers().get("retry-after").is_none());
    let res = post(sign("not-the-secret", 1_774_450_003, body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let res = client
        .put(format!("{}/other/path", receiver.base_url()))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let calls = receiver.calls();
    assert_eq!(calls.len(), 5);
    assert_eq!(
        calls.iter().map(|c| c.answered).collect::<Vec<_>>(),
        [200, 503, 429, 200, 200]
    );
    assert_eq!(
        calls.iter().map(|c| c.signature_valid).collect::<Vec<_>>(),
        [true, true, true, false, false]
    );
    let first = &calls[0];
    assert_eq!(first.path, "/hooks/tracking");
    assert_eq!(first.idempotency_key.as_deref(), Some("c1"));
    assert_eq!(first.body, body);
    assert_eq!(
        first.json.as_ref().unwrap()["tracking_code"],
        "DL746686536BR"
    );
    assert!(
        first
            .headers
            .iter()
            .any(|(k, v)| k == "idempotency-key" && v == "c1")
    );
    assert_eq!(calls[4].path, "/other/path");
    assert!(calls[4].json.is_none());
    assert!(calls[4].idempotency_key.is_none());

    receiver.shutdown();
}
