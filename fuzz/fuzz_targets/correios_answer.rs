//! Correios API Rastro answers (crates/carriers/src/correios.rs): a tracking answer gives answers or
//! `FetchError::Malformed`, never a panic; answers hold every code asked and make carrier updates the normalizer can
//! read back. The same body is also read as a token answer.
//!
//! Input: first line the codes asked (space or comma separated), then the body (see `common::codes_and_body`).
#![no_main]

mod common;

use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use serde::Deserialize;
use std::sync::OnceLock;
use std::time::Duration;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings, parse_local};
use tracking_carriers::{CallRetry, CarrierClient};
use tracking_domain::Carrier;

const TZ: chrono_tz::Tz = chrono_tz::America::Sao_Paulo;

/// A client that is never asked to call anyone (the base URL is not even resolvable).
fn client() -> &'static CorreiosClient {
    static C: OnceLock<CorreiosClient> = OnceLock::new();
    C.get_or_init(|| {
        CorreiosClient::new(CorreiosSettings {
            base_url: "http://correios.invalid".into(),
            user: "fuzz".into(),
            access_code: SecretString::from("fuzz"),
            postage_card: None,
            timeout: Duration::from_secs(1),
            time_zone: TZ,
            batch: 50,
            retry: CallRetry::default(),
            max_body: tracking_carriers::DEFAULT_MAX_BODY_BYTES,
        })
        .expect("a client without network")
    })
}

/// The token answer's fields as `CorreiosClient::token` reads them. The client has no public function for this
/// answer, so this mirrors its three steps: serde, `parse_local` and the refresh time.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct TokenAnswer {
    token: String,
    expira_em: String,
    zone_offset: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let Some((codes, body)) = common::codes_and_body(data) else {
        return;
    };

    if let Ok(answer) = serde_json::from_str::<TokenAnswer>(body)
        && let Some(expires) = parse_local(&answer.expira_em, answer.zone_offset.as_deref(), TZ)
    {
        // As in `CorreiosClient::token`.
        let _refresh_after = expires
            .with_timezone(&Utc)
            .checked_sub_signed(chrono::Duration::minutes(5));
    }

    if let Ok(answers) = client().parse(&codes, body) {
        for code in &codes {
            assert!(
                answers.contains_key(code),
                "{code} was asked but is not in the answers"
            );
        }
        common::assert_publishable(Carrier::Correios, &answers);
    }
});
