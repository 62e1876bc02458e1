//! Jadlog tracking answers (crates/carriers/src/jadlog.rs): an answer gives answers or `FetchError::Malformed`,
//! never a panic; answers hold exactly the codes asked and make carrier updates the normalizer can read back.
//!
//! Input: first line the codes asked (space or comma separated), then the body (see `common::codes_and_body`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use std::sync::OnceLock;
use std::time::Duration;
use tracking_carriers::jadlog::{JadlogClient, JadlogSettings};
use tracking_carriers::{CallRetry, CarrierClient};
use tracking_domain::Carrier;

/// A client that is never asked to call anyone (the base URL is not even resolvable).
fn client() -> &'static JadlogClient {
    static C: OnceLock<JadlogClient> = OnceLock::new();
    C.get_or_init(|| {
        JadlogClient::new(JadlogSettings {
            base_url: "http://jadlog.invalid".into(),
            token: SecretString::from("fuzz"),
            timeout: Duration::from_secs(1),
            time_zone: chrono_tz::America::Sao_Paulo,
            batch: 50,
            retry: CallRetry::default(),
            max_body: tracking_carriers::DEFAULT_MAX_BODY_BYTES,
        })
        .expect("a client without network")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((codes, body)) = common::codes_and_body(data) else {
        return;
    };
    if let Ok(answers) = client().parse(&codes, body) {
        for code in &codes {
            assert!(
                answers.contains_key(code),
                "{code} was asked but is not in the answers"
            );
        }
        for code in answers.keys() {
            assert!(
                codes.contains(code),
                "{code} is in the answers but was not asked"
            );
        }
        common::assert_publishable(Carrier::Jadlog, &answers);
    }
});
