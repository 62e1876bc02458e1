//! The status change on `order.status` as the email and marketplace publishers read it: any bytes give a change
//! or an error; a change that reads serializes back to JSON that reads to the same change, and every marketplace
//! adapter plans its calls for it (or refuses it) without panicking.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tracking_domain::StatusChange;
use tracking_marketplaces::Marketplaces;

/// One marketplace of each kind, in the marketplaces file's format (`crates/marketplaces/src/lib.rs`).
const MARKETPLACES: &str = r#"
[[marketplace]]
name = "acme"
kind = "webhook"
url = "https://hooks.acme.example/tracking"
secret = "0123456789abcdef0123"

[[marketplace]]
name = "minha-loja-vtex"
kind = "vtex"
url = "https://minhaloja.vtexcommercestable.com.br"
app_key = "k"
app_token = "t"

[[marketplace]]
name = "meli"
kind = "mercadolivre"
url = "https://api.mercadolibre.com"
access_token = "x"
service_id = 22
"#;

fn marketplaces() -> &'static Marketplaces {
    static M: OnceLock<Marketplaces> = OnceLock::new();
    M.get_or_init(|| Marketplaces::parse(MARKETPLACES).expect("the fuzz marketplaces file parses"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(change) = serde_json::from_slice::<StatusChange>(data) else {
        return;
    };
    common::assert_round_trip(&change, "the status change");
    for marketplace in marketplaces().iter() {
        let _ = marketplace.kind.adapter().plan(&change, data);
    }
});
